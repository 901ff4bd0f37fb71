# Copyright: airgap.microshift contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Synthetic MicroShift releases for the test bed.

A synthetic release has the shape of a real one (the release-info files of a MicroShift version,
``tests/unit/fixtures/release/<version>/``, which the unit tests read too): the same component
files, keys, registries, repository paths and tag refs. Every image is generated: a multi-arch OCI index (amd64 + arm64) over one OCI manifest
and config per architecture, with layers that are valid ``tar+gzip`` blobs (gzip "stored" blocks
around a tar holding one file of seeded random bytes, so they stay incompressible, and podman can
still unpack them). Layers are shared as in RHEL-based product images: a base family shared by
most images, a middle layer per component group, and an image-specific top layer.

The images are written straight into the filesystem storage layout of the distribution registry
(one storage root per registry name), so that a ``docker-registry`` pointed at it serves them.
Everything is deterministic for (version, size, seed, ref_mode) and cached on disk.

The release is signed as Red Hat signs its own (``signatures.py``): a test release key (RSA 4096,
kept in the cache entry's ``keys/``) signs the index and each per-architecture manifest of every
image of ``quay.io/openshift-release-dev`` and ``registry.redhat.io``, for the repository by
digest and for each of its tags; a few repositories are left unsigned, as in real releases
(``UNSIGNED_REPOSITORIES``), and the other registries are not signed at all.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import random
import re
import shutil
import struct
import subprocess
import tarfile
import tempfile
import zlib

from . import signatures as sigs

GENERATOR_VERSION = 1
# Part of the cache key: a release cached before its signatures existed is not reused.
SIGNING_VERSION = 1
SIGNED_SCOPES = ("quay.io/openshift-release-dev/", "registry.redhat.io/")
UNSIGNED_REPOSITORIES = ("registry.redhat.io/openshift-service-mesh-tech-preview/",)
DEFAULT_VERSION = "5.0"
DEFAULT_SEED = 1
DEFAULT_CACHE_DIR = os.environ.get("AMSB_CACHE_DIR", "/var/tmp/airgap-microshift-sandbox-cache")
# The release-info files of each version: one copy in the checkout, shared with the unit tests.
SHAPES_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "unit", "fixtures", "release")
REGISTRIES = ("quay.io", "registry.redhat.io", "registry.access.redhat.com", "ghcr.io")
ARCHES = (("amd64", "x86_64", None), ("arm64", "aarch64", "v8"))

MT_INDEX = "application/vnd.oci.image.index.v1+json"
MT_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MT_CONFIG = "application/vnd.oci.image.config.v1+json"
MT_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"

KIB = 1024
MIB = 1024 * 1024

# Layer sizes (bytes of random payload) per size profile. With the 5.0 shape (57 images, two
# architectures) these give: tiny ~3 MB, default ~300 MB, bench ~1.5 GB of unique blobs.
SIZES = {
    "tiny": {"base": [160 * KIB, 64 * KIB, 16 * KIB], "own_base": 24 * KIB, "mid": 24 * KIB, "top": 8 * KIB},
    "default": {"base": [32 * MIB, 12 * MIB, 4 * MIB], "own_base": 2 * MIB, "mid": 3 * MIB, "top": 1 * MIB},
    "bench": {"base": [160 * MIB, 60 * MIB, 20 * MIB], "own_base": 10 * MIB, "mid": 15 * MIB, "top": 5 * MIB},
}
BASE_SHARE = 0.8
CHUNK = 1 * MIB


class ReleaseError(Exception):
    """A synthetic release cannot be generated."""


def available_versions():
    """Versions whose release shape is known."""
    return sorted(d for d in os.listdir(SHAPES_DIR) if os.path.isdir(os.path.join(SHAPES_DIR, d)))


def split_ref(ref):
    """Split ``registry/repo@sha256:x`` or ``registry/repo:tag`` into (registry, repo, tag, digest)."""
    name, digest, tag = ref, None, None
    if "@" in ref:
        name, digest = ref.split("@", 1)
    else:
        slash = ref.rfind("/")
        colon = ref.rfind(":")
        if colon > slash:
            name, tag = ref[:colon], ref[colon + 1:]
    registry, repo = name.split("/", 1)
    return registry, repo, tag, digest


