# Copyright: airgap.microshift contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""The image store (docs/store-format.md): names, index, blobs, manifests and completeness.

Plain functions with no Ansible dependency, and the one owner of the store format:
``image_download`` writes the store, ``image_bundle`` packs and unpacks it, ``image_upload``
reads it, and all of them ask this module for its constants, paths, readers and checks. Every
read of a store goes through the strict reader (``_strict``): ``store.json``, layouts and
manifests are size-capped and schema-checked, digests are matched against their grammar before
they become paths, and only regular files of the declared size are opened.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import threading

from ansible_collections.airgap.microshift.plugins.module_utils import _files, _strict
from ansible_collections.airgap.microshift.plugins.module_utils._reference import InvalidReference, parse_reference

# Format 2 is format 1 plus the images' signatures (sigstore attachments, under each image's
# "signatures"); a store holds format 1 while no image has one, so older readers still read it,
# and refuse a store whose signatures they would silently drop.
STORE_FORMAT = 2
STORE_FORMATS = (1, 2)
STORE_INDEX = "store.json"
BLOBS_DIR = "blobs"
BLOB_DIR = "blobs/sha256"
IMAGES_DIR = "images"
LOCK_FILE = ".store.lock"
OCI_LAYOUT = {"imageLayoutVersion": "1.0.0"}
LAYOUT_FILES = ("oci-layout", "index.json")
# Caps of what the store holds: the index may list thousands of images; a manifest or an index
# is at most 4 MiB (what registries accept).
MAX_INDEX_SIZE = _strict.MAX_LARGE_JSON
MAX_MANIFEST_SIZE = 4 * 1024 * 1024
MAX_LAYOUT_FILE = 64 * 1024

MEDIA_OCI_INDEX = "application/vnd.oci.image.index.v1+json"
MEDIA_OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MEDIA_DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
MEDIA_DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
INDEX_MEDIA_TYPES = (MEDIA_OCI_INDEX, MEDIA_DOCKER_LIST)
MANIFEST_MEDIA_TYPES = (MEDIA_OCI_MANIFEST, MEDIA_DOCKER_MANIFEST)


class StoreError(_strict.OutsideDataError):
    """A store that cannot be read or written; the message names the file."""


def is_digest(value):
    return _strict.is_digest(value)


def empty_index():
    return {"format": 1, "images": {}, "blobs": {}}


def index_format(data):
    """The format a store index must declare: 2 when an image records a signature, else 1."""
    return 2 if any(entry.get("signatures") for entry in data.get("images", {}).values()) else 1


def registry_dir(registry):
    """``registry.example.com:5000`` -> ``registry.example.com_5000`` (portable directory name)."""
    return registry.replace(":", "_")


def layout_name(ref):
    """``sha256-<hex>`` for a ref by digest (the digest wins over a tag), else ``tag-<tag>``."""
    parsed = parse_reference(ref)
    if parsed.digest:
        return parsed.digest.replace(":", "-")
    if parsed.tag:
        return "tag-" + parsed.tag
    raise StoreError("%s names neither a tag nor a digest; give one of them" % ref)


def layout_path(ref):
    """The layout of ``ref`` relative to the store: ``images/<registry>/<repository>/<name>``."""
    parsed = parse_reference(ref)
    return "/".join([IMAGES_DIR, registry_dir(parsed.registry), parsed.repository, layout_name(ref)])


def blob_relpath(digest):
    """``blobs/sha256/<hex>``; a digest that is not ``sha256:<64 hex>`` never becomes a path."""
    if not _strict.is_digest(digest):
        raise StoreError("%r is not a sha256 digest; it is not used as a blob name." % (digest,))
    return BLOB_DIR + "/" + digest[7:]


def blob_path(store, digest):
    return os.path.join(store, *blob_relpath(digest).split("/"))


def blob_size(store, digest):
    """Size of the blob in the store, or None when absent."""
    try:
        return os.stat(blob_path(store, digest)).st_size
    except OSError:
        return None


def blob_present(store, digest, size):
    return blob_size(store, digest) == size


