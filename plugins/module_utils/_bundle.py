# Copyright: airgap.microshift contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""Transfer sets: carry an image store across an air gap on removable media, signed.

Plain functions with no Ansible dependency, and the one owner of the transfer-set format
(docs/bundle-format.md); everything about the store inside it is asked of ``_store``. A
transfer set is a directory of volumes ``vol-001/``, ``vol-002/``... each small enough for one
medium. The operations are:

- :func:`pack`: store -> transfer set (whole blobs, or numbered parts of the blobs larger than
  a file may be, hashed while they are copied), ``bundle.json`` signed with the connected
  side's key (``bundle.json.sig``);
- :func:`verify`: the signature first, then the manifest's schema, then which files are there
  (anything the set does not list is reported and never opened), sizes, then the sha256 of every
  file, in parallel;
- :func:`unpack`: the same checks, then transfer set -> store, every blob checked before it is
  renamed into place, store.json checked against the manifest and merged last;
- :func:`make_receipt`: what the air-gapped store holds, carried back so the next set is a delta.

The medium is hostile: nothing on it is read before ``bundle.json`` verified against a trusted
key, only the paths pack itself writes are opened (never through a symbolic link, only regular
files of exactly the declared size), and every sentence of failure names the file.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import stat
import threading
from decimal import Decimal, InvalidOperation

from ansible_collections.airgap.microshift.plugins.module_utils import _files, _signing, _store, _strict, _workers
from ansible_collections.airgap.microshift.plugins.module_utils._reference import InvalidReference, parse_reference

FORMAT = 2
RECEIPT_FORMAT = 1
BUNDLE_KIND = "airgap.microshift.bundle"
RECEIPT_KIND = "airgap.microshift.receipt"
MANIFEST = "bundle.json"
SIGNATURE = "bundle.json.sig"
SUMS = "SHA256SUMS"
STORE_INDEX = _store.STORE_INDEX
BLOB_DIR = _store.BLOB_DIR
LAYOUT_FILES = _store.LAYOUT_FILES
BUFFER_SIZE = 8 * 1024 * 1024
TEMP_PREFIX = _files.TEMP_PREFIX
TEMP_SUFFIX = _files.TEMP_SUFFIX
MIN_VOLUME_SIZE = 64 * 1024
MAX_VOLUMES = 9999
# A base64 signature line of the largest supported key (ECDSA P-384) fits with room to spare.
SIGNATURE_RESERVE = 512
MAX_SIGNATURE_FILE = 8 * 1024
MAX_MANIFEST_FILE = _strict.MAX_LARGE_JSON

FAT32_MAX_FILE = 4 * 1024 ** 3 - 1
NAMED_SIZES = {
    "fat32": FAT32_MAX_FILE,
    "cd": 737_280_000,
    "dvd": 4_700_372_992,
    "dvd-dl": 8_543_666_176,
    "bd25": 25_025_314_816,
    "bd50": 50_050_629_632,
}
_UNITS = {
    "": 1, "b": 1,
    "k": 1000, "kb": 1000, "kib": 1024,
    "m": 1000 ** 2, "mb": 1000 ** 2, "mib": 1024 ** 2,
    "g": 1000 ** 3, "gb": 1000 ** 3, "gib": 1024 ** 3,
    "t": 1000 ** 4, "tb": 1000 ** 4, "tib": 1024 ** 4,
}
_SIZE_RE = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*([a-zA-Z]*)\s*$")
_HEX_RE = re.compile(r"^[a-f0-9]{64}$")
_DIGEST_RE = re.compile(r"^sha256:[a-f0-9]{64}$")
_VOLUME_RE = re.compile(r"^vol-([0-9]{3,})$")
_BLOB_PATH_RE = re.compile(r"^blobs/sha256/([a-f0-9]{64})$")
_PART_PATH_RE = re.compile(r"^blobs/sha256/([a-f0-9]{64})\.part-([0-9]{3,})$")
_BUNDLE_PATH_RE = re.compile(r"^layouts/[0-9]{4,}$")
# Portable on FAT32, exFAT, NTFS, ISO 9660 (Joliet/Rock Ridge), UDF and every POSIX filesystem.
_PORTABLE_COMPONENT_RE = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9._-]{0,99}$")
MAX_PORTABLE_PATH = 160


class BundleError(Exception):
    """A failure explained in one sentence; ``details`` carries lists for the caller to return."""

    def __init__(self, message, **details):
        super().__init__(message)
        self.details = details


class InvalidSize(BundleError):
    """A size option that is not a size."""


# ---------------------------------------------------------------- sizes and names


def parse_size(value, option="volume_size"):
    """Bytes from ``4GiB``, ``700MiB``, ``2G`` (decimal), ``4.7GB``, ``123`` or a medium name."""
    if isinstance(value, bool):
        raise InvalidSize("%s %r is not a size." % (option, value))
    if isinstance(value, int):
        size = value
    else:
        text = str(value).strip()
        if text.lower() in NAMED_SIZES:
            return NAMED_SIZES[text.lower()]
        match = _SIZE_RE.match(text)
        unit = match.group(2).lower() if match else None
        if not match or unit not in _UNITS:
            raise InvalidSize(
                "%s %r is not a size: use bytes, a number with a unit (700MiB, 4.7GB, 2G) or one of %s."
                % (option, value, ", ".join(sorted(NAMED_SIZES))))
        try:
            size = int(Decimal(match.group(1)) * _UNITS[unit])
        except InvalidOperation:
            raise InvalidSize("%s %r is not a size." % (option, value))
    if size < MIN_VOLUME_SIZE:
        raise InvalidSize("%s %r is smaller than the minimum of %d bytes (64KiB)." % (option, value, MIN_VOLUME_SIZE))
    return size


def volume_name(number):
    return "vol-%03d" % number


def volume_number(name):
    match = _VOLUME_RE.match(name)
    return int(match.group(1)) if match else None


def part_name(hexdigest, index):
    return "%s.part-%03d" % (hexdigest, index)


def is_portable_path(relpath):
    """True when every component of ``relpath`` is a name every filesystem accepts."""
    if not relpath or len(relpath) > MAX_PORTABLE_PATH or relpath.startswith("/"):
        return False
    return all(_PORTABLE_COMPONENT_RE.match(part) for part in relpath.split("/"))


def human_size(size):
    for unit, factor in (("GiB", 1024 ** 3), ("MiB", 1024 ** 2), ("KiB", 1024)):
        if size >= factor:
            return "%.1f %s" % (size / float(factor), unit)
    return "%d B" % size


# ---------------------------------------------------------------- small file helpers


def read_json(path, what, max_size=MAX_MANIFEST_FILE):
    """A JSON document of the connected side (a receipt, an earlier manifest), read strictly."""
    try:
        return _strict.read_json(os.path.dirname(os.path.abspath(path)), os.path.basename(path), "the %s %s" % (what, path),
                                 max_size=max_size)
    except _strict.OutsideDataError as exc:
        raise BundleError(_sentence(exc))


def _sentence(exc):
    text = str(exc)
    return text[0].upper() + text[1:] if text else text


def canonical_json(data):
    return (json.dumps(data, indent=1, sort_keys=True, separators=(",", ": ")) + "\n").encode("utf-8")


def sha256_bytes(data):
    return hashlib.sha256(data).hexdigest()


def sha256_file(path, buffer_size=BUFFER_SIZE):
    """``(hex, size)`` of a file of this side (the store, a volume being written)."""
    digest, size = _store.sha256_file(path, buffer_size)
    return digest[7:], size


def file_size(path):
    try:
        return os.stat(path).st_size
    except OSError:
        return None


def _discard(path):
    _files.discard(path)


def write_atomic(path, data, mode=0o644, synced_dirs=None):
    """Write ``data`` to ``path`` via a temp file in the same directory; False when already equal.

    With ``synced_dirs`` (a set), the caller fsyncs the directories once after a batch of writes.
    """
    if _files.same_content(path, data):
        return False
    os.makedirs(os.path.dirname(path), exist_ok=True)
    _files.write_file(path, data, mode=mode, prefix=TEMP_PREFIX + os.path.basename(path)[:16] + ".", synced_dirs=synced_dirs)
    return True


def _dir_lock(directory):
    """The lock serialising temp-file creation and cleanup in the volumes of ``dest``: a flock on ``dest`` itself."""
    return _files.DirLock(directory)


free_bytes = _store.free_bytes


def run_parallel(tasks, parallel):
    """Run callables on ``parallel`` threads (hashlib and file I/O release the GIL); results in order."""
    return _workers.run_parallel(tasks, parallel, lambda task: task())


# ---------------------------------------------------------------- the store


def _check_relpath(relpath, what):
    try:
        return _strict.check_relpath(relpath, what)
    except _strict.OutsideDataError as exc:
        raise BundleError(_sentence(exc))


def load_store(store, raw=False):
    """The validated store.json of ``store`` (see docs/store-format.md); with ``raw``, (index, bytes)."""
    path = os.path.join(store, STORE_INDEX)
    if not os.path.lexists(path):
        raise BundleError("Cannot read the store index %s: it does not exist." % path)
    try:
        index, data = _store.read_index(store, raw=True)
    except _store.StoreError as exc:
        raise BundleError("The store index is not valid: %s" % exc)
    return (index, data) if raw else index