def load_shape(version):
    """Read the release files of ``version``: {filename: {"release": ..., "images": ...}}."""
    vdir = os.path.join(SHAPES_DIR, version)
    if not os.path.isdir(vdir):
        raise ReleaseError("unknown release version %r (known: %s)" % (version, ", ".join(available_versions())))
    files = {}
    for fname in sorted(os.listdir(vdir)):
        if fname.startswith("release-") and fname.endswith(".json"):
            with open(os.path.join(vdir, fname), encoding="utf-8") as f:
                files[fname] = json.load(f)
    return files


def _file_component(fname):
    """``release-olm-x86_64.json`` -> ("olm", "x86_64"); core is ``""``."""
    m = re.match(r"^release-(?:(.+)-)?(x86_64|aarch64)\.json$", fname)
    if not m:
        raise ReleaseError("unexpected release file name %s" % fname)
    return m.group(1) or "", m.group(2)


def plan_images(shape):
    """Group the refs of a shape into logical images.

    Refs that the same (component, key) names on different architectures are one multi-arch
    image, and so are equal refs anywhere. Returns a list of images, each a dict with ``id``,
    ``component``, ``keys``, ``refs`` (original refs) and ``locations`` (registry, repo).
    """
    parent = {}

    def find(x):
        while parent.setdefault(x, x) != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    def union(a, b):
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)

    by_comp_key = {}
    order = []
    for fname, data in shape.items():
        comp, _arch = _file_component(fname)
        for key, ref in data["images"].items():
            find(ref)
            if ref not in order:
                order.append(ref)
            by_comp_key.setdefault((comp, key), []).append(ref)
            first = by_comp_key[(comp, key)][0]
            union(first, ref)
    groups = {}
    for ref in order:
        groups.setdefault(find(ref), []).append(ref)
    images = []
    for root in sorted(groups, key=order.index):
        refs = groups[root]
        comps, keys = [], []
        for (comp, key), krefs in by_comp_key.items():
            if any(r in refs for r in krefs):
                comps.append(comp)
                keys.append(key)
        locations = sorted({split_ref(r)[:2] for r in refs})
        images.append({
            "id": "img%02d-%s" % (len(images) + 1, re.sub(r"[^a-z0-9]+", "-", keys[0].lower()).strip("-")[:40]),
            "component": comps[0] or "core",
            "keys": sorted(set(keys)),
            "refs": refs,
            "locations": [list(x) for x in locations],
        })
    return images


class _BlobWriter:
    """Content-addressed blob store under ``root/<hex>`` (staging for the registry storages)."""

    def __init__(self, root):
        self.root = root
        os.makedirs(root, exist_ok=True)
        self.sizes = {}

    def put_bytes(self, data):
        hexd = hashlib.sha256(data).hexdigest()
        path = os.path.join(self.root, hexd)
        if not os.path.exists(path):
            with open(path, "wb") as f:
                f.write(data)
        self.sizes[hexd] = len(data)
        return "sha256:" + hexd, len(data)

    def put_layer(self, layer_id, payload_size, seed):
        """Write a tar+gzip layer of ``payload_size`` random bytes; return (digest, size, diff_id)."""
        rng = random.Random("%s:%s" % (seed, layer_id))
        fd, tmp = tempfile.mkstemp(dir=self.root, prefix=".layer-")
        comp_hash, tar_hash = hashlib.sha256(), hashlib.sha256()
        crc, tar_len, comp_len = 0, 0, 0
        with os.fdopen(fd, "wb") as out:
            def emit(raw):
                nonlocal comp_len
                out.write(raw)
                comp_hash.update(raw)
                comp_len += len(raw)

            def tar_data(data):
                # Deflate "stored" blocks: the data stays as it is (random bytes do not compress).
                nonlocal crc, tar_len
                tar_hash.update(data)
                crc = zlib.crc32(data, crc)
                tar_len += len(data)
                parts = []
                for i in range(0, len(data), 65535):
                    block = data[i:i + 65535]
                    parts.append(b"\x00" + struct.pack("<HH", len(block), len(block) ^ 0xFFFF))
                    parts.append(block)
                emit(b"".join(parts))

            emit(b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff")  # gzip header, mtime 0, OS unknown
            dinfo = tarfile.TarInfo("amsb")
            dinfo.type, dinfo.mode, dinfo.mtime = tarfile.DIRTYPE, 0o755, 0
            tar_data(dinfo.tobuf(tarfile.USTAR_FORMAT))
            finfo = tarfile.TarInfo("amsb/%s.bin" % layer_id)
            finfo.size, finfo.mode, finfo.mtime = payload_size, 0o644, 0
            tar_data(finfo.tobuf(tarfile.USTAR_FORMAT))
            left = payload_size
            while left:
                n = min(CHUNK, left)
                tar_data(rng.randbytes(n))
                left -= n
            pad = (-payload_size) % 512
            tar_data(b"\x00" * pad + b"\x00" * 1024)
            emit(b"\x01\x00\x00\xff\xff")  # final empty stored block
            emit(struct.pack("<II", crc & 0xFFFFFFFF, tar_len & 0xFFFFFFFF))
        hexd = comp_hash.hexdigest()
        os.replace(tmp, os.path.join(self.root, hexd))
        self.sizes[hexd] = comp_len
        return "sha256:" + hexd, comp_len, "sha256:" + tar_hash.hexdigest()


def _canon(obj):
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def _link(path, digest):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="ascii") as f:
        f.write(digest)


