# Copyright: airgap.microshift contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""Read files out of an RPM package in pure Python, without installing it.

An RPM file is a 96-byte lead, a signature header (padded to 8 bytes), the main header and a
cpio archive (``newc``) compressed with the algorithm named by the PAYLOADCOMPRESSOR tag.
gzip, xz/lzma and bzip2 come from the standard library; zstd from the ``zstandard`` package
when it is importable, else from the ``zstd`` command, else from ``rpm2cpio``. So a control
node needs neither ``rpm2cpio`` nor ``cpio`` for the common payloads.

Every size read from the file is checked against a limit before anything is allocated, so a
corrupt or hostile header gives a clear :class:`RpmError` and never an unbounded read. The
payload, whoever decompresses it (Python or an external command, whose output is streamed, never
buffered whole), is read through one bounded reader (``_strict.BoundedReader``).
"""

from __future__ import annotations

import bz2
import fnmatch
import gzip
import lzma
import os
import shutil
import struct
import subprocess
import tempfile
import zlib

from ansible_collections.airgap.microshift.plugins.module_utils._strict import BoundedReader, OutsideDataError

try:
    import zstandard
except ImportError:  # pragma: no cover - depends on the host
    zstandard = None

LEAD_SIZE = 96
LEAD_MAGIC = b"\xed\xab\xee\xdb"
HEADER_MAGIC = b"\x8e\xad\xe8"

# The limits of rpm itself (lib/header.c): at most 0xffff index entries and 256 MiB of data.
MAX_INDEX_ENTRIES = 0xFFFF
MAX_HEADER_DATA = 0x0FFFFFFF
# A release file is a few kilobytes; anything above this is not one.
MAX_MEMBER_SIZE = 64 * 1024 * 1024
MAX_NAME_SIZE = 64 * 1024
# Bounds the whole decompressed archive, against decompression bombs.
MAX_PAYLOAD_SIZE = 2 * 1024 * 1024 * 1024

TAG_NAME = 1000
TAG_VERSION = 1001
TAG_RELEASE = 1002
TAG_OLDFILENAMES = 1027
TAG_DIRINDEXES = 1116
TAG_BASENAMES = 1117
TAG_DIRNAMES = 1118
TAG_PAYLOADFORMAT = 1124
TAG_PAYLOADCOMPRESSOR = 1125

_TYPE_INT32 = 4
_TYPE_STRING = 6
_TYPE_STRING_ARRAY = 8
_TYPE_I18NSTRING = 9

_CPIO_MAGICS = (b"070701", b"070702")
_CPIO_HEADER_SIZE = 110
_CPIO_TRAILER = "TRAILER!!!"

# Payload magics, to tell a corrupt payload from a mislabelled one.
_MAGICS = {
    "gzip": (b"\x1f\x8b",),
    "xz": (b"\xfd7zXZ\x00", b"\x5d\x00\x00"),
    "lzma": (b"\x5d\x00\x00", b"\xfd7zXZ\x00"),
    "zstd": (b"\x28\xb5\x2f\xfd",),
    "bzip2": (b"BZh",),
}


class RpmError(ValueError):
    """An RPM file that cannot be read: the message is one sentence naming the file."""


class CommandRunner:
    """How external commands are found and started; a module passes one built on AnsibleModule.

    ``which(name)`` returns a path or ``None``; ``spawn(argv, stdin)`` starts a command whose
    standard output is read as a stream (a ``subprocess.Popen`` with ``stdout`` a pipe).
    Without ``spawn`` (and without ``run``, the older way to allow commands), no external
    command is used.
    """

    def __init__(self, which=None, run=None, spawn=None):
        self.which = which or shutil.which
        self.spawn = spawn or (spawn_process if run is not None else None)


def spawn_process(argv, stdin):
    """Start ``argv`` with ``stdin`` (a file object), stdout a pipe, stderr a temporary file.

    Not ``AnsibleModule.run_command``: it buffers the whole output in memory, and a decompressor's
    output must be read as a stream through the bounded reader (a decompression bomb is stopped
    after MAX_PAYLOAD_SIZE bytes, the command killed).
    """
    errors = tempfile.TemporaryFile()
    try:
        proc = subprocess.Popen(  # pylint: disable=ansible-bad-function
            argv, stdin=stdin, stdout=subprocess.PIPE, stderr=errors, close_fds=True)
    except BaseException:
        errors.close()
        raise
    proc.error_file = errors
    return proc


class _ProcessStream:
    """The standard output of a running decompressor, read as it comes; its exit status checked at the end."""

    def __init__(self, proc, argv, path):
        self._proc = proc
        self._argv = argv
        self._path = path

    def read(self, size=-1):
        return self._proc.stdout.read(size)

    def finish(self):
        """After the end of the stream: fail when the command did not exit with 0."""
        rc = self._proc.wait()
        if rc != 0:
            raise RpmError("%s could not be unpacked: %s exited with %d (%s)." % (self._path, self._argv[0], rc, self._stderr() or "no message"))

    def failed(self):
        """The command's failure when it has ended with a non-zero status (waiting a second at most), else None."""
        try:
            rc = self._proc.wait(timeout=1)
        except subprocess.TimeoutExpired:
            return None
        if rc == 0:
            return None
        return RpmError("%s could not be unpacked: %s exited with %d (%s)." % (self._path, self._argv[0], rc, self._stderr() or "no message"))

    def _stderr(self):
        errors = getattr(self._proc, "error_file", None)
        if errors is None:
            return ""
        errors.seek(0)
        lines = errors.read(2000).decode("utf-8", "replace").strip().splitlines()
        return lines[-1] if lines else ""

    def close(self):
        if self._proc.poll() is None:
            self._proc.kill()
        self._proc.wait()
        self._proc.stdout.close()
        errors = getattr(self._proc, "error_file", None)
        if errors is not None:
            errors.close()