def sha256_file(path, buffer_size=8 * 1024 * 1024):
    """``(sha256:<hex>, size)`` of a file, read in ``buffer_size`` blocks."""
    digest = hashlib.sha256()
    buf = bytearray(buffer_size)
    view = memoryview(buf)
    size = 0
    with open(path, "rb", buffering=0) as handle:
        while True:
            count = handle.readinto(buf)
            if not count:
                break
            digest.update(view[:count])
            size += count
    return "sha256:" + digest.hexdigest(), size


def verify_blob(store, digest, size, check_digest=False):
    """``None`` when the blob is in place (and, with ``check_digest``, hashes to its name), else a reason."""
    actual = blob_size(store, digest)
    if actual is None:
        return "blob %s is missing" % digest
    if actual != size:
        return "blob %s has %d bytes instead of %d" % (digest, actual, size)
    if check_digest:
        found = sha256_file(blob_path(store, digest))[0]
        if found != digest:
            return "blob %s has the content of %s" % (digest, found)
    return None


def write_bytes_atomic(path, data, mode=0o644):
    """Write ``data`` to ``path`` through a temporary file in the same directory, fsync and a rename."""
    _files.write_file(path, data, mode=mode, prefix=".tmp-")


def put_blob(store, digest, data):
    """Store ``data`` under ``digest`` unless already there; refuse data that does not match."""
    found = "sha256:" + hashlib.sha256(data).hexdigest()
    if found != digest:
        raise StoreError("content for blob %s hashes to %s" % (digest, found))
    path = blob_path(store, digest)
    if blob_size(store, digest) == len(data):
        return False
    os.makedirs(os.path.dirname(path), exist_ok=True)
    write_bytes_atomic(path, data)
    return True


def write_layout(store, relpath, digest, media_type, size):
    """Write the OCI layout of one image: ``oci-layout`` and an ``index.json`` naming one descriptor."""
    directory = os.path.join(store, *relpath.split("/"))
    os.makedirs(directory, exist_ok=True)
    write_bytes_atomic(os.path.join(directory, "oci-layout"), json.dumps(OCI_LAYOUT).encode("utf-8"))
    write_bytes_atomic(os.path.join(directory, "index.json"), json.dumps(layout_index(digest, media_type, size)).encode("utf-8"))
    # skopeo leaves an empty per-layout blobs/ directory when the shared blob directory is used
    try:
        os.rmdir(os.path.join(directory, "blobs"))
    except OSError:
        pass


def layout_index(digest, media_type, size):
    """The ``index.json`` of a layout: one descriptor, the image's top-level manifest or index."""
    return {"schemaVersion": 2, "manifests": [{"mediaType": media_type, "digest": digest, "size": size}]}


def check_layout_files(oci_layout, index_json, entry, what):
    """Refuse layout files (bytes) that do not describe ``entry`` exactly: the layout an image is read through."""
    try:
        layout = _strict.load_json(oci_layout, "%s/oci-layout" % what, max_size=MAX_LAYOUT_FILE)
        if not isinstance(layout, dict) or layout.get("imageLayoutVersion") != OCI_LAYOUT["imageLayoutVersion"]:
            raise StoreError("%s/oci-layout is not an OCI layout marker (imageLayoutVersion 1.0.0)." % what)
        index = _strict.load_json(index_json, "%s/index.json" % what, max_size=MAX_LAYOUT_FILE)
        if not isinstance(index, dict):
            raise StoreError("%s/index.json is not a JSON object." % what)
        manifests = _strict.field(index, "manifests", "list", "%s/index.json" % what)
        if len(manifests) != 1 or not isinstance(manifests[0], dict):
            raise StoreError("%s/index.json must name exactly one manifest." % what)
        descriptor = manifests[0]
        named = (_strict.field(descriptor, "digest", "digest", "%s/index.json" % what),
                 _strict.field(descriptor, "size", "size", "%s/index.json" % what),
                 _strict.field(descriptor, "mediaType", "string", "%s/index.json" % what))
    except StoreError:
        raise
    except _strict.OutsideDataError as exc:
        raise StoreError(str(exc))
    wanted = (entry["digest"], entry["manifest_size"], entry["media_type"])
    if named != wanted:
        raise StoreError("%s/index.json names %s (%d bytes, %s), not the image's %s (%d bytes, %s)." % ((what,) + named + wanted))