class _Storage:
    """Writes the distribution registry's filesystem storage layout for one registry."""

    def __init__(self, root, blobs):
        self.root = root
        self.v2 = os.path.join(root, "docker", "registry", "v2")
        self.blobs = blobs

    def blob(self, digest):
        hexd = digest.split(":", 1)[1]
        dest = os.path.join(self.v2, "blobs", "sha256", hexd[:2], hexd, "data")
        if not os.path.exists(dest):
            os.makedirs(os.path.dirname(dest), exist_ok=True)
            os.link(os.path.join(self.blobs.root, hexd), dest)

    def layer_link(self, repo, digest):
        self.blob(digest)
        _link(os.path.join(self.v2, "repositories", repo, "_layers", "sha256", digest.split(":", 1)[1], "link"), digest)

    def manifest(self, repo, digest):
        self.blob(digest)
        _link(os.path.join(self.v2, "repositories", repo, "_manifests", "revisions", "sha256", digest.split(":", 1)[1], "link"), digest)

    def tag(self, repo, tag, digest):
        base = os.path.join(self.v2, "repositories", repo, "_manifests", "tags", tag)
        _link(os.path.join(base, "current", "link"), digest)
        _link(os.path.join(base, "index", "sha256", digest.split(":", 1)[1], "link"), digest)


def _rpm_version(base):
    m = re.match(r"^(\d+\.\d+\.\d+)", base)
    return m.group(1) if m else "0.0.0"


def build_rpm(release_dir, out_dir, version_base, seed, work_dir, rpm_release=0):
    """Build a noarch ``microshift-release-info`` RPM holding the release files; return its path."""
    top = os.path.join(work_dir, "rpmbuild")
    for sub in ("BUILD", "RPMS", "SOURCES", "SPECS", "SRPMS", "BUILDROOT"):
        os.makedirs(os.path.join(top, sub), exist_ok=True)
    spec = os.path.join(top, "SPECS", "microshift-release-info.spec")
    with open(spec, "w", encoding="utf-8") as f:
        f.write("""Name: microshift-release-info
Version: %(version)s
Release: %(release)d.amsb%(seed)s
Summary: Release information for a synthetic MicroShift test release
License: GPL-3.0-or-later
BuildArch: noarch

%%description
Container image references of a synthetic MicroShift release, generated by the airgap.microshift
test bed. Same layout as the real package.

%%prep

%%build

%%install
mkdir -p %%{buildroot}/usr/share/microshift/release
cp -p %(src)s/release-*.json %%{buildroot}/usr/share/microshift/release/

%%files
%%dir /usr/share/microshift
%%dir /usr/share/microshift/release
/usr/share/microshift/release/release-*.json
""" % {"version": _rpm_version(version_base), "release": rpm_release, "seed": seed, "src": release_dir})
    env = dict(os.environ, SOURCE_DATE_EPOCH="1767225600")
    proc = subprocess.run(
        ["rpmbuild", "-bb", "--quiet", "--define", "_topdir " + top, "--define", "_build_id_links none", spec],
        capture_output=True, text=True, env=env, check=False)
    if proc.returncode != 0:
        raise ReleaseError("rpmbuild failed: %s" % proc.stderr.strip())
    built = os.path.join(top, "RPMS", "noarch")
    rpms = [p for p in os.listdir(built) if p.endswith(".rpm")]
    os.makedirs(out_dir, exist_ok=True)
    dest = os.path.join(out_dir, rpms[0])
    shutil.move(os.path.join(built, rpms[0]), dest)
    return dest


