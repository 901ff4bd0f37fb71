# Copyright: airgap.microshift contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""The image_bundle module's main(), run with real module arguments on real files."""

from __future__ import annotations

import json
import os
import shutil

import pytest


from ansible_collections.airgap.microshift.plugins.modules import image_bundle, signing_key
from ansible_collections.airgap.microshift.tests.unit.plugins.helpers.modules import run_main, warning_texts
from ansible_collections.airgap.microshift.tests.unit.plugins.helpers.stores import build_store, store_files, update_store

PASSPHRASE = "correct horse battery staple"


def run_module(capsys, args, check_mode=False, keys=None):
    """image_bundle's main(); pack signs and verify/unpack check with ``keys`` unless the args say otherwise."""
    args = dict(args)
    if keys and args.get("state", args.get("action")) == "pack":
        args.setdefault("signing_key", keys["private"])
        args.setdefault("signing_key_passphrase", PASSPHRASE)
    elif keys and args.get("state", args.get("action")) in ("verify", "unpack"):
        args.setdefault("trusted_keys", [keys["public"]])
    return run_main(image_bundle, capsys, args, check_mode)[0]


@pytest.fixture
def store(tmp_path):
    path = str(tmp_path / "store")
    build_store(path)
    return path


@pytest.fixture
def keys(capsys, tmp_path):
    """A passphrase-protected key pair made by the signing_key module."""
    private = str(tmp_path / "transfer.key")
    result = run_main(signing_key, capsys, {"path": private, "passphrase": PASSPHRASE})[0]
    assert result["changed"] and result["generated"]
    return {"private": private, "public": result["public_key_path"], "fingerprint": result["fingerprint"]}


def test_pack_verify_unpack_receipt(capsys, store, tmp_path, keys):
    media = str(tmp_path / "media")
    pack_args = {"state": "pack", "store": store, "dest": media, "volume_size": "1MiB", "release": "4.18.1"}
    plan = run_module(capsys, pack_args, check_mode=True, keys=keys)
    assert plan["changed"] is True and not os.path.exists(media)
    packed = run_module(capsys, pack_args, keys=keys)
    assert packed["changed"] is True and packed["volume_count"] == plan["volume_count"]
    assert packed["bundle_id"] == plan["bundle_id"] and packed["signed_by"] == keys["fingerprint"]
    assert run_module(capsys, pack_args, keys=keys)["changed"] is False
    assert run_module(capsys, pack_args, check_mode=True, keys=keys)["changed"] is False

    checked = run_module(capsys, {"action": "verify", "src": [media], "parallel": 2}, keys=keys)
    assert checked["changed"] is False and checked["corrupt"] == [] and checked["volumes_found"][0] == "vol-001"
    assert checked["signed_by"] == keys["fingerprint"] and checked["unexpected"] == []

    site = str(tmp_path / "site")
    unpacked = run_module(capsys, {"state": "unpack", "src": [media], "store": site}, keys=keys)
    assert unpacked["changed"] is True and store_files(site) == store_files(store)
    assert run_module(capsys, {"state": "unpack", "src": [media], "store": site}, keys=keys)["changed"] is False

    receipt = str(tmp_path / "receipt.json")
    preview = run_module(capsys, {"state": "receipt", "store": site, "dest": receipt, "release": "4.18.1"}, check_mode=True)
    assert preview["changed"] is True and not os.path.exists(receipt)
    written = run_module(capsys, {"state": "receipt", "store": site, "dest": receipt, "release": "4.18.1"})
    assert written["changed"] is True and written["blobs"] == len(json.load(open(receipt))["blobs"])
    assert run_module(capsys, {"state": "receipt", "store": site, "dest": receipt, "release": "4.18.1"})["changed"] is False

    index = json.load(open(os.path.join(store, "store.json")))
    new_blobs = update_store(store, index)
    delta = str(tmp_path / "delta")
    result = run_module(capsys, {"state": "pack", "store": store, "dest": delta, "receipt": receipt, "release": "4.18.2"}, keys=keys)
    assert result["delta"] is True and result["unique_bytes"] == sum(new_blobs.values())
    run_module(capsys, {"state": "unpack", "src": [delta], "store": site}, keys=keys)
    assert store_files(site) == store_files(store)


def test_verify_failure_lists_files(capsys, store, tmp_path, keys):
    media = str(tmp_path / "media")
    run_module(capsys, {"state": "pack", "store": store, "dest": media, "volume_size": "1MiB"}, keys=keys)
    shutil.rmtree(os.path.join(media, "vol-002"))
    result = run_module(capsys, {"state": "verify", "src": [media]}, keys=keys)
    assert result["failed"] is True and result["missing_volumes"] == ["vol-002"]
    assert "vol-002 of" in result["msg"] and "is missing" in result["msg"]