def store_blob_state(store, blobs):
    """Split ``blobs`` (digest -> size) into (present, missing, wrong_size) by a stat of each file."""
    present, missing, wrong = {}, [], []
    for digest, size in blobs.items():
        actual = file_size(_store.blob_path(store, digest))
        if actual is None:
            missing.append(digest)
        elif actual != size:
            wrong.append(digest)
        else:
            present[digest] = size
    return present, sorted(missing), sorted(wrong)


# ---------------------------------------------------------------- what the far side holds


def _blob_map(value, where):
    """A ``{digest: size}`` map read from outside, checked entry by entry."""
    if not isinstance(value, dict):
        raise BundleError("%s is not a map of blobs to sizes." % where)
    for digest, size in value.items():
        try:
            _strict.check_digest(digest, where)
            _strict.check_type(size, "size", "%s, blob %s" % (where, digest))
        except _strict.OutsideDataError as exc:
            raise BundleError(_sentence(exc))
    return value


def held_from_receipt(path):
    receipt = read_json(path, "receipt")
    if not isinstance(receipt, dict) or receipt.get("kind") != RECEIPT_KIND or not isinstance(receipt.get("blobs"), dict):
        raise BundleError("The file %s is not an airgap.microshift receipt." % path)
    held = _blob_map(receipt["blobs"], "The receipt %s" % path)
    base = {"kind": "receipt", "id": _text(receipt.get("receipt_id")), "file": os.path.basename(path),
            "release": _text(receipt.get("release"))}
    return dict(held), base


def _text(value):
    return value[:200] if isinstance(value, str) else None


def held_from_manifest(path):
    manifest = read_json(path, "bundle manifest")
    if not isinstance(manifest, dict) or manifest.get("kind") != BUNDLE_KIND or not isinstance(manifest.get("blobs"), dict):
        raise BundleError("The file %s is not an airgap.microshift bundle manifest." % path)
    held = {}
    for digest, entry in manifest["blobs"].items():
        if not isinstance(entry, dict):
            raise BundleError("The bundle manifest %s lists blob %r without a record." % (path, digest[:80]))
        held[digest] = entry.get("size")
    _blob_map(held, "The bundle manifest %s" % path)
    held.update(_blob_map(manifest.get("base_blobs") or {}, "The bundle manifest %s, base_blobs" % path))
    base = {"kind": "bundle", "id": _text(manifest.get("bundle_id")), "file": os.path.basename(path),
            "release": _text(manifest.get("release"))}
    return held, base


# ---------------------------------------------------------------- planning


def _pack_items(items, capacities, capacity):
    """First-fit decreasing: items (name, size) into volumes; ``capacities`` holds the first volumes' room."""
    rooms = list(capacities)
    placement = {}
    for name, size in sorted(items, key=lambda item: (-item[1], item[0])):
        for index, room in enumerate(rooms):
            if size <= room:
                rooms[index] -= size
                placement[name] = index
                break
        else:
            rooms.append(capacity - size)
            placement[name] = len(rooms) - 1
    return placement, len(rooms)


def _sums_text(records):
    return "".join("%s  %s\n" % (sha, path) for path, sha in records)


def plan_pack(store, index, volume_size=None, part_size=FAT32_MAX_FILE, held=None, base=None,
              release=None, versions=None, store_json=None):
    """The whole transfer set, decided before anything is written.

    Returns a dict: ``manifest`` (bundle.json without the part hashes, which are known only once
    the parts are copied), ``files`` per volume and ``extras`` (store.json and layouts).
    """
    held = held or {}
    if volume_size is not None and volume_size < MIN_VOLUME_SIZE:
        raise BundleError("volume_size %d is smaller than the minimum of %d bytes (64KiB)." % (volume_size, MIN_VOLUME_SIZE))
    carried = dict((d, s) for d, s in index["blobs"].items() if d not in held)
    base_blobs = dict((d, s) for d, s in index["blobs"].items() if d in held)

    # Metadata carried in vol-001: store.json and one numbered directory per image layout, so a
    # registry or repository name never becomes a path on the medium (case-insensitive
    # filesystems, long names, odd characters).
    # store.json travels byte for byte, so a store rebuilt from a full set is identical to its source.
    if store_json is None:
        store_json = canonical_json(index)
    extras = [(STORE_INDEX, store_json)]
    images = {}
    for number, ref in enumerate(sorted(index["images"]), 1):
        image = index["images"][ref]
        bundle_dir = "layouts/%04d" % number
        files = {}
        for name in LAYOUT_FILES:
            try:
                data = _strict.read_file(store, "%s/%s" % (image["layout"], name), max_size=_store.MAX_LAYOUT_FILE)
            except _strict.OutsideDataError as exc:
                raise BundleError("The store %s lacks a readable %s/%s for image %s: %s" % (store, image["layout"], name, ref, exc))
            files[name] = data
            extras.append(("%s/%s" % (bundle_dir, name), data))
        try:
            _store.check_layout_files(files["oci-layout"], files["index.json"], image, "%s/%s" % (store, image["layout"]))
        except _store.StoreError as exc:
            raise BundleError("The store %s has a layout that does not describe image %s: %s" % (store, ref, exc))
        images[ref] = {"digest": image.get("digest"), "layout": image["layout"], "bundle_path": bundle_dir,
                       "size": image.get("size"),
                       "files": dict((name, {"size": len(data), "sha256": sha256_bytes(data)}) for name, data in files.items())}
    extra_bytes = sum(len(data) for _name, data in extras)

    unlimited = volume_size is None
    reserve = 0
    for _attempt in range(8):
        if unlimited:
            # one volume: room for every blob (whole or in parts) next to the metadata of vol-001
            capacity = sum(carried.values()) + extra_bytes + 1
        else:
            capacity = volume_size - reserve
            if capacity - extra_bytes <= 0:
                raise BundleError("volume_size %d bytes cannot hold the bundle metadata (%d bytes): choose a larger volume_size."
                                  % (volume_size, reserve + extra_bytes))
        chunk = min(part_size, capacity)
        items = []
        parts = {}
        for digest, size in carried.items():
            hexdigest = digest.split(":", 1)[1]
            if size <= chunk:
                items.append((digest, size))
                continue
            parts[digest] = []
            offset = 0
            number = 1
            while offset < size:
                length = min(chunk, size - offset)
                name = part_name(hexdigest, number)
                parts[digest].append({"name": name, "offset": offset, "size": length})
                items.append((name, length))
                offset += length
                number += 1
        placement, count = _pack_items(items, [capacity - extra_bytes], capacity)
        count = max(count, 1)
        volumes = [{"name": volume_name(n + 1), "files": []} for n in range(count)]
        blob_records = {}
        for digest in sorted(carried):
            size = carried[digest]
            hexdigest = digest.split(":", 1)[1]
            if digest not in parts:
                vol = volumes[placement[digest]]
                path = "%s/%s" % (BLOB_DIR, hexdigest)
                vol["files"].append({"path": path, "size": size, "sha256": hexdigest, "blob": digest, "offset": 0})
                blob_records[digest] = {"size": size, "volume": vol["name"], "path": path}
            else:
                records = []
                for part in parts[digest]:
                    vol = volumes[placement[part["name"]]]
                    path = "%s/%s" % (BLOB_DIR, part["name"])
                    vol["files"].append({"path": path, "size": part["size"], "sha256": None, "blob": digest,
                                         "offset": part["offset"]})
                    records.append({"volume": vol["name"], "path": path, "offset": part["offset"],
                                    "size": part["size"], "sha256": None})
                blob_records[digest] = {"size": size, "parts": records}
        for name, data in extras:
            volumes[0]["files"].append({"path": name, "size": len(data), "sha256": sha256_bytes(data), "blob": None,
                                        "offset": 0})
        for vol in volumes:
            vol["files"].sort(key=lambda f: f["path"])
            vol["bytes"] = sum(f["size"] for f in vol["files"])

        manifest = {
            "format": FORMAT,
            "kind": BUNDLE_KIND,
            "release": release,
            "versions": list(versions or []),
            "delta": bool(base),
            "base": base,
            "base_blobs": base_blobs,
            "volume_size": volume_size,
            "part_size": part_size,
            "volume_count": count,
            "images": images,
            "blobs": blob_records,
            "store_json": {"volume": volumes[0]["name"], "path": STORE_INDEX, "sha256": sha256_bytes(store_json),
                           "size": len(store_json)},
            "unique_bytes": sum(carried.values()),
            "store_bytes": sum(index["blobs"].values()),
            "volumes": dict((vol["name"], {"bytes": vol["bytes"], "files": len(vol["files"])}) for vol in volumes),
        }
        manifest["bundle_id"] = bundle_id(manifest)
        # Metadata size with placeholder hashes: hashes are fixed-length, so the real one is the same size.
        sized = fill_part_hashes(manifest, [], dict((f["path"], "0" * 64) for v in volumes for f in v["files"]
                                                    if f["sha256"] is None))
        manifest_size = len(canonical_json(sized))
        worst = 0
        for vol in volumes:
            records = [(f["path"], "0" * 64) for f in vol["files"]] + [(MANIFEST, "0" * 64)]
            overhead = manifest_size + len(_sums_text(records).encode("utf-8")) + SIGNATURE_RESERVE
            vol["overhead"] = overhead
            worst = max(worst, overhead)
        if unlimited or all(vol["bytes"] + vol["overhead"] <= volume_size for vol in volumes):
            break
        reserve = worst + 4096
    else:
        raise BundleError("Could not fit the bundle into volumes of %d bytes: choose a larger volume_size." % volume_size)
    for vol in volumes:
        vol["total_bytes"] = vol["bytes"] + vol["overhead"]
    for name, _data in extras:
        if not is_portable_path(name):
            raise BundleError("The bundle path %s is not portable." % name)
    return {"manifest": manifest, "volumes": volumes, "extras": dict(extras)}