def read_layout_digest(store, relpath):
    """Digest named by a layout's ``index.json``, or None when missing or unreadable."""
    try:
        index = _strict.read_json(store, relpath + "/index.json", max_size=MAX_LAYOUT_FILE)
        return _strict.check_digest(index["manifests"][0]["digest"], "index.json")
    except (_strict.OutsideDataError, KeyError, IndexError, TypeError):
        return None


def _fail(exc):
    raise StoreError(str(exc))


def validate_entry(ref, entry, blobs, path):
    """Check one image entry of ``store.json`` (``blobs`` is the index's blob map)."""
    try:
        parsed = parse_reference(ref)
    except InvalidReference as exc:
        raise StoreError("%s lists an image that is not a reference: %s." % (path, exc))
    where = "%s, image %s" % (path, ref)
    if not isinstance(entry, dict):
        raise StoreError("%s: the entry is not a JSON object." % where)
    try:
        digest = _strict.field(entry, "digest", "digest", where)
        media_type = _strict.field(entry, "media_type", "string", where)
        _strict.field(entry, "manifest_size", "size", where)
        layout = _strict.field(entry, "layout", "string", where)
        manifests = _strict.field(entry, "manifests", "list", where)
        _strict.field(entry, "size", "size", where, optional=True)
        for number, manifest in enumerate(manifests):
            at = "%s, manifest %d" % (where, number + 1)
            if not isinstance(manifest, dict):
                raise StoreError("%s is not a JSON object." % at)
            _strict.field(manifest, "digest", "digest", at)
            _strict.field(manifest, "size", "size", at)
            if _strict.field(manifest, "media_type", "string", at, optional=True) not in (None,) + MANIFEST_MEDIA_TYPES:
                raise StoreError("%s has media type %r, not an image manifest." % (at, manifest["media_type"][:100]))
            _strict.field(manifest, "platform", "string", at, optional=True)
            for blob in _strict.field(manifest, "blobs", "list", at):
                if not isinstance(blob, dict):
                    raise StoreError("%s lists a blob that is not a JSON object." % at)
                _strict.field(blob, "digest", "digest", at + ", blob")
                _strict.field(blob, "size", "size", at + ", blob")
    except StoreError:
        raise
    except _strict.OutsideDataError as exc:
        _fail(exc)
    if parsed.digest and parsed.digest != digest:
        raise StoreError("%s: the reference pins %s but the entry records %s." % (where, parsed.digest, digest))
    if layout != layout_path(ref):
        raise StoreError("%s: the layout %r is not the image's own, %s." % (where, layout[:200], layout_path(ref)))
    if media_type in MANIFEST_MEDIA_TYPES:
        if len(manifests) != 1 or manifests[0]["digest"] != digest:
            raise StoreError("%s: a single manifest must list itself, and only itself, under 'manifests'." % where)
    elif media_type not in INDEX_MEDIA_TYPES:
        raise StoreError("%s has media type %r, neither an image manifest nor an index." % (where, media_type[:100]))
    # after the entry's own digest and manifests: a signature is judged against the image it belongs to
    _validate_signatures(entry, where)
    for blob_digest, size in image_blobs(entry).items():
        if blobs.get(blob_digest) != size:
            raise StoreError("%s: blob %s (%d bytes) is not listed with that size under 'blobs'." % (where, blob_digest, size))
    return entry


