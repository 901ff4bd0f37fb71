# Copyright: airgap.microshift contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""The pure-Python RPM reader, on real packages built here with rpmbuild."""

from __future__ import annotations

import os
import shutil
import struct
import subprocess

import pytest

from ansible_collections.airgap.microshift.plugins.module_utils import _rpm
from ansible_collections.airgap.microshift.tests.unit.plugins.helpers.release import (
    FIXTURES, PATTERN, PAYLOADS, RELEASE_DIR, LazyRpms, needs_rpmbuild, release_files, rpm_root, run_command,
)


@pytest.fixture(scope="session")
def rpms(tmp_path_factory):
    """Release-info RPMs of MicroShift 5.0, one per payload compression, plus one without release files."""
    specs = dict((payload, ("microshift-release-info", release_files("5.0"), payload, "5.0.0")) for payload in PAYLOADS)
    specs["no-release"] = (
        "microshift-other", {"/usr/share/doc/microshift-other/README": os.path.join(FIXTURES, "5.0", "release-x86_64.json")}, "gzip", "1.0"
    )
    return LazyRpms(rpm_root(tmp_path_factory, "rpm-reader"), specs)


@needs_rpmbuild
@pytest.mark.parametrize("payload", sorted(PAYLOADS))
def test_extract_every_payload(rpms, payload):
    header, members = _rpm.extract(rpms[payload], PATTERN)
    assert header.name == "microshift-release-info"
    assert header.nevr == "microshift-release-info-5.0.0-1"
    assert header.compressor == payload
    expected = release_files("5.0")
    assert sorted(header.files) == sorted([RELEASE_DIR + "/" + os.path.basename(p) for p in expected.values()])
    assert [name for name, dummy in members] == ["." + target for target in sorted(expected)]
    for name, data in members:
        with open(expected[name[1:]], "rb") as handle:
            assert data == handle.read()


@needs_rpmbuild
def test_header_agrees_with_rpm(rpms):
    """The pure-Python header reader reads what `rpm -qp` reads."""
    if shutil.which("rpm") is None:
        pytest.skip("rpm is not installed")
    out = subprocess.run(
        ["rpm", "-qp", "--qf", "%{NAME} %{VERSION} %{RELEASE} %{PAYLOADCOMPRESSOR}\\n", rpms["xz"]],
        check=True, stdout=subprocess.PIPE, universal_newlines=True,
    ).stdout.split()
    listed = subprocess.run(["rpm", "-qpl", rpms["xz"]], check=True, stdout=subprocess.PIPE, universal_newlines=True).stdout.split()
    with open(rpms["xz"], "rb") as handle:
        header = _rpm.read_headers(handle, rpms["xz"])
    assert [header.name, header.version, header.release, header.compressor] == out
    assert sorted(header.files) == sorted(listed)


@needs_rpmbuild
def test_zstd_through_the_zstd_command(rpms, monkeypatch):
    if shutil.which("zstd") is None:
        pytest.skip("zstd is not installed")
    monkeypatch.setattr(_rpm, "zstandard", None)
    calls = []
    runner = _rpm.CommandRunner(spawn=lambda argv, stdin: (calls.append(argv[0]), _rpm.spawn_process(argv, stdin))[1])
    dummy, members = _rpm.extract(rpms["zstd"], PATTERN, runner)
    assert calls == [shutil.which("zstd")]
    assert len(members) == len(release_files("5.0"))


@needs_rpmbuild
def test_zstd_through_rpm2cpio(rpms, monkeypatch):
    if shutil.which("rpm2cpio") is None:
        pytest.skip("rpm2cpio is not installed")
    monkeypatch.setattr(_rpm, "zstandard", None)
    runner = _rpm.CommandRunner(which=lambda name: None if name == "zstd" else shutil.which(name), run=run_command)
    dummy, members = _rpm.extract(rpms["zstd"], PATTERN, runner)
    assert len(members) == len(release_files("5.0"))


@needs_rpmbuild
def test_zstd_with_no_decompressor_names_what_to_install(rpms, monkeypatch):
    monkeypatch.setattr(_rpm, "zstandard", None)
    runner = _rpm.CommandRunner(which=lambda name: None, run=run_command)
    with pytest.raises(_rpm.RpmError, match="install the zstandard Python package, the zstd command or rpm2cpio"):
        _rpm.extract(rpms["zstd"], PATTERN, runner)
    # Without a way to run commands, only the Python package can help.
    with pytest.raises(_rpm.RpmError, match="zstandard Python package is not installed"):
        _rpm.extract(rpms["zstd"], PATTERN)


@needs_rpmbuild
def test_failing_zstd_command(rpms, monkeypatch, tmp_path):
    monkeypatch.setattr(_rpm, "zstandard", None)
    # `false` stands in for a broken zstd binary: a real command that exits 1.
    runner = _rpm.CommandRunner(which=lambda name: shutil.which("false"), run=run_command)
    with pytest.raises(_rpm.RpmError, match="could not be unpacked: .*false exited with 1"):
        _rpm.extract(rpms["zstd"], PATTERN, runner)


@needs_rpmbuild
def test_package_without_release_files(rpms):
    header, members = _rpm.extract(rpms["no-release"], PATTERN)
    assert members == []
    assert header.files == ["/usr/share/doc/microshift-other/README"]


def _payload_offset(path):
    with open(path, "rb") as handle:
        _rpm.read_headers(handle, path)
        return handle.tell()