def bundle_id(manifest):
    """Content address of a transfer set: same store, options and base give the same id."""
    content = dict((k, manifest[k]) for k in ("release", "versions", "base", "base_blobs", "volume_size", "part_size",
                                              "images", "store_json"))
    content["blobs"] = dict((d, r["size"]) for d, r in manifest["blobs"].items())
    return "sha256:" + sha256_bytes(canonical_json(content))


def fill_part_hashes(manifest, volumes, hashes):
    """A copy of ``manifest`` with the part hashes (path -> hex) filled in; ``volumes`` files updated too."""
    filled = json.loads(json.dumps(manifest))
    for record in filled["blobs"].values():
        for part in record.get("parts", ()):
            if part["path"] in hashes:
                part["sha256"] = hashes[part["path"]]
    for vol in volumes:
        for entry in vol["files"]:
            if entry["sha256"] is None and entry["path"] in hashes:
                entry["sha256"] = hashes[entry["path"]]
    return filled


# ---------------------------------------------------------------- signing


def load_signing_key(path, passphrase=None):
    """The private key that signs transfer sets; BundleError naming the file when it cannot be used."""
    try:
        return _signing.read_private_key(path, passphrase)
    except _signing.SigningError as exc:
        raise BundleError(str(exc))


def load_trusted_keys(paths):
    """The public keys a transfer set may be signed with (several at once during a key rotation)."""
    try:
        return _signing.read_public_keys(paths or [])
    except _signing.SigningError as exc:
        raise BundleError(str(exc))


def _signature_for(path, manifest_bytes, key):
    """The signature file content to write: the one already at ``path`` when it still verifies (idempotence)."""
    public = key.public_key()
    try:
        with open(path, "rb") as handle:
            current = handle.read(MAX_SIGNATURE_FILE + 1)
        if _signing.verify(public, _signing.decode_signature(current), manifest_bytes):
            return current
    except (OSError, _signing.SigningError):
        pass
    return _signing.encode_signature(_signing.sign(key, manifest_bytes))


# ---------------------------------------------------------------- pack


def _previous_records(dest):
    """Files a previous run recorded at ``dest``: (volume, path) -> (size, sha256, blob, offset).

    Hints only (a file is still checked by size, and the set is verified on the far side), read
    from this side's own earlier output; a manifest that cannot be read is ignored.
    """
    records = {}
    try:
        names = os.listdir(dest)
    except OSError:
        return records
    for name in names:
        if volume_number(name) is None:
            continue
        try:
            manifest = _strict.read_json(dest, "%s/%s" % (name, MANIFEST), max_size=MAX_MANIFEST_FILE)
            if not isinstance(manifest, dict) or manifest.get("kind") != BUNDLE_KIND:
                continue
            for digest, record in manifest.get("blobs", {}).items():
                if "parts" in record:
                    for part in record["parts"]:
                        if part.get("sha256"):
                            records[(part["volume"], part["path"])] = (part["size"], part["sha256"], digest, part["offset"])
                else:
                    records[(record["volume"], record["path"])] = (record["size"], digest.split(":", 1)[1], digest, 0)
        except (_strict.OutsideDataError, AttributeError, KeyError, TypeError, ValueError):
            continue
    return records


def _complete(path, entry, previous, volume):
    """True when ``path`` already holds ``entry``: by the previous record, else by hashing it."""
    size = file_size(path)
    if size != entry["size"]:
        return False, None
    record = previous.get((volume, entry["path"]))
    if record and record[0] == entry["size"] and record[2] == entry["blob"] and record[3] == entry["offset"]:
        if entry["sha256"] is None or entry["sha256"] == record[1]:
            return True, record[1]
    sha, _size = sha256_file(path)
    if entry["sha256"] is not None:
        return sha == entry["sha256"], sha
    return False, None


class _Stats:
    def __init__(self):
        self.lock = threading.Lock()
        self.files_written = 0
        self.bytes_written = 0
        self.files_skipped = 0
        self.bytes_read = 0

    def add(self, written=0, nbytes=0, skipped=0, read=0):
        with self.lock:
            self.files_written += written
            self.bytes_written += nbytes
            self.files_skipped += skipped
            self.bytes_read += read


def _copy_blob(source, digest, targets, stats, lock, link=False):
    """Copy one store blob into its target files, hashing as it goes.

    ``targets``: list of (path or None, entry) in offset order; None means "not written in this
    run" (a volume left out), but the bytes are still read so the blob's digest is checked.
    Every target is written under a locked temporary name and renamed once the whole blob's
    digest matched. Returns (part hashes {path: hex}, error sentence or None).
    """
    hexdigest = digest.split(":", 1)[1]
    if link and len(targets) == 1 and targets[0][0] is not None:
        actual, _size = sha256_file(source)
        stats.add(read=_size)
        if actual != hexdigest:
            return {}, "blob %s in %s is corrupt (its sha256 is %s)" % (digest, source, actual)
        path = targets[0][0]
        try:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with lock:
                temp = os.path.join(os.path.dirname(path), TEMP_PREFIX + hexdigest[:16] + ".link" + TEMP_SUFFIX)
                _discard(temp)
                os.link(source, temp)
                os.rename(temp, path)
            stats.add(written=1)
            return {}, None
        except OSError as exc:
            if exc.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP):
                raise
    whole = hashlib.sha256()
    part_hashes = {}
    buf = bytearray(BUFFER_SIZE)
    view = memoryview(buf)
    temps = []
    try:
        with open(source, "rb", buffering=0) as src:
            for path, entry in targets:
                part_hash = hashlib.sha256()
                remaining = entry["size"]
                handle = None
                if path is not None:
                    os.makedirs(os.path.dirname(path), exist_ok=True)
                    handle, temp = _files.open_temp(os.path.dirname(path), os.path.basename(path), lock)
                    temps.append((handle, temp, path))
                while remaining:
                    count = src.readinto(view[:min(BUFFER_SIZE, remaining)])
                    if not count:
                        return {}, "blob %s in %s is shorter than the store index says (%d bytes)" % (
                            digest, source, entry["offset"] + entry["size"])
                    chunk = view[:count]
                    whole.update(chunk)
                    part_hash.update(chunk)
                    if handle is not None:
                        handle.write(chunk)
                    remaining -= count
                if handle is not None:
                    os.fsync(handle.fileno())
                part_hashes[entry["path"]] = part_hash.hexdigest()
            if src.read(1):
                return {}, "blob %s in %s is longer than the store index says" % (digest, source)
        stats.add(read=sum(entry["size"] for _p, entry in targets))
        if whole.hexdigest() != hexdigest:
            return {}, "blob %s in %s is corrupt (its sha256 is %s)" % (digest, source, whole.hexdigest())
        # Renamed while still open and locked: the stale-temp cleanup of another run never sees them unlocked.
        for handle, temp, path in temps:
            os.chmod(temp, 0o644)
            os.rename(temp, path)
            stats.add(written=1, nbytes=file_size(path) or 0)
        renamed, temps = temps, []
        for handle, _temp, _path in renamed:
            handle.close()
        return part_hashes, None
    finally:
        for handle, temp, _path in temps:
            handle.close()
            _discard(temp)


