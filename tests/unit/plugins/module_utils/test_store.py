# Copyright: airgap.microshift contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""The image store: layout names, the index (atomic, validated) and completeness checks."""

from __future__ import annotations

import hashlib
import json
import os
import threading

import pytest

from ansible_collections.airgap.microshift.plugins.module_utils import _store as store_mod

HEX = "a" * 64


@pytest.mark.parametrize("ref, path", [
    ("quay.io/openshift-release-dev/ocp-v4.0-art-dev@sha256:" + HEX,
     "images/quay.io/openshift-release-dev/ocp-v4.0-art-dev/sha256-" + HEX),
    ("registry.example.com:5000/a/b:4.18", "images/registry.example.com_5000/a/b/tag-4.18"),
    ("registry.example.com:5000/a/b:4.18@sha256:" + HEX, "images/registry.example.com_5000/a/b/sha256-" + HEX),
])
def test_layout_path(ref, path):
    assert store_mod.layout_path(ref) == path
    assert ":" not in path and "@" not in path


def test_layout_needs_tag_or_digest():
    with pytest.raises(store_mod.StoreError):
        store_mod.layout_name("quay.io/a/b")


def _blob(store, data):
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    store_mod.put_blob(store, digest, data)
    return digest


REF = "quay.io/r/a:x"
LAYOUT = "images/quay.io/r/a/tag-x"


def _entry(store, layers):
    digests = [_blob(str(store), data) for data in layers]
    config = _blob(str(store), b'{"architecture":"amd64","os":"linux"}')
    manifest = json.dumps({"layers": digests}).encode()
    mdigest = _blob(str(store), manifest)
    store_mod.write_layout(str(store), LAYOUT, mdigest, store_mod.MEDIA_OCI_MANIFEST, len(manifest))
    return {"digest": mdigest, "media_type": store_mod.MEDIA_OCI_MANIFEST, "manifest_size": len(manifest), "layout": LAYOUT,
            "manifests": [{"digest": mdigest, "size": len(manifest), "platform": "linux/amd64",
                           "blobs": [{"digest": config, "size": 37, "media_type": "c"}] +
                                    [{"digest": d, "size": len(data), "media_type": "l"} for d, data in zip(digests, layers)]}],
            "size": 0, "fetched": store_mod.utc_now()}


def test_index_round_trip_and_completeness(tmp_path):
    store = str(tmp_path)
    assert store_mod.read_index(store) == store_mod.empty_index()
    entry = _entry(tmp_path, [b"layer-one", b"layer-two"])
    index = store_mod.record_image(store, REF, entry)
    assert store_mod.read_index(store) == index
    assert sum(index["blobs"].values()) == sum(os.path.getsize(store_mod.blob_path(store, d)) for d in index["blobs"])
    assert store_mod.image_complete(store, index, REF)
    assert not store_mod.image_complete(store, index, "quay.io/r/a:other")
    # a blob with the wrong size makes the image incomplete
    layer = entry["manifests"][0]["blobs"][1]["digest"]
    with open(store_mod.blob_path(store, layer), "ab") as handle:
        handle.write(b"!")
    assert not store_mod.image_complete(store, index, REF)
    assert "has 10 bytes instead of 9" in store_mod.verify_blob(store, layer, 9)
    os.unlink(store_mod.blob_path(store, layer))
    assert not store_mod.image_complete(store, index, REF)
    assert store_mod.verify_blob(store, layer, 9) == "blob %s is missing" % layer


def test_verify_blob_checks_content(tmp_path):
    store = str(tmp_path)
    digest = _blob(store, b"content")
    assert store_mod.verify_blob(store, digest, 7, check_digest=True) is None
    with open(store_mod.blob_path(store, digest), "wb") as handle:
        handle.write(b"CONTENT")
    assert "has the content of sha256:" in store_mod.verify_blob(store, digest, 7, check_digest=True)


def test_put_blob_refuses_wrong_content(tmp_path):
    with pytest.raises(store_mod.StoreError):
        store_mod.put_blob(str(tmp_path), "sha256:" + HEX, b"not that")
    assert not os.path.exists(os.path.join(str(tmp_path), "blobs", "sha256", HEX))


@pytest.mark.parametrize("content, words", [
    (b"{not json", "is not valid JSON"),
    (b"[]", "not a JSON object"),
    (b'{"format": 3, "images": {}, "blobs": {}}', "has format 3"),
    (b'{"format": 1, "images": [], "blobs": {}}', "must be objects"),
    (b'{"format": 1, "images": {}, "blobs": {"sha256:../../x": 1}}', "not a sha256 digest"),
    (b'{"format": 1, "images": {}, "blobs": {}, "images": {}}', "appears twice"),
    (b'[' * 5000 + b']' * 5000, "nests deeper"),
    (b'{"format": 1, "images": {"quay.io/a/b:c": {"digest": "sha256:' + HEX.encode() + b'", "media_type": "x", "manifest_size": 1,'
     b' "layout": "../../etc", "manifests": []}}, "blobs": {}}', "is not the image's own"),
    (b'{"format": 1, "images": {"quay.io/a/b@sha256:' + b"b" * 64 + b'": {"digest": "sha256:' + HEX.encode() + b'"}}, "blobs": {}}',
     "lacks the key"),
])
def test_malformed_index_is_named(tmp_path, content, words):
    (tmp_path / "store.json").write_bytes(content)
    with pytest.raises(store_mod.StoreError) as err:
        store_mod.read_index(str(tmp_path))
    assert str(tmp_path / "store.json") in str(err.value) and words in str(err.value)


def test_write_index_is_atomic_and_leaves_no_temporary(tmp_path):
    store = str(tmp_path)
    store_mod.write_index(store, store_mod.empty_index())
    before = os.stat(os.path.join(store, "store.json")).st_ino
    store_mod.write_index(store, store_mod.empty_index())
    assert os.stat(os.path.join(store, "store.json")).st_ino != before  # replaced by rename, not rewritten in place
    assert sorted(os.listdir(store)) == ["store.json"]
    with pytest.raises(store_mod.StoreError):
        store_mod.write_index(store, {"format": 1})
    assert json.loads((tmp_path / "store.json").read_text()) == store_mod.empty_index()


def test_concurrent_records_keep_every_image(tmp_path):
    store = str(tmp_path)
    store_mod.write_index(store, store_mod.empty_index())

    def record(i):
        ref = "quay.io/r/a:%d" % i
        entry = {"digest": "sha256:" + HEX, "media_type": store_mod.MEDIA_OCI_INDEX, "manifest_size": 1, "layout": store_mod.layout_path(ref),
                 "manifests": [], "size": 1}
        store_mod.record_image(store, ref, entry)

    threads = [threading.Thread(target=record, args=(i,)) for i in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(store_mod.read_index(store)["images"]) == 16
