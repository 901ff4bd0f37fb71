# Copyright: airgap.microshift contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""image_store_info on a store filled by image_download from a real registry."""

from __future__ import annotations

import os

import pytest


from ansible_collections.airgap.microshift.plugins.module_utils import _store as store_mod
from ansible_collections.airgap.microshift.plugins.modules import image_download, image_store_info
from ansible_collections.airgap.microshift.tests.unit.plugins.helpers.modules import run_main


def _run(module, capsys, args, check_mode=False):
    return run_main(module, capsys, args, check_mode)[0]


@pytest.fixture
def filled_store(local_registry, synthetic_images, tmp_path, capsys):
    pushed = synthetic_images.push_set("info")
    store = str(tmp_path / "store")
    result = _run(image_download, capsys, {"images": [image["ref"] for image in pushed], "store": store,
                                           "authfile": local_registry.authfile, "cert_dir": local_registry.cert_dir,
                                           "free_space_margin": 0})
    assert not result.get("failed"), result
    return store, pushed


def test_complete_missing_incomplete_and_corrupt_images_are_told_apart(filled_store, capsys):
    store, pushed = filled_store
    ghost = pushed[0]["ref"].rsplit("@", 1)[0] + "@sha256:" + "e" * 64
    refs = [image["ref"] for image in pushed] + [ghost, pushed[0]["ref"]]
    result = _run(image_store_info, capsys, {"store": store, "images": refs}, check_mode=True)
    assert not result["changed"] and result["store_exists"]
    assert result["complete"] == [image["ref"] for image in pushed]
    assert result["missing"] == [ghost]
    unique = {}
    for image in pushed:
        unique.update(image["blobs"])
    assert result["summary"]["unique_bytes"] == sum(unique.values())
    assert result["summary"]["logical_bytes"] == sum(sum(image["blobs"].values()) for image in pushed)
    assert result["summary"]["blobs"] == len(unique)

    def own(image):
        """The largest blob no other image holds."""
        others = set()
        for other in pushed:
            if other is not image:
                others.update(other["blobs"])
        return max((d for d in image["blobs"] if d not in others), key=image["blobs"].get)

    # a layer gone: incomplete, the blob named
    gone = own(pushed[1])
    os.unlink(store_mod.blob_path(store, gone))
    # a layer with one byte changed (same size): complete by sizes, corrupt by checksum
    changed = own(pushed[3])
    path = store_mod.blob_path(store, changed)
    with open(path, "r+b") as handle:
        first = handle.read(1)
        handle.seek(0)
        handle.write(bytes([first[0] ^ 0xFF]))
    result = _run(image_store_info, capsys, {"store": store, "images": refs})
    by_ref = {image["ref"]: image for image in result["images"]}
    assert by_ref[pushed[1]["ref"]]["status"] == "incomplete" and gone in by_ref[pushed[1]["ref"]]["problem"]
    assert by_ref[pushed[3]["ref"]]["status"] == "complete"
    result = _run(image_store_info, capsys, {"store": store, "images": refs, "checksum": True})
    by_ref = {image["ref"]: image for image in result["images"]}
    assert by_ref[pushed[3]["ref"]]["status"] == "corrupt" and changed in by_ref[pushed[3]["ref"]]["problem"]
    assert sorted(result["missing"]) == sorted([ghost, pushed[1]["ref"], pushed[3]["ref"]])

    # no list: every image the index records
    result = _run(image_store_info, capsys, {"store": store})
    assert sorted(image["ref"] for image in result["images"]) == sorted(image["ref"] for image in pushed)


def test_a_store_that_does_not_exist_holds_nothing_and_a_broken_index_is_named(tmp_path, capsys):
    result = _run(image_store_info, capsys, {"store": str(tmp_path / "none"), "images": ["quay.io/a/b:1"]})
    assert not result["store_exists"] and result["missing"] == ["quay.io/a/b:1"] and result["summary"]["complete"] == 0
    store = tmp_path / "broken"
    store.mkdir()
    (store / "store.json").write_text("{not json")
    result = _run(image_store_info, capsys, {"store": str(store)})
    assert result["failed"] and str(store / "store.json") in result["msg"]
    afile = tmp_path / "file"
    afile.write_text("")
    result = _run(image_store_info, capsys, {"store": str(afile)})
    assert result["failed"] and "is not a directory" in result["msg"]