def pack(store, dest, volume_size=None, part_size=FAT32_MAX_FILE, receipt=None, base=None, release=None,
         versions=None, parallel=4, link=False, only_volumes=None, check_mode=False, signing_key=None):
    """Turn ``store`` into a transfer set at ``dest``, signed with ``signing_key`` (a loaded private key).

    Without a key the set is unsigned (the caller decides whether that is allowed). Returns a
    result dict (``changed`` and the plan).
    """
    index, store_json = load_store(store, raw=True)
    held, base_info = {}, None
    if receipt:
        held, base_info = held_from_receipt(receipt)
    elif base:
        held, base_info = held_from_manifest(base)
    present, missing, wrong = store_blob_state(store, index["blobs"])
    if missing or wrong:
        names = missing + wrong
        raise BundleError("The store %s lacks %d blob(s) or holds them with a wrong size: %s." % (
            store, len(names), ", ".join(names[:5]) + (" ..." if len(names) > 5 else "")),
            missing_blobs=missing, wrong_size_blobs=wrong)
    plan = plan_pack(store, index, volume_size, part_size, held, base_info, release, versions, store_json)
    manifest = plan["manifest"]
    volumes = plan["volumes"]
    if len(volumes) > MAX_VOLUMES:
        raise BundleError("The set would have %d volumes, more than %d: choose a larger volume_size." % (len(volumes), MAX_VOLUMES))
    selected = set(volume_name(n) for n in only_volumes) if only_volumes else set(v["name"] for v in volumes)
    unknown = sorted(selected - set(v["name"] for v in volumes))
    if unknown:
        raise BundleError("The bundle has %d volume(s); %s do(es) not exist." % (len(volumes), ", ".join(unknown)))

    previous = _previous_records(dest)
    # What is already in place (a rerun, or a crashed run resumed): size first, then the record or a hash.
    todo = {}
    known_hashes = {}
    for vol in volumes:
        if vol["name"] not in selected:
            continue
        for entry in vol["files"]:
            if entry["blob"] is None:
                continue
            path = os.path.join(dest, vol["name"], entry["path"])
            done, sha = _complete(path, entry, previous, vol["name"])
            if done:
                if entry["sha256"] is None:
                    known_hashes[entry["path"]] = sha
                continue
            todo.setdefault(entry["blob"], []).append(entry["path"])
    bytes_to_write = 0
    files_to_write = 0
    for vol in volumes:
        if vol["name"] in selected:
            for entry in vol["files"]:
                if entry["blob"] is not None and entry["path"] in todo.get(entry["blob"], ()):
                    bytes_to_write += entry["size"]
                    files_to_write += 1
    result = {
        "bundle_id": manifest["bundle_id"],
        "delta": manifest["delta"],
        "base": manifest["base"],
        "volume_count": manifest["volume_count"],
        "volumes": [{"name": v["name"], "bytes": v["total_bytes"], "files": len(v["files"]) + (3 if signing_key else 2),
                     "blobs": len(set(f["blob"] for f in v["files"] if f["blob"]))} for v in volumes],
        "blobs": len(manifest["blobs"]),
        "parts": sum(len(r.get("parts", ())) for r in manifest["blobs"].values()),
        "base_blobs": len(manifest["base_blobs"]),
        "images": len(manifest["images"]),
        "unique_bytes": manifest["unique_bytes"],
        "bytes": sum(v["total_bytes"] for v in volumes),
        "files_to_write": files_to_write,
        "bytes_to_write": bytes_to_write,
        "dest": dest,
        "signed_by": _signing.fingerprint(signing_key.public_key()) if signing_key else None,
    }

    if not check_mode:
        needed = bytes_to_write + sum(v["overhead"] for v in volumes if v["name"] in selected)
        if not link:
            free = free_bytes(dest)
            if needed > free:
                raise BundleError("The destination %s has %d bytes (%s) free but the bundle needs %d bytes (%s)." % (
                    dest, free, human_size(free), needed, human_size(needed)), needed=needed, free=free)
    if check_mode:
        result["changed"] = bool(files_to_write) or _metadata_changes(dest, plan, selected, known_hashes, signing_key)
        return result

    os.makedirs(dest, exist_ok=True)
    lock = _dir_lock(dest)
    for vol in volumes:
        if vol["name"] in selected:
            vol_dir = os.path.join(dest, vol["name"])
            os.makedirs(os.path.join(vol_dir, BLOB_DIR), exist_ok=True)
            _files.remove_stale_temps(os.path.join(vol_dir, BLOB_DIR), lock)
            _files.remove_stale_temps(vol_dir, lock)
    stats = _Stats()
    tasks = []
    errors = []
    for digest in sorted(todo, key=lambda d: -index["blobs"][d]):
        record = manifest["blobs"][digest]
        wanted = set(todo[digest])
        if "parts" in record:
            entries = [(r["volume"], {"path": r["path"], "size": r["size"], "offset": r["offset"]}) for r in record["parts"]]
        else:
            entries = [(record["volume"], {"path": record["path"], "size": record["size"], "offset": 0})]
        targets = [(os.path.join(dest, vol, entry["path"]) if (vol in selected and entry["path"] in wanted) else None, entry)
                   for vol, entry in entries]

        def task(digest=digest, targets=targets):
            return _copy_blob(_store.blob_path(store, digest), digest, targets, stats, lock, link=link)
        tasks.append(task)
    for part_hashes, error in run_parallel(tasks, parallel):
        known_hashes.update(part_hashes)
        if error:
            errors.append(error)
    # The renames of this run survive a power cut once their directories are fsynced (once each, not per blob).
    for vol in volumes:
        if vol["name"] in selected:
            _files.fsync_dir(os.path.join(dest, vol["name"], BLOB_DIR))
    if errors:
        raise BundleError("Packing %s failed: %s." % (store, "; ".join(sorted(errors))), corrupt=sorted(errors))

    changed = stats.files_written > 0
    final = fill_part_hashes(manifest, volumes, known_hashes)
    unknown_parts = [f for v in volumes for f in v["files"] if f["sha256"] is None]
    if unknown_parts:
        # Parts in volumes left out of this run (the volumes option): hash their range of the store blob.
        hashes = run_parallel([(lambda f=f: (f["path"], _range_sha256(_store.blob_path(store, f["blob"]), f["offset"], f["size"])))
                               for f in unknown_parts], parallel)
        final = fill_part_hashes(manifest, volumes, dict(hashes))
    manifest_bytes = canonical_json(final)
    synced = set()
    for vol in volumes:
        if vol["name"] not in selected:
            continue
        vol_dir = os.path.join(dest, vol["name"])
        for name, data in plan["extras"].items() if vol is volumes[0] else ():
            changed |= write_atomic(os.path.join(vol_dir, name), data, synced_dirs=synced)
        changed |= write_atomic(os.path.join(vol_dir, SUMS), sums_bytes(vol["files"], manifest_bytes), synced_dirs=synced)
        signature_path = os.path.join(vol_dir, SIGNATURE)
        if signing_key is not None:
            # The signature before the manifest: a crash between them leaves a set that does not verify.
            changed |= write_atomic(signature_path, _signature_for(signature_path, manifest_bytes, signing_key), synced_dirs=synced)
        elif os.path.lexists(signature_path):
            _discard(signature_path)
            changed = True
        for directory in sorted(synced):
            _files.fsync_dir(directory)
        synced.clear()
        # bundle.json last, durably: a volume with a manifest has every file it lists.
        changed |= write_atomic(os.path.join(vol_dir, MANIFEST), manifest_bytes)
        changed |= _prune(vol_dir, set(f["path"] for f in vol["files"]) | {MANIFEST, SUMS, SIGNATURE})
    result.update({
        "changed": changed,
        "files_written": stats.files_written,
        "bytes_written": stats.bytes_written,
        "bytes_read": stats.bytes_read,
    })
    return result


def sums_bytes(files, manifest_bytes):
    """The ``SHA256SUMS`` of a volume: every data file and ``bundle.json``, sorted by path."""
    records = [(f["path"], f["sha256"]) for f in files] + [(MANIFEST, sha256_bytes(manifest_bytes))]
    return _sums_text(sorted(records)).encode("utf-8")


def _range_sha256(path, offset, size):
    digest = hashlib.sha256()
    with open(path, "rb", buffering=0) as handle:
        handle.seek(offset)
        while size:
            data = handle.read(min(BUFFER_SIZE, size))
            if not data:
                break
            digest.update(data)
            size -= len(data)
    return digest.hexdigest()


def _metadata_changes(dest, plan, selected, known_hashes, signing_key):
    """Check mode: would the metadata files change? (data files are already known to be in place)"""
    volumes = plan["volumes"]
    if any(f["sha256"] is None and f["path"] not in known_hashes for v in volumes for f in v["files"]):
        return True
    final = fill_part_hashes(plan["manifest"], [dict(v, files=[dict(f) for f in v["files"]]) for v in volumes], known_hashes)
    manifest_bytes = canonical_json(final)
    for vol in volumes:
        if vol["name"] not in selected:
            continue
        if not _files.same_content(os.path.join(dest, vol["name"], MANIFEST), manifest_bytes):
            return True
        signature_path = os.path.join(dest, vol["name"], SIGNATURE)
        if signing_key is None:
            if os.path.lexists(signature_path):
                return True
        elif not _files.same_content(signature_path, _signature_for(signature_path, manifest_bytes, signing_key)):
            return True
    return False


def _prune(vol_dir, keep):
    """Remove files a previous, different plan left in one volume directory (ours only)."""
    changed = False
    for root, dirs, files in os.walk(vol_dir, topdown=False):
        for name in files:
            rel = os.path.relpath(os.path.join(root, name), vol_dir).replace(os.sep, "/")
            if rel not in keep and (rel.startswith(BLOB_DIR + "/") or rel.startswith("layouts/") or rel == STORE_INDEX):
                _discard(os.path.join(root, name))
                changed = True
        for name in dirs:
            try:
                os.rmdir(os.path.join(root, name))
            except OSError:
                pass
    return changed


# ---------------------------------------------------------------- reading a transfer set


def find_volumes(sources):
    """Volume directories under ``sources`` (volume dirs themselves or folders holding them): name -> path.

    A ``vol-NNN`` entry that is a symbolic link or not a directory is refused, never followed.
    """
    found = {}
    for source in sources:
        source = os.path.abspath(source)
        if not os.path.isdir(source):
            raise BundleError("The source %s is not a directory." % source)
        if volume_number(os.path.basename(source)) is not None and os.path.lexists(os.path.join(source, MANIFEST)):
            candidates = [source]
        else:
            try:
                names = sorted(os.listdir(source))
            except OSError as exc:
                raise BundleError("Cannot list the source %s: %s." % (source, exc.strerror or exc))
            candidates = [os.path.join(source, name) for name in names if volume_number(name) is not None]
        for path in candidates:
            mode = os.lstat(path).st_mode
            if not stat.S_ISDIR(mode):
                raise BundleError("%s is %s, not a volume directory; it was not opened." % (path, _strict._describe_mode(mode)))
            if os.path.lexists(os.path.join(path, MANIFEST)):
                found.setdefault(os.path.basename(path), path)
    if not found:
        raise BundleError("No bundle volume (a vol-NNN directory with a %s) was found under %s." % (MANIFEST, ", ".join(sources)))
    return found


