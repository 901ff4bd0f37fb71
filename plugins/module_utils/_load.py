# Copyright: airgap.microshift contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""Load a release's images into a host's container storage, from an image store or a transfer set.

Plain functions with no Ansible dependency, for sites without a registry. The store index
(``store.json``, docs/store-format.md) says everything the plan needs: each image's digest and,
per architecture, its manifest, config and layers. The plan of one host is:

- the images of its list that its storage does not hold by digest (read through skopeo);
- the blobs those images need: their manifests and configs always, and every layer no image the
  storage already holds carries (the storage reuses such a layer without reading the source);
- the bytes that costs: the blobs to read or carry (compressed, as stored), and an estimate of
  what the storage writes (layers unpacked, from the size recorded in a gzip layer's trailer; the
  ``vfs`` driver keeps a full copy of the tree below each layer) and of skopeo's temporary copies.

:func:`plan` is pure; :class:`Loader` reads the source, checks the free space, copies the
missing images with skopeo (two images that write the same new layer never run together, so it
is written once) and verifies every image of the list through skopeo afterwards.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import tempfile
import time

from ansible_collections.airgap.microshift.plugins.module_utils import _bundle, _files, _store, _strict, _workers
from ansible_collections.airgap.microshift.plugins.module_utils._containers_storage import (
    StorageError,
    storage_names,
)
from ansible_collections.airgap.microshift.plugins.module_utils._reference import InvalidReference, parse_reference
from ansible_collections.airgap.microshift.plugins.module_utils._upload import PushScheduler

RECORD_FORMAT = 1
RECORD_KIND = "airgap.microshift.host-images"
# Without a size in the layer itself (zstd without a content size, another format), its unpacked
# size is guessed as this many times its compressed size.
UNKNOWN_RATIO = 3
GZIP_MAGIC = b"\x1f\x8b"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
# The record of what was loaded lists refs and digests: a few hundred bytes per image.
MAX_RECORD = _strict.MAX_LARGE_JSON


class LoadError(Exception):
    """One sentence naming the image, blob, file or path at fault; ``details`` for the module's return."""

    def __init__(self, message, **details):
        super(LoadError, self).__init__(message)
        self.details = details


# --------------------------------------------------------------------------- the plan (pure)


def platform_name(architecture):
    return "linux/%s" % architecture


def image_for_platform(index, ref, platform):
    """What loading ``ref`` for ``platform`` reads: ``{"ref", "digest", "names", "manifest", "config", "layers", "blobs", "layout"...}``."""
    entry = index["images"].get(ref)
    if not isinstance(entry, dict) or not entry.get("digest"):
        raise LoadError("Image %s is not in the image source." % ref, missing_images=[ref])
    manifests = entry.get("manifests") or []
    chosen = [m for m in manifests if m.get("platform") == platform]
    if not chosen and len(manifests) == 1 and manifests[0].get("digest") == entry["digest"] and not manifests[0].get("platform"):
        chosen = manifests
    if not chosen:
        have = ", ".join(sorted(str(m.get("platform")) for m in manifests)) or "none"
        raise LoadError("Image %s has no %s manifest in the image source (it has %s)." % (ref, platform, have))
    manifest = chosen[0]
    blobs = manifest.get("blobs") or []
    if not blobs:
        raise LoadError("Image %s lists no config for its %s manifest in the image source." % (ref, platform))
    needs = {entry["digest"]: entry.get("manifest_size"), manifest["digest"]: manifest["size"]}
    for blob in blobs:
        needs[blob["digest"]] = blob["size"]
    return {
        "ref": ref,
        "digest": entry["digest"],
        "names": storage_names(ref, entry["digest"]),
        "media_type": entry.get("media_type"),
        "manifest_size": entry.get("manifest_size"),
        "manifest": manifest["digest"],
        "config": blobs[0]["digest"],
        "layers": [(blob["digest"], blob["size"], blob.get("media_type") or "") for blob in blobs[1:]],
        "blobs": needs,
        "size": sum(needs.values()),
    }


