# Copyright: airgap.microshift contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""Image stores written directly as docs/store-format.md describes (no registry): single-arch OCI
images of random layers, for the transfer-set tests."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import random
import tarfile

from ansible_collections.airgap.microshift.plugins.module_utils import _signing, _store

# Every transfer set of the tests is signed, as the module signs by default, and checked against this key.
KEY = _signing.generate_private_key()
TRUSTED = [KEY.public_key()]

MiB = 1024 * 1024
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"


def _put_blob(store, index, data):
    hexdigest = hashlib.sha256(data).hexdigest()
    path = os.path.join(store, "blobs", "sha256", hexdigest)
    if not os.path.exists(path):
        with open(path, "wb") as handle:
            handle.write(data)
    index["blobs"]["sha256:" + hexdigest] = len(data)
    return "sha256:" + hexdigest


def add_image(store, index, ref, layer_sizes, seed):
    """One single-arch OCI image: random layers, a config, a manifest and its layout; returns its digest."""
    rng = random.Random(seed)
    os.makedirs(os.path.join(store, "blobs", "sha256"), exist_ok=True)
    layers = []
    for size in layer_sizes:
        data = rng.getrandbits(8 * size).to_bytes(size, "little") if size else b""
        layers.append({"mediaType": OCI_LAYER, "digest": _put_blob(store, index, data), "size": size})
    config = json.dumps({"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": []},
                         "seed": seed}).encode()
    config_desc = {"mediaType": OCI_CONFIG, "digest": _put_blob(store, index, config), "size": len(config)}
    manifest = json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": config_desc,
                           "layers": layers}).encode()
    digest = _put_blob(store, index, manifest)
    registry, rest = ref.split("/", 1)
    if "@" in rest:
        repository, ref_digest = rest.split("@", 1)
        name = "sha256-" + ref_digest.split(":", 1)[1]
    else:
        repository, tag = rest.rsplit(":", 1)
        name = "tag-" + tag
    layout = "images/%s/%s/%s" % (registry.replace(":", "_"), repository, name)
    os.makedirs(os.path.join(store, layout), exist_ok=True)
    with open(os.path.join(store, layout, "oci-layout"), "w") as handle:
        json.dump({"imageLayoutVersion": "1.0.0"}, handle)
    with open(os.path.join(store, layout, "index.json"), "w") as handle:
        json.dump({"schemaVersion": 2, "mediaType": OCI_INDEX,
                   "manifests": [{"mediaType": OCI_MANIFEST, "digest": digest, "size": len(manifest)}]}, handle)
    blobs = [dict(config_desc, media_type=OCI_CONFIG)] + [dict(layer, media_type=OCI_LAYER) for layer in layers]
    for blob in blobs:
        blob.pop("mediaType")
    index["images"][ref] = {
        "digest": digest,
        "media_type": OCI_MANIFEST,
        "manifest_size": len(manifest),
        "layout": layout,
        "manifests": [{"digest": digest, "platform": "linux/amd64", "size": len(manifest), "media_type": OCI_MANIFEST,
                       "blobs": blobs}],
        "size": len(manifest) + sum(b["size"] for b in blobs),
        "fetched": "2026-01-01T00:00:00Z",
    }
    return digest


def write_index(store, index):
    with open(os.path.join(store, "store.json"), "w") as handle:
        json.dump(index, handle, indent=2, sort_keys=True)


BASE_IMAGES = [
    ("quay.io/openshift-release-dev/ocp-v4.0-art-dev:router", [300 * 1024, 2 * MiB + 512 * 1024], 1),
    ("quay.io/openshift-release-dev/ocp-v4.0-art-dev:dns", [700 * 1024, 40 * 1024], 2),
    ("registry.redhat.io/lvms4/topolvm-rhel9:v4.18", [500 * 1024], 3),
    ("registry.example.com:5000/team/app:v1", [200 * 1024, 1024, 0], 4),
]


def build_store(path, images=None):
    os.makedirs(path)
    index = {"format": 1, "images": {}, "blobs": {}}
    for ref, sizes, seed in images or BASE_IMAGES:
        add_image(path, index, ref, sizes, seed)
    write_index(path, index)
    return index