def _vol_read(found, name, rel, size=None, max_size=None):
    """Bytes of ``<volume>/<rel>`` read strictly (the volume directory itself not followed as a link)."""
    path = found[name]
    return _strict.read_file(os.path.dirname(path), "%s/%s" % (os.path.basename(path), rel), "%s/%s" % (name, rel),
                             size=size, max_size=max_size)


def _vol_open(found, name, rel, size):
    path = found[name]
    return _strict.open_regular(os.path.dirname(path), "%s/%s" % (os.path.basename(path), rel), size=size, what="%s/%s" % (name, rel))


def check_signatures(found, trusted_keys, allow_unsigned):
    """Read every volume's ``bundle.json`` and check its signature, before anything else is read.

    Returns ``(manifest bytes, signer fingerprint or None, warnings)``. Raises BundleError naming
    the volume when a signature is missing (unless allowed), does not verify, or when the
    volumes' manifests differ (volumes of different sets).
    """
    warnings = []
    raw = {}
    signer = None
    unsigned = []
    for name in sorted(found):
        try:
            data = _vol_read(found, name, MANIFEST, max_size=MAX_MANIFEST_FILE)
        except _strict.OutsideDataError as exc:
            raise BundleError("The transfer set cannot be read: %s" % exc, corrupt=["%s/%s" % (name, MANIFEST)])
        sig_rel = "%s/%s" % (name, SIGNATURE)
        if not os.path.lexists(os.path.join(found[name], SIGNATURE)):
            unsigned.append(name)
            raw[name] = data
            continue
        if not trusted_keys:
            raw[name] = data
            continue
        try:
            signature = _signing.decode_signature(_vol_read(found, name, SIGNATURE, max_size=MAX_SIGNATURE_FILE), sig_rel)
        except (_strict.OutsideDataError, _signing.SigningError) as exc:
            raise BundleError("The signature %s cannot be read: %s" % (sig_rel, exc), corrupt=[sig_rel])
        key = _signing.verify_any(trusted_keys, signature, data)
        if key is None:
            raise BundleError(
                "%s/%s does not match its signature %s under any of the %d trusted key(s): it was changed after signing, "
                "or signed with a key this side does not trust; nothing else on the medium was read." % (name, MANIFEST, sig_rel, len(trusted_keys)),
                corrupt=["%s/%s" % (name, MANIFEST)])
        signer = _signing.fingerprint(key)
        raw[name] = data
    if unsigned and not allow_unsigned:
        raise BundleError(
            "The transfer set is not signed (%s/%s is missing): pack it with a signing key, or set allow_unsigned to accept a set "
            "whose origin is not checked." % (unsigned[0], SIGNATURE), missing=["%s/%s" % (n, SIGNATURE) for n in unsigned])
    if unsigned:
        warnings.append("The transfer set is not signed (%s): its origin was not checked, as allow_unsigned asks." % ", ".join(
            "%s/%s is missing" % (n, SIGNATURE) for n in unsigned))
    elif not trusted_keys:
        if not allow_unsigned:
            raise BundleError("No trusted key was given to check the transfer set's signature: give the connected side's public key "
                              "(trusted_keys), or set allow_unsigned to accept a set whose origin is not checked.")
        warnings.append("The transfer set's signature was not checked (no trusted key was given), as allow_unsigned asks.")
    first = sorted(raw)[0]
    for name in sorted(raw):
        if raw[name] != raw[first]:
            ids = {}
            for vol in (first, name):
                try:
                    ids[vol] = str(parse_manifest(raw[vol], "%s/%s" % (vol, MANIFEST)).get("bundle_id"))
                except BundleError:
                    ids[vol] = "an unreadable manifest"
            raise BundleError("The volumes under %s belong to different bundles: %s holds %s, %s holds %s." % (
                ", ".join(sorted(set(os.path.dirname(p) for p in found.values()))), first, ids[first], name, ids[name]),
                corrupt=["%s/%s" % (name, MANIFEST)])
    return raw[first], signer, warnings


def _manifest_error(what, exc):
    raise BundleError("The bundle manifest %s is not valid: %s" % (what, exc))


def parse_manifest(data, what):
    """A transfer-set manifest from its bytes, schema-checked (docs/bundle-format.md); BundleError naming ``what``."""
    try:
        manifest = _strict.load_json(data, what, max_size=MAX_MANIFEST_FILE)
        if not isinstance(manifest, dict) or manifest.get("kind") != BUNDLE_KIND:
            raise BundleError("The file %s is not an airgap.microshift bundle manifest." % what)
        if manifest.get("format") != FORMAT:
            raise BundleError("The bundle manifest %s has format %r; this collection reads format %d (pack the set again with it)."
                              % (what, manifest.get("format"), FORMAT))
        _validate_manifest(manifest, what)
    except _strict.OutsideDataError as exc:  # StoreError included
        _manifest_error(what, exc)
    return manifest


def _validate_manifest(manifest, what):
    field = _strict.field
    # Keys whose value may be null must still be present: the bundle_id covers them.
    for key in ("release", "base", "volume_size"):
        if key not in manifest:
            raise BundleError("The bundle manifest %s lacks the key %r." % (what, key))
    field(manifest, "bundle_id", "digest", what)
    count = field(manifest, "volume_count", "integer", what)
    if not 1 <= count <= MAX_VOLUMES:
        raise BundleError("The bundle manifest %s declares %d volumes." % (what, count))
    names = [volume_name(n + 1) for n in range(count)]
    volumes = field(manifest, "volumes", "object", what)
    if sorted(volumes) != names:
        raise BundleError("The bundle manifest %s lists volumes that are not vol-001 to %s." % (what, names[-1]))
    for name in names:
        field(field(volumes, name, "object", what), "bytes", "size", "%s, %s" % (what, name))
    for key in ("release",):
        field(manifest, key, "string", what, optional=True)
    for version in field(manifest, "versions", "list", what):
        _strict.check_type(version, "string", what + ", versions")
    field(manifest, "delta", "boolean", what)
    field(manifest, "base", "object", what, optional=True)
    _blob_map(field(manifest, "base_blobs", "object", what), "The bundle manifest %s, base_blobs" % what)
    field(manifest, "volume_size", "size", what, optional=True)
    field(manifest, "part_size", "size", what)
    field(manifest, "unique_bytes", "size", what)
    field(manifest, "store_bytes", "size", what)
    store_json = field(manifest, "store_json", "object", what)
    if field(store_json, "volume", "string", what + ", store_json") != names[0] or \
            field(store_json, "path", "string", what + ", store_json") != STORE_INDEX:
        raise BundleError("The bundle manifest %s places store.json elsewhere than vol-001/store.json." % what)
    field(store_json, "size", "size", what + ", store_json")
    _check_hex(field(store_json, "sha256", "string", what + ", store_json"), what + ", store_json")
    numbers = set()
    for ref, image in field(manifest, "images", "object", what).items():
        where = "%s, image %s" % (what, ref[:200])
        try:
            parsed = parse_reference(ref)
        except InvalidReference as exc:
            raise BundleError("The bundle manifest %s lists an image that is not a reference: %s." % (what, exc))
        _strict.check_type(image, "object", where)
        digest = field(image, "digest", "digest", where)
        if parsed.digest and parsed.digest != digest:
            raise BundleError("%s: the reference pins %s but the manifest records %s." % (where, parsed.digest, digest))
        if field(image, "layout", "string", where) != _store.layout_path(ref):
            raise BundleError("%s: the layout %r is not the image's own, %s." % (where, image["layout"][:200], _store.layout_path(ref)))
        bundle_path = field(image, "bundle_path", "string", where)
        if not _BUNDLE_PATH_RE.match(bundle_path) or bundle_path in numbers:
            raise BundleError("%s: bundle_path %r is not a layouts/NNNN directory of its own." % (where, bundle_path[:100]))
        numbers.add(bundle_path)
        field(image, "size", "size", where, optional=True)
        files = field(image, "files", "object", where)
        if sorted(files) != sorted(LAYOUT_FILES):
            raise BundleError("%s: the layout files are not exactly %s." % (where, " and ".join(LAYOUT_FILES)))
        for name in LAYOUT_FILES:
            record = field(files, name, "object", where)
            if field(record, "size", "size", where + ", " + name) > _store.MAX_LAYOUT_FILE:
                raise BundleError("%s: the layout file %s is larger than %d bytes." % (where, name, _store.MAX_LAYOUT_FILE))
            _check_hex(field(record, "sha256", "string", where + ", " + name), where + ", " + name)
    for digest, record in field(manifest, "blobs", "object", what).items():
        where = "%s, blob %s" % (what, digest[:80])
        hexdigest = _strict.check_digest(digest, what + ", blobs")[7:]
        _strict.check_type(record, "object", where)
        size = field(record, "size", "size", where)
        if "parts" not in record:
            if field(record, "volume", "string", where) not in volumes or field(record, "path", "string", where) != BLOB_DIR + "/" + hexdigest:
                raise BundleError("%s: the file is not %s/%s in a volume of the set." % (where, BLOB_DIR, hexdigest))
            continue
        offset = 0
        parts = field(record, "parts", "list", where)
        if not parts:
            raise BundleError("%s: the list of parts is empty." % where)
        for number, part in enumerate(parts, 1):
            at = "%s, part %d" % (where, number)
            _strict.check_type(part, "object", at)
            if field(part, "volume", "string", at) not in volumes or field(part, "path", "string", at) != "%s/%s" % (BLOB_DIR, part_name(hexdigest, number)):
                raise BundleError("%s: the file is not %s/%s in a volume of the set." % (at, BLOB_DIR, part_name(hexdigest, number)))
            if field(part, "offset", "size", at) != offset:
                raise BundleError("%s starts at byte %d, not where the previous part ends (%d)." % (at, part["offset"], offset))
            length = field(part, "size", "size", at)
            if length < 1:
                raise BundleError("%s is empty." % at)
            _check_hex(field(part, "sha256", "string", at), at)
            offset += length
        if offset != size:
            raise BundleError("%s: the parts add up to %d bytes, not %d." % (where, offset, size))
    if bundle_id(manifest) != manifest["bundle_id"]:
        raise BundleError("The bundle manifest %s has a bundle_id that is not the content address of what it lists." % what)


