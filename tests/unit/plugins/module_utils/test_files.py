# Copyright: airgap.microshift contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""The one file writer and the locked temporary files."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from ansible_collections.airgap.microshift.plugins.module_utils import _files


def test_write_file_replaces_atomically(tmp_path):
    path = str(tmp_path / "f")
    _files.write_file(path, b"one", mode=0o640)
    inode = os.stat(path).st_ino
    _files.write_file(path, b"two")
    assert open(path, "rb").read() == b"two" and os.stat(path).st_ino != inode
    assert os.listdir(str(tmp_path)) == ["f"]


def test_failed_move_leaves_no_temporary(tmp_path):
    def move(temp, path):
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError):
        _files.write_file(str(tmp_path / "f"), b"data", move=move)
    assert os.listdir(str(tmp_path)) == []


def test_same_content(tmp_path):
    path = str(tmp_path / "f")
    assert not _files.same_content(path, b"x")
    _files.write_file(path, b"x")
    assert _files.same_content(path, b"x") and not _files.same_content(path, b"xy")


def test_stale_temps_are_removed_but_not_a_live_writers(tmp_path):
    directory = str(tmp_path)
    lock = _files.DirLock(directory)
    handle, live = _files.open_temp(directory, "live", lock)
    # A crashed writer: a temporary file nobody holds.
    crashed = os.path.join(directory, _files.TEMP_PREFIX + "crashed.x" + _files.TEMP_SUFFIX)
    open(crashed, "wb").close()
    # A writer in another process holds its own temporary file.
    code = ("import fcntl, os, sys, time\nfd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)\n"
            "fcntl.flock(fd, fcntl.LOCK_EX)\nprint('locked', flush=True)\ntime.sleep(30)\n")
    other = os.path.join(directory, _files.TEMP_PREFIX + "other.x" + _files.TEMP_SUFFIX)
    proc = subprocess.Popen([sys.executable, "-c", code, other], stdout=subprocess.PIPE)
    try:
        assert proc.stdout.readline().strip() == b"locked"
        removed = _files.remove_stale_temps(directory, lock)
        assert removed == [os.path.basename(crashed)]
        assert os.path.exists(live) and os.path.exists(other) and not os.path.exists(crashed)
    finally:
        proc.kill()
        proc.wait()
        handle.close()
    # Once their writers are gone, both are stale.
    assert sorted(_files.remove_stale_temps(directory, lock)) == sorted([os.path.basename(live), os.path.basename(other)])