def _read_exact(handle, size, path, what):
    data = handle.read(size)
    if len(data) != size:
        raise RpmError("%s is truncated: the file ends inside its %s." % (path, what))
    return data


def read_header(handle, path, what, file_size):
    """Read one header structure; return ``{tag: (type, count, offset)}`` and the data store."""
    intro = _read_exact(handle, 16, path, what)
    if intro[:3] != HEADER_MAGIC:
        raise RpmError("%s is corrupt: its %s does not start with the RPM header magic 8e ad e8." % (path, what))
    nindex, hsize = struct.unpack(">II", intro[8:16])
    if nindex > MAX_INDEX_ENTRIES or hsize > MAX_HEADER_DATA:
        raise RpmError("%s is corrupt: its %s claims %d entries and %d bytes, beyond RPM's limits." % (path, what, nindex, hsize))
    needed = 16 * nindex + hsize
    if handle.tell() + needed > file_size:
        raise RpmError("%s is truncated: its %s needs %d more bytes than the file holds."
                       % (path, what, handle.tell() + needed - file_size))
    index_bytes = _read_exact(handle, 16 * nindex, path, what)
    store = _read_exact(handle, hsize, path, what)
    index = {}
    for pos in range(nindex):
        tag, typ, offset, count = struct.unpack(">iiii", index_bytes[pos * 16:pos * 16 + 16])
        if offset < 0 or offset > hsize or count < 0:
            raise RpmError("%s is corrupt: tag %d of its %s points outside the header." % (path, tag, what))
        index[tag] = (typ, count, offset)
    return index, store, 16 + needed


def _strings(index, store, tag, path):
    if tag not in index:
        return None
    typ, count, offset = index[tag]
    if typ not in (_TYPE_STRING, _TYPE_STRING_ARRAY, _TYPE_I18NSTRING):
        raise RpmError("%s is corrupt: tag %d has type %d where a string was expected." % (path, tag, typ))
    if typ == _TYPE_STRING:
        count = 1
    values = []
    for dummy in range(count):
        end = store.find(b"\0", offset)
        if end < 0:
            raise RpmError("%s is corrupt: a string of tag %d is not terminated." % (path, tag))
        values.append(store[offset:end].decode("utf-8", "replace"))
        offset = end + 1
    return values


def _int32s(index, store, tag, path):
    if tag not in index:
        return None
    typ, count, offset = index[tag]
    if typ != _TYPE_INT32 or offset + 4 * count > len(store):
        raise RpmError("%s is corrupt: tag %d is not a valid 32-bit integer array." % (path, tag))
    return list(struct.unpack(">%di" % count, store[offset:offset + 4 * count]))


class RpmHeader:
    """What the main header says: name, version, payload compressor and file names."""

    def __init__(self, name, version, release, compressor, payload_format, files):
        self.name = name
        self.version = version
        self.release = release
        self.compressor = compressor
        self.payload_format = payload_format
        self.files = files

    @property
    def nevr(self):
        return "%s-%s-%s" % (self.name, self.version, self.release)


