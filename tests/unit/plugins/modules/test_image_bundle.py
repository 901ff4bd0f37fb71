# Copyright: airgap.microshift contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""The image_bundle module's main(), run with real module arguments on real files."""

from __future__ import annotations

import json
import os
import shutil

import pytest


from ansible_collections.airgap.microshift.plugins.modules import image_bundle
from ansible_collections.airgap.microshift.tests.unit.plugins.helpers import run_main
from ansible_collections.airgap.microshift.tests.unit.plugins.module_utils.test_bundle import build_store, store_files, update_store


def run_module(capsys, args, check_mode=False):
    return run_main(image_bundle, capsys, args, check_mode)[0]


@pytest.fixture
def store(tmp_path):
    path = str(tmp_path / "store")
    build_store(path)
    return path


def test_pack_verify_unpack_receipt(capsys, store, tmp_path):
    media = str(tmp_path / "media")
    pack_args = {"state": "pack", "store": store, "dest": media, "volume_size": "1MiB", "release": "4.18.1"}
    plan = run_module(capsys, pack_args, check_mode=True)
    assert plan["changed"] is True and not os.path.exists(media)
    packed = run_module(capsys, pack_args)
    assert packed["changed"] is True and packed["volume_count"] == plan["volume_count"]
    assert packed["bundle_id"] == plan["bundle_id"]
    assert run_module(capsys, pack_args)["changed"] is False
    assert run_module(capsys, pack_args, check_mode=True)["changed"] is False

    checked = run_module(capsys, {"action": "verify", "src": [media], "parallel": 2})
    assert checked["changed"] is False and checked["corrupt"] == [] and checked["volumes_found"][0] == "vol-001"

    site = str(tmp_path / "site")
    unpacked = run_module(capsys, {"state": "unpack", "src": [media], "store": site})
    assert unpacked["changed"] is True and store_files(site) == store_files(store)
    assert run_module(capsys, {"state": "unpack", "src": [media], "store": site})["changed"] is False

    receipt = str(tmp_path / "receipt.json")
    preview = run_module(capsys, {"state": "receipt", "store": site, "dest": receipt, "release": "4.18.1"}, check_mode=True)
    assert preview["changed"] is True and not os.path.exists(receipt)
    written = run_module(capsys, {"state": "receipt", "store": site, "dest": receipt, "release": "4.18.1"})
    assert written["changed"] is True and written["blobs"] == len(json.load(open(receipt))["blobs"])
    assert run_module(capsys, {"state": "receipt", "store": site, "dest": receipt, "release": "4.18.1"})["changed"] is False

    index = json.load(open(os.path.join(store, "store.json")))
    new_blobs = update_store(store, index)
    delta = str(tmp_path / "delta")
    result = run_module(capsys, {"state": "pack", "store": store, "dest": delta, "receipt": receipt, "release": "4.18.2"})
    assert result["delta"] is True and result["unique_bytes"] == sum(new_blobs.values())
    run_module(capsys, {"state": "unpack", "src": [delta], "store": site})
    assert store_files(site) == store_files(store)


def test_verify_failure_lists_files(capsys, store, tmp_path):
    media = str(tmp_path / "media")
    run_module(capsys, {"state": "pack", "store": store, "dest": media, "volume_size": "1MiB"})
    shutil.rmtree(os.path.join(media, "vol-002"))
    result = run_module(capsys, {"state": "verify", "src": [media]})
    assert result["failed"] is True and result["missing_volumes"] == ["vol-002"]
    assert "vol-002 of" in result["msg"] and "is missing" in result["msg"]


@pytest.mark.parametrize("option, value", [("volume_size", "12XB"), ("part_size", "lots")])
def test_invalid_size(capsys, store, tmp_path, option, value):
    result = run_module(capsys, {"state": "pack", "store": store, "dest": str(tmp_path / "m"), option: value})
    assert result["failed"] is True
    assert result["msg"].startswith("%s '%s' is not a size" % (option, value))
    assert not os.path.exists(str(tmp_path / "m"))


def test_missing_store_index(capsys, tmp_path):
    result = run_module(capsys, {"state": "pack", "store": str(tmp_path), "dest": str(tmp_path / "m")})
    assert result["failed"] is True and "store.json" in result["msg"]


def test_delta_base_missing(capsys, store, tmp_path):
    receipt = str(tmp_path / "receipt.json")
    run_module(capsys, {"state": "receipt", "store": store, "dest": receipt})
    update_store(store, json.load(open(os.path.join(store, "store.json"))))
    delta = str(tmp_path / "delta")
    run_module(capsys, {"state": "pack", "store": store, "dest": delta, "receipt": receipt})
    result = run_module(capsys, {"state": "unpack", "src": [delta], "store": str(tmp_path / "empty")})
    assert result["failed"] is True and "is a delta on receipt" in result["msg"]
    assert result["missing_base_blobs"]
