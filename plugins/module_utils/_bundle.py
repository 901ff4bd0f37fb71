# Copyright: airgap.microshift contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""Transfer sets: carry an image store across an air gap on removable media.

Plain functions with no Ansible dependency. A transfer set is a directory of volumes
``vol-001/``, ``vol-002/``... each small enough for one medium; the format is described in
docs/bundle-format.md. The four operations are:

- :func:`pack`: store -> transfer set (whole blobs, or numbered parts of the blobs larger than
  a file may be, hashed while they are copied);
- :func:`verify`: sizes first, then the sha256 of every file, in parallel;
- :func:`unpack`: transfer set -> store, every blob checked before it is renamed into place,
  store.json merged last;
- :func:`make_receipt`: what the air-gapped store holds, carried back so the next set is a delta.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import tempfile
import threading
from decimal import Decimal, InvalidOperation

from ansible_collections.airgap.microshift.plugins.module_utils import _workers
from ansible_collections.airgap.microshift.plugins.module_utils._store import (
    free_bytes,
    StoreError,
    StoreLock,
    blob_path,
    validate_index,
)

FORMAT = 1
BUNDLE_KIND = "airgap.microshift.bundle"
RECEIPT_KIND = "airgap.microshift.receipt"
MANIFEST = "bundle.json"
SUMS = "SHA256SUMS"
STORE_INDEX = "store.json"
BLOB_DIR = "blobs/sha256"
LAYOUT_FILES = ("oci-layout", "index.json")
BUFFER_SIZE = 8 * 1024 * 1024
TEMP_PREFIX = ".bundle-"
TEMP_SUFFIX = ".tmp"
MIN_VOLUME_SIZE = 64 * 1024

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
# Portable on FAT32, exFAT, NTFS, ISO 9660 (Joliet/Rock Ridge), UDF and every POSIX filesystem.
_PORTABLE_COMPONENT_RE = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9._-]{0,99}$")
MAX_PORTABLE_PATH = 160


class BundleError(Exception):
    """A failure explained in one sentence; ``details`` carries lists for the caller to return."""

    def __init__(self, message, **details):
        super(BundleError, self).__init__(message)
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


def read_json(path, what):
    try:
        with open(path, "rb") as handle:
            return json.loads(handle.read().decode("utf-8"))
    except (IOError, OSError) as exc:
        raise BundleError("Cannot read the %s %s: %s." % (what, path, exc.strerror or exc))
    except ValueError as exc:
        raise BundleError("The %s %s is not valid JSON: %s." % (what, path, exc))


def canonical_json(data):
    return (json.dumps(data, indent=1, sort_keys=True, separators=(",", ": ")) + "\n").encode("utf-8")


def sha256_bytes(data):
    return hashlib.sha256(data).hexdigest()


def sha256_file(path, buffer_size=BUFFER_SIZE):
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
    return digest.hexdigest(), size


def file_size(path):
    try:
        return os.stat(path).st_size
    except OSError:
        return None


def _open_temp(directory, label):
    fd, temp = tempfile.mkstemp(dir=directory, prefix=TEMP_PREFIX + label[:16] + ".", suffix=TEMP_SUFFIX)
    return os.fdopen(fd, "wb", buffering=0), temp


def _discard(path):
    try:
        os.unlink(path)
    except OSError:
        pass


def write_atomic(path, data, mode=0o644):
    """Write ``data`` to ``path`` via a temp file in the same directory; False when already equal."""
    try:
        with open(path, "rb") as handle:
            if handle.read() == data:
                return False
    except (IOError, OSError):
        pass
    directory = os.path.dirname(path)
    os.makedirs(directory, exist_ok=True)
    handle, temp = _open_temp(directory, os.path.basename(path))
    try:
        with handle:
            handle.write(data)
            os.fsync(handle.fileno())
        os.chmod(temp, mode)
        os.rename(temp, path)
    except BaseException:
        _discard(temp)
        raise
    return True


def remove_stale_temps(directory):
    """Temp files a crashed run left behind (only ours, by their prefix and suffix)."""
    try:
        names = os.listdir(directory)
    except OSError:
        return
    for name in names:
        if name.startswith(TEMP_PREFIX) and name.endswith(TEMP_SUFFIX):
            _discard(os.path.join(directory, name))


