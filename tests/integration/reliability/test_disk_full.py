# Copyright: airgap.microshift contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Full disks: a small tmpfs, mounted inside the connected host's own mount namespace, as the store
or as the medium. A clear error names the path and the bytes needed and free; the store stays valid;
a rerun with space completes.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time

import pytest

from conftest import kill_group, record

HERE = os.path.dirname(os.path.abspath(__file__))
VERIFY = ("import json,sys\nsys.path.insert(0,%r)\nfrom conftest import verify_store, scan_blobs\n"
          "p,i=verify_store(sys.argv[1]);s=scan_blobs(sys.argv[1])\n"
          "print(json.dumps({'problems':p,'images':sorted((i or {}).get('images',{})),'blobs':len(s['valid']),'temp':s['temp']}))\n") % HERE


@pytest.fixture
def node_tmpfs(calm):
    """``make(size)``: a tmpfs in the connected host only; ``resize(path, size)``; unmounted afterwards."""
    bed = calm
    mounts = []

    def make(size):
        path = tempfile.mkdtemp(prefix="tmpfs-", dir=bed.work)
        bed.sb.run("connected", ["mount", "-t", "tmpfs", "-o", "size=%s,mode=0755" % size, "amsb-reliability", path])
        mounts.append(path)
        return path

    yield make
    for path in mounts:
        bed.sb.run("connected", ["umount", "-l", path], check=False)


def _resize(bed, path, size):
    bed.sb.run("connected", ["mount", "-o", "remount,size=%s" % size, path])


def _verify_in_node(bed, store):
    out = bed.sb.run("connected", [sys.executable, "-c", VERIFY, store]).stdout
    return json.loads(out)


def test_store_too_small_fails_before_downloading(calm, node_tmpfs, reference_store):
    bed = calm
    mount = node_tmpfs("1m")
    store = os.path.join(mount, "store")
    result = bed.playbook(bed.download_play(store))
    assert result.rc != 0
    msg = result.task("Fail when images could not be downloaded")["msg"]
    assert "not enough free space for store %s" % store in msg, msg
    assert "needed" in msg and "free" in msg, msg
    state = _verify_in_node(bed, store)
    assert state["problems"] == [] and state["images"] == [] and state["blobs"] == 0, state

    _resize(bed, mount, "64m")
    result = bed.playbook(bed.download_play(store))
    assert result.rc == 0, result
    state = _verify_in_node(bed, store)
    assert state["problems"] == [] and state["images"] == reference_store["refs"], state
    record("disk_full_store_check", {"tmpfs": "1m", "message": msg})


def test_disk_fills_during_download(calm, node_tmpfs, reference_store):
    """The check passes, then another writer fills the disk: the failing image is named, the store stays valid."""
    bed = calm
    mount = node_tmpfs("32m")
    store = os.path.join(mount, "store")
    bed.wan(bandwidth=str(max(reference_store["unique_bytes"] // 15, 50000)))
    proc = bed.start_playbook(bed.download_play(store))
    filled = False
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and proc.poll() is None:
            listing = bed.sb.run("connected", ["sh", "-c", "ls %s/blobs/sha256 2>/dev/null | wc -l" % store]).stdout
            if int(listing.strip() or 0) >= 5:
                # Fill the disk to the last byte.
                bed.sb.run("connected", ["sh", "-c", "cat /dev/zero > %s/filler" % mount], check=False)
                filled = True
                break
            time.sleep(0.2)
        proc.wait(600)
    finally:
        bed.wan_calm()
        if proc.poll() is None:
            kill_group(proc)
    assert filled, "the download ended before the disk was filled"
    with open(os.path.join(os.path.dirname(proc.args[3]), "stdout"), encoding="utf-8") as handle:
        output = handle.read()
    assert proc.returncode != 0, output[-3000:]
    doc = json.loads(output[output.find("{"):])
    failures = [r for play in doc["plays"] for task in play["tasks"] for r in task["hosts"].values()
                if r.get("failed") and r.get("msg")]
    msg = failures[-1]["msg"]
    assert "no space left on device" in msg, msg
    assert "@sha256:" in msg, msg
    assert "Traceback" not in output
    state = _verify_in_node(bed, store)
    assert state["problems"] == [], state
    recorded = len(state["images"])

    bed.sb.run("connected", ["rm", "-f", os.path.join(mount, "filler")])
    result = bed.playbook(bed.download_play(store))
    assert result.rc == 0, result
    state = _verify_in_node(bed, store)
    assert state["problems"] == [] and state["images"] == reference_store["refs"], state
    record("disk_full_during_download", {"images_recorded_when_full": recorded, "message": msg[:300]})


def test_medium_too_small_for_the_transfer_set(calm, node_tmpfs, reference_store):
    bed = calm
    mount = node_tmpfs("1m")
    media = os.path.join(mount, "media")
    args = bed.sign({"state": "pack", "store": reference_store["store"], "dest": media, "release": "disk-full"})
    result, task = bed.module("image_bundle", args)
    assert result.rc != 0
    msg = task["msg"]
    assert mount in msg and "free" in msg, msg
    listing = bed.sb.run("connected", ["sh", "-c", "find %s -type f | wc -l" % mount]).stdout
    assert int(listing.strip()) == 0, "files were written to the full medium"

    _resize(bed, mount, "64m")
    result, task = bed.module("image_bundle", args)
    assert result.rc == 0, result
    result, task = bed.module("image_bundle", bed.sign({"state": "verify", "src": [media]}))
    assert result.rc == 0, result
    record("disk_full_media_check", {"tmpfs": "1m", "message": msg})