def held_layers(index, platform, held_digests):
    """Layers (compressed digests) of the images of ``index`` that the storage holds by digest."""
    layers = set()
    for ref, entry in index["images"].items():
        if entry.get("digest") not in held_digests:
            continue
        try:
            image = image_for_platform(index, ref, platform)
        except LoadError:
            continue
        layers.update(digest for digest, _size, _type in image["layers"])
    return layers


def plan(index, refs, platform, held, driver="overlay", unpacked=None):
    """The load plan of one host.

    ``held`` maps each storage name (``repo@digest``, ``repo:tag``) the storage resolves to the
    digest it resolves to; it should cover every image of ``index`` (not only ``refs``), so that the
    layers of a previous release count as held. ``unpacked`` maps a layer digest to its unpacked
    size (see :func:`unpacked_size`); layers missing from it count ``UNKNOWN_RATIO`` times their size.
    """
    unpacked = unpacked or {}
    wanted = []
    for ref in refs:
        if ref not in wanted:
            wanted.append(ref)
    images = [image_for_platform(index, ref, platform) for ref in wanted]
    held_digests = set()
    for name, digest in held.items():
        try:
            parsed = parse_reference(name)
        except InvalidReference:
            continue
        if parsed.digest and parsed.digest == digest:
            held_digests.add(digest)
    reusable = held_layers(index, platform, held_digests)
    to_load, present = [], []
    for image in images:
        digests = (image["digest"], image["manifest"])
        missing_names = [name for name in image["names"] if held.get(name) not in digests]
        if missing_names:
            image["missing_names"] = missing_names
            # One copy per image: to the tag for a ref by tag (the storage then also resolves
            # repo@digest to it, by the digests it records), else to repo@digest.
            image["load_name"] = image["names"][-1]
            to_load.append(image)
        else:
            present.append(image)
    needed = {}
    for image in to_load:
        new_layers = {}
        for digest, size in image["blobs"].items():
            if digest in reusable:
                continue
            needed[digest] = size
        for digest, size, _type in image["layers"]:
            if digest not in reusable:
                new_layers[digest] = size
        image["new_layers"] = new_layers
    # What the storage writes: each new chain of layers once (a layer's id is its chain).
    chains = set()
    storage_bytes = 0
    for image in to_load:
        below = 0
        chain = ()
        for digest, size, _type in image["layers"]:
            chain += (digest,)
            own = unpacked.get(digest, size * UNKNOWN_RATIO)
            below += own
            if chain in chains or digest in reusable and _chain_held(chain, reusable):
                continue
            chains.add(chain)
            storage_bytes += below if driver == "vfs" else own
        storage_bytes += image["blobs"].get(image["config"], 0)
    return {
        "platform": platform,
        "images": images,
        "to_load": to_load,
        "present": present,
        "blobs": needed,
        "bytes": sum(needed.values()),
        "storage_bytes": storage_bytes,
        # skopeo keeps the compressed layers of the image it copies in a temporary directory.
        "temp_bytes": max([sum(image["new_layers"].values()) for image in to_load] or [0]),
        "unique_bytes": _unique_bytes(images),
    }


def _chain_held(chain, reusable):
    # A chain whose every layer the storage holds is most likely held as it is; when not, the storage
    # makes the layer from the one it holds (no source read, a copy on disk) and the estimate misses it.
    return all(digest in reusable for digest in chain)


def _unique_bytes(images):
    blobs = {}
    for image in images:
        blobs.update(image["blobs"])
    return sum(blobs.values())


def unpacked_size(read, size, media_type=""):
    """The unpacked size of a layer: a gzip trailer's ISIZE, a zstd frame's content size, a plain tar's size.

    ``read(offset, length)`` returns bytes of the layer (None when it cannot). None when the layer
    does not say (the caller then estimates).
    """
    head = read(0, min(18, size)) if size else None
    if head and head.startswith(GZIP_MAGIC) and size >= 18:
        tail = read(size - 4, 4)
        if not tail or len(tail) != 4:
            return None
        isize = struct.unpack("<I", tail)[0]
        # ISIZE is modulo 2**32: a layer that unpacks to more than 4 GiB wraps.
        while isize + 2 ** 31 < size:
            isize += 2 ** 32
        return isize
    if head and head.startswith(ZSTD_MAGIC):
        return _zstd_content_size(head)
    if "tar" in media_type and "gzip" not in media_type and "zstd" not in media_type:
        return size
    return None


