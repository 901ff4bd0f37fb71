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


def test_mount_of_takes_the_longest_mount_point(tmp_path):
    mountinfo = str(tmp_path / "mountinfo")
    (tmp_path / "data" / "set").mkdir(parents=True)
    with open(mountinfo, "w", encoding="utf-8") as handle:
        handle.write("27 1 254:0 / / rw - ext4 /dev/vda rw\n")
        handle.write("40 27 254:0 /srv %s rw - ext4 /dev/vda rw\n" % (tmp_path / "data"))
    device = os.stat(str(tmp_path)).st_dev
    assert _files.mount_of(str(tmp_path / "data" / "set"), mountinfo) == (device, str(tmp_path / "data"))
    # A path that does not exist yet is on the mount of its nearest existing parent.
    assert _files.mount_of(str(tmp_path / "data" / "new" / "dir"), mountinfo) == (device, str(tmp_path / "data"))
    assert _files.mount_of(str(tmp_path / "other"), mountinfo) == (device, "/")
    assert _files.mount_of(str(tmp_path / "other"), str(tmp_path / "absent")) == (device, None)


@pytest.mark.skipif(os.geteuid() != 0 or not os.path.exists("/usr/bin/unshare"), reason="a bind mount needs root and unshare")
def test_mount_of_tells_a_bind_mount_of_the_same_filesystem_apart(tmp_path):
    # The same filesystem seen through a bind mount: same device, another mount, and a hard link across fails.
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "a" / "f").write_bytes(b"x")
    script = (
        "import errno, os, subprocess, sys\n"
        "from ansible_collections.airgap.microshift.plugins.module_utils import _files\n"
        "subprocess.run(['mount', '--bind', sys.argv[1], sys.argv[2]], check=True)\n"
        "a, b = _files.mount_of(sys.argv[1]), _files.mount_of(sys.argv[2])\n"
        "assert a[0] == b[0] and a[1] != b[1] and b[1] == sys.argv[2], (a, b)\n"
        "try:\n"
        "    os.link(os.path.join(sys.argv[1], 'f'), os.path.join(sys.argv[2], 'g'))\n"
        "except OSError as exc:\n"
        "    assert exc.errno == errno.EXDEV\n"
        "else:\n"
        "    raise AssertionError('linked across mounts')\n"
    )
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    proc = subprocess.run(["unshare", "-m", "--propagation", "private", sys.executable, "-c", script,
                           str(tmp_path / "a"), str(tmp_path / "b")], capture_output=True, text=True, env=env, check=False)
    assert proc.returncode == 0, proc.stderr