def generate(out_dir, version=DEFAULT_VERSION, size="tiny", seed=DEFAULT_SEED, ref_mode="index", build_rpm_file=True, changed=0):
    """Generate a synthetic release into ``out_dir`` (must not exist); return its metadata dict.

    ``changed``: 0 for the release itself; N > 0 for a release update of it, in which exactly N
    images (named by digest only) have a new top layer and every other image is byte for byte the
    same. The storage then holds both releases, so the registries serve the old refs and the new.

    ``ref_mode``: ``index`` makes every digest ref in the release files point at the image's OCI
    index (both architectures' files name the same digest); ``arch`` makes ``release-<arch>.json``
    point at the per-architecture manifest, as real MicroShift releases do.
    """
    if size not in SIZES:
        raise ReleaseError("unknown size %r (known: %s)" % (size, ", ".join(SIZES)))
    if ref_mode not in ("index", "arch"):
        raise ReleaseError("ref_mode must be 'index' or 'arch'")
    changed = int(changed)
    if changed < 0:
        raise ReleaseError("changed must be 0 or more")
    prof = SIZES[size]
    shape = load_shape(version)
    images = plan_images(shape)
    os.makedirs(out_dir)
    blobs = _BlobWriter(os.path.join(out_dir, "blobs"))
    storages = {r: _Storage(os.path.join(out_dir, "storage", r), blobs) for r in REGISTRIES}
    for r in REGISTRIES:
        os.makedirs(storages[r].v2, exist_ok=True)
    pick = random.Random("%s:plan" % seed)
    groups = sorted({img["component"] for img in images})
    layer_cache = {}
    eligible = [img["id"] for img in images if all(loc[0] != "ghcr.io" for loc in img["locations"])]
    sharing = set(pick.sample(eligible, min(len(eligible), int(round(BASE_SHARE * len(images))))))

    def layer(layer_id, payload):
        if layer_id not in layer_cache:
            layer_cache[layer_id] = blobs.put_layer(layer_id, payload, seed)
        return layer_cache[layer_id]

    built = []  # (registry, repository, manifest digest, image id) of every manifest and index written

    def build(img, update=0):
        """Write one multi-arch image; ``update`` > 0 gives it a new top layer (a rebuilt image)."""
        manifests = []
        img["manifests"] = {}
        img_blobs = {}
        for goarch, uname, variant in ARCHES:
            layers = []
            if img["shares_base"]:
                for i, psize in enumerate(prof["base"]):
                    layers.append(layer("base%d-%s" % (i, goarch), psize))
            else:
                layers.append(layer("ownbase-%s-%s" % (img["id"], goarch), prof["own_base"]))
            layers.append(layer("mid-%s-%s" % (img["group"], goarch), prof["mid"]))
            top_id = "top-%s-%s" % (img["id"], goarch) + ("-u%d" % update if update else "")
            layers.append(layer(top_id, prof["top"]))
            labels = {"io.airgap-microshift.sandbox.image": img["id"], "io.airgap-microshift.sandbox.version": version,
                      "io.airgap-microshift.sandbox.keys": ",".join(img["keys"])}
            if update:
                labels["io.airgap-microshift.sandbox.update"] = str(update)
            config = {
                "architecture": goarch,
                "os": "linux",
                "created": "2026-01-01T00:00:00Z",
                "config": {
                    "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
                    "Cmd": ["/bin/sh"],
                    "Labels": labels,
                },
                "rootfs": {"type": "layers", "diff_ids": [diff for unused_digest, unused_size, diff in layers]},
            }
            if variant:
                config["variant"] = variant
            cdigest, csize = blobs.put_bytes(_canon(config))
            manifest = {
                "schemaVersion": 2,
                "mediaType": MT_MANIFEST,
                "config": {"mediaType": MT_CONFIG, "digest": cdigest, "size": csize},
                "layers": [{"mediaType": MT_LAYER, "digest": d, "size": s} for d, s, unused in layers],
            }
            mdigest, msize = blobs.put_bytes(_canon(manifest))
            platform = {"architecture": goarch, "os": "linux"}
            if variant:
                platform["variant"] = variant
            manifests.append({"mediaType": MT_MANIFEST, "digest": mdigest, "size": msize, "platform": platform})
            img["manifests"][uname] = mdigest
            img_blobs[cdigest] = csize
            for d, s, unused in layers:
                img_blobs[d] = s
            for reg, repo in img["locations"]:
                for d, unused_size, unused_diff in layers:
                    storages[reg].layer_link(repo, d)
                storages[reg].layer_link(repo, cdigest)
                storages[reg].manifest(repo, mdigest)
                built.append((reg, repo, mdigest, img["id"]))
        index = {"schemaVersion": 2, "mediaType": MT_INDEX, "manifests": manifests}
        idigest, isize = blobs.put_bytes(_canon(index))
        img["index"] = idigest
        img["index_size"] = isize
        img["blobs"] = img_blobs
        img["bytes"] = sum(img_blobs.values())
        for reg, repo in img["locations"]:
            storages[reg].manifest(repo, idigest)
            built.append((reg, repo, idigest, img["id"]))

    for img in images:
        img["shares_base"] = img["id"] in sharing
        img["group"] = img["component"]
        build(img)
        img["tags"] = []
        for ref in img["refs"]:
            reg, repo, tag, unused = split_ref(ref)
            if tag:
                storages[reg].tag(repo, tag, img["index"])
                img["tags"].append(ref)

    # A release update: ``changed`` images (named by digest only, so no tag moves) get a new top
    # layer, hence new manifests and a new index; the previous ones stay in the storage, so the
    # registries serve both releases.
    changed_ids = []
    if changed:
        candidates = [img["id"] for img in images if not img["tags"]]
        if changed > len(candidates):
            raise ReleaseError("a release update can change at most %d images" % len(candidates))
        changed_ids = sorted(random.Random("%s:update:%d" % (seed, changed)).sample(candidates, changed))
        for img in images:
            if img["id"] in changed_ids:
                img["previous"] = {"index": img["index"], "manifests": dict(img["manifests"]), "blobs": img["blobs"]}
                build(img, update=1)
                img["previous"]["new_blobs"] = {d: s for d, s in img["blobs"].items() if d not in img["previous"]["blobs"]}

    signing = _sign_release(out_dir, storages, built, images)

    # Map every original ref to its synthetic ref, per architecture file.
    ref_map = {}
    for img in images:
        for ref in img["refs"]:
            ref_map[ref] = img
    release_dir = os.path.join(out_dir, "release")
    os.makedirs(release_dir)
    synthetic_refs = {}
    for fname, data in shape.items():
        _comp, uname = _file_component(fname)
        out = {"release": dict(data["release"]), "images": {}}
        if changed:
            out["release"]["base"] = "%s.update%d" % (out["release"]["base"], changed)
        for key, ref in data["images"].items():
            img = ref_map[ref]
            reg, repo, tag, unused = split_ref(ref)
            if tag:
                new = ref
            elif ref_mode == "arch":
                new = "%s/%s@%s" % (reg, repo, img["manifests"][uname])
            else:
                new = "%s/%s@%s" % (reg, repo, img["index"])
            out["images"][key] = new
            synthetic_refs.setdefault(new, img["id"])
        with open(os.path.join(release_dir, fname), "w", encoding="utf-8") as f:
            json.dump(out, f, indent=2)
            f.write("\n")
    for img in images:
        img["synthetic_refs"] = sorted(r for r, i in synthetic_refs.items() if i == img["id"])

    unique = dict(blobs.sizes)
    layer_and_config = {}
    for img in images:
        layer_and_config.update(img["blobs"])
    changed_images = []
    for img in images:
        if "previous" in img:
            prev = img.pop("previous")
            changed_images.append({
                "id": img["id"], "index_before": prev["index"], "index_after": img["index"],
                "manifests_before": prev["manifests"], "manifests_after": img["manifests"],
                "refs_before": sorted(_swap_digest(r, prev, img) for r in img["synthetic_refs"]),
                "refs_after": img["synthetic_refs"],
                "new_blobs": prev["new_blobs"],
            })
    meta = {
        "generator_version": GENERATOR_VERSION,
        "changed": changed,
        "changed_images": changed_images,
        "version": version,
        "size": size,
        "seed": seed,
        "ref_mode": ref_mode,
        "image_count": len(images),
        "logical_bytes": sum(img["bytes"] for img in images),
        "unique_bytes": sum(layer_and_config.values()),
        "unique_bytes_with_manifests": sum(unique.values()),
        "blob_count": len(unique),
        "groups": groups,
        "release_dir": release_dir,
        "storage_dirs": {r: os.path.join(out_dir, "storage", r) for r in REGISTRIES},
        "images": [{k: v for k, v in img.items() if k != "blobs"} for img in images],
        "image_blobs": {img["id"]: img["blobs"] for img in images},
        "signing": signing,
        "rpm": None,
    }
    if build_rpm_file:
        core = shape.get("release-x86_64.json", next(iter(shape.values())))
        meta["rpm"] = build_rpm(release_dir, os.path.join(out_dir, "rpm"), core["release"]["base"], seed, os.path.join(out_dir, ".rpmwork"),
                                rpm_release=changed)
        shutil.rmtree(os.path.join(out_dir, ".rpmwork"), ignore_errors=True)
    with open(os.path.join(out_dir, "release-meta.json"), "w", encoding="utf-8") as f:
        json.dump(meta, f, indent=1, sort_keys=True)
    return meta