def _zstd_content_size(head):
    descriptor = head[4]
    fcs_flag = descriptor >> 6
    single = (descriptor >> 5) & 1
    dict_flag = descriptor & 3
    offset = 5 + (0 if single else 1) + (0, 1, 2, 4)[dict_flag]
    length = (1 if single else 0, 2, 4, 8)[fcs_flag]
    if length == 0 or len(head) < offset + length:
        return None
    value = int.from_bytes(head[offset:offset + length], "little")
    return value + 256 if length == 2 else value


def space_needs(entries):
    """Group ``(path, bytes)`` by filesystem: ``[{"paths", "bytes", "free"}]``, one entry per device."""
    groups = {}
    for path, nbytes in entries:
        probe = _existing(path)
        device = os.stat(probe).st_dev
        group = groups.setdefault(device, {"paths": [], "bytes": 0, "free": _store.free_bytes(probe)})
        group["paths"].append(path)
        group["bytes"] += nbytes
    return list(groups.values())


def _existing(path):
    probe = os.path.abspath(path)
    while not os.path.exists(probe) and os.path.dirname(probe) != probe:
        probe = os.path.dirname(probe)
    return probe


def check_space(entries, what):
    """Fail, naming the path and the bytes, when a filesystem lacks the room ``entries`` need."""
    for group in space_needs(entries):
        if group["bytes"] > group["free"]:
            raise LoadError("%s has %d bytes (%s) free but %s needs %d bytes (%s); nothing was written." % (
                " and ".join(group["paths"]), group["free"], _bundle.human_size(group["free"]), what,
                group["bytes"], _bundle.human_size(group["bytes"])),
                needed=group["bytes"], free=group["free"], path=group["paths"][0])


# --------------------------------------------------------------------------- sources


class StoreSource:
    """An image store (``store.json`` + ``blobs/``) on the host: read in place."""

    kind = "store"
    warnings = ()

    def __init__(self, path, index_text=None):
        self.path = os.path.abspath(path)
        try:
            if index_text is not None:
                self.index = parse_index(index_text)
            else:
                self.index = _store.read_index(self.path)
        except _store.StoreError as exc:
            raise LoadError("The image store %s cannot be read: %s" % (self.path, exc))
        self.blob_dir = os.path.join(self.path, _store.BLOBS_DIR)

    def describe(self):
        return {"kind": self.kind, "path": self.path}

    def check(self, blobs, parallel, images):
        """Every blob the plan reads is in place with its size and hashes to its name."""
        def check(item):
            digest, size = item
            return digest, _store.verify_blob(self.path, digest, size, check_digest=True)
        problems = [(d, p) for d, p in _workers.run_parallel(sorted(blobs.items(), key=lambda i: -i[1]), parallel, check) if p]
        if problems:
            digest, problem = problems[0]
            users = [image["ref"] for image in images if digest in image["blobs"]]
            raise LoadError("The image store %s cannot load %s: %s%s; nothing was written." % (
                self.path, users[0] if users else "the images", problem,
                " (and %d more blob problem(s))" % (len(problems) - 1) if len(problems) > 1 else ""),
                bad_blobs=[d for d, _p in problems])

    def read_range(self, digest, size, offset, length):
        """Bytes of a blob of the store, read strictly (a regular file of ``size`` bytes); None when it is not there."""
        try:
            with _strict.open_regular(self.path, _store.blob_relpath(digest), size=size) as handle:
                handle.seek(offset)
                return handle.read(length)
        except (_strict.OutsideDataError, OSError):
            return None

    def check_available(self, blobs, images):
        """The blobs of the plan the store lacks (or holds with another size): ``{digest: size}``, found by a stat each."""
        return dict((digest, size) for digest, size in blobs.items() if _store.blob_size(self.path, digest) != size)

    def prepare(self, blobs, parallel, images):
        self.check(blobs, parallel, images)
        return 0

    def staging_bytes(self, blobs):
        return 0

    def cleanup(self):
        pass