@pytest.mark.parametrize("option, value", [("volume_size", "12XB"), ("part_size", "lots")])
def test_invalid_size(capsys, store, tmp_path, option, value, keys):
    result = run_module(capsys, {"state": "pack", "store": store, "dest": str(tmp_path / "m"), option: value}, keys=keys)
    assert result["failed"] is True
    assert result["msg"].startswith("%s '%s' is not a size" % (option, value))
    assert not os.path.exists(str(tmp_path / "m"))


def test_missing_store_index(capsys, tmp_path):
    result = run_module(capsys, {"state": "pack", "store": str(tmp_path), "dest": str(tmp_path / "m"), "allow_unsigned": True})
    assert result["failed"] is True and "store.json" in result["msg"]


def test_delta_base_missing(capsys, store, tmp_path, keys):
    receipt = str(tmp_path / "receipt.json")
    run_module(capsys, {"state": "receipt", "store": store, "dest": receipt})
    update_store(store, json.load(open(os.path.join(store, "store.json"))))
    delta = str(tmp_path / "delta")
    run_module(capsys, {"state": "pack", "store": store, "dest": delta, "receipt": receipt}, keys=keys)
    result = run_module(capsys, {"state": "unpack", "src": [delta], "store": str(tmp_path / "empty")}, keys=keys)
    assert result["failed"] is True and "is a delta on receipt" in result["msg"]
    assert result["missing_base_blobs"]


def test_signatures_are_required_unless_opted_out(capsys, store, tmp_path, keys):
    media = str(tmp_path / "media")
    refused = run_module(capsys, {"state": "pack", "store": store, "dest": media})
    assert refused["failed"] is True and "signing_key" in refused["msg"] and not os.path.exists(media)
    unsigned = run_module(capsys, {"state": "pack", "store": store, "dest": media, "allow_unsigned": True})
    assert unsigned["changed"] is True and unsigned["signed_by"] is None
    assert any("unsigned" in warning for warning in warning_texts(unsigned))
    assert not os.path.exists(os.path.join(media, "vol-001", "bundle.json.sig"))
    site = str(tmp_path / "site")
    refused = run_module(capsys, {"state": "unpack", "src": [media], "store": site}, keys=keys)
    assert refused["failed"] is True and "is not signed" in refused["msg"] and not os.path.exists(site)
    refused = run_module(capsys, {"state": "verify", "src": [media]})
    assert refused["failed"] is True and "trusted_keys" in refused["msg"]
    accepted = run_module(capsys, {"state": "unpack", "src": [media], "store": site, "allow_unsigned": True}, keys=keys)
    assert accepted["changed"] is True and any("not signed" in warning for warning in warning_texts(accepted))


def test_a_set_signed_by_an_untrusted_key_is_refused(capsys, store, tmp_path, keys):
    other = str(tmp_path / "other.key")
    run_main(signing_key, capsys, {"path": other, "key_type": "ed25519"})
    media = str(tmp_path / "media")
    run_module(capsys, {"state": "pack", "store": store, "dest": media, "signing_key": other})
    site = str(tmp_path / "site")
    refused = run_module(capsys, {"state": "unpack", "src": [media], "store": site}, keys=keys)
    assert refused["failed"] is True and "does not match its signature" in refused["msg"] and not os.path.exists(site)
    # Key rotation: the old and the new key are both trusted for a while.
    accepted = run_module(capsys, {"state": "verify", "src": [media], "trusted_keys": [keys["public"], other + ".pub"]})
    assert accepted["changed"] is False and accepted["signed_by"] != keys["fingerprint"]


def test_wrong_passphrase_writes_nothing(capsys, store, tmp_path, keys):
    media = str(tmp_path / "media")
    result = run_module(capsys, {"state": "pack", "store": store, "dest": media, "signing_key": keys["private"],
                                 "signing_key_passphrase": "n0t-the-r1ght-0ne"})
    assert result["failed"] is True and keys["private"] in result["msg"] and "passphrase" in result["msg"]
    assert "n0t-the-r1ght-0ne" not in json.dumps(result) and not os.path.exists(media)


def test_part_size_without_volume_size_writes_one_volume(capsys, store, tmp_path, keys):
    # "When omitted, the set is one volume" (volume_size): splitting blobs into parts must not add one.
    media = str(tmp_path / "media")
    packed = run_module(capsys, {"state": "pack", "store": store, "dest": media, "part_size": "256KiB"}, keys=keys)
    assert packed["volume_count"] == 1 and sorted(os.listdir(media)) == ["vol-001"]
    assert packed["parts"] > 0
    assert all(os.path.getsize(os.path.join(root, name)) <= 256 * 1024
               for root, dummy, names in os.walk(media) for name in names)
    site = str(tmp_path / "site")
    unpacked = run_module(capsys, {"state": "unpack", "src": [media], "store": site}, keys=keys)
    assert unpacked["changed"] and store_files(site) == store_files(store)