def is_signed_repository(registry, repo):
    """Whether the test release signs the images of ``registry/repo`` (as Red Hat signs its own)."""
    name = "%s/%s/" % (registry, repo)
    return name.startswith(SIGNED_SCOPES) and not name.startswith(UNSIGNED_REPOSITORIES)


def _sign_release(out_dir, storages, built, images):
    """Sign every manifest written in a signed repository: by digest, and for each tag of the image there."""
    key = sigs.generate_key("rsa")
    private, public = sigs.write_key_pair(key, os.path.join(out_dir, "keys"), "release-key")
    tags = {}
    for img in images:
        for ref in img["tags"]:
            reg, repo, tag, unused = split_ref(ref)
            tags.setdefault((reg, repo, img["id"]), []).append(tag)
    count, signed, unsigned = 0, set(), set()
    for reg, repo, digest, image_id in built:
        if not is_signed_repository(reg, repo):
            if ("%s/%s/" % (reg, repo)).startswith(SIGNED_SCOPES):
                unsigned.add("%s/%s" % (reg, repo))
            continue
        identities = ["%s/%s@%s" % (reg, repo, digest)] + ["%s/%s:%s" % (reg, repo, t) for t in sorted(tags.get((reg, repo, image_id), []))]
        sigs.write_attachment(storages[reg].root, repo, digest, [sigs.sign(key, identity, digest) for identity in identities])
        signed.add("%s/%s" % (reg, repo))
        count += 1
    for img in images:
        img["signed"] = all(is_signed_repository(reg, repo) for reg, repo in img["locations"])
    return {"private_key": private, "public_key": public, "attachments": count, "signing_version": SIGNING_VERSION,
            "signed_repositories": sorted(signed), "unsigned_repositories": sorted(unsigned),
            "signed_scopes": [scope.rstrip("/") for scope in SIGNED_SCOPES],
            "unsigned_scopes": [scope.rstrip("/") for scope in UNSIGNED_REPOSITORIES]}


