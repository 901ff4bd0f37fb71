# Copyright: airgap.microshift contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""The strict reader of outside data, on real files, links, FIFOs and devices."""

from __future__ import annotations

import io
import os

import pytest

from ansible_collections.airgap.microshift.plugins.module_utils import _strict
from ansible_collections.airgap.microshift.plugins.module_utils._strict import OutsideDataError


@pytest.mark.parametrize("value, ok", [
    ("sha256:" + "a" * 64, True), ("sha256:" + "A" * 64, False), ("sha256:" + "a" * 63, False),
    ("sha512:" + "a" * 64, False), ("sha256:../../" + "a" * 58, False), (None, False), (12, False),
])
def test_digest_grammar(value, ok):
    assert _strict.is_digest(value) is ok
    if not ok:
        with pytest.raises(OutsideDataError, match="is not a sha256 digest"):
            _strict.check_digest(value, "blob")


@pytest.mark.parametrize("relpath", ["../x", "a/../b", "/etc/passwd", "a//b", "./a", "", "a\\b", "a\0b", 7])
def test_relpath_refused(relpath):
    with pytest.raises(OutsideDataError, match="not a plain relative path"):
        _strict.check_relpath(relpath, "the path")


def test_open_regular_exact_size(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "f").write_bytes(b"0123456789")
    with _strict.open_regular(str(tmp_path), "d/f", size=10) as handle:
        assert _strict.read_exact(handle, 10, "f") == b"0123456789"
    with pytest.raises(OutsideDataError, match="has 10 bytes, not the 9 recorded"):
        _strict.open_regular(str(tmp_path), "d/f", size=9)
    with pytest.raises(OutsideDataError, match="more than the 5"):
        _strict.read_file(str(tmp_path), "d/f", max_size=5)


def test_links_are_never_followed(tmp_path):
    (tmp_path / "real").mkdir()
    (tmp_path / "real" / "f").write_bytes(b"secret")
    os.symlink("real", str(tmp_path / "linkdir"))
    os.symlink("real/f", str(tmp_path / "linkfile"))
    with pytest.raises(OutsideDataError, match="symbolic link"):
        _strict.open_regular(str(tmp_path), "linkfile")
    with pytest.raises(OutsideDataError, match="symbolic link"):
        _strict.open_regular(str(tmp_path), "linkdir/f")


def test_fifo_and_device_are_not_opened(tmp_path):
    os.mkfifo(str(tmp_path / "fifo"))
    with pytest.raises(OutsideDataError, match="a FIFO"):
        _strict.open_regular(str(tmp_path), "fifo")  # would block forever if it were opened for reading
    os.symlink("/dev/zero", str(tmp_path / "zero"))
    with pytest.raises(OutsideDataError, match="symbolic link"):
        _strict.open_regular(str(tmp_path), "zero")
    with pytest.raises(OutsideDataError, match="a device"):
        _strict.open_regular("/dev", "zero")
    with pytest.raises(OutsideDataError, match="a directory"):
        _strict.open_regular("/", "tmp")


def test_iter_exact_refuses_a_file_that_grew_or_shrank():
    with pytest.raises(OutsideDataError, match="holds more than the 3 bytes"):
        list(_strict.iter_exact(io.BytesIO(b"abcd"), 3, "f"))
    with pytest.raises(OutsideDataError, match="ended after 4 of its 5 bytes"):
        list(_strict.iter_exact(io.BytesIO(b"abcd"), 5, "f"))


@pytest.mark.parametrize("data, words", [
    (b"{", "not valid JSON"), (b"\xff\xfe", "not UTF-8"), (b'{"a": 1, "a": 2}', "appears twice"),
    (b"[NaN]", "not valid JSON"), (b"[" * 40 + b"]" * 40, "nests deeper than 32"),
    (b"[" * 100000 + b"]" * 100000, "nests deeper"), (b"1" * 5000, "not valid JSON"),
])
def test_load_json_refusals(data, words):
    with pytest.raises(OutsideDataError, match=words):
        _strict.load_json(data, "doc.json", max_size=1 << 20)


def test_load_json_size_cap():
    with pytest.raises(OutsideDataError, match="more than the 10"):
        _strict.load_json(b"[" + b"1," * 10 + b"1]", "doc.json", max_size=10)


def test_bounded_reader():
    reader = _strict.BoundedReader(io.BytesIO(b"x" * 100), 50, "too much")
    assert reader.read(50) == b"x" * 50
    with pytest.raises(OutsideDataError, match="too much"):
        reader.read(10)


def test_field_checks():
    assert _strict.field({"a": 3}, "a", "size", "doc") == 3
    with pytest.raises(OutsideDataError, match="lacks the key 'b'"):
        _strict.field({"a": 3}, "b", "size", "doc")
    with pytest.raises(OutsideDataError, match="must be a size"):
        _strict.field({"a": -1}, "a", "size", "doc")
    with pytest.raises(OutsideDataError, match="must be an integer"):
        _strict.field({"a": True}, "a", "integer", "doc")
    with pytest.raises(OutsideDataError, match="must be an object"):
        _strict.field({"a": []}, "a", "object", "doc")
