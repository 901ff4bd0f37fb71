# Copyright: airgap.microshift contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""The progress file a role follows while a module runs in the background."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time

import pytest

from ansible_collections.airgap.microshift.plugins.module_utils import _progress as progress

COLLECTIONS = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.dirname(os.path.dirname(os.path.abspath(progress.__file__)))))))

# The download role's regexes (roles/download/tasks/download.yml), as wait_for applies them.
START_RE = r"^(?:start\t(\d+)\t\d+|end\t\S+\t[^\n]*)\n"
ITEM_RE = r"^(?:{k}\t(\S+)\t([^\t\n]*)\t(\d+)|end\t(\S+)\t([^\n]*))\n"


def _text(path):
    """The file's text: what a reader sees before the reserved (NUL) space."""
    with open(path, "rb") as handle:
        return handle.read().split(b"\0", 1)[0].decode("utf-8")


def test_lines_round_trip_and_never_hold_a_tab_or_newline(tmp_path):
    path = str(tmp_path / "progress")
    writer = progress.ProgressFile(path, items=2)
    writer.start(2, 3)
    writer.item("fetched", "quay.io/a/b@sha256:" + "1" * 64, 1234)
    writer.item("failed", "quay.io/a/c:tag\twith\nodd spacing", 0)
    writer.end(False, "2 of 3 image(s) failed:\nsee\tbelow")
    writer.item("fetched", "after the end", 1)  # ignored
    text = _text(path)
    start, items, end = progress.parse(text)
    assert start == {"count": 2, "asked": 3}
    assert [(i["count"], i["status"], i["name"], i["bytes"]) for i in items] == [
        (1, "fetched", "quay.io/a/b@sha256:" + "1" * 64, 1234), (2, "failed", "quay.io/a/c:tag with odd spacing", 0)]
    assert end == {"ok": False, "message": "2 of 3 image(s) failed: see below"}
    assert len(text.splitlines()) == 4


def test_the_roles_regexes_find_each_line_and_the_end(tmp_path):
    path = str(tmp_path / "progress")
    writer = progress.ProgressFile(path, items=2)
    writer.start(2, 2)
    text = _text(path)
    assert re.search(START_RE, text, re.M).group(1) == "2"
    assert re.search(ITEM_RE.format(k=1), text, re.M) is None
    writer.item("fetched", "r1", 10)
    match = re.search(ITEM_RE.format(k=1), open(path, "rb").read().decode(), re.M)
    assert match.groups()[:3] == ("fetched", "r1", "10")
    # a half-written line is not taken for a whole one (the reserved space follows it)
    with open(path, "r+b") as handle:
        handle.seek(len(_text(path)))
        handle.write(b"2\tfetched\tr2\t99")
    assert re.search(ITEM_RE.format(k=2), open(path, "rb").read().decode(), re.M) is None
    # item 12 is not matched by the line of item 1 or 2
    assert re.search(ITEM_RE.format(k=12), open(path, "rb").read().decode(), re.M) is None


def test_an_older_file_is_replaced(tmp_path):
    path = tmp_path / "progress"
    path.write_text("1\tfetched\told\t1\nend\tok\t\n")
    progress.ProgressFile(str(path)).start(0, 0)
    assert _text(str(path)) == "start\t0\t0\n"


WRITER = """
import os, signal, sys, time
sys.path.insert(0, %(collections)r)
from ansible_collections.airgap.microshift.plugins.module_utils._progress import ProgressFile
writer = ProgressFile(%(path)r, items=3)
writer.guard(interval=0.1)
writer.start(3, 3)
writer.item("fetched", "r1", 5)
if %(finish)r:
    writer.end(True)
    sys.exit(0)
os.kill(os.getpid(), signal.SIGKILL)
"""


def _wait_for_end(path, timeout=15):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        dummy, dummy2, end = progress.parse(_text(path))
        if end is not None:
            return end
        time.sleep(0.05)
    return None


@pytest.mark.parametrize("finish", [False, True])
def test_the_guard_ends_the_file_of_a_killed_writer_only(tmp_path, finish):
    path = str(tmp_path / "progress")
    proc = subprocess.run([sys.executable, "-c", WRITER % {"collections": COLLECTIONS, "path": path, "finish": finish}],
                          capture_output=True, timeout=60, check=False)
    if finish:
        assert proc.returncode == 0, proc.stderr
        time.sleep(0.5)  # the watcher's own check, after its parent is gone
        assert progress.parse(_text(path))[2] == {"ok": True, "message": ""}
    else:
        assert proc.returncode == -signal.SIGKILL
        end = _wait_for_end(path)
        assert end is not None and not end["ok"] and "killed" in end["message"]
    # exactly one end line either way
    assert _text(path).count("\nend\t") == 1


FULL_DISK = """
import os, subprocess, sys
sys.path.insert(0, %(collections)r)
from ansible_collections.airgap.microshift.plugins.module_utils import _progress as progress
mount = %(mount)r
os.makedirs(mount, exist_ok=True)
subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", mount], check=True)
path = os.path.join(mount, "progress")
writer = progress.ProgressFile(path, items=3)
writer.start(3, 3)
# another writer fills the disk to the last byte
fd = os.open(os.path.join(mount, "filler"), os.O_WRONLY | os.O_CREAT)
try:
    while True:
        os.write(fd, b"x" * 4096)
except OSError:
    pass
os.close(fd)
writer.item("fetched", "quay.io/a/" + "n" * 500 + "@sha256:" + "1" * 64, 5)
writer.item("failed", "quay.io/a/c:1", 0)
writer.item("not_started", "quay.io/a/d:1", 0)
writer.end(False, "no space left on device: " + "x" * 5000)
sys.stdout.write(open(path, "rb").read().split(b"\\0", 1)[0].decode())
"""


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("unshare"), reason="needs root and unshare (a tmpfs of its own)")
def test_a_full_disk_does_not_keep_the_file_from_telling_the_end(tmp_path):
    script = FULL_DISK % {"collections": COLLECTIONS, "mount": str(tmp_path / "small")}
    proc = subprocess.run(["unshare", "--mount", "--propagation", "private", sys.executable, "-c", script],
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    start, items, end = progress.parse(proc.stdout)
    assert start == {"count": 3, "asked": 3}
    assert [i["status"] for i in items] == ["fetched", "failed", "not_started"]
    assert items[0]["name"].endswith("...") and len(items[0]["name"]) == progress.NAME_LIMIT
    assert not end["ok"] and end["message"].startswith("no space left on device")
    assert len(end["message"]) == progress.MESSAGE_LIMIT
