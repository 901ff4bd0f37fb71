# Copyright: airgap.microshift contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""The image store (docs/store-format.md): names, index, blobs and completeness.

Plain functions with no Ansible dependency. ``image_download`` writes the store,
``image_bundle`` and ``image_upload`` read it.
"""

from __future__ import annotations

import datetime
import errno
import fcntl
import hashlib
import json
import os
import tempfile
import threading

from ansible_collections.airgap.microshift.plugins.module_utils._reference import parse_reference

STORE_FORMAT = 1
STORE_INDEX = "store.json"
BLOBS_DIR = "blobs"
IMAGES_DIR = "images"
LOCK_FILE = ".store.lock"
OCI_LAYOUT = {"imageLayoutVersion": "1.0.0"}

MEDIA_OCI_INDEX = "application/vnd.oci.image.index.v1+json"
MEDIA_OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MEDIA_DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
MEDIA_DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
INDEX_MEDIA_TYPES = (MEDIA_OCI_INDEX, MEDIA_DOCKER_LIST)
MANIFEST_MEDIA_TYPES = (MEDIA_OCI_MANIFEST, MEDIA_DOCKER_MANIFEST)


class StoreError(Exception):
    """A store that cannot be read or written; the message names the file."""


def empty_index():
    return {"format": STORE_FORMAT, "images": {}, "blobs": {}}


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
    algo, hexpart = digest.split(":", 1)
    return "/".join([BLOBS_DIR, algo, hexpart])


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


def sha256_file(path, chunk=1024 * 1024):
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while True:
            data = handle.read(chunk)
            if not data:
                break
            digest.update(data)
    return "sha256:" + digest.hexdigest()


def verify_blob(store, digest, size, check_digest=False):
    """``None`` when the blob is in place (and, with ``check_digest``, hashes to its name), else a reason."""
    actual = blob_size(store, digest)
    if actual is None:
        return "blob %s is missing" % digest
    if actual != size:
        return "blob %s has %d bytes instead of %d" % (digest, actual, size)
    if check_digest:
        found = sha256_file(blob_path(store, digest))
        if found != digest:
            return "blob %s has the content of %s" % (digest, found)
    return None


def write_bytes_atomic(path, data, mode=0o644):
    """Write ``data`` to ``path`` through a temporary file in the same directory and a rename."""
    directory = os.path.dirname(path)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=directory)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


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
    index = {"schemaVersion": 2, "manifests": [{"mediaType": media_type, "digest": digest, "size": size}]}
    write_bytes_atomic(os.path.join(directory, "index.json"), json.dumps(index).encode("utf-8"))
    # skopeo leaves an empty per-layout blobs/ directory when the shared blob directory is used
    try:
        os.rmdir(os.path.join(directory, "blobs"))
    except OSError:
        pass


def read_layout_digest(store, relpath):
    """Digest named by a layout's ``index.json``, or None when missing or unreadable."""
    try:
        with open(os.path.join(store, *(relpath.split("/") + ["index.json"])), "rb") as handle:
            index = json.loads(handle.read().decode("utf-8"))
        return index["manifests"][0]["digest"]
    except (OSError, ValueError, KeyError, IndexError, TypeError):
        return None


def validate_index(data, path):
    if not isinstance(data, dict):
        raise StoreError("%s is not a store index: it is not a JSON object" % path)
    if data.get("format") != STORE_FORMAT:
        raise StoreError("%s has format %r; this collection reads format %d" % (path, data.get("format"), STORE_FORMAT))
    if not isinstance(data.get("images"), dict) or not isinstance(data.get("blobs"), dict):
        raise StoreError("%s is not a store index: 'images' and 'blobs' must be objects" % path)
    return data


def read_index(store):
    """The store index of ``store``; an empty index when the store has none yet."""
    path = os.path.join(store, STORE_INDEX)
    try:
        with open(path, "rb") as handle:
            raw = handle.read()
    except OSError as exc:
        if exc.errno == errno.ENOENT:
            return empty_index()
        raise StoreError("cannot read %s: %s" % (path, exc.strerror))
    try:
        data = json.loads(raw.decode("utf-8"))
    except ValueError as exc:
        raise StoreError("%s is not valid JSON (%s)" % (path, exc))
    return validate_index(data, path)


def write_index(store, data):
    """Write the store index atomically (temporary file, fsync, rename)."""
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
    layout_digest = read_layout_digest(store, entry.get("layout", ""))
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


class StoreLock(object):
    """Serialise read-modify-write of ``store.json`` between threads and processes."""

    _thread_lock = threading.Lock()

    def __init__(self, store):
        self.path = os.path.join(store, LOCK_FILE)
        self.handle = None

    def __enter__(self):
        self._thread_lock.acquire()
        try:
            self.handle = open(self.path, "a")
            fcntl.flock(self.handle.fileno(), fcntl.LOCK_EX)
        except BaseException:
            self._thread_lock.release()
            raise
        return self

    def __exit__(self, *exc):
        try:
            fcntl.flock(self.handle.fileno(), fcntl.LOCK_UN)
            self.handle.close()
        finally:
            self._thread_lock.release()
        return False


def record_image(store, ref, entry):
    """Add ``entry`` for ``ref`` to the store index (and its blobs to ``blobs``), under the lock."""
    with StoreLock(store):
        index = read_index(store)
        index["images"][ref] = entry
        index["blobs"].update(image_blobs(entry))
        write_index(store, index)
        return index


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