def _check_hex(value, where):
    if not _HEX_RE.match(value):
        raise BundleError("%s: %r is not a sha256 (64 lowercase hex digits)." % (where, value[:80]))
    return value


def load_bundle(sources, trusted_keys=None, allow_unsigned=False):
    """``(manifest, volumes found, info)`` of the transfer set under ``sources``, signature first.

    ``info`` holds ``signer`` (the fingerprint of the trusted key that signed the set, or None),
    ``warnings`` and ``manifest_bytes``.
    """
    found = find_volumes(sources)
    data, signer, warnings = check_signatures(found, trusted_keys, allow_unsigned)
    manifest = parse_manifest(data, "%s/%s" % (sorted(found)[0], MANIFEST))
    extra = sorted(name for name in found if name not in manifest["volumes"])
    if extra:
        raise BundleError("%s does not belong to a set of %d volume(s)." % (extra[0], manifest["volume_count"]))
    return manifest, found, {"signer": signer, "warnings": warnings, "manifest_bytes": data}


def expected_files(manifest, name, manifest_bytes):
    """Every file of volume ``name``: ``{relpath: (size, sha256 hex)}``, metadata included (the signature: size None)."""
    files = {}
    for digest, record in manifest["blobs"].items():
        if "parts" in record:
            for part in record["parts"]:
                if part["volume"] == name:
                    files[part["path"]] = (part["size"], part["sha256"])
        elif record["volume"] == name:
            files[record["path"]] = (record["size"], digest[7:])
    store_json = manifest["store_json"]
    if store_json["volume"] == name:
        files[store_json["path"]] = (store_json["size"], store_json["sha256"])
        for image in manifest["images"].values():
            for layout_file, record in image["files"].items():
                files["%s/%s" % (image["bundle_path"], layout_file)] = (record["size"], record["sha256"])
    sums = _sums_text(sorted([(rel, sha) for rel, (_size, sha) in files.items()] + [(MANIFEST, sha256_bytes(manifest_bytes))]))
    sums = sums.encode("utf-8")
    files[SUMS] = (len(sums), sha256_bytes(sums))
    files[MANIFEST] = (len(manifest_bytes), sha256_bytes(manifest_bytes))
    files[SIGNATURE] = (None, None)
    return files


def scan_volume(path, name):
    """What volume directory ``path`` holds, by lstat only: ``({relpath: size}, [unexpected volume/relpath])``.

    Directories other than ``blobs``, ``blobs/sha256``, ``layouts`` and ``layouts/NNNN``, links,
    devices and FIFOs are unexpected; nothing is opened but directories (never through a link).
    """
    sizes, unexpected = {}, []
    pending = [""]
    while pending:
        rel_dir = pending.pop()
        try:
            fd = _strict.open_dir(os.path.dirname(path), os.path.basename(path) + ("/" + rel_dir if rel_dir else ""))
        except _strict.OutsideDataError:
            unexpected.append("%s/%s" % (name, rel_dir))
            continue
        try:
            entries = os.listdir(fd)
            for entry in entries:
                rel = rel_dir + "/" + entry if rel_dir else entry
                info = os.stat(entry, dir_fd=fd, follow_symlinks=False)
                if stat.S_ISDIR(info.st_mode) and (rel in ("blobs", BLOB_DIR, "layouts") or _BUNDLE_PATH_RE.match(rel)):
                    pending.append(rel)
                elif stat.S_ISREG(info.st_mode):
                    sizes[rel] = info.st_size
                else:
                    unexpected.append("%s/%s" % (name, rel))
        finally:
            os.close(fd)
    return sizes, unexpected


def _check_volumes(manifest, found, manifest_bytes):
    """Per found volume: expected files, what is there, and the missing, short, oversized and unexpected files."""
    report = {"missing": [], "short": [], "corrupt": [], "unexpected": [], "to_hash": [], "files": 0}
    for name in sorted(found):
        expected = expected_files(manifest, name, manifest_bytes)
        sizes, unexpected = scan_volume(found[name], name)
        report["unexpected"] += unexpected
        for rel in sorted(sizes):
            if rel not in expected:
                report["unexpected"].append("%s/%s" % (name, rel))
        for rel, (size, sha) in sorted(expected.items()):
            shown = "%s/%s" % (name, rel)
            actual = sizes.get(rel)
            if size is None:
                continue
            if actual is None:
                if "%s/%s" % (name, rel) not in report["unexpected"]:
                    report["missing"].append(shown)
            elif actual < size:
                report["short"].append(shown)
            elif actual > size:
                report["corrupt"].append(shown)
            else:
                report["files"] += 1
                if rel != MANIFEST:
                    report["to_hash"].append((name, rel, size, sha))
    return report


def _hash_volume_file(found, name, rel, size, sha, buf):
    """None when ``<volume>/<rel>`` is a regular file of ``size`` bytes hashing to ``sha``, else a reason."""
    digest = hashlib.sha256()
    try:
        with _vol_open(found, name, rel, size) as handle:
            for chunk in _strict.iter_exact(handle, size, "%s/%s" % (name, rel), buf=buf):
                digest.update(chunk)
    except _strict.OutsideDataError as exc:
        return str(exc)
    return None if digest.hexdigest() == sha else "%s/%s does not match its sha256." % (name, rel)


def verify(sources, parallel=4, trusted_keys=None, allow_unsigned=False):
    """Check a transfer set: signature, manifest, volumes, files, sizes, then hashes. Returns lists for a bad file."""
    manifest, found, info = load_bundle(sources, trusted_keys, allow_unsigned)
    names = sorted(manifest["volumes"])
    total = len(names)
    missing_volumes = [name for name in names if name not in found]
    report = _check_volumes(manifest, found, info["manifest_bytes"])
    bytes_checked = [0]
    lock = threading.Lock()

    def check(item):
        name, rel, size, sha = item

        def run():
            problem = _hash_volume_file(found, name, rel, size, sha, bytearray(min(BUFFER_SIZE, max(size, 1))))
            with lock:
                bytes_checked[0] += size
            return "%s/%s" % (name, rel) if problem else None
        return run
    # Big files first, so one large blob does not end the run alone on one thread.
    corrupt = list(report["corrupt"])
    for bad in run_parallel([check(item) for item in sorted(report["to_hash"], key=lambda i: -i[2])], parallel):
        if bad:
            corrupt.append(bad)
    result = {
        "bundle_id": manifest["bundle_id"],
        "release": manifest.get("release"),
        "delta": manifest.get("delta"),
        "volume_count": total,
        "volumes_found": sorted(n for n in found if n in manifest["volumes"]),
        "missing_volumes": missing_volumes,
        "missing": sorted(set(report["missing"])),
        "short": sorted(set(report["short"])),
        "corrupt": sorted(set(corrupt)),
        "unexpected": sorted(set(report["unexpected"])),
        "files_verified": report["files"],
        "bytes_verified": bytes_checked[0],
        "signed_by": info["signer"],
        "warnings": info["warnings"],
    }
    result["ok"] = not (missing_volumes or result["missing"] or result["short"] or result["corrupt"] or result["unexpected"])
    return result, manifest, found


def verify_message(result):
    """One sentence for a failed verify."""
    parts = []
    total = result["volume_count"]
    for name in result["missing_volumes"]:
        parts.append("%s of %d is missing" % (name, total))
    for key, label in (("missing", "missing"), ("short", "short"), ("corrupt", "corrupt"), ("unexpected", "not part of the set (not opened)")):
        if result.get(key):
            shown = ", ".join(result[key][:5]) + (" and %d more" % (len(result[key]) - 5) if len(result[key]) > 5 else "")
            parts.append("%s: %s" % (label, shown))
    return "Bundle %s failed verification: %s." % (result["bundle_id"], "; ".join(parts))


# ---------------------------------------------------------------- unpack