def _validate_signatures(entry, where):
    """The entry's ``signatures``: ``{manifest digest: attachment}`` for its own manifests only."""
    signatures = _strict.field(entry, "signatures", "object", where, optional=True)
    if signatures is None:
        return
    own = set([entry["digest"]] + [m["digest"] for m in entry["manifests"]])
    for signed, attachment in signatures.items():
        at = "%s, signatures of %s" % (where, signed[:80])
        _strict.check_digest(signed, at)
        if signed not in own:
            raise StoreError("%s: %s is not a manifest of the image." % (at, signed))
        if not isinstance(attachment, dict):
            raise StoreError("%s is not a JSON object." % at)
        _strict.field(attachment, "digest", "digest", at)
        _strict.field(attachment, "size", "size", at)
        if _strict.field(attachment, "media_type", "string", at) != MEDIA_OCI_MANIFEST:
            raise StoreError("%s has media type %r, not an OCI image manifest." % (at, attachment["media_type"][:100]))
        blobs = _strict.field(attachment, "blobs", "list", at)
        if not blobs:
            raise StoreError("%s lists no blob (an attachment has a config and its signatures)." % at)
        for blob in blobs:
            if not isinstance(blob, dict):
                raise StoreError("%s lists a blob that is not a JSON object." % at)
            _strict.field(blob, "digest", "digest", at + ", blob")
            _strict.field(blob, "size", "size", at + ", blob")
            _strict.field(blob, "media_type", "string", at + ", blob", optional=True)


def validate_index(data, path):
    """Check a whole store index (docs/store-format.md); StoreError with one sentence on the first fault."""
    if not isinstance(data, dict):
        raise StoreError("%s is not a store index: it is not a JSON object." % path)
    if data.get("format") not in STORE_FORMATS or isinstance(data.get("format"), bool):
        raise StoreError("%s has format %r; this collection reads formats %s." % (
            path, data.get("format"), " and ".join(str(f) for f in STORE_FORMATS)))
    if not isinstance(data.get("images"), dict) or not isinstance(data.get("blobs"), dict):
        raise StoreError("%s is not a store index: 'images' and 'blobs' must be objects." % path)
    blobs = data["blobs"]
    for digest, size in blobs.items():
        if not _strict.is_digest(digest):
            raise StoreError("%s lists a blob named %r, which is not a sha256 digest." % (path, digest[:120]))
        if isinstance(size, bool) or not isinstance(size, int) or not 0 <= size <= 1 << 53:
            raise StoreError("%s lists blob %s with size %r, which is not a size in bytes." % (path, digest, size))
    for ref, entry in data["images"].items():
        validate_entry(ref, entry, blobs, path)
    if data["format"] < index_format(data):
        raise StoreError("%s has format %d but records image signatures, which need format 2." % (path, data["format"]))
    return data


def parse_index(raw, path):
    """A store index from its bytes: size-capped, depth-limited JSON, then :func:`validate_index`."""
    try:
        data = _strict.load_json(raw, path, max_size=MAX_INDEX_SIZE)
    except _strict.OutsideDataError as exc:
        _fail(exc)
    return validate_index(data, path)


def read_index(store, raw=False):
    """The store index of ``store``; an empty index when the store has none yet. With ``raw``, (index, bytes)."""
    path = os.path.join(store, STORE_INDEX)
    if not os.path.lexists(path):
        return (empty_index(), None) if raw else empty_index()
    try:
        data = _strict.read_file(store, STORE_INDEX, path, max_size=MAX_INDEX_SIZE)
    except _strict.OutsideDataError as exc:
        _fail(exc)
    index = parse_index(data, path)
    return (index, data) if raw else index


def parse_manifest(raw, what):
    """An image manifest or index (OCI or docker schema 2) from its bytes, strictly.

    Returns ``{"media_type", "kind": "index", "children": [...]}`` or ``{"media_type", "kind":
    "manifest", "config": {...}, "layers": [...]}``; each descriptor is ``{"digest", "size",
    "media_type"[, "platform"][, "foreign"]}``. Raises :class:`StoreError` naming ``what``.
    """
    media_type = None
    try:
        doc = _strict.load_json(raw, what, max_size=MAX_MANIFEST_SIZE)
        if not isinstance(doc, dict):
            raise StoreError("%s is not a JSON object." % what)
        if doc.get("schemaVersion") == 1:
            raise StoreError("%s is a docker schema 1 manifest, which is not supported (it has no stable digest)." % what)
        media_type = _strict.field(doc, "mediaType", "string", what, optional=True)
        if media_type is None:
            media_type = MEDIA_OCI_INDEX if "manifests" in doc else MEDIA_OCI_MANIFEST
        if media_type in INDEX_MEDIA_TYPES:
            children = [_descriptor(entry, what + ", manifests") for entry in _strict.field(doc, "manifests", "list", what)]
            return {"media_type": media_type, "kind": "index", "children": children}
        if media_type in MANIFEST_MEDIA_TYPES:
            config = _descriptor(_strict.field(doc, "config", "object", what), what + ", config")
            layers = [_descriptor(entry, what + ", layers") for entry in _strict.field(doc, "layers", "list", what, optional=True) or []]
            return {"media_type": media_type, "kind": "manifest", "config": config, "layers": layers}
    except StoreError:
        raise
    except _strict.OutsideDataError as exc:
        _fail(exc)
    raise StoreError("%s has the unsupported media type %r." % (what, media_type[:100]))


