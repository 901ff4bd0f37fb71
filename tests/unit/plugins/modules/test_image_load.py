# Copyright: airgap.microshift contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""image_load through main(): a transfer set packed by image_bundle, loaded with real skopeo into a
throw-away vfs storage; check mode, apply, second run, and one-sentence refusals."""

from __future__ import annotations

import json
import os
import shutil

import pytest

from ansible_collections.airgap.microshift.plugins.module_utils import _bundle
from ansible_collections.airgap.microshift.plugins.module_utils import _store
from ansible_collections.airgap.microshift.plugins.modules import image_load
from ansible_collections.airgap.microshift.tests.unit.plugins.helpers import run_main
from ansible_collections.airgap.microshift.tests.unit.plugins.module_utils.test_load import BASE, add_image

pytestmark = pytest.mark.skipif(shutil.which("skopeo") is None or os.geteuid() != 0,
                                reason="a real load needs skopeo and root (containers-storage)")


@pytest.fixture
def transfer_set(tmp_path):
    store = str(tmp_path / "store")
    refs = [add_image(store, "quay.io/example/one", BASE + [("top.bin", b"1" * 300000)]),
            add_image(store, "quay.io/example/two", BASE + [("top.bin", b"2" * 700)])]
    dest = str(tmp_path / "set")
    # Small parts: the largest layer crosses in several files, joined again by the load.
    _bundle.pack(store, dest, volume_size=_bundle.parse_size("256KiB"), part_size=_bundle.parse_size("64KiB"))
    return store, dest, refs


def _args(tmp_path, src, refs, **extra):
    args = {"src": [src], "images": refs, "graphroot": str(tmp_path / "graph"), "runroot": str(tmp_path / "run"),
            "driver": "vfs", "staging": str(tmp_path / "staging"), "record": str(tmp_path / "record.json"),
            "architecture": "x86_64"}
    args.update(extra)
    return args


def test_load_from_a_transfer_set(tmp_path, capsys, transfer_set):
    store, dest, refs = transfer_set
    planned, _out = run_main(image_load, capsys, _args(tmp_path, dest, refs), check_mode=True)
    assert planned["changed"] and planned["loaded"] == refs and planned["platform"] == "linux/amd64"
    assert planned["source"]["kind"] == "transfer_set"
    assert not os.path.exists(str(tmp_path / "graph")) and not os.path.exists(str(tmp_path / "staging"))
    loaded, _out = run_main(image_load, capsys, _args(tmp_path, dest, refs))
    assert loaded["changed"] and loaded["verified"] == 2 and loaded["bytes_staged"] == planned["bytes"]
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
    assert result["failed"] and result["msg"] == "parallel must be 1 or more, not 0."
    result, _out = run_main(image_load, capsys, _args(tmp_path, str(tmp_path / "nowhere"), refs))
    assert result["failed"] and "nowhere" in result["msg"] and "Traceback" not in result["msg"]
    assert not os.path.exists(str(tmp_path / "graph"))