class SetSource:
    """A transfer set (volumes of ``image_bundle`` pack) on the host, checked as ``image_bundle`` unpack checks it.

    The signature against the trusted keys first, then every file's presence and size, the set's
    ``store.json`` and layouts (``_bundle.open_set``); only the blobs the plan needs are then joined
    into a staging store, each hashed before it is renamed into place (``_bundle.join_blobs``).
    A blob the set holds whole in a file on the staging store's filesystem (a set copied onto the
    host's disk) is hashed in place and hard-linked, not copied; blobs on other media are copied, so
    that skopeo reads them from the host's disk, not from the medium a second time.
    """

    kind = "transfer_set"

    def __init__(self, paths, staging, trusted_keys=None, allow_unsigned=False):
        self.paths = [os.path.abspath(p) for p in paths]
        self.staging = os.path.abspath(staging)
        try:
            keys = _bundle.load_trusted_keys(trusted_keys) if trusted_keys else None
            self.opened = _bundle.open_set(self.paths, keys, allow_unsigned)
        except _bundle.BundleError as exc:
            raise LoadError(str(exc), **exc.details)
        self.manifest = self.opened["manifest"]
        self.index = self.opened["index"]
        self.signed_by = self.opened["info"]["signer"]
        self.warnings = tuple(self.opened["info"]["warnings"])
        self.blob_dir = os.path.join(self.staging, _store.BLOBS_DIR)
        self.written = False
        self.linked = 0

    def describe(self):
        return {"kind": self.kind, "path": ", ".join(self.paths), "bundle_id": self.manifest["bundle_id"],
                "release": self.manifest.get("release"), "delta": bool(self.manifest.get("delta")), "staging": self.staging,
                "signed_by": self.signed_by}

    def absent_blobs(self, blobs):
        return sorted(digest for digest in blobs if digest not in self.manifest["blobs"])

    def staging_bytes(self, blobs):
        """The bytes the staging store needs: the blobs that are joined by copying (see :meth:`linkable`)."""
        linked = self.linkable(blobs)
        return sum(size for digest, size in blobs.items() if digest not in linked)

    def linkable(self, blobs):
        """The blobs of ``blobs`` the set holds whole in a file on the staging store's filesystem (hard-linked, not copied)."""
        staging = _files.mount_of(self.staging)
        volumes = dict((name, _files.mount_of(path)) for name, path in self.opened["found"].items())
        return set(digest for digest in blobs
                   if digest in self.manifest["blobs"] and "parts" not in self.manifest["blobs"][digest]
                   and staging[0] is not None and volumes.get(self.manifest["blobs"][digest].get("volume")) == staging)

    def read_range(self, digest, size, offset, length):
        """Bytes of a blob as the set carries it (for size hints: not hashed yet); None when the set does not carry it."""
        if digest not in self.manifest["blobs"]:
            return None
        try:
            return _bundle.read_blob_range(self.opened, digest, offset, length)
        except _bundle.BundleError:
            return None

    def check_available(self, blobs, images):
        """Every blob the plan reads is carried by the set (a delta carries only new blobs)."""
        absent = self.absent_blobs(blobs)
        if absent:
            users = [image["ref"] for image in images if absent[0] in image["blobs"]]
            base = self.manifest.get("base") or {}
            raise LoadError("Bundle %s%s does not carry blob %s needed by %s, and the container storage holds no image "
                            "that has it; load the release it builds on first." % (
                                self.manifest["bundle_id"], " (a delta on release %s)" % base.get("release") if base else "",
                                absent[0], users[0] if users else "the images"), missing_blobs=absent)
        return {}

    def prepare(self, blobs, parallel, images):
        """Join every needed blob into a fresh staging store; on a corrupt one, remove what this run wrote.

        The staging store lives only for this load (skopeo reads it, then it is removed), so its
        blobs are not fsynced, and what an interrupted run left there is never trusted: it is
        removed first and the blobs are joined again, each hashed on the way.
        """
        self.check_available(blobs, images)
        todo = sorted(blobs, key=lambda d: -blobs[d])
        self.written = True
        shutil.rmtree(self.staging, ignore_errors=True)
        written, self.linked, corrupt = _bundle.join_blobs(self.opened, self.staging, todo, parallel, durable=False, link=True)
        if corrupt:
            self.cleanup()
            raise LoadError("Bundle %s holds corrupt file(s), nothing was loaded: %s." % (self.manifest["bundle_id"], ", ".join(corrupt)),
                            corrupt=corrupt)
        return written

    def cleanup(self):
        if self.written:
            shutil.rmtree(self.staging, ignore_errors=True)


