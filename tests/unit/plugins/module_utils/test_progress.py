# Copyright: airgap.microshift contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""The progress file a role follows while a module runs in the background."""

from __future__ import annotations

import os
import re
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


def test_lines_round_trip_and_never_hold_a_tab_or_newline(tmp_path):
    path = str(tmp_path / "progress")
    writer = progress.ProgressFile(path)
    writer.start(2, 3)
    writer.item("fetched", "quay.io/a/b@sha256:" + "1" * 64, 1234)
    writer.item("failed", "quay.io/a/c:tag\twith\nodd spacing", 0)
    writer.end(False, "2 of 3 image(s) failed:\nsee\tbelow")
    writer.item("fetched", "after the end", 1)  # ignored
    text = open(path).read()
    start, items, end = progress.parse(text)
    assert start == {"count": 2, "asked": 3}
    assert [(i["count"], i["status"], i["name"], i["bytes"]) for i in items] == [
        (1, "fetched", "quay.io/a/b@sha256:" + "1" * 64, 1234), (2, "failed", "quay.io/a/c:tag with odd spacing", 0)]
    assert end == {"ok": False, "message": "2 of 3 image(s) failed: see below"}
    assert len(text.splitlines()) == 4


def test_the_roles_regexes_find_each_line_and_the_end(tmp_path):
    path = str(tmp_path / "progress")
    writer = progress.ProgressFile(path)
    writer.start(2, 2)
    text = open(path).read()
    assert re.search(START_RE, text, re.M).group(1) == "2"
    assert re.search(ITEM_RE.format(k=1), text, re.M) is None
    writer.item("fetched", "r1", 10)
    match = re.search(ITEM_RE.format(k=1), open(path).read(), re.M)
    assert match.groups()[:3] == ("fetched", "r1", "10")
    # a half-written line is not taken for a whole one
    with open(path, "a") as handle:
        handle.write("2\tfetched\tr2\t99")
    assert re.search(ITEM_RE.format(k=2), open(path).read(), re.M) is None
    # item 12 is not matched by the line of item 1 or 2
    assert re.search(ITEM_RE.format(k=12), open(path).read(), re.M) is None


def test_an_older_file_is_replaced(tmp_path):
    path = tmp_path / "progress"
    path.write_text("1\tfetched\told\t1\nend\tok\t\n")
    progress.ProgressFile(str(path)).start(0, 0)
    assert path.read_text() == "start\t0\t0\n"


WRITER = """
import os, signal, sys, time
sys.path.insert(0, %(collections)r)
from ansible_collections.airgap.microshift.plugins.module_utils._progress import ProgressFile
writer = ProgressFile(%(path)r)
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
        dummy, dummy2, end = progress.parse(open(path).read())
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
        assert progress.parse(open(path).read())[2] == {"ok": True, "message": ""}
    else:
        assert proc.returncode == -signal.SIGKILL
        end = _wait_for_end(path)
        assert end is not None and not end["ok"] and "killed" in end["message"]
    # exactly one end line either way
    assert open(path).read().count("\nend\t") == 1
