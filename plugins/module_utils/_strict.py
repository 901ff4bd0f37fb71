# Copyright: airgap.microshift contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""Strict reading of data that comes from outside: a medium, a ``dir:`` tree, a store on disk, an RPM.

Plain functions with no Ansible dependency, shared by every reader of outside data (``_store``,
``_bundle``, ``_upload``, ``_rpm``), so the rules cannot drift between them:

- a digest matches ``sha256:<64 hex>`` before it is used anywhere, in particular in a path;
- a relative path has no ``..``, no absolute start, no empty component, and no component of it
  is followed through a symbolic link (every directory is opened with ``O_NOFOLLOW``);
- only regular files are opened (``fstat``), of exactly the declared size, and a read takes at
  most that many bytes and fails when more follow;
- JSON is size-capped, depth-limited, refuses duplicate keys and ``NaN``, and is schema-checked
  before use; every failure is one sentence naming the file and the problem (:class:`OutsideDataError`).
"""

from __future__ import annotations

import errno
import json
import os
import re
import stat

HEX_RE = re.compile(r"^[a-f0-9]{64}$")
DIGEST_RE = re.compile(r"^sha256:[a-f0-9]{64}$")

# Caps for JSON documents read from outside.
MAX_JSON_DEPTH = 32
MAX_SMALL_JSON = 4 * 1024 * 1024          # a manifest, an index.json, a receipt
MAX_LARGE_JSON = 64 * 1024 * 1024         # store.json, bundle.json

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | getattr(os, "O_CLOEXEC", 0)


class OutsideDataError(ValueError):
    """Data from outside that is refused; the message is one sentence naming the file and the problem."""


# ---------------------------------------------------------------- names


def is_digest(value):
    return isinstance(value, str) and DIGEST_RE.match(value) is not None


def check_digest(value, where):
    """``value`` when it is a ``sha256:<64 hex>`` digest; else :class:`OutsideDataError`."""
    if not is_digest(value):
        raise OutsideDataError("%s: %s is not a sha256 digest (sha256:<64 lowercase hex>)." % (where, _shown(value)))
    return value


def check_relpath(relpath, where):
    """``relpath`` when it is a plain relative path (no ``..``, ``.``, empty part, NUL or backslash)."""
    if (not isinstance(relpath, str) or not relpath or len(relpath) > 4096 or relpath.startswith("/")
            or "\0" in relpath or "\\" in relpath or any(part in ("", ".", "..") for part in relpath.split("/"))):
        raise OutsideDataError("%s: %s is not a plain relative path." % (where, _shown(relpath)))
    return relpath


def _shown(value, limit=120):
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


# ---------------------------------------------------------------- files


def _describe_mode(mode):
    if stat.S_ISLNK(mode):
        return "a symbolic link"
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a regular file"


def open_dir(root, relpath="", what=None):
    """A file descriptor of the directory ``root/relpath``; no component of ``relpath`` is followed as a link.

    ``root`` itself is the operator's path (a mount point) and may be a link.
    """
    shown = what or (os.path.join(root, relpath) if relpath else root)
    try:
        fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        raise OutsideDataError("Cannot open the directory %s: %s." % (root, exc.strerror or exc))
    if not relpath:
        return fd
    try:
        for part in check_relpath(relpath, shown).split("/"):
            try:
                child = os.open(part, _DIR_FLAGS, dir_fd=fd)
            except OSError as exc:
                raise OutsideDataError("Cannot open the directory %s: %s." % (
                    shown, "a path component is a symbolic link" if exc.errno in (errno.ELOOP, errno.ENOTDIR) else exc.strerror or exc))
            os.close(fd)
            fd = child
    except BaseException:
        os.close(fd)
        raise
    return fd


def open_regular(root, relpath, size=None, what=None, max_size=None):
    """Open ``root/relpath`` for reading: a regular file reached without following any link.

    With ``size``, the file must have exactly that many bytes; with ``max_size``, at most that.
    Returns an unbuffered binary file object; the caller reads it with :func:`read_exact` or
    :func:`iter_exact`. Raises :class:`OutsideDataError` naming ``what`` (default the path).
    """
    shown = what or os.path.join(root, relpath)
    check_relpath(relpath, shown)
    directory, name = relpath.rsplit("/", 1) if "/" in relpath else ("", relpath)
    dir_fd = open_dir(root, directory, shown)
    try:
        try:
            before = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        except OSError as exc:
            raise OutsideDataError("Cannot read %s: %s." % (shown, exc.strerror or exc))
        if not stat.S_ISREG(before.st_mode):
            raise OutsideDataError("%s is %s, not a regular file; it was not opened." % (shown, _describe_mode(before.st_mode)))
        try:
            fd = os.open(name, _FILE_FLAGS, dir_fd=dir_fd)
        except OSError as exc:
            raise OutsideDataError("Cannot read %s: %s." % (shown, exc.strerror or exc))
    finally:
        os.close(dir_fd)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or (info.st_dev, info.st_ino) != (before.st_dev, before.st_ino):
            raise OutsideDataError("%s changed while it was opened; it was not read." % shown)
        if size is not None and info.st_size != size:
            raise OutsideDataError("%s has %d bytes, not the %d recorded for it." % (shown, info.st_size, size))
        if max_size is not None and info.st_size > max_size:
            raise OutsideDataError("%s has %d bytes, more than the %d such a file may have." % (shown, info.st_size, max_size))
        # Back to blocking reads: O_NONBLOCK only kept a FIFO from blocking the open.
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb", buffering=0)
    except BaseException:
        os.close(fd)
        raise


def iter_exact(handle, size, what, buffer_size=8 * 1024 * 1024, buf=None):
    """Yield memoryviews of exactly ``size`` bytes read from ``handle``; fail when it ends early or more follow.

    The views share one buffer: use each before asking for the next.
    """
    buf = buf if buf is not None else bytearray(min(buffer_size, max(size, 1)))
    view = memoryview(buf)
    left = size
    while left:
        count = handle.readinto(view[:min(len(buf), left)])
        if not count:
            raise OutsideDataError("%s ended after %d of its %d bytes." % (what, size - left, size))
        left -= count
        yield view[:count]
    if handle.read(1):
        raise OutsideDataError("%s holds more than the %d bytes declared for it." % (what, size))


def read_exact(handle, size, what):
    """Exactly ``size`` bytes of ``handle`` (and nothing more follows)."""
    out = bytearray()
    for chunk in iter_exact(handle, size, what, buffer_size=1024 * 1024):
        out += chunk
    return bytes(out)


def read_file(root, relpath, what=None, size=None, max_size=MAX_SMALL_JSON):
    """The bytes of a regular file under ``root`` (exactly ``size`` of them, or at most ``max_size``)."""
    shown = what or os.path.join(root, relpath)
    with open_regular(root, relpath, size=size, what=shown, max_size=max_size) as handle:
        length = size if size is not None else os.fstat(handle.fileno()).st_size
        return read_exact(handle, length, shown)


class BoundedReader:
    """A read-only stream over another one that refuses to deliver more than ``limit`` bytes."""

    def __init__(self, stream, limit, message):
        self._stream = stream
        self._left = limit
        self._message = message

    def read(self, size=-1):
        want = self._left + 1 if size is None or size < 0 else min(size, self._left + 1)
        data = self._stream.read(want)
        self._left -= len(data)
        if self._left < 0:
            raise OutsideDataError(self._message)
        return data


# ---------------------------------------------------------------- JSON


def _no_constant(name):
    raise ValueError("%s is not a JSON number" % name)


def _pairs(pairs):
    result = {}
    for key, value in pairs:
        if key in result:
            raise ValueError("the key %r appears twice in one object" % key)
        result[key] = value
    return result


def _depth(value, limit):
    """True when ``value`` nests no deeper than ``limit`` (iterative: no recursion on hostile input)."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        if depth > limit:
            return False
        stack.extend((child, depth + 1) for child in children if isinstance(child, (dict, list)))
    return True