def _header_files(index, store, path):
    old = _strings(index, store, TAG_OLDFILENAMES, path)
    if old is not None:
        return old
    basenames = _strings(index, store, TAG_BASENAMES, path) or []
    dirnames = _strings(index, store, TAG_DIRNAMES, path) or []
    dirindexes = _int32s(index, store, TAG_DIRINDEXES, path) or []
    if len(dirindexes) != len(basenames):
        raise RpmError("%s is corrupt: its file name tags disagree in length." % path)
    files = []
    for base, dirindex in zip(basenames, dirindexes):
        if not 0 <= dirindex < len(dirnames):
            raise RpmError("%s is corrupt: a file name points to a directory index that does not exist." % path)
        files.append(dirnames[dirindex] + base)
    return files


def _first(values, default=None):
    return values[0] if values else default


def read_headers(handle, path):
    """Check the lead, skip the signature, parse the main header; leave ``handle`` at the payload."""
    handle.seek(0, os.SEEK_END)
    file_size = handle.tell()
    handle.seek(0)
    if file_size < LEAD_SIZE:
        raise RpmError("%s is truncated: it has %d bytes, fewer than the %d of an RPM lead." % (path, file_size, LEAD_SIZE))
    lead = handle.read(LEAD_SIZE)
    if lead[:4] != LEAD_MAGIC:
        raise RpmError("%s is not an RPM package: it does not start with the RPM lead magic ed ab ee db." % path)
    dummy_index, dummy_store, size = read_header(handle, path, "signature header", file_size)
    padding = (8 - size % 8) % 8
    _read_exact(handle, padding, path, "signature header")
    index, store, dummy_size = read_header(handle, path, "main header", file_size)
    return RpmHeader(
        name=_first(_strings(index, store, TAG_NAME, path), "?"),
        version=_first(_strings(index, store, TAG_VERSION, path), "?"),
        release=_first(_strings(index, store, TAG_RELEASE, path), "?"),
        # rpm's own default when the tag is absent (very old packages).
        compressor=_first(_strings(index, store, TAG_PAYLOADCOMPRESSOR, path), "gzip"),
        payload_format=_first(_strings(index, store, TAG_PAYLOADFORMAT, path), "cpio"),
        files=_header_files(index, store, path),
    )


def _zstd_stream(handle):
    decompressor = zstandard.ZstdDecompressor()
    try:
        return decompressor.stream_reader(handle, read_across_frames=True)
    except TypeError:  # zstandard < 0.15 has no read_across_frames
        return decompressor.stream_reader(handle)


def _zstd_fallback(handle, path, runner):
    if runner.spawn is None:
        raise RpmError("%s has a zstd-compressed payload and the zstandard Python package is not installed." % path)
    zstd = runner.which("zstd")
    if zstd:
        # The package file itself is zstd's standard input, from the payload on: nothing is copied.
        argv = [zstd, "-d", "-c", "-q"]
        # The child reads the file descriptor: its offset must be the payload's, not where Python's buffer got to.
        os.lseek(handle.fileno(), handle.tell(), os.SEEK_SET)
        return _ProcessStream(runner.spawn(argv, handle), argv, path)
    rpm2cpio = runner.which("rpm2cpio")
    if rpm2cpio:
        argv = [rpm2cpio, path]
        return _ProcessStream(runner.spawn(argv, subprocess.DEVNULL), argv, path)
    raise RpmError("%s has a zstd-compressed payload: install the zstandard Python package, the zstd command "
                   "or rpm2cpio on the host that reads it." % path)


def payload_stream(handle, path, header, runner=None):
    """A stream of the uncompressed cpio archive; ``handle`` must be at the payload."""
    runner = runner or CommandRunner()
    start = handle.tell()
    magic = handle.read(6)
    handle.seek(start)
    if header.payload_format not in ("cpio", "drpm"):
        raise RpmError("%s has a payload in %s format, not cpio." % (path, header.payload_format))
    if magic in _CPIO_MAGICS:
        return handle
    compressor = header.compressor
    if compressor not in _MAGICS:
        raise RpmError("%s has a payload compressed with %s, which is not supported (gzip, xz, lzma, zstd, bzip2 are)."
                       % (path, compressor))
    if not any(magic.startswith(m) for m in _MAGICS[compressor]):
        if not magic:
            raise RpmError("%s is truncated: it ends where its payload should start." % path)
        raise RpmError("%s is corrupt: its payload does not start with %s data." % (path, compressor))
    if compressor == "gzip":
        return gzip.GzipFile(fileobj=handle, mode="rb")
    if compressor in ("xz", "lzma"):
        return lzma.LZMAFile(handle, mode="rb")
    if compressor == "bzip2":
        return bz2.BZ2File(handle, mode="rb")
    if zstandard is not None:
        return _zstd_stream(handle)
    return _zstd_fallback(handle, path, runner)