def run_parallel(tasks, parallel):
    """Run callables on ``parallel`` threads (hashlib and file I/O release the GIL); results in order."""
    return _workers.run_parallel(tasks, parallel, lambda task: task())


# ---------------------------------------------------------------- the store


def _check_relpath(relpath, what):
    if (not isinstance(relpath, str) or not relpath or relpath.startswith("/")
            or any(part in ("", ".", "..") for part in relpath.split("/"))):
        raise BundleError("The %s path %r is not a plain relative path." % (what, relpath))
    return relpath


def load_store(store, raw=False):
    """The validated store.json of ``store`` (see docs/store-format.md); with ``raw``, (index, bytes)."""
    path = os.path.join(store, STORE_INDEX)
    try:
        with open(path, "rb") as handle:
            data = handle.read()
        index = json.loads(data.decode("utf-8"))
    except (IOError, OSError) as exc:
        raise BundleError("Cannot read the store index %s: %s." % (path, exc.strerror or exc))
    except ValueError as exc:
        raise BundleError("The store index %s is not valid JSON: %s." % (path, exc))
    try:
        validate_index(index, path)
    except StoreError as exc:
        raise BundleError("The store index %s." % exc)
    images = index["images"]
    blobs = index["blobs"]
    for digest, size in blobs.items():
        if not _DIGEST_RE.match(digest) or not isinstance(size, int) or size < 0:
            raise BundleError("The store index %s lists an invalid blob %r: %r." % (path, digest, size))
    for ref, image in images.items():
        if not isinstance(image, dict) or "layout" not in image:
            raise BundleError("The store index %s lists image %s without a layout." % (path, ref))
        _check_relpath(image["layout"], "layout of %s" % ref)
    return (index, data) if raw else index


def store_blob_state(store, blobs):
    """Split ``blobs`` (digest -> size) into (present, missing, wrong_size) by a stat of each file."""
    present, missing, wrong = {}, [], []
    for digest, size in blobs.items():
        actual = file_size(blob_path(store, digest))
        if actual is None:
            missing.append(digest)
        elif actual != size:
            wrong.append(digest)
        else:
            present[digest] = size
    return present, sorted(missing), sorted(wrong)


# ---------------------------------------------------------------- what the far side holds


def held_from_receipt(path):
    receipt = read_json(path, "receipt")
    if not isinstance(receipt, dict) or receipt.get("kind") != RECEIPT_KIND or not isinstance(receipt.get("blobs"), dict):
        raise BundleError("The file %s is not an airgap.microshift receipt." % path)
    base = {"kind": "receipt", "id": receipt.get("receipt_id"), "file": os.path.basename(path),
            "release": receipt.get("release")}
    return dict(receipt["blobs"]), base


def held_from_manifest(path):
    manifest = read_json(path, "bundle manifest")
    if not isinstance(manifest, dict) or manifest.get("kind") != BUNDLE_KIND:
        raise BundleError("The file %s is not an airgap.microshift bundle manifest." % path)
    held = dict((digest, entry["size"]) for digest, entry in manifest.get("blobs", {}).items())
    held.update(manifest.get("base_blobs") or {})
    base = {"kind": "bundle", "id": manifest.get("bundle_id"), "file": os.path.basename(path),
            "release": manifest.get("release")}
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
        for name in LAYOUT_FILES:
            source = os.path.join(store, image["layout"], name)
            try:
                with open(source, "rb") as handle:
                    extras.append(("%s/%s" % (bundle_dir, name), handle.read()))
            except (IOError, OSError):
                raise BundleError("The store %s lacks %s/%s for image %s." % (store, image["layout"], name, ref))
        images[ref] = {"digest": image.get("digest"), "layout": image["layout"], "bundle_path": bundle_dir,
                       "size": image.get("size")}
    extra_bytes = sum(len(data) for _name, data in extras)

    unlimited = volume_size is None
    reserve = 0
    for _attempt in range(8):
        if unlimited:
            capacity = max(sum(carried.values()), 1) + 1
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
            overhead = manifest_size + len(_sums_text(records).encode("utf-8"))
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


# ---------------------------------------------------------------- pack