def parse_index(text, where="the index option"):
    """A store index given as JSON text (the ``store.json`` of a store elsewhere), read as strictly as a store's own."""
    data = text.encode("utf-8") if isinstance(text, str) else text
    try:
        return _store.parse_index(data, where)
    except _store.StoreError as exc:
        raise LoadError("The store index in %s is not usable: %s" % (where, exc))


def open_source(paths, staging, index_text=None, trusted_keys=None, allow_unsigned=False):
    """A :class:`StoreSource` for a directory holding ``store.json`` (or when the index is given), else a :class:`SetSource`.

    ``trusted_keys`` (paths of public key files) and ``allow_unsigned`` apply to a transfer set; a
    store carries no signature (its set was checked when it was unpacked).
    """
    if index_text is not None:
        if len(paths) != 1:
            raise LoadError("With an index, give one image store directory as the source, not %d paths." % len(paths))
        return StoreSource(paths[0], index_text)
    if len(paths) == 1 and os.path.isfile(os.path.join(paths[0], _store.STORE_INDEX)):
        return StoreSource(paths[0])
    for path in paths:
        if not os.path.isdir(path):
            raise LoadError("The image source %s is not a directory." % path)
    return SetSource(paths, staging, trusted_keys, allow_unsigned)


# --------------------------------------------------------------------------- the record of what was loaded


def read_record(path):
    """The record of what was loaded (the module's own file on the host), read strictly; an empty one when absent."""
    if not os.path.lexists(path):
        return {"format": RECORD_FORMAT, "kind": RECORD_KIND, "storages": {}}
    try:
        data = _strict.read_json(os.path.dirname(os.path.abspath(path)), os.path.basename(path), path, max_size=MAX_RECORD)
    except _strict.OutsideDataError as exc:
        raise LoadError("The record %s cannot be read (%s); move it away to start a new one." % (path, str(exc).rstrip(".")))
    if not isinstance(data, dict) or data.get("kind") != RECORD_KIND or not isinstance(data.get("storages"), dict):
        raise LoadError("The file %s is not a record of loaded images; give another path." % path)
    return data


def record_bytes(record):
    return json.dumps(record, indent=1, sort_keys=True).encode("utf-8") + b"\n"


def write_record(path, record, write=None):
    """Write the record atomically and durably; False when it already says the same.

    ``write(path, data)`` is the writer (the module's ``_files.ensure_file``); by default :func:`_files.write_file`.
    """
    data = record_bytes(record)
    if _files.same_content(path, data):
        return False
    if write is None:
        return _files.write_file(path, data, mode=0o644)
    write(path, data)
    return True


# --------------------------------------------------------------------------- running a load


def query_held(tool, index, refs, platform, parallel):
    """``{name: digest}`` for every storage name of the images of ``index`` (and ``refs``) that the storage resolves."""
    names = set()
    for ref, entry in index["images"].items():
        if entry.get("digest"):
            names.update(storage_names(ref, entry["digest"]))
    for ref in refs:
        entry = index["images"].get(ref)
        if entry and entry.get("digest"):
            names.update(storage_names(ref, entry["digest"]))
    if tool.storage.is_empty():
        return {}
    found = _workers.run_parallel(sorted(names), parallel, lambda name: (name, tool.manifest_digest(name)))
    return dict((name, digest) for name, digest in found if digest)