def load_json(data, what, max_size=MAX_SMALL_JSON, max_depth=MAX_JSON_DEPTH):
    """Parse ``data`` (bytes) as JSON: size-capped, UTF-8, no duplicate keys, no NaN, depth-limited."""
    if len(data) > max_size:
        raise OutsideDataError("%s has %d bytes, more than the %d such a document may have." % (what, len(data), max_size))
    try:
        text = data.decode("utf-8")
        value = json.loads(text, object_pairs_hook=_pairs, parse_constant=_no_constant)
    except UnicodeDecodeError:
        raise OutsideDataError("%s is not UTF-8 text." % what)
    except RecursionError:
        raise OutsideDataError("%s nests deeper than %d levels." % (what, max_depth))
    except ValueError as exc:
        raise OutsideDataError("%s is not valid JSON: %s." % (what, str(exc).splitlines()[0][:200]))
    if not _depth(value, max_depth):
        raise OutsideDataError("%s nests deeper than %d levels." % (what, max_depth))
    return value


def read_json(root, relpath, what=None, size=None, max_size=MAX_SMALL_JSON):
    """A JSON document read with :func:`read_file` and parsed with :func:`load_json`."""
    shown = what or os.path.join(root, relpath)
    return load_json(read_file(root, relpath, shown, size=size, max_size=max_size), shown, max_size=max_size)


# ---------------------------------------------------------------- schema checks


_KINDS = {
    "object": (dict,), "list": (list,), "string": (str,), "boolean": (bool,), "integer": (int,),
}


def check_type(value, kind, where, optional=False):
    """``value`` when it is of ``kind`` (object, list, string, boolean, integer, size, digest); else a sentence."""
    if value is None and optional:
        return None
    if kind == "digest":
        return check_digest(value, where)
    if kind in ("integer", "size"):
        if isinstance(value, bool) or not isinstance(value, int):
            raise OutsideDataError("%s must be an integer, not %s." % (where, _shown(value)))
        if kind == "size" and not 0 <= value <= 1 << 53:
            raise OutsideDataError("%s must be a size in bytes (0 or more), not %s." % (where, _shown(value)))
        return value
    if not isinstance(value, _KINDS[kind]) or (kind == "integer" and isinstance(value, bool)):
        raise OutsideDataError("%s must be %s %s, not %s." % (where, "an" if kind[0] in "aeiou" else "a", kind, _shown(value)))
    return value


def field(obj, key, kind, where, optional=False):
    """``obj[key]`` checked with :func:`check_type`; a missing required key is one sentence too."""
    if key not in obj:
        if optional:
            return None
        raise OutsideDataError("%s lacks the key %r." % (where, key))
    return check_type(obj[key], kind, "%s: %r" % (where, key), optional=optional)