def _join_blob(store, digest, record, found, lock, durable=True, link=False):
    """Write one blob into the store from its file or parts; (written bytes, linked bytes, error or None).

    ``durable``: fsync the blob before it is renamed into place (a store that outlives the run).
    ``link``: a blob held whole in a file on the store's filesystem is hashed in place and hard-linked
    into the store instead of copied (see :func:`join_blobs`).
    """
    hexdigest = digest[7:]
    target_dir = os.path.join(store, BLOB_DIR)
    if link and "parts" not in record:
        linked = _link_blob(target_dir, digest, record, found)
        if linked is not None:
            return linked
    pieces = record["parts"] if "parts" in record else [{"volume": record["volume"], "path": record["path"],
                                                         "size": record["size"], "sha256": hexdigest}]
    whole = hashlib.sha256()
    buf = bytearray(min(BUFFER_SIZE, max(record["size"], 1)))
    # A whole blob is one piece whose hash is the blob's own: hashed once, not twice.
    single = len(pieces) == 1
    handle, temp = _files.open_temp(target_dir, hexdigest, lock)
    try:
        for piece in pieces:
            shown = "%s/%s" % (piece["volume"], piece["path"])
            part_hash = whole if single else hashlib.sha256()
            try:
                with _vol_open(found, piece["volume"], piece["path"], piece["size"]) as src:
                    for chunk in _strict.iter_exact(src, piece["size"], shown, buf=buf):
                        whole.update(chunk)
                        if not single:
                            part_hash.update(chunk)
                        handle.write(chunk)
            except _strict.OutsideDataError:
                return 0, 0, shown
            if part_hash.hexdigest() != piece["sha256"]:
                return 0, 0, shown
        if durable:
            os.fsync(handle.fileno())
        if whole.hexdigest() != hexdigest:
            return 0, 0, "%s (joined from %d parts)" % (digest, len(pieces))
        os.chmod(temp, 0o644)
        # Renamed while open and locked: a concurrent run's cleanup never takes it for a stale file.
        os.rename(temp, os.path.join(target_dir, hexdigest))
        temp = None
        return record["size"], 0, None
    finally:
        handle.close()
        if temp:
            _discard(temp)


def _link_blob(target_dir, digest, record, found):
    """Hard-link a whole blob's file into ``target_dir`` and hash it in place.

    The file is opened strictly (:func:`_vol_open`), linked by its path under a temporary name, and
    kept only when the link is the very inode opened; it is then hashed through the open file and
    renamed into place only when it matches: the name in the store is the file that was hashed.
    Returns ``(0, bytes linked, None)``, ``(0, 0, error)`` for a corrupt file, or None when the file
    cannot be linked there (another filesystem or mount, a path that changed): the caller copies it.
    """
    shown = "%s/%s" % (record["volume"], record["path"])
    hexdigest = digest[7:]
    try:
        src = _vol_open(found, record["volume"], record["path"], record["size"])
    except _strict.OutsideDataError:
        return 0, 0, shown
    temp = os.path.join(target_dir, "%s%s.%d.%d%s" % (_files.TEMP_PREFIX, hexdigest[:16], os.getpid(), threading.get_ident(),
                                                      _files.TEMP_SUFFIX))
    with src:
        try:
            os.link(os.path.join(found[record["volume"]], record["path"]), temp, follow_symlinks=False)
        except OSError:
            return None
        opened, made = os.fstat(src.fileno()), os.lstat(temp)
        if (opened.st_dev, opened.st_ino) != (made.st_dev, made.st_ino):
            _discard(temp)
            return None
        try:
            whole = hashlib.sha256()
            for chunk in _strict.iter_exact(src, record["size"], shown, buf=bytearray(min(BUFFER_SIZE, max(record["size"], 1)))):
                whole.update(chunk)
            if whole.hexdigest() != hexdigest:
                return 0, 0, shown
            os.rename(temp, os.path.join(target_dir, hexdigest))
            temp = None
        except _strict.OutsideDataError:
            return 0, 0, shown
        finally:
            if temp:
                _discard(temp)
    return 0, record["size"], None


def merge_store_index(existing, incoming, store=None):
    """The store index after adding ``incoming`` to ``existing``; an image or blob recorded differently is refused."""
    merged = {"format": _store.STORE_FORMAT, "images": {}, "blobs": {}}
    if existing:
        merged["images"].update(existing["images"])
        merged["blobs"].update(existing["blobs"])
    for ref, entry in incoming["images"].items():
        held = merged["images"].get(ref)
        if held is not None and held.get("digest") != entry["digest"]:
            raise BundleError("The store %s already holds %s as %s; the set carries it as %s, and an image is never replaced by "
                              "another digest." % (store, ref, held.get("digest"), entry["digest"]), conflicts=[ref])
        if held is not None and "signatures" in held and "signatures" not in entry:
            # a set made before the image's signatures were fetched does not drop them
            entry = dict(entry, signatures=held["signatures"])
        merged["images"][ref] = entry
    for digest, size in incoming["blobs"].items():
        if merged["blobs"].get(digest, size) != size:
            raise BundleError("The store %s records blob %s with %d bytes; the set says %d." % (store, digest, merged["blobs"][digest], size),
                              conflicts=[digest])
        merged["blobs"][digest] = size
    merged["format"] = _store.index_format(merged)
    return merged


def _check_store_json(incoming, manifest, what):
    """The medium's store.json must describe exactly what the signed manifest carries."""
    images = manifest["images"]
    if sorted(incoming["images"]) != sorted(images):
        extra = sorted(set(incoming["images"]) ^ set(images))
        raise BundleError("%s and bundle.json list different images (%s)." % (what, ", ".join(extra[:3])))
    for ref, entry in incoming["images"].items():
        if entry["digest"] != images[ref]["digest"] or entry["layout"] != images[ref]["layout"]:
            raise BundleError("%s records %s as %s, bundle.json as %s." % (what, ref, entry["digest"], images[ref]["digest"]))
    carried = dict((digest, record["size"]) for digest, record in manifest["blobs"].items())
    carried.update(manifest["base_blobs"])
    if incoming["blobs"] != carried:
        odd = sorted(set(incoming["blobs"].items()) ^ set(carried.items()))
        raise BundleError("%s and bundle.json disagree on the blobs (%s)." % (what, ", ".join(d for d, _s in odd[:3])))


def open_set(sources, trusted_keys=None, allow_unsigned=False):
    """Check a transfer set as far as can be done without writing or hashing its blobs, signature first.

    The checks :func:`unpack` makes before it writes anything, for every reader of a set: the
    signature (:func:`load_bundle`), every volume present, every listed file present with its
    size and nothing else in the volumes, ``SHA256SUMS``, then the set's ``store.json`` and
    layouts hashed and checked against the signed manifest. A blob is checked when it is joined
    (:func:`join_blobs`). Returns ``{"manifest", "found", "info", "index", "index_bytes", "layouts"}``
    where ``layouts`` maps each image to the bytes of its layout files; BundleError otherwise.
    """
    manifest, found, info = load_bundle(sources, trusted_keys, allow_unsigned)
    total = manifest["volume_count"]
    missing_volumes = [n for n in sorted(manifest["volumes"]) if n not in found]
    if missing_volumes:
        raise BundleError("Bundle %s is incomplete: %s." % (manifest["bundle_id"], "; ".join(
            "%s of %d is missing" % (n, total) for n in missing_volumes)), missing_volumes=missing_volumes)
    # Sizes and strays first: a missing, short or unexpected file fails before anything is written.
    report = _check_volumes(manifest, found, info["manifest_bytes"])
    if report["unexpected"]:
        raise BundleError("Bundle %s holds file(s) that are not part of the set, not opened and not unpacked: %s." % (
            manifest["bundle_id"], ", ".join(sorted(report["unexpected"])[:5])), unexpected=sorted(report["unexpected"]))
    if report["missing"] or report["short"] or report["corrupt"]:
        raise BundleError("Bundle %s cannot be unpacked: %s." % (manifest["bundle_id"], "; ".join(
            "%s: %s" % (k, ", ".join(v[:5])) for k, v in (("missing", report["missing"]),
                                                          ("short or oversized", report["short"] + report["corrupt"])) if v)),
            missing=report["missing"], short=report["short"] + report["corrupt"])
    vol = manifest["store_json"]["volume"]
    # SHA256SUMS follows from the signed manifest: a changed one is refused like any changed file.
    for name in sorted(found):
        size, sha = expected_files(manifest, name, info["manifest_bytes"])[SUMS]
        if _hash_volume_file(found, name, SUMS, size, sha, bytearray(max(size, 1))):
            raise BundleError("%s/%s does not list what bundle.json lists; nothing was written." % (name, SUMS), corrupt=["%s/%s" % (name, SUMS)])
    incoming_index = _read_bundle_file(found, vol, STORE_INDEX, manifest["store_json"]["size"], manifest["store_json"]["sha256"])
    try:
        incoming = _store.parse_index(incoming_index, "%s/%s" % (vol, STORE_INDEX))
    except _store.StoreError as exc:
        raise BundleError("The set's store index is not valid: %s" % exc, corrupt=["%s/%s" % (vol, STORE_INDEX)])
    _check_store_json(incoming, manifest, "%s/%s" % (vol, STORE_INDEX))
    layouts = {}
    for ref, image in sorted(manifest["images"].items()):
        data = {}
        for name in LAYOUT_FILES:
            record = image["files"][name]
            data[name] = _read_bundle_file(found, vol, "%s/%s" % (image["bundle_path"], name), record["size"], record["sha256"])
        try:
            _store.check_layout_files(data["oci-layout"], data["index.json"], incoming["images"][ref], "%s/%s" % (vol, image["bundle_path"]))
        except _store.StoreError as exc:
            raise BundleError("The set's layout of %s is not valid: %s" % (ref, exc), corrupt=["%s/%s" % (vol, image["bundle_path"])])
        layouts[ref] = data
    return {"manifest": manifest, "found": found, "info": info, "index": incoming, "index_bytes": incoming_index, "layouts": layouts}