def _previous_records(dest):
    """Files a previous run recorded at ``dest``: (volume, path) -> (size, sha256, blob, offset)."""
    records = {}
    try:
        names = os.listdir(dest)
    except OSError:
        return records
    for name in names:
        manifest_path = os.path.join(dest, name, MANIFEST)
        if volume_number(name) is None or not os.path.isfile(manifest_path):
            continue
        try:
            manifest = read_json(manifest_path, "bundle manifest")
        except BundleError:
            continue
        if not isinstance(manifest, dict) or manifest.get("kind") != BUNDLE_KIND:
            continue
        for digest, record in manifest.get("blobs", {}).items():
            if "parts" in record:
                for part in record["parts"]:
                    if part.get("sha256"):
                        records[(part["volume"], part["path"])] = (part["size"], part["sha256"], digest, part["offset"])
            else:
                records[(record["volume"], record["path"])] = (record["size"], digest.split(":", 1)[1], digest, 0)
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


class _Stats(object):
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


def _copy_blob(source, digest, targets, stats, link=False):
    """Copy one store blob into its target files, hashing as it goes.

    ``targets``: list of (path or None, entry) in offset order; None means "not written in this
    run" (a volume left out), but the bytes are still read so the blob's digest is checked.
    Returns (part hashes {path: hex}, error sentence or None).
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
                    handle, temp = _open_temp(os.path.dirname(path), os.path.basename(path))
                    temps.append((temp, path))
                try:
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
                finally:
                    if handle is not None:
                        handle.close()
                part_hashes[entry["path"]] = part_hash.hexdigest()
            if src.read(1):
                return {}, "blob %s in %s is longer than the store index says" % (digest, source)
        stats.add(read=sum(entry["size"] for _p, entry in targets))
        if whole.hexdigest() != hexdigest:
            return {}, "blob %s in %s is corrupt (its sha256 is %s)" % (digest, source, whole.hexdigest())
        for temp, path in temps:
            os.chmod(temp, 0o644)
            os.rename(temp, path)
            stats.add(written=1, nbytes=file_size(path) or 0)
        temps = []
        return part_hashes, None
    finally:
        for temp, _path in temps:
            _discard(temp)


def pack(store, dest, volume_size=None, part_size=FAT32_MAX_FILE, receipt=None, base=None, release=None,
         versions=None, parallel=4, link=False, only_volumes=None, check_mode=False):
    """Turn ``store`` into a transfer set at ``dest``. Returns a result dict (``changed`` and the plan)."""
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
        "volumes": [{"name": v["name"], "bytes": v["total_bytes"], "files": len(v["files"]) + 2,
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
    }

    if not check_mode:
        needed = bytes_to_write + sum(v["overhead"] for v in volumes if v["name"] in selected)
        if not link:
            free = free_bytes(dest)
            if needed > free:
                raise BundleError("The destination %s has %d bytes (%s) free but the bundle needs %d bytes (%s)." % (
                    dest, free, human_size(free), needed, human_size(needed)), needed=needed, free=free)
    if check_mode:
        result["changed"] = bool(files_to_write) or _metadata_changes(dest, plan, selected, known_hashes, previous)
        return result

    for vol in volumes:
        if vol["name"] in selected:
            vol_dir = os.path.join(dest, vol["name"])
            os.makedirs(os.path.join(vol_dir, BLOB_DIR), exist_ok=True)
            remove_stale_temps(os.path.join(vol_dir, BLOB_DIR))
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
            return _copy_blob(blob_path(store, digest), digest, targets, stats, link=link)
        tasks.append(task)
    for part_hashes, error in run_parallel(tasks, parallel):
        known_hashes.update(part_hashes)
        if error:
            errors.append(error)
    if errors:
        raise BundleError("Packing %s failed: %s." % (store, "; ".join(sorted(errors))), corrupt=sorted(errors))

    changed = stats.files_written > 0
    final = fill_part_hashes(manifest, volumes, known_hashes)
    unknown_parts = [f for v in volumes for f in v["files"] if f["sha256"] is None]
    if unknown_parts:
        # Parts in volumes left out of this run (the volumes option): hash their range of the store blob.
        hashes = run_parallel([(lambda f=f: (f["path"], _range_sha256(blob_path(store, f["blob"]), f["offset"], f["size"])))
                               for f in unknown_parts], parallel)
        final = fill_part_hashes(manifest, volumes, dict(hashes))
    manifest_bytes = canonical_json(final)
    for vol in volumes:
        if vol["name"] not in selected:
            continue
        vol_dir = os.path.join(dest, vol["name"])
        for name, data in plan["extras"].items() if vol is volumes[0] else ():
            changed |= write_atomic(os.path.join(vol_dir, name), data)
        changed |= write_atomic(os.path.join(vol_dir, MANIFEST), manifest_bytes)
        records = [(f["path"], f["sha256"]) for f in vol["files"]] + [(MANIFEST, sha256_bytes(manifest_bytes))]
        changed |= write_atomic(os.path.join(vol_dir, SUMS), _sums_text(sorted(records)).encode("utf-8"))
        changed |= _prune(vol_dir, set(f["path"] for f in vol["files"]) | {MANIFEST, SUMS})
    result.update({
        "changed": changed,
        "files_written": stats.files_written,
        "bytes_written": stats.bytes_written,
        "bytes_read": stats.bytes_read,
    })
    return result


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


def _metadata_changes(dest, plan, selected, known_hashes, previous):
    """Check mode: would the metadata files change? (data files are already known to be in place)"""
    volumes = plan["volumes"]
    if any(f["sha256"] is None and f["path"] not in known_hashes for v in volumes for f in v["files"]):
        return True
    final = fill_part_hashes(plan["manifest"], [dict(v, files=[dict(f) for f in v["files"]]) for v in volumes], known_hashes)
    manifest_bytes = canonical_json(final)
    for vol in volumes:
        if vol["name"] not in selected:
            continue
        path = os.path.join(dest, vol["name"], MANIFEST)
        try:
            with open(path, "rb") as handle:
                if handle.read() != manifest_bytes:
                    return True
        except (IOError, OSError):
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
    """Volume directories under ``sources`` (volume dirs themselves or folders holding them): name -> path."""
    found = {}
    for source in sources:
        source = os.path.abspath(source)
        if not os.path.isdir(source):
            raise BundleError("The source %s is not a directory." % source)
        if volume_number(os.path.basename(source)) is not None and os.path.isfile(os.path.join(source, MANIFEST)):
            candidates = [source]
        else:
            candidates = [os.path.join(source, name) for name in sorted(os.listdir(source))
                          if volume_number(name) is not None and os.path.isfile(os.path.join(source, name, MANIFEST))]
        for path in candidates:
            found.setdefault(os.path.basename(path), path)
    if not found:
        raise BundleError("No bundle volume (a vol-NNN directory with a %s) was found under %s." % (MANIFEST, ", ".join(sources)))
    return found


def load_bundle(sources):
    """(manifest, volumes found, manifest problems) for the transfer set under ``sources``."""
    found = find_volumes(sources)
    manifests = {}
    problems = []
    for name, path in sorted(found.items()):
        manifest_path = os.path.join(path, MANIFEST)
        try:
            with open(manifest_path, "rb") as handle:
                data = handle.read()
            manifest = json.loads(data.decode("utf-8"))
            if not isinstance(manifest, dict) or manifest.get("kind") != BUNDLE_KIND:
                raise ValueError("not a bundle manifest")
        except (IOError, OSError, ValueError):
            problems.append("%s/%s" % (name, MANIFEST))
            continue
        if manifest.get("format") != FORMAT:
            raise BundleError("The bundle manifest %s has format %r; this collection reads format %d." % (
                manifest_path, manifest.get("format"), FORMAT))
        manifests[name] = (manifest, sha256_bytes(data))
    if not manifests:
        raise BundleError("No readable bundle manifest was found in %s." % ", ".join(sorted(found.values())))
    ids = {}
    for name, (manifest, _sha) in manifests.items():
        ids.setdefault(manifest.get("bundle_id"), []).append(name)
    if len(ids) > 1:
        raise BundleError("The volumes under %s belong to different bundles: %s." % (
            ", ".join(sources), "; ".join("%s in %s" % (bid, ", ".join(names)) for bid, names in sorted(ids.items()))))
    manifest = manifests[sorted(manifests)[0]][0]
    return manifest, found, problems


def _parse_sums(path):
    records = {}
    try:
        with open(path, "r") as handle:
            for line in handle:
                line = line.rstrip("\n")
                if len(line) > 66 and line[64:66] in ("  ", " *"):
                    records[line[66:]] = line[:64]
    except (IOError, OSError):
        return None
    return records


def verify(sources, parallel=4):
    """Check a transfer set: volumes, sizes, then hashes. Never raises for a bad file: returns lists."""
    manifest, found, manifest_problems = load_bundle(sources)
    names = sorted(manifest["volumes"])
    total = len(names)
    missing_volumes = [name for name in names if name not in found]
    missing, short, corrupt = [], [], list(manifest_problems)
    to_hash = []
    files_checked = 0
    for name in names:
        if name not in found:
            continue
        vol_dir = found[name]
        sums = _parse_sums(os.path.join(vol_dir, SUMS))
        if sums is None:
            missing.append("%s/%s" % (name, SUMS))
            sums = {}
        # SHA256SUMS covers bundle.json and the layouts; the manifest covers blobs, parts and store.json.
        expected = dict((rel, (None, sha)) for rel, sha in sums.items())
        expected.setdefault(MANIFEST, (None, None))
        for rel in _layout_files(manifest, name):
            if rel not in sums:
                corrupt.append("%s/%s" % (name, SUMS))
                expected[rel] = (None, None)
        for rel, (size, sha) in _volume_files(manifest, name).items():
            if rel in sums and sums[rel] != sha:
                corrupt.append("%s/%s" % (name, SUMS))
            expected[rel] = (size, sha)
        for rel, (size, sha) in sorted(expected.items()):
            path = os.path.join(vol_dir, rel)
            actual = file_size(path)
            shown = "%s/%s" % (name, rel)
            if actual is None:
                missing.append(shown)
            elif size is not None and actual < size:
                short.append(shown)
            elif size is not None and actual > size:
                corrupt.append(shown)
            elif sha is not None:
                to_hash.append((shown, path, sha, actual))
            files_checked += 1
    bytes_checked = [0]
    lock = threading.Lock()

    def check(item):
        shown, path, sha, size = item

        def run():
            actual, _size = sha256_file(path)
            with lock:
                bytes_checked[0] += size
            return shown if actual != sha else None
        return run
    # Big files first, so one large blob does not end the run alone on one thread.
    for bad in run_parallel([check(item) for item in sorted(to_hash, key=lambda i: -i[3])], parallel):
        if bad:
            corrupt.append(bad)
    result = {
        "bundle_id": manifest["bundle_id"],
        "release": manifest.get("release"),
        "delta": manifest.get("delta"),
        "volume_count": total,
        "volumes_found": sorted(n for n in found if n in manifest["volumes"]),
        "missing_volumes": missing_volumes,
        "missing": sorted(set(missing)),
        "short": sorted(set(short)),
        "corrupt": sorted(set(corrupt)),
        "files_verified": files_checked,
        "bytes_verified": bytes_checked[0],
    }
    result["ok"] = not (missing_volumes or result["missing"] or result["short"] or result["corrupt"])
    return result, manifest, found


def _volume_files(manifest, name):
    files = {}
    for digest, record in manifest["blobs"].items():
        if "parts" in record:
            for part in record["parts"]:
                if part["volume"] == name:
                    files[part["path"]] = (part["size"], part["sha256"])
        elif record["volume"] == name:
            files[record["path"]] = (record["size"], digest.split(":", 1)[1])
    store_json = manifest["store_json"]
    if store_json["volume"] == name:
        files[store_json["path"]] = (store_json["size"], store_json["sha256"])
    return files


def _layout_files(manifest, name):
    """Layout files live in the store.json volume; their hashes are in that volume's SHA256SUMS."""
    if manifest["store_json"]["volume"] != name:
        return []
    return ["%s/%s" % (image["bundle_path"], f) for image in manifest["images"].values() for f in LAYOUT_FILES]