def _cpio_read(stream, size, path, what):
    chunks = []
    left = size
    while left > 0:
        chunk = stream.read(min(left, 1024 * 1024))
        if not chunk:
            raise RpmError("%s is truncated: its payload ends inside %s." % (path, what))
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def _cpio_skip(stream, size, path, what):
    left = size
    while left > 0:
        chunk = stream.read(min(left, 1024 * 1024))
        if not chunk:
            raise RpmError("%s is truncated: its payload ends inside %s." % (path, what))
        left -= len(chunk)


def iter_cpio(stream, path, wanted):
    """Yield ``(name, data)`` for regular files whose name ``wanted(name)`` accepts."""
    while True:
        head = _cpio_read(stream, _CPIO_HEADER_SIZE, path, "a cpio header")
        if head[:6] not in _CPIO_MAGICS:
            raise RpmError("%s is corrupt: its payload has no cpio header (magic 070701) where one is expected." % path)
        try:
            fields = [int(head[6 + 8 * pos:14 + 8 * pos], 16) for pos in range(13)]
        except ValueError:
            raise RpmError("%s is corrupt: a cpio header of its payload holds non-hexadecimal fields." % path)
        mode, filesize, namesize = fields[1], fields[6], fields[11]
        if namesize < 1 or namesize > MAX_NAME_SIZE:
            raise RpmError("%s is corrupt: a cpio header of its payload has a name of %d bytes." % (path, namesize))
        name_padding = (4 - (_CPIO_HEADER_SIZE + namesize) % 4) % 4
        raw_name = _cpio_read(stream, namesize + name_padding, path, "a cpio file name")[:namesize]
        name = raw_name.rstrip(b"\0").decode("utf-8", "replace")
        if name == _CPIO_TRAILER:
            return
        data_padding = (4 - filesize % 4) % 4
        is_regular = mode & 0o170000 == 0o100000
        if is_regular and wanted(name):
            if filesize > MAX_MEMBER_SIZE:
                raise RpmError("%s holds %s of %d bytes, too large to be a release file." % (path, name, filesize))
            data = _cpio_read(stream, filesize, path, name)
            _cpio_skip(stream, data_padding, path, name)
            yield name, data
        else:
            _cpio_skip(stream, filesize + data_padding, path, name)


def extract(path, pattern, runner=None):
    """Return ``(header, [(member name, bytes), ...])`` for regular files matching ``pattern``.

    ``pattern`` is an :func:`fnmatch.fnmatchcase` pattern or a callable on the member name.
    """
    wanted = pattern if callable(pattern) else (lambda name: fnmatch.fnmatchcase(name, pattern))
    try:
        with open(path, "rb") as handle:
            header = read_headers(handle, path)
            stream = payload_stream(handle, path, header, runner)
            try:
                bounded = BoundedReader(stream, MAX_PAYLOAD_SIZE,
                                        "%s is suspicious: its payload decompresses to more than %d bytes." % (path, MAX_PAYLOAD_SIZE))
                members = list(iter_cpio(bounded, path, wanted))
                # Read to the end, so the decompressor checks its end marker and checksum:
                # a package cut after the cpio trailer is truncated all the same.
                while bounded.read(1024 * 1024):
                    pass
                if isinstance(stream, _ProcessStream):
                    stream.finish()
            except OutsideDataError as exc:
                raise RpmError(str(exc))
            except RpmError:
                failure = stream.failed() if isinstance(stream, _ProcessStream) else None
                if failure is not None:
                    raise failure
                raise
            except (EOFError, OSError, zlib.error, lzma.LZMAError, ValueError) as exc:
                raise RpmError("%s is corrupt: its %s payload cannot be decompressed (%s)." % (path, header.compressor, exc))
            except Exception as exc:  # zstandard.ZstdError does not derive from a standard error
                if zstandard is not None and isinstance(exc, zstandard.ZstdError):
                    raise RpmError("%s is corrupt: its zstd payload cannot be decompressed (%s)." % (path, exc))
                raise
            finally:
                if isinstance(stream, _ProcessStream):
                    stream.close()
    except OSError as exc:
        raise RpmError("%s cannot be read: %s." % (path, exc.strerror or exc))
    return header, members