def join_blobs(opened, store, digests, parallel=4, durable=True, link=False):
    """Join the blobs ``digests`` of an opened set (:func:`open_set`) into ``store``'s blob directory.

    Each is read strictly from its file or parts, hashed (every part and the whole) and renamed
    into place only when it matches; temporary files a crashed run left are removed first.
    ``durable=False`` skips the fsyncs, for a store that lives only as long as the run that
    reads it. ``link=True`` (only for such a store: the set's own files become its blobs) hashes a
    blob held whole in a file on the store's filesystem in place and hard-links it instead of
    copying it. Returns ``(bytes written, bytes linked, [the files or blobs found corrupt])``.
    """
    manifest, found = opened["manifest"], opened["found"]
    blob_dir = os.path.join(store, BLOB_DIR)
    os.makedirs(blob_dir, exist_ok=True)
    lock = _store.StoreLock(store)
    _files.remove_stale_temps(blob_dir, lock)
    tasks = [(lambda d=d: _join_blob(store, d, manifest["blobs"][d], found, lock, durable, link)) for d in digests]
    corrupt = []
    written = linked = 0
    for nbytes, nlinked, error in run_parallel(tasks, parallel):
        written += nbytes
        linked += nlinked
        if error:
            corrupt.append(error)
    if durable:
        _files.fsync_dir(blob_dir)
    return written, linked, sorted(corrupt)


def read_blob_range(opened, digest, offset, length):
    """``length`` bytes at ``offset`` of a blob of an opened set (its file or parts), read strictly, not hashed.

    For hints only (the unpacked size in a gzip trailer): whatever a blob holds is trusted only
    once :func:`join_blobs` has hashed it.
    """
    record = opened["manifest"]["blobs"][digest]
    pieces = record["parts"] if "parts" in record else [{"volume": record["volume"], "path": record["path"],
                                                         "size": record["size"], "offset": 0}]
    if offset < 0 or length < 0 or offset + length > record["size"]:
        raise BundleError("Bytes %d to %d are outside blob %s (%d bytes)." % (offset, offset + length, digest, record["size"]))
    out = bytearray()
    for piece in pieces:
        start = max(offset, piece["offset"])
        end = min(offset + length, piece["offset"] + piece["size"])
        if start >= end:
            continue
        shown = "%s/%s" % (piece["volume"], piece["path"])
        try:
            with _vol_open(opened["found"], piece["volume"], piece["path"], piece["size"]) as handle:
                handle.seek(start - piece["offset"])
                chunk = b""
                while len(chunk) < end - start:
                    more = handle.read(end - start - len(chunk))
                    if not more:
                        break
                    chunk += more
        except _strict.OutsideDataError as exc:
            raise BundleError("The bundle file %s cannot be read: %s" % (shown, exc), corrupt=[shown])
        except OSError as exc:
            raise BundleError("The bundle file %s cannot be read: %s." % (shown, exc.strerror or exc), corrupt=[shown])
        if len(chunk) != end - start:
            raise BundleError("The bundle file %s ended before byte %d." % (shown, end - piece["offset"]), corrupt=[shown])
        out += chunk
    return bytes(out)


def unpack(sources, store, parallel=4, check_mode=False, trusted_keys=None, allow_unsigned=False):
    """Rebuild (or update, for a delta) ``store`` from the transfer set under ``sources``.

    Nothing is written before the signature, the manifest, every file's presence and size, the
    medium's store.json and layouts (:func:`open_set`), and the merge with the store's own index
    have been checked.
    """
    store = os.path.abspath(store)
    opened = open_set(sources, trusted_keys, allow_unsigned)
    manifest, info = opened["manifest"], opened["info"]
    if ":" in store:
        raise BundleError("The store path %s contains ':', which skopeo's oci: transport cannot address." % store)
    base_blobs = manifest["base_blobs"]
    if base_blobs:
        _present, absent, wrong = store_blob_state(store, base_blobs)
        if absent or wrong:
            names = absent + wrong
            base = manifest.get("base") or {}
            raise BundleError(
                "Bundle %s is a delta on %s %s (release %s) but the store %s lacks %d of its base blob(s): %s." % (
                    manifest["bundle_id"], base.get("kind", "base"), base.get("id"), base.get("release"), store,
                    len(names), ", ".join(names[:5]) + (" ..." if len(names) > 5 else "")),
                missing_base_blobs=names)
    incoming, incoming_index = opened["index"], opened["index_bytes"]
    layouts = []
    for ref, data in sorted(opened["layouts"].items()):
        for name in LAYOUT_FILES:
            layouts.append((os.path.join(store, *manifest["images"][ref]["layout"].split("/")), name, data[name]))
    existing_path = os.path.join(store, STORE_INDEX)
    existing = _read_existing(store)
    merged = merge_store_index(existing, incoming, store)
    present, _absent, _wrong = store_blob_state(store, dict((d, r["size"]) for d, r in manifest["blobs"].items()))
    todo = sorted((d for d in manifest["blobs"] if d not in present), key=lambda d: -manifest["blobs"][d]["size"])
    layout_changes = [(directory, name) for directory, name, data in layouts
                      if not _files.same_content(os.path.join(directory, name), data)]
    index_bytes = incoming_index if existing is None else canonical_json(merged)
    index_changed = existing is None or merged != existing
    result = {
        "bundle_id": manifest["bundle_id"],
        "release": manifest.get("release"),
        "delta": manifest.get("delta"),
        "store": store,
        "blobs_to_write": len(todo),
        "bytes_to_write": sum(manifest["blobs"][d]["size"] for d in todo),
        "blobs_present": len(present),
        "images": len(manifest["images"]),
        "layouts_to_write": len(layout_changes),
        "signed_by": info["signer"],
        "warnings": info["warnings"],
        "changed": bool(todo or layout_changes or index_changed),
    }
    if check_mode:
        return result
    _store.create(store, index=False)
    lock = _store.StoreLock(store)
    _files.remove_stale_temps(os.path.join(store, BLOB_DIR), lock)
    free = free_bytes(store)
    if result["bytes_to_write"] > free:
        raise BundleError("The store %s has %d bytes (%s) free but unpacking needs %d bytes (%s)." % (
            store, free, human_size(free), result["bytes_to_write"], human_size(result["bytes_to_write"])))
    written, _linked, corrupt = join_blobs(opened, store, todo, parallel)
    if corrupt:
        raise BundleError("Bundle %s holds corrupt file(s), not unpacked: %s." % (manifest["bundle_id"], ", ".join(corrupt)),
                          corrupt=corrupt)
    synced = set()
    for directory, name, data in layouts:
        write_atomic(os.path.join(directory, name), data, synced_dirs=synced)
    for directory in sorted(synced):
        _files.fsync_dir(directory)
    # store.json last, and only once every blob it lists is in place; merged again under the
    # store's lock, in case another writer (image_download) updated it meanwhile.
    with lock:
        existing = _read_existing(store)
        merged = merge_store_index(existing, incoming, store)
        index_bytes = incoming_index if existing is None else canonical_json(merged)
        _present, absent, wrong = store_blob_state(store, merged["blobs"])
        if absent or wrong:
            raise BundleError("The store %s would list %d blob(s) it does not hold: %s." % (
                store, len(absent + wrong), ", ".join((absent + wrong)[:5])), missing_blobs=absent + wrong)
        if merged != existing:
            write_atomic(existing_path, index_bytes)
    result.update({"blobs_written": len(todo), "bytes_written": written})
    return result


def _read_existing(store):
    if not os.path.lexists(os.path.join(store, STORE_INDEX)):
        return None
    try:
        return _store.read_index(store)
    except _store.StoreError as exc:
        raise BundleError("The store's own index is not valid, so nothing was merged into it: %s" % exc)


def _read_bundle_file(found, vol, rel, size, sha):
    try:
        data = _vol_read(found, vol, rel, size=size, max_size=size)
    except _strict.OutsideDataError as exc:
        raise BundleError("The bundle file %s/%s cannot be read: %s" % (vol, rel, exc), corrupt=["%s/%s" % (vol, rel)])
    if sha256_bytes(data) != sha:
        raise BundleError("The bundle file %s/%s is corrupt (its sha256 is not the one bundle.json records)." % (vol, rel),
                          corrupt=["%s/%s" % (vol, rel)])
    return data


# ---------------------------------------------------------------- receipt


def make_receipt(store, release=None):
    """What ``store`` holds, by store.json and a stat of every blob: the base of the next delta."""
    index = load_store(store)
    present, missing, wrong = store_blob_state(store, index["blobs"])
    images = dict((ref, image.get("digest")) for ref, image in index["images"].items())
    receipt = {
        "format": RECEIPT_FORMAT,
        "kind": RECEIPT_KIND,
        "release": release,
        "images": images,
        "blobs": present,
        "bytes": sum(present.values()),
    }
    receipt["receipt_id"] = "sha256:" + sha256_bytes(canonical_json(receipt))
    return receipt, missing + wrong