class Loader:
    """One load: plan, check, write, verify. ``run()`` returns the module's result."""

    def __init__(self, tool, source, refs, architecture, parallel=2, prune=False, record_path=None, check_mode=False,
                 temp_dir=None, clock=time.monotonic, write_file=None):
        """``write_file(path, data)`` writes the record (see :func:`write_record`)."""
        self.tool = tool
        self.source = source
        self.refs = list(refs)
        self.architecture = architecture
        self.platform = platform_name(architecture)
        self.parallel = max(1, int(parallel))
        self.prune = prune
        self.record_path = record_path
        self.check_mode = check_mode
        self.temp_dir = temp_dir or os.environ.get("TMPDIR") or "/var/tmp"
        self.clock = clock
        self.write_file = write_file

    def layer_sizes(self, images):
        """Unpacked sizes of the layers of ``images``, read from the layers themselves where the source has them."""
        sizes = {}
        for image in images:
            for digest, size, media_type in image["layers"]:
                if digest in sizes:
                    continue
                found = unpacked_size(lambda offset, length, d=digest, n=size: self.source.read_range(d, n, offset, length),
                                      size, media_type)
                if found is not None:
                    sizes[digest] = found
        return sizes

    def make_plan(self, held):
        draft = plan(self.source.index, self.refs, self.platform, held, self.tool.storage.driver)
        # Unpacked sizes can be read only where the layer already is: in a store or a set on the host
        # (with an index, the blobs a previous run carried).
        return plan(self.source.index, self.refs, self.platform, held, self.tool.storage.driver, self.layer_sizes(draft["to_load"]))

    def removals(self, record):
        """Images this module loaded into this storage earlier that no ref of the list wants any more."""
        loaded = record["storages"].get(self.tool.storage.graphroot, {})
        wanted = set()
        for ref in self.refs:
            entry = self.source.index["images"].get(ref) or {}
            wanted.add(entry.get("digest"))
        return sorted((ref, digest) for ref, digest in loaded.items() if ref not in self.refs and digest not in wanted)

    def run(self):
        started = self.clock()
        timings = {}
        record = read_record(self.record_path) if self.record_path else None
        held = query_held(self.tool, self.source.index, self.refs, self.platform, self.parallel * 2)
        timings["query"] = self.clock() - started
        the_plan = self.make_plan(held)
        to_load = the_plan["to_load"]
        removals = self.removals(record) if (self.prune and record is not None) else []
        fetch = self.source.check_available(the_plan["blobs"], to_load) if to_load else {}
        staging_bytes = self.source.staging_bytes(the_plan["blobs"])
        result = {
            "source": self.source.describe(),
            "storage": self.tool.storage.describe(),
            "platform": self.platform,
            "images": len(the_plan["images"]),
            "loaded": [image["ref"] for image in to_load],
            "present": [image["ref"] for image in the_plan["present"]],
            "pruned": [ref for ref, _d in removals],
            "blobs": len(the_plan["blobs"]),
            "bytes": the_plan["bytes"],
            "unique_bytes": the_plan["unique_bytes"],
            "fetch": sorted(_store.blob_relpath(digest) for digest in fetch),
            "fetch_bytes": sum(fetch.values()),
            "staging_bytes": staging_bytes,
            "storage_bytes": the_plan["storage_bytes"],
            "temp_bytes": the_plan["temp_bytes"],
        }
        if to_load:
            needs = [(self.tool.storage.graphroot, the_plan["storage_bytes"]),
                     (self.temp_dir, the_plan["temp_bytes"] * min(self.parallel, len(to_load)))]
            if staging_bytes:
                needs.append((self.source.staging, staging_bytes))
            if fetch:
                needs.append((self.source.path, result["fetch_bytes"]))
            check_space(needs, "loading %d image(s) (%d bytes of blobs)" % (len(to_load), the_plan["bytes"]))
        record_changed = False
        if self.record_path:
            record_changed = self.updated_record(record, the_plan, removals) != record
        result["changed"] = bool(to_load or removals or record_changed)
        if self.check_mode:
            result["seconds"] = round(self.clock() - started, 3)
            return result
        if fetch:
            first = sorted(fetch)[0]
            users = [image["ref"] for image in to_load if first in image["blobs"]]
            raise LoadError("The image store %s lacks %d blob(s) needed to load %s, for example %s; nothing was written." % (
                self.source.path, len(fetch), users[0] if users else "the images", first), fetch=result["fetch"])
        written = 0
        mark = self.clock()
        try:
            if to_load:
                written = self.source.prepare(the_plan["blobs"], self.parallel, to_load)
                timings["prepare"] = self.clock() - mark
                mark = self.clock()
                self.load_all(to_load)
                timings["load"] = self.clock() - mark
        finally:
            self.source.cleanup()
        try:
            for ref, digest in removals:
                for name in storage_names(ref, digest):
                    self.tool.delete(name)
        except StorageError as exc:
            raise LoadError(str(exc))
        mark = self.clock()
        problems = self.verify(the_plan["images"])
        timings["verify"] = self.clock() - mark
        if problems:
            raise LoadError("After loading, the container storage %s does not hold %d image(s) by digest: %s." % (
                self.tool.storage.graphroot, len(problems), ", ".join(problems[:5])), not_verified=problems)
        if self.record_path and record_changed:
            os.makedirs(os.path.dirname(os.path.abspath(self.record_path)), exist_ok=True)
            write_record(self.record_path, self.updated_record(record, the_plan, removals), self.write_file)
        result["bytes_staged"] = written
        result["bytes_linked"] = getattr(self.source, "linked", 0)
        result["verified"] = len(the_plan["images"])
        result["timings"] = dict((name, round(value, 3)) for name, value in timings.items())
        result["seconds"] = round(self.clock() - started, 3)
        return result

    def updated_record(self, record, the_plan, removals):
        record = json.loads(json.dumps(record))
        loaded = record["storages"].setdefault(self.tool.storage.graphroot, {})
        for ref, _digest in removals:
            loaded.pop(ref, None)
        for image in the_plan["images"]:
            loaded[image["ref"]] = image["digest"]
        return record

    def load_all(self, to_load):
        layouts = tempfile.mkdtemp(prefix=".layouts-", dir=_writable_parent(self.source))
        try:
            by_ref = {}
            for number, image in enumerate(to_load, 1):
                path = os.path.join(layouts, "%04d" % number)
                _store.write_layout(layouts, "%04d" % number, image["digest"], image["media_type"], image["manifest_size"])
                by_ref[image["ref"]] = (image, path)
            scheduler = PushScheduler(dict((image["ref"], image["new_layers"]) for image in to_load))

            def work(ref):
                image, path = by_ref[ref]
                self.tool.load(path, self.source.blob_dir, image["load_name"], self.architecture)
                return True
            _workers.run_scheduled(scheduler, self.parallel, work)
        except StorageError as exc:
            raise LoadError(str(exc))
        finally:
            shutil.rmtree(layouts, ignore_errors=True)

    def verify(self, images):
        """Names (``repo@digest``, ``repo:tag``) the storage does not resolve to the image's digest."""
        checks = [(image, name) for image in images for name in image["names"]]

        def check(item):
            image, name = item
            found = self.tool.manifest_digest(name)
            return None if found in (image["digest"], image["manifest"]) else name
        try:
            return [name for name in _workers.run_parallel(checks, self.parallel * 2, check) if name]
        except StorageError as exc:
            raise LoadError(str(exc))


def _writable_parent(source):
    # Layouts are a few hundred bytes per image: next to the staging store of a set, in the temp dir for a store.
    if isinstance(source, SetSource):
        os.makedirs(source.staging, exist_ok=True)
        return source.staging
    return None