def _descriptor(entry, where):
    if not isinstance(entry, dict):
        raise StoreError("%s lists a descriptor that is not a JSON object." % where)
    out = {"digest": _strict.field(entry, "digest", "digest", where), "size": _strict.field(entry, "size", "size", where),
           "media_type": _strict.field(entry, "mediaType", "string", where, optional=True)}
    platform = entry.get("platform")
    if platform is not None:
        out["platform"] = _strict.check_type(platform, "object", where + " platform")
    if entry.get("urls"):
        out["foreign"] = True
    return out


def read_blob(store, digest, size, what, max_size=MAX_MANIFEST_SIZE):
    """The bytes of a (small) blob of the store: a regular file of ``size`` bytes hashing to ``digest``."""
    if size is not None and size > max_size:
        raise StoreError("%s has %d bytes, more than a manifest may have." % (what, size))
    try:
        data = _strict.read_file(store, blob_relpath(digest), what, size=size, max_size=max_size)
    except StoreError:
        raise
    except _strict.OutsideDataError as exc:
        _fail(exc)
    found = "sha256:" + hashlib.sha256(data).hexdigest()
    if found != digest:
        raise StoreError("%s does not match its digest (its content hashes to %s)." % (what, found))
    return data


def write_index(store, data):
    """Write the store index atomically (temporary file, fsync, rename), with the format it needs."""
    data["format"] = index_format(data)
    validate_index(data, os.path.join(store, STORE_INDEX))
    payload = json.dumps(data, indent=1, sort_keys=True).encode("utf-8") + b"\n"
    write_bytes_atomic(os.path.join(store, STORE_INDEX), payload)


def image_blobs(entry):
    """Every blob of an index entry as ``{digest: size}``: top-level manifest, manifests, configs, layers."""
    blobs = {}
    if entry.get("digest") and entry.get("manifest_size") is not None:
        blobs[entry["digest"]] = entry["manifest_size"]
    for manifest in entry.get("manifests", []):
        blobs[manifest["digest"]] = manifest["size"]
        for blob in manifest.get("blobs", []):
            blobs[blob["digest"]] = blob["size"]
    blobs.update(signature_blobs(entry))
    return blobs


def signature_summary(entry):
    """``{"signed", "unsigned"}`` manifests of an entry, or None when its signatures were never looked up."""
    if "signatures" not in entry:
        return None
    digests = set([entry["digest"]] + [m["digest"] for m in entry.get("manifests", [])])
    signed = len(set(entry["signatures"]) & digests)
    return {"signed": signed, "unsigned": len(digests) - signed}


def signature_blobs(entry):
    """The blobs of an entry's signatures (attachment manifests, configs, payloads) as ``{digest: size}``."""
    blobs = {}
    for attachment in (entry.get("signatures") or {}).values():
        blobs[attachment["digest"]] = attachment["size"]
        for blob in attachment.get("blobs", []):
            blobs[blob["digest"]] = blob["size"]
    return blobs


def image_complete(store, index, ref):
    """True when ``ref`` is recorded and every one of its blobs is in place with its size."""
    return image_status(store, index, ref)["status"] == "complete"


