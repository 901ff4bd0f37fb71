# Copyright: airgap.microshift contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""Synthetic OCI images: built in Python, pushed with skopeo to a :class:`~.registry.LocalRegistry`,
then copied into an image store (as the download does) or a ``dir:`` tree (as the manual procedure
does)."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import random
import re
import tarfile

from ansible_collections.airgap.microshift.tests.unit.plugins.helpers.processes import run

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"


class SyntheticImages:
    """Builds OCI images with random layers and pushes them to ``registry``.

    Layers are keyed by name: two images (or two architectures) naming the same key share that
    layer, byte for byte. ``seed`` makes the bytes of one test its own; ``prefix`` is the
    repository path :meth:`add` puts images under. ``blob_sizes`` holds every blob built.
    """

    def __init__(self, registry, work, seed, prefix=None):
        self.registry = registry
        self.work = work
        self.seed = seed
        self.prefix = prefix or "images-%s" % re.sub(r"[^a-z0-9-]+", "-", str(seed).lower())
        self._layers = {}
        self.pushed = {}       # name -> info (push)
        self.refs = {}         # name -> the reference an image was added under (add)
        self.blob_sizes = {}
        self.store_index = None

    def layer(self, key, size):
        """``(gzip bytes, diff id)`` of the layer named ``key``: a tar holding ``size`` random bytes."""
        if key not in self._layers:
            rng = random.Random("%s/%s" % (self.seed, key))
            payload = rng.getrandbits(8 * size).to_bytes(size, "little") if size else b""
            tarred = io.BytesIO()
            with tarfile.open(fileobj=tarred, mode="w") as tar:
                info = tarfile.TarInfo("data/%s" % key)
                info.size = len(payload)
                tar.addfile(info, io.BytesIO(payload))
            raw = tarred.getvalue()
            self._layers[key] = (gzip.compress(raw, compresslevel=1, mtime=0), "sha256:" + hashlib.sha256(raw).hexdigest())
        return self._layers[key]

    def _put(self, layout, data):
        digest = hashlib.sha256(data).hexdigest()
        path = os.path.join(layout, "blobs", "sha256", digest)
        if not os.path.exists(path):
            with open(path, "wb") as handle:
                handle.write(data)
        self.blob_sizes["sha256:" + digest] = len(data)
        return "sha256:" + digest, len(data)

    def build(self, name, arches, layers):
        """OCI layout of one image; ``layers`` is a list of ``(key, size)``; keys may use ``{arch}``."""
        layout = os.path.join(self.work, "layouts", name)
        os.makedirs(os.path.join(layout, "blobs", "sha256"))
        descriptors = []
        for arch in arches:
            layer_descs, diff_ids = [], []
            for key, size in layers:
                data, diff_id = self.layer(key.format(arch=arch), size)
                digest, length = self._put(layout, data)
                layer_descs.append({"mediaType": OCI_LAYER, "digest": digest, "size": length})
                diff_ids.append(diff_id)
            config = json.dumps({"architecture": arch, "os": "linux", "config": {"Labels": {"name": name, "seed": str(self.seed)}},
                                 "rootfs": {"type": "layers", "diff_ids": diff_ids}}, sort_keys=True).encode()
            cdigest, clen = self._put(layout, config)
            manifest = json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                                   "config": {"mediaType": OCI_CONFIG, "digest": cdigest, "size": clen},
                                   "layers": layer_descs}).encode()
            mdigest, mlen = self._put(layout, manifest)
            descriptors.append({"mediaType": OCI_MANIFEST, "digest": mdigest, "size": mlen,
                                "platform": {"architecture": arch, "os": "linux"}})
        if len(arches) == 1:
            top = dict(descriptors[0])
            del top["platform"]
        else:
            index = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": descriptors}).encode()
            idigest, ilen = self._put(layout, index)
            top = {"mediaType": OCI_INDEX, "digest": idigest, "size": ilen}
        with open(os.path.join(layout, "oci-layout"), "w") as handle:
            json.dump({"imageLayoutVersion": "1.0.0"}, handle)
        with open(os.path.join(layout, "index.json"), "w") as handle:
            json.dump({"schemaVersion": 2, "manifests": [top]}, handle)
        return layout

    @staticmethod
    def layout_blobs(layout):
        """``(top digest, {digest: size})`` of a layout :meth:`build` wrote: manifests, configs and layers."""
        with open(os.path.join(layout, "index.json")) as handle:
            top = json.load(handle)["manifests"][0]

        def read(digest):
            with open(os.path.join(layout, "blobs", "sha256", digest[7:]), "rb") as handle:
                return json.loads(handle.read().decode())

        blobs = {top["digest"]: top["size"]}
        document = read(top["digest"])
        children = document.get("manifests", [])
        blobs.update((child["digest"], child["size"]) for child in children)
        manifests = [read(child["digest"]) for child in children] if children else [document]
        for manifest in manifests:
            for blob in [manifest["config"]] + manifest["layers"]:
                blobs[blob["digest"]] = blob["size"]
        return top["digest"], blobs

    def push(self, name, repository, arches, layers, tag="v1", docker_format=False):
        """Build and push one image; returns what was pushed: ``ref`` (by digest), ``tag_ref``,
        ``digest``, ``media_type``, ``repository`` and ``blobs`` (``{digest: size}``)."""
        layout = self.build(name, arches, layers)
        dest = "docker://%s/%s:%s" % (self.registry.host, repository, tag)
        argv = [self.registry.skopeo, "copy", "--all", "--quiet"] + self.registry.skopeo_args("dest-")
        argv += ["--format", "v2s2"] if docker_format else ["--preserve-digests"]
        run(argv + ["oci:" + layout, dest])
        if docker_format:
            # skopeo converted the manifests: what the registry holds is the truth
            body, media_type = self.registry.manifest(repository, tag)
            digest = "sha256:" + hashlib.sha256(body).hexdigest()
            blobs = self.registry.image_blobs(repository, digest)
        else:
            digest, blobs = self.layout_blobs(layout)
            media_type = OCI_INDEX if len(arches) > 1 else OCI_MANIFEST
        info = {"name": name, "repository": repository, "digest": digest, "media_type": media_type,
                "ref": "%s/%s@%s" % (self.registry.host, repository, digest),
                "tag_ref": "%s/%s:%s" % (self.registry.host, repository, tag), "blobs": blobs}
        self.pushed[name] = info
        return info

    def push_set(self, namespace, scale=1):
        """A small release-like set under ``namespace``: a shared base layer per arch, a shared
        middle layer, a docker-format list, a single-arch image; sizes multiplied by ``scale``."""
        kib = 1024 * scale
        base = [("base-{arch}", 96 * kib), ("runtime-{arch}", 48 * kib)]
        specs = [
            ("api", ["amd64", "arm64"], base + [("api-{arch}", 32 * kib)], False),
            ("dns", ["amd64", "arm64"], base + [("dns-{arch}", 24 * kib)], False),
            ("router", ["amd64", "arm64"], base + [("router-{arch}", 40 * kib)], True),
            ("tool", ["amd64"], [("base-{arch}", 96 * kib), ("tool", 16 * kib)], False),
        ]
        return [self.push(name, "%s/%s" % (namespace, name), arches, layers, docker_format=docker)
                for name, arches, layers, docker in specs]

    # images under a prefix, and the store or dir: tree they make --------------------------------

    def add(self, name, arches, layers, by="digest", tag="v1"):
        """Push image ``name`` to ``<registry>/<prefix>/<name>`` (with a layer of its own per
        architecture) and record the reference it is known by (``by`` digest, tag or both)."""
        repository = "%s/%s" % (self.prefix, name)
        info = self.push(name, repository, arches, layers + [("%s-{arch}" % name, 20000)], tag=tag)
        ref = {"digest": info["ref"], "tag": info["tag_ref"], "both": "%s:%s@%s" % (
            info["tag_ref"].rsplit(":", 1)[0], tag, info["digest"])}[by]
        self.refs[name] = ref
        return ref, info["digest"]

    def build_store(self, store):
        """Copy every image :meth:`add` recorded into an image store laid out as docs/store-format.md describes."""
        blobs = os.path.join(store, "blobs")
        os.makedirs(blobs)
        images = {}
        for name in sorted(self.refs):
            ref = self.refs[name]
            registry, rest = ref.split("/", 1)
            repository = re.split(r"[:@]", rest, maxsplit=1)[0]
            leaf = "sha256-" + ref.rsplit(":", 1)[1] if "@" in ref else "tag-" + ref.rsplit(":", 1)[1]
            layout = os.path.join("images", registry.replace(":", "_"), repository, leaf)
            os.makedirs(os.path.join(store, layout))
            # skopeo cannot fetch a reference with both a tag and a digest: the digest is what counts.
            fetch = "%s/%s@%s" % (registry, repository, ref.rsplit("@", 1)[1]) if "@" in ref else ref
            run([self.registry.skopeo, "copy", "--quiet", "--all", "--preserve-digests"] + self.registry.skopeo_args("src-")
                + ["--dest-shared-blob-dir", blobs, "docker://%s" % fetch, "oci:%s" % os.path.join(store, layout)])
            with open(os.path.join(store, layout, "index.json")) as handle:
                top = json.load(handle)["manifests"][0]
            images[ref] = self._store_entry(store, layout, top)
        blob_sizes = {}
        for name in os.listdir(os.path.join(blobs, "sha256")):
            blob_sizes["sha256:" + name] = os.path.getsize(os.path.join(blobs, "sha256", name))
        self.store_index = {"format": 1, "images": images, "blobs": blob_sizes}
        with open(os.path.join(store, "store.json"), "w") as handle:
            json.dump(self.store_index, handle, indent=2, sort_keys=True)
        return store

    @staticmethod
    def _store_entry(store, layout, top):
        def read(digest):
            with open(os.path.join(store, "blobs", "sha256", digest.split(":")[1]), "rb") as handle:
                return json.loads(handle.read().decode())

        document = read(top["digest"])
        children = document.get("manifests") or [dict(top, platform={"os": "linux", "architecture": "amd64"})]
        manifests = []
        size = top["size"]
        for child in children:
            manifest = read(child["digest"]) if child is not top else document
            blobs = [{"digest": d["digest"], "size": d["size"], "media_type": d["mediaType"]}
                     for d in [manifest["config"]] + manifest["layers"]]
            platform = child.get("platform") or {}
            manifests.append({"digest": child["digest"], "size": child["size"], "blobs": blobs,
                              "platform": "%s/%s" % (platform.get("os"), platform.get("architecture"))})
            size += sum(b["size"] for b in blobs) + (child["size"] if child["digest"] != top["digest"] else 0)
        return {"digest": top["digest"], "media_type": top["mediaType"], "manifest_size": top["size"], "layout": layout,
                "manifests": manifests, "size": size, "fetched": "2026-01-01T00:00:00Z"}

    def build_dir_tree(self, root):
        """What the manual procedure's download loop makes: ``<root>/<ref without registry>`` via ``dir:``."""
        for name in sorted(self.refs):
            ref = self.refs[name]
            path = os.path.join(root, ref.split("/", 1)[1])
            os.makedirs(path)
            run([self.registry.skopeo, "copy", "--all", "--quiet", "--preserve-digests"] + self.registry.skopeo_args("src-")
                + ["docker://%s" % ref, "dir://%s" % path])
        return root