@needs_rpmbuild
@pytest.mark.parametrize("payload", ["gzip", "xz", "zstd", "bzip2"])
@pytest.mark.parametrize("where", ["lead", "signature", "main-header", "payload-start", "payload-middle", "payload-end"])
def test_truncated(rpms, payload, where, tmp_path):
    source = rpms[payload]
    with open(source, "rb") as handle:
        data = handle.read()
    start = _payload_offset(source)
    cut = {
        "lead": 50,
        "signature": 96 + 20,
        "main-header": start - 30,
        "payload-start": start,
        "payload-middle": start + (len(data) - start) // 2,
        "payload-end": len(data) - 8,
    }[where]
    path = tmp_path / "truncated.rpm"
    path.write_bytes(data[:cut])
    with pytest.raises(_rpm.RpmError) as caught:
        _rpm.extract(str(path), PATTERN)
    message = str(caught.value)
    assert message.startswith(str(path) + " ")
    assert "\n" not in message
    assert "truncated" in message or "corrupt" in message


@needs_rpmbuild
@pytest.mark.parametrize("payload", ["gzip", "xz", "zstd", "bzip2"])
def test_corrupt_payload(rpms, payload, tmp_path):
    source = rpms[payload]
    with open(source, "rb") as handle:
        data = bytearray(handle.read())
    start = _payload_offset(source)
    # Keep the compression magic, scramble what follows it.
    for pos in range(start + 12, min(len(data), start + 400)):
        data[pos] ^= 0x5A
    path = tmp_path / "corrupt.rpm"
    path.write_bytes(bytes(data))
    with pytest.raises(_rpm.RpmError, match=r"^%s is (corrupt|truncated)" % str(path).replace(".", r"\.")):
        _rpm.extract(str(path), PATTERN)


@needs_rpmbuild
@pytest.mark.parametrize(
    "offset, value, message",
    [
        (0, b"\x00\x00\x00\x00", "is not an RPM package"),
        (96, b"\x00\x00\x00", "signature header does not start with the RPM header magic"),
        (96 + 8, struct.pack(">I", 0x7FFFFFFF), "beyond RPM's limits"),
        (96 + 12, struct.pack(">I", 0x0FFFFFF0), "truncated: its signature header needs"),
    ],
)
def test_corrupt_header(rpms, tmp_path, offset, value, message):
    with open(rpms["gzip"], "rb") as handle:
        data = bytearray(handle.read())
    data[offset:offset + len(value)] = value
    path = tmp_path / "corrupt.rpm"
    path.write_bytes(bytes(data))
    with pytest.raises(_rpm.RpmError, match=message):
        _rpm.extract(str(path), PATTERN)


@needs_rpmbuild
def test_corrupt_payload_magic(rpms, tmp_path):
    with open(rpms["gzip"], "rb") as handle:
        data = bytearray(handle.read())
    start = _payload_offset(rpms["gzip"])
    data[start:start + 2] = b"PK"
    path = tmp_path / "corrupt.rpm"
    path.write_bytes(bytes(data))
    with pytest.raises(_rpm.RpmError, match="payload does not start with gzip data"):
        _rpm.extract(str(path), PATTERN)


@pytest.mark.parametrize("content", [b"", b"x" * 95, b"not an rpm at all" * 10])
def test_not_an_rpm(tmp_path, content):
    path = tmp_path / "bogus.rpm"
    path.write_bytes(content)
    with pytest.raises(_rpm.RpmError, match="^%s is (truncated|not an RPM package)" % str(path).replace(".", r"\.")):
        _rpm.extract(str(path), PATTERN)


def test_missing_file(tmp_path):
    with pytest.raises(_rpm.RpmError, match="cannot be read: No such file or directory"):
        _rpm.extract(str(tmp_path / "absent.rpm"), PATTERN)


def _newc(name, data, mode=0o100644, magic=b"070701"):
    name_bytes = name.encode() + b"\0"
    head = magic + b"".join(b"%08x" % v for v in (1, mode, 0, 0, 1, 0, len(data), 0, 0, 0, 0, len(name_bytes), 0))
    out = head + name_bytes
    out += b"\0" * ((4 - len(out) % 4) % 4)
    out += data + b"\0" * ((4 - len(data) % 4) % 4)
    return out


@pytest.mark.parametrize("magic", [b"070701", b"070702"])
def test_cpio_reader_selects_regular_matching_members(magic):
    import io

    archive = (
        _newc("./usr/share/microshift/release", b"", mode=0o040755, magic=magic)
        + _newc("./usr/share/microshift/release/release-x86_64.json", b'{"images": {}}', magic=magic)
        + _newc("./usr/share/microshift/release/release-olm-x86_64.json", b"link", mode=0o120777, magic=magic)
        + _newc("./usr/share/doc/README", b"abc", magic=magic)
        + _newc("TRAILER!!!", b"", magic=magic)
    )
    members = list(_rpm.iter_cpio(io.BytesIO(archive), "test.rpm", lambda name: name.endswith(".json")))
    assert members == [("./usr/share/microshift/release/release-x86_64.json", b'{"images": {}}')]


@pytest.mark.parametrize(
    "archive, message",
    [
        (b"070707" + b"0" * 104, "no cpio header"),
        (b"070701" + b"z" * 104, "non-hexadecimal"),
        (_newc("a", b"")[:110].replace(b"%08x" % 2, b"%08x" % 0x7FFFFFFF), "has a name of"),
        (_newc("./a.json", b"abcdef")[:-4], "truncated"),
        (_newc("./big.json", b"x")[:54] + b"%08x" % (_rpm.MAX_MEMBER_SIZE + 1) + _newc("./big.json", b"x")[62:], "too large"),
    ],
)
def test_cpio_reader_rejects_bad_archives(archive, message):
    import io

    with pytest.raises(_rpm.RpmError, match=message):
        list(_rpm.iter_cpio(io.BytesIO(archive), "test.rpm", lambda name: True))