def update_store(path, index):
    """A release update: two new images (new tags, new blobs); the old images and blobs stay.

    A store never moves a tag it holds (the air-gapped side refuses to replace an image by another digest).
    """
    before = set(index["blobs"])
    add_image(path, index, "quay.io/openshift-release-dev/ocp-v4.0-art-dev:router-2", [300 * 1024, 1200 * 1024], 11)
    add_image(path, index, "registry.redhat.io/lvms4/topolvm-rhel9:v4.19", [600 * 1024, 10 * 1024], 13)
    write_index(path, index)
    return dict((d, s) for d, s in index["blobs"].items() if d not in before)


def store_files(store, parse_index=True):
    """Every file of a store (relative path -> bytes), store.json parsed unless ``parse_index`` is false."""
    files = {}
    for root, _dirs, names in os.walk(store):
        for name in names:
            if name == ".store.lock":  # the store's writer lock, not content
                continue
            path = os.path.join(root, name)
            rel = os.path.relpath(path, store)
            with open(path, "rb") as handle:
                data = handle.read()
            files[rel] = json.loads(data) if rel == "store.json" and parse_index else data
    return files


def bundle_files(dest):
    return sorted(os.path.relpath(os.path.join(root, name), dest)
                  for root, _dirs, names in os.walk(dest) for name in names)


# Images skopeo can load into a container storage (image_load) ---------------------------------


def _put_tar_blob(store, data):
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    _store.put_blob(store, digest, data)
    return digest, len(data)


def _tar_layer(name, content):
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        info = tarfile.TarInfo(name)
        info.size = len(content)
        tar.addfile(info, io.BytesIO(content))
    data = raw.getvalue()
    return gzip.compress(data, mtime=0), "sha256:" + hashlib.sha256(data).hexdigest(), len(data)


def add_tar_image(store, ref, layers, arches=("amd64", "arm64")):
    """An OCI index over one manifest per architecture of real tar layers (``layers``: ``(file name, content)``),
    so that skopeo can load it into a container storage; written into ``store`` by the store's own writer and
    recorded in store.json. A ref without tag or digest gets the index digest. Returns the ref."""
    os.makedirs(store, exist_ok=True)
    descriptors, entry_manifests = [], []
    for arch in arches:
        blobs, diff_ids = [], []
        for name, content in layers:
            gz, diff_id, _size = _tar_layer(name, content + arch.encode())
            digest, size = _put_tar_blob(store, gz)
            blobs.append({"digest": digest, "size": size, "media_type": OCI_LAYER})
            diff_ids.append(diff_id)
        config = json.dumps({"architecture": arch, "os": "linux", "rootfs": {"type": "layers", "diff_ids": diff_ids},
                             "config": {}}).encode()
        cdigest, csize = _put_tar_blob(store, config)
        manifest = json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                               "config": {"mediaType": OCI_CONFIG, "digest": cdigest, "size": csize},
                               "layers": [{"mediaType": OCI_LAYER, "digest": b["digest"], "size": b["size"]} for b in blobs]}).encode()
        mdigest, msize = _put_tar_blob(store, manifest)
        descriptors.append({"mediaType": OCI_MANIFEST, "digest": mdigest, "size": msize,
                            "platform": {"architecture": arch, "os": "linux"}})
        entry_manifests.append({"digest": mdigest, "size": msize, "media_type": OCI_MANIFEST, "platform": "linux/" + arch,
                                "blobs": [{"digest": cdigest, "size": csize, "media_type": "c"}] + blobs})
    index = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": descriptors}).encode()
    idigest, isize = _put_tar_blob(store, index)
    if "@" not in ref.rsplit("/", 1)[-1] and ":" not in ref.rsplit("/", 1)[-1]:
        ref = "%s@%s" % (ref, idigest)
    layout = _store.layout_path(ref)
    _store.write_layout(store, layout, idigest, OCI_INDEX, isize)
    entry = {"digest": idigest, "media_type": OCI_INDEX, "manifest_size": isize, "layout": layout,
             "manifests": entry_manifests, "size": 0, "fetched": _store.utc_now()}
    _store.record_image(store, ref, entry)
    return ref


# Two layers every image of the load tests shares.
TAR_BASE = [("base.bin", b"b" * 4000), ("middle.bin", b"m" * 2000)]
