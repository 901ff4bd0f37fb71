# Copyright: airgap.microshift contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""image_load through main(): a signed transfer set packed by image_bundle, loaded with real skopeo into a
throw-away vfs storage; check mode, apply, second run, the signature checked as unpack checks it, and
one-sentence refusals."""

from __future__ import annotations

import json
import os
import random
import shutil

import pytest

from ansible_collections.airgap.microshift.plugins.module_utils import _bundle, _signing, _store
from ansible_collections.airgap.microshift.plugins.modules import image_load
from ansible_collections.airgap.microshift.tests.unit.plugins.helpers.modules import run_main, warning_texts
from ansible_collections.airgap.microshift.tests.unit.plugins.helpers.stores import KEY, TAR_BASE, add_tar_image

pytestmark = pytest.mark.skipif(shutil.which("skopeo") is None or os.geteuid() != 0,
                                reason="a real load needs skopeo and root (containers-storage)")


def _public_key_file(tmp_path, key, name):
    path = str(tmp_path / name)
    with open(path, "wb") as handle:
        handle.write(_signing.public_key_pem(key.public_key()))
    return path


def _pack(store, dest, signing_key=KEY):
    # Small parts: the largest layer crosses in several files, joined again by the load.
    _bundle.pack(store, dest, volume_size=_bundle.parse_size("256KiB"), part_size=_bundle.parse_size("64KiB"),
                 signing_key=signing_key)


@pytest.fixture
def transfer_set(tmp_path):
    store = str(tmp_path / "store")
    # Bytes that do not compress: the layer is larger than a part and crosses in several files.
    refs = [add_tar_image(store, "quay.io/example/one", TAR_BASE + [("top.bin", random.Random(1).randbytes(300000))]),
            add_tar_image(store, "quay.io/example/two", TAR_BASE + [("top.bin", b"2" * 700)])]
    dest = str(tmp_path / "set")
    _pack(store, dest)
    return store, dest, refs


def _args(tmp_path, src, refs, **extra):
    args = {"src": [src], "images": refs, "graphroot": str(tmp_path / "graph"), "runroot": str(tmp_path / "run"),
            "driver": "vfs", "staging": str(tmp_path / "staging"), "record": str(tmp_path / "record.json"),
            "architecture": "x86_64", "trusted_keys": [_public_key_file(tmp_path, KEY, "trusted.pub")]}
    args.update(extra)
    return args


def _nothing_written(tmp_path):
    return not any(os.path.exists(str(tmp_path / name)) for name in ("graph", "staging", "record.json"))


def test_load_from_a_transfer_set(tmp_path, capsys, transfer_set):
    store, dest, refs = transfer_set
    planned, _out = run_main(image_load, capsys, _args(tmp_path, dest, refs), check_mode=True)
    assert planned["changed"] and planned["loaded"] == refs and planned["platform"] == "linux/amd64"
    assert planned["source"]["kind"] == "transfer_set"
    assert planned["source"]["signed_by"] == _signing.fingerprint(KEY.public_key())
    assert not os.path.exists(str(tmp_path / "graph")) and not os.path.exists(str(tmp_path / "staging"))
    loaded, _out = run_main(image_load, capsys, _args(tmp_path, dest, refs))
    assert loaded["changed"] and loaded["verified"] == 2
    # On the set's own filesystem the blobs held whole are hard-linked; the one in parts is joined by copying,
    # and the plan said so.
    assert loaded["bytes_staged"] + loaded["bytes_linked"] == planned["bytes"]
    assert 0 < loaded["bytes_staged"] == planned["staging_bytes"] < planned["bytes"]
    # The staging store is gone, the record names both images with their digests.
    assert not os.path.exists(str(tmp_path / "staging"))
    index = _store.read_index(store)
    again, _out = run_main(image_load, capsys, _args(tmp_path, dest, refs))
    assert not again["changed"] and again["present"] == refs and again["bytes"] == 0
    assert again["storage"]["graphroot"] == str(tmp_path / "graph")
    with open(str(tmp_path / "record.json"), encoding="utf-8") as handle:
        record = json.load(handle)
    assert sorted(record["storages"][str(tmp_path / "graph")].values()) == sorted(index["images"][ref]["digest"] for ref in refs)


def test_refusals_are_one_sentence(tmp_path, capsys, transfer_set):
    _store_path, dest, refs = transfer_set
    result, _out = run_main(image_load, capsys, _args(tmp_path, dest, refs + ["quay.io/example/absent@sha256:" + "0" * 64]))
    assert result["failed"] and result["msg"] == "Image quay.io/example/absent@sha256:%s is not in the image source." % ("0" * 64)
    result, _out = run_main(image_load, capsys, _args(tmp_path, dest, refs, parallel=0))
    assert result["failed"] and result["msg"] == "Option parallel must be 1 or more, not 0."
    result, _out = run_main(image_load, capsys, _args(tmp_path, str(tmp_path / "nowhere"), refs))
    assert result["failed"] and "nowhere" in result["msg"] and "Traceback" not in result["msg"]
    assert not os.path.exists(str(tmp_path / "graph"))


def test_a_set_signed_by_an_untrusted_key_is_refused_before_anything_is_written(tmp_path, capsys, transfer_set):
    store, _dest, refs = transfer_set
    other = str(tmp_path / "other-set")
    _pack(store, other, signing_key=_signing.generate_private_key())
    for check_mode in (True, False):
        result, _out = run_main(image_load, capsys, _args(tmp_path, other, refs), check_mode=check_mode)
        assert result["failed"] and "does not match its signature vol-001/bundle.json.sig under any of the 1 trusted key(s)" in result["msg"]
        assert result["corrupt"] == ["vol-001/bundle.json"]
        assert _nothing_written(tmp_path)


def test_a_changed_set_is_refused_by_the_signature_before_its_blobs_are_read(tmp_path, capsys, transfer_set):
    _store_path, dest, refs = transfer_set
    # A changed bundle.json (here: its release) makes the signature fail before anything else is read.
    path = os.path.join(dest, "vol-001", "bundle.json")
    with open(path, "rb") as handle:
        data = handle.read()
    assert b'"release": null' in data
    with open(path, "wb") as handle:
        handle.write(data.replace(b'"release": null', b'"release": "4.20.9"', 1))
    result, _out = run_main(image_load, capsys, _args(tmp_path, dest, refs))
    assert result["failed"] and "does not match its signature" in result["msg"] and _nothing_written(tmp_path)


def test_an_unsigned_set_needs_the_explicit_opt_out_which_warns(tmp_path, capsys, transfer_set):
    store, _dest, refs = transfer_set
    unsigned = str(tmp_path / "unsigned-set")
    _pack(store, unsigned, signing_key=None)
    result, _out = run_main(image_load, capsys, _args(tmp_path, unsigned, refs))
    assert result["failed"] and result["msg"].startswith("The transfer set is not signed (vol-001/bundle.json.sig is missing)")
    assert _nothing_written(tmp_path)
    result, _out = run_main(image_load, capsys, _args(tmp_path, unsigned, refs, trusted_keys=[], allow_unsigned=True), check_mode=True)
    assert not result.get("failed") and result["loaded"] == refs and result["source"]["signed_by"] is None
    assert any("its origin was not checked, as allow_unsigned asks" in w for w in warning_texts(result))


def test_a_signed_set_without_trusted_keys_is_refused(tmp_path, capsys, transfer_set):
    _store_path, dest, refs = transfer_set
    result, _out = run_main(image_load, capsys, _args(tmp_path, dest, refs, trusted_keys=[]))
    assert result["failed"] and result["msg"].startswith("No trusted key was given to check the transfer set's signature")
    assert _nothing_written(tmp_path)


def _whole_blob_file(dest, store, ref):
    """A layer of ``ref`` (amd64) the set holds whole in one file: its path and how the set names it."""
    entry = _store.read_index(store)["images"][ref]
    manifest = [m for m in entry["manifests"] if m["platform"] == "linux/amd64"][0]
    for blob in sorted(manifest["blobs"][1:], key=lambda b: -b["size"]):
        for volume in sorted(os.listdir(dest)):
            path = os.path.join(dest, volume, "blobs", "sha256", blob["digest"][7:])
            if os.path.isfile(path):
                return path, "%s/blobs/sha256/%s" % (volume, blob["digest"][7:])
    raise AssertionError("no layer of %s is held whole" % ref)


def test_linked_blobs_leave_the_set_as_it_was(tmp_path, capsys, transfer_set):
    store, dest, refs = transfer_set
    path, _shown = _whole_blob_file(dest, store, refs[1])
    with open(path, "rb") as handle:
        before = handle.read()
    loaded, _out = run_main(image_load, capsys, _args(tmp_path, dest, refs))
    assert loaded["bytes_linked"] > 0 and not os.path.exists(str(tmp_path / "staging"))
    # The staging store's links are gone with it: the set's files are single files again, unchanged.
    info = os.stat(path)
    assert info.st_nlink == 1
    with open(path, "rb") as handle:
        assert handle.read() == before


def test_a_corrupt_blob_on_the_same_filesystem_is_named_and_nothing_is_written(tmp_path, capsys, transfer_set):
    store, dest, refs = transfer_set
    path, shown = _whole_blob_file(dest, store, refs[1])
    with open(path, "r+b") as handle:
        handle.seek(100)
        byte = handle.read(1)
        handle.seek(100)
        handle.write(bytes([byte[0] ^ 0x01]))
    result, _out = run_main(image_load, capsys, _args(tmp_path, dest, refs))
    assert result["failed"] and result["corrupt"] == [shown]
    assert result["msg"].startswith("Bundle ") and "holds corrupt file(s), nothing was loaded: %s." % shown in result["msg"]
    assert _nothing_written(tmp_path) and os.stat(path).st_nlink == 1