def image_status(store, index, ref, checksum=False):
    """``{"ref", "status", "digest", "size", "problem"}`` of ``ref`` in the store.

    ``status`` is ``complete``, ``missing`` (not in the index), ``incomplete`` (a blob or the layout
    is missing or has another size) or, with ``checksum``, ``corrupt`` (a blob does not hash to its
    digest). ``problem`` names the first blob (or the layout) at fault.
    """
    entry = index.get("images", {}).get(ref)
    if not entry:
        return {"ref": ref, "status": "missing", "digest": None, "size": 0, "problem": None}
    result = {"ref": ref, "status": "complete", "digest": entry.get("digest"), "size": entry.get("size", 0), "problem": None}
    layout_digest = read_layout_digest(store, entry.get("layout") or "")
    if layout_digest != entry.get("digest"):
        result.update(status="incomplete", problem="the layout %s does not name %s" % (entry.get("layout"), entry.get("digest")))
        return result
    blobs = sorted(image_blobs(entry).items())
    for digest, size in blobs:
        problem = verify_blob(store, digest, size)
        if problem:
            result.update(status="incomplete", problem=problem)
            return result
    if checksum:
        for digest, size in blobs:
            problem = verify_blob(store, digest, size, check_digest=True)
            if problem:
                result.update(status="corrupt", problem=problem)
                return result
    return result


def utc_now():
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


class StoreLock(_files.DirLock):
    """Serialise read-modify-write of ``store.json`` between threads and processes (``.store.lock``)."""

    # every thread of a run makes its own instance: they share one thread lock
    _threads = threading.Lock()

    def __init__(self, store):
        super().__init__(store, LOCK_FILE, thread_lock=StoreLock._threads)


def record_image(store, ref, entry):
    """Add ``entry`` for ``ref`` to the store index (and its blobs to ``blobs``), under the lock."""
    with StoreLock(store):
        index = read_index(store)
        index["images"][ref] = entry
        index["blobs"].update(image_blobs(entry))
        write_index(store, index)
        return index


STORE_MODE = 0o750
PARENT_MODE = 0o755


def creation_problem(store):
    """Why ``store`` cannot be a store directory, as a clause (``exists and is not a directory``), or None.

    A store that does not exist yet is fine as long as its nearest existing ancestor is a
    directory: :func:`create` makes the missing ones.
    """
    path = os.path.abspath(store)
    if os.path.lexists(path):
        return None if os.path.isdir(path) else "exists and is not a directory"
    probe = os.path.dirname(path)
    while not os.path.lexists(probe):
        probe = os.path.dirname(probe)
    if not os.path.isdir(probe):
        return "cannot be created: %s is not a directory" % probe
    return None


def create(store, index=True):
    """Make the store's directories: missing parents (mode 0755, as ``mkdir -p`` would), the store
    (0750) and ``blobs/sha256`` and ``images`` in it; with ``index``, an empty ``store.json`` when
    there is none (an unpack writes its own, last)."""
    path = os.path.abspath(store)
    missing = []
    probe = os.path.dirname(path)
    while not os.path.isdir(probe):
        missing.append(probe)
        probe = os.path.dirname(probe)
    for directory in reversed(missing):
        try:
            os.mkdir(directory, PARENT_MODE)
        except FileExistsError:
            pass
    if not os.path.isdir(path):
        try:
            os.mkdir(path, STORE_MODE)
        except FileExistsError:
            pass
    os.makedirs(os.path.join(path, BLOBS_DIR, "sha256"), exist_ok=True)
    os.makedirs(os.path.join(path, IMAGES_DIR), exist_ok=True)
    if index and not os.path.lexists(os.path.join(path, STORE_INDEX)):
        with StoreLock(path):
            if not os.path.lexists(os.path.join(path, STORE_INDEX)):
                write_index(path, empty_index())


def free_bytes(path):
    """Free bytes for an unprivileged writer on the filesystem of ``path`` (or its nearest existing parent)."""
    probe = os.path.abspath(path)
    while not os.path.exists(probe):
        parent = os.path.dirname(probe)
        if parent == probe:
            break
        probe = parent
    stat = os.statvfs(probe)
    return stat.f_bavail * stat.f_frsize