def _swap_digest(ref, prev, img):
    """The ref of an updated image as the previous release named it."""
    swap = {img["index"]: prev["index"]}
    swap.update({img["manifests"][u]: prev["manifests"][u] for u in img["manifests"]})
    name, digest = ref.split("@", 1)
    return "%s@%s" % (name, swap.get(digest, digest))


def cache_key(version, size, seed, ref_mode, changed=0):
    key = "v%s-%s-s%s-%s-g%d-sig%d" % (version, size, seed, ref_mode, GENERATOR_VERSION, SIGNING_VERSION)
    return key + ("-u%d" % int(changed) if changed else "")


def ensure_release(cache_dir=DEFAULT_CACHE_DIR, version=DEFAULT_VERSION, size="tiny", seed=DEFAULT_SEED, ref_mode="index", changed=0):
    """Return the metadata of the cached release for these parameters, generating it if needed.

    ``changed`` > 0 names a release update of it (see ``generate``), cached as its own entry.
    """
    os.makedirs(cache_dir, exist_ok=True)
    final = os.path.join(cache_dir, cache_key(version, size, seed, ref_mode, changed))
    meta_path = os.path.join(final, "release-meta.json")
    with open(os.path.join(cache_dir, ".lock"), "w", encoding="ascii") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not os.path.exists(meta_path):
            if os.path.exists(final):
                shutil.rmtree(final)
            tmp = final + ".tmp-%d" % os.getpid()
            shutil.rmtree(tmp, ignore_errors=True)
            try:
                generate(tmp, version=version, size=size, seed=seed, ref_mode=ref_mode, changed=changed)
                # Paths inside the metadata name the temp dir: rewrite them for the final one.
                with open(os.path.join(tmp, "release-meta.json"), encoding="utf-8") as f:
                    text = f.read()
                with open(os.path.join(tmp, "release-meta.json"), "w", encoding="utf-8") as f:
                    f.write(text.replace(tmp, final))
                os.rename(tmp, final)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
    with open(meta_path, encoding="utf-8") as f:
        return json.load(f)