def verify_message(result):
    """One sentence for a failed verify."""
    parts = []
    total = result["volume_count"]
    for name in result["missing_volumes"]:
        parts.append("%s of %d is missing" % (name, total))
    for key in ("missing", "short", "corrupt"):
        if result[key]:
            shown = ", ".join(result[key][:5]) + (" and %d more" % (len(result[key]) - 5) if len(result[key]) > 5 else "")
            parts.append("%s: %s" % (key, shown))
    return "Bundle %s failed verification: %s." % (result["bundle_id"], "; ".join(parts))


# ---------------------------------------------------------------- unpack


def _join_blob(store, digest, record, found):
    """Write one blob into the store from its file or parts; (written bytes, error or None)."""
    hexdigest = digest.split(":", 1)[1]
    target_dir = os.path.join(store, BLOB_DIR)
    pieces = record["parts"] if "parts" in record else [{"volume": record["volume"], "path": record["path"],
                                                         "size": record["size"], "sha256": hexdigest}]
    whole = hashlib.sha256()
    buf = bytearray(BUFFER_SIZE)
    view = memoryview(buf)
    handle, temp = _open_temp(target_dir, hexdigest)
    try:
        with handle:
            for piece in pieces:
                source = os.path.join(found[piece["volume"]], piece["path"])
                part_hash = hashlib.sha256()
                count_total = 0
                with open(source, "rb", buffering=0) as src:
                    while True:
                        count = src.readinto(buf)
                        if not count:
                            break
                        chunk = view[:count]
                        whole.update(chunk)
                        part_hash.update(chunk)
                        handle.write(chunk)
                        count_total += count
                if count_total != piece["size"] or part_hash.hexdigest() != piece["sha256"]:
                    return 0, "%s/%s" % (piece["volume"], piece["path"])
            os.fsync(handle.fileno())
        if whole.hexdigest() != hexdigest:
            return 0, "%s (joined from %d parts)" % (digest, len(pieces))
        os.chmod(temp, 0o644)
        os.rename(temp, os.path.join(target_dir, hexdigest))
        temp = None
        return record["size"], None
    finally:
        if temp:
            _discard(temp)


def merge_store_index(existing, incoming):
    merged = {"format": FORMAT, "images": {}, "blobs": {}}
    for index in (existing, incoming):
        if index:
            merged["images"].update(index.get("images", {}))
            merged["blobs"].update(index.get("blobs", {}))
    for key, value in (incoming or {}).items():
        if key not in merged:
            merged[key] = value
    return merged


def unpack(sources, store, parallel=4, check_mode=False):
    """Rebuild (or update, for a delta) ``store`` from the transfer set under ``sources``."""
    manifest, found, problems = load_bundle(sources)
    total = manifest["volume_count"]
    missing_volumes = [n for n in sorted(manifest["volumes"]) if n not in found]
    if missing_volumes:
        raise BundleError("Bundle %s is incomplete: %s." % (manifest["bundle_id"], "; ".join(
            "%s of %d is missing" % (n, total) for n in missing_volumes)), missing_volumes=missing_volumes)
    if problems:
        raise BundleError("Bundle %s has unreadable manifests: %s." % (manifest["bundle_id"], ", ".join(problems)),
                          corrupt=problems)
    store = os.path.abspath(store)
    base_blobs = manifest.get("base_blobs") or {}
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
    # Sizes first: a missing or short file fails before anything is written.
    missing, short = [], []
    for name in sorted(manifest["volumes"]):
        for rel, (size, _sha) in _volume_files(manifest, name).items():
            actual = file_size(os.path.join(found[name], rel))
            if actual is None:
                missing.append("%s/%s" % (name, rel))
            elif actual != size:
                short.append("%s/%s" % (name, rel))
    if missing or short:
        raise BundleError("Bundle %s cannot be unpacked: %s." % (manifest["bundle_id"], "; ".join(
            "%s: %s" % (k, ", ".join(v[:5])) for k, v in (("missing", missing), ("short or oversized", short)) if v)),
            missing=missing, short=short)

    incoming_index = _read_bundle_file(manifest, found, manifest["store_json"]["path"], manifest["store_json"]["sha256"])
    incoming = json.loads(incoming_index.decode("utf-8"))
    present, _absent, _wrong = store_blob_state(store, dict((d, r["size"]) for d, r in manifest["blobs"].items()))
    todo = sorted((d for d in manifest["blobs"] if d not in present), key=lambda d: -manifest["blobs"][d]["size"])
    layouts = []
    sums_by_volume = {}
    for ref, image in sorted(manifest["images"].items()):
        _check_relpath(image["layout"], "layout of %s" % ref)
        for name in LAYOUT_FILES:
            vol = manifest["store_json"]["volume"]
            if vol not in sums_by_volume:
                sums_by_volume[vol] = _parse_sums(os.path.join(found[vol], SUMS)) or {}
            rel = "%s/%s" % (image["bundle_path"], name)
            data = _read_bundle_file(manifest, found, rel, sums_by_volume[vol].get(rel))
            layouts.append((os.path.join(store, image["layout"], name), data))
    layout_changes = [path for path, data in layouts if _differs(path, data)]
    existing_path = os.path.join(store, STORE_INDEX)
    existing = read_json(existing_path, "store index") if os.path.exists(existing_path) else None
    merged = merge_store_index(existing, incoming)
    index_bytes = incoming_index if existing is None else canonical_json(merged)
    index_changed = _differs(existing_path, index_bytes) and merged != existing
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
        "changed": bool(todo or layout_changes or index_changed),
    }
    if check_mode:
        return result
    os.makedirs(os.path.join(store, BLOB_DIR), exist_ok=True)
    remove_stale_temps(os.path.join(store, BLOB_DIR))
    free = free_bytes(store)
    if result["bytes_to_write"] > free:
        raise BundleError("The store %s has %d bytes (%s) free but unpacking needs %d bytes (%s)." % (
            store, free, human_size(free), result["bytes_to_write"], human_size(result["bytes_to_write"])))
    tasks = [(lambda d=d: _join_blob(store, d, manifest["blobs"][d], found)) for d in todo]
    corrupt = []
    written = 0
    for nbytes, error in run_parallel(tasks, parallel):
        written += nbytes
        if error:
            corrupt.append(error)
    if corrupt:
        raise BundleError("Bundle %s holds corrupt file(s), not unpacked: %s." % (manifest["bundle_id"], ", ".join(sorted(corrupt))),
                          corrupt=sorted(corrupt))
    for path, data in layouts:
        write_atomic(path, data)
    # store.json last, and only once every blob it lists is in place; merged again under the
    # store's lock, in case another writer (image_download) updated it meanwhile.
    with StoreLock(store):
        existing = read_json(existing_path, "store index") if os.path.exists(existing_path) else None
        merged = merge_store_index(existing, incoming)
        index_bytes = incoming_index if existing is None else canonical_json(merged)
        _present, absent, wrong = store_blob_state(store, merged["blobs"])
        if absent or wrong:
            raise BundleError("The store %s would list %d blob(s) it does not hold: %s." % (
                store, len(absent + wrong), ", ".join((absent + wrong)[:5])), missing_blobs=absent + wrong)
        if merged != existing:
            write_atomic(existing_path, index_bytes)
    result.update({"blobs_written": len(todo), "bytes_written": written})
    return result


def _differs(path, data):
    try:
        with open(path, "rb") as handle:
            return handle.read() != data
    except (IOError, OSError):
        return True


def _read_bundle_file(manifest, found, rel, sha):
    vol = manifest["store_json"]["volume"]
    path = os.path.join(found[vol], rel)
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except (IOError, OSError):
        raise BundleError("The bundle file %s/%s is missing." % (vol, rel), missing=["%s/%s" % (vol, rel)])
    if sha is None or sha256_bytes(data) != sha:
        raise BundleError("The bundle file %s/%s is corrupt." % (vol, rel), corrupt=["%s/%s" % (vol, rel)])
    return data


# ---------------------------------------------------------------- reading single images out of a set


def read_set_index(manifest, found):
    """The store index a set carries (its ``store.json``), checked against its recorded sha256 and validated."""
    record = manifest["store_json"]
    data = _read_bundle_file(manifest, found, record["path"], record["sha256"])
    path = "%s/%s" % (record["volume"], record["path"])
    try:
        index = json.loads(data.decode("utf-8"))
        validate_index(index, path)
    except (ValueError, StoreError) as exc:
        raise BundleError("The store index %s of bundle %s is not valid: %s." % (path, manifest["bundle_id"], exc))
    return index


def extract_blob(manifest, found, digest, store):
    """Write one blob the set carries into ``store`` (parts joined, hashed before the rename): (bytes, problem)."""
    os.makedirs(os.path.join(store, BLOB_DIR), exist_ok=True)
    return _join_blob(store, digest, manifest["blobs"][digest], found)


# ---------------------------------------------------------------- receipt


def make_receipt(store, release=None):
    """What ``store`` holds, by store.json and a stat of every blob: the base of the next delta."""
    index = load_store(store)
    present, missing, wrong = store_blob_state(store, index["blobs"])
    images = dict((ref, image.get("digest")) for ref, image in index["images"].items())
    receipt = {
        "format": FORMAT,
        "kind": RECEIPT_KIND,
        "release": release,
        "images": images,
        "blobs": present,
        "bytes": sum(present.values()),
    }
    receipt["receipt_id"] = "sha256:" + sha256_bytes(canonical_json(receipt))
    return receipt, missing + wrong
