# Copyright: airgap.microshift contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""kill -9 in the middle of a download, an upload and an unpack: the rerun completes, nothing is lost.

Each test starts ansible-playbook in its own process group, watches the target grow, kills the
whole group with SIGKILL at about half way, checks what the crash left, then runs again.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import time

from conftest import kill_group, record, scan_blobs, verify_store, wait_gone


def _wait_until(proc, condition, timeout=300, interval=0.02):
    """Poll ``condition()`` while ``proc`` runs (bounded); True when it held before the end."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        if condition():
            return True
        time.sleep(interval)
    return False


def _valid_bytes(store):
    return sum(scan_blobs(store)["valid"].values())


def test_download_killed_half_way(calm, reference_store):
    bed = calm
    store = os.path.join(bed.work, "store-crash")
    unique = reference_store["unique_bytes"]
    # A slow WAN, so "half way" lasts long enough to be caught.
    bed.wan(bandwidth=str(max(unique // 20, 50000)))
    proc = bed.start_playbook(bed.download_play(store))
    try:
        caught = _wait_until(proc, lambda: _valid_bytes(store) >= unique // 2, interval=0.1)
        kill_group(proc)
    finally:
        bed.wan_calm()
        if proc.poll() is None:
            kill_group(proc)
    assert caught, "the download ended before half way"
    assert wait_gone(store) == [], "processes of the killed download are still running"

    # What the crash left: no partial blob under a digest name, a consistent store.json.
    after_kill = scan_blobs(store)
    assert after_kill["bad"] == [], after_kill["bad"]
    problems, index_at_kill = verify_store(store)
    assert not problems, problems
    complete = sum(after_kill["valid"].values())
    images_at_kill = len((index_at_kill or {}).get("images", {}))

    bed.wan_reset()
    result = bed.playbook(bed.download_play(store))
    rerun_bytes = bed.wan_total()["bytes_down"]
    assert result.rc == 0, result
    problems, index = verify_store(store)
    assert not problems, problems
    assert sorted(index["images"]) == reference_store["refs"]
    assert index["blobs"] == reference_store["index"]["blobs"]
    missing = unique - complete
    # Only what was not complete crosses the wire again, plus at most the protocol overhead of a
    # whole clean download (headers, tokens, manifests read by the plan).
    assert rerun_bytes <= missing + reference_store["overhead_bytes"], (rerun_bytes, missing, reference_store["overhead_bytes"])
    record("download_crash", {"unique_bytes": unique, "complete_at_kill": complete, "images_recorded_at_kill": images_at_kill,
                              "temp_files_at_kill": len(after_kill["temp"]), "rerun_wire_bytes": rerun_bytes,
                              "missing_at_kill": missing, "refetched_beyond_missing": max(0, rerun_bytes - missing),
                              "clean_download_overhead": reference_store["overhead_bytes"]})


def _tags_per_digest(bed, repositories):
    """``{repository: {digest: [tags]}}`` from the mirror."""
    def one(repository):
        tags = bed.mirror_tags(repository.split("/", 1)[1])
        assert tags, "no tag in %s" % repository
        by_digest = {}
        for tag in tags:
            by_digest.setdefault(bed.mirror_digest("%s:%s" % (repository, tag)), []).append(tag)
        return repository, by_digest

    with concurrent.futures.ThreadPoolExecutor(max_workers=4) as pool:
        return dict(pool.map(one, sorted(repositories)))


def test_upload_killed_half_way(calm, reference_store):
    bed = calm
    unique = reference_store["unique_bytes"]
    bed.start_site_proxy({"bandwidth": max(unique // 20, 50000)})
    mapping_file = os.path.join(bed.work, "mapping-crash.json")
    play = [{"name": "Upload", "hosts": "airgapped", "gather_facts": False, "vars": {
        "upload_store": reference_store["store"], "upload_mirror": bed.mirror["hostport"], "upload_namespace": "crash",
        "upload_authfile": bed.mirror["auth_file"], "upload_mapping_file": mapping_file},
        "tasks": [{"name": "Upload the store", "ansible.builtin.include_role": {"name": "airgap.microshift.upload"}}]}]
    proc = bed.start_playbook(play)
    try:
        caught = _wait_until(proc, lambda: bed.site_proxy({"cmd": "get"})["total"]["bytes_up"] >= unique // 2, interval=0.2)
        kill_group(proc)
        sent_at_kill = bed.site_proxy({"cmd": "get"})["total"]["bytes_up"]
    finally:
        if proc.poll() is None:
            kill_group(proc)
        bed.stop_site_proxy()
    assert caught, "the upload ended before half way"
    assert wait_gone(reference_store["store"]) == []
    assert not os.path.exists(mapping_file)

    result = bed.playbook(play)
    assert result.rc == 0, result
    with open(mapping_file, encoding="utf-8") as handle:
        mapping = json.load(handle)
    assert sorted(entry["source"] for entry in mapping) == reference_store["refs"]
    summary = result.task("Collect the push result")["summary"]
    repositories = set(entry["mirror"].split("@", 1)[0] for entry in mapping)
    tags = _tags_per_digest(bed, repositories)
    duplicates = dict((repo, dict((d, t) for d, t in by.items() if len(t) > 1)) for repo, by in tags.items())
    duplicates = dict((repo, d) for repo, d in duplicates.items() if d)
    assert duplicates == {}, duplicates
    for entry in mapping:
        assert bed.mirror_digest(entry["mirror"]) == entry["digest"]
    record("upload_crash", {"bytes_sent_at_kill": sent_at_kill, "pushed_on_rerun": summary["pushed"],
                            "already_there_on_rerun": summary["skipped"], "repositories": len(repositories),
                            "tags": sum(len(t) for by in tags.values() for t in by.values())})


def test_unpack_killed_half_way(calm, reference_store):
    bed = calm
    media = os.path.join(bed.work, "media-crash")
    os.makedirs(media)
    pack_args = bed.sign({"state": "pack", "store": reference_store["store"], "dest": media, "release": "crash-test"})
    result, pack = bed.module("image_bundle", pack_args)
    assert result.rc == 0, result
    total_blobs = len(reference_store["index"]["blobs"])
    caught, attempts = False, 0
    store = None
    play = None
    # Unpacking a tiny store is quick: try a few times (bounded) to catch it half way.
    while not caught and attempts < 4:
        attempts += 1
        store = os.path.join(bed.work, "unpacked-crash-%d" % attempts)
        play = bed.task_play([{"name": "Unpack", "airgap.microshift.image_bundle": bed.sign({
            "state": "unpack", "src": [media], "store": store, "parallel": 1})}], hosts="airgapped")
        proc = bed.start_playbook(play)
        blobs = os.path.join(store, "blobs", "sha256")

        def half():
            try:
                return len(os.listdir(blobs)) >= total_blobs // 2
            except OSError:
                return False

        caught = _wait_until(proc, half, timeout=300, interval=0.002)
        kill_group(proc)
        if caught and os.path.exists(os.path.join(store, "store.json")):
            caught = False
    assert caught, "the unpack always ended before half way (%d attempts)" % attempts
    after_kill = scan_blobs(store)
    assert after_kill["bad"] == [], after_kill["bad"]
    assert not os.path.exists(os.path.join(store, "store.json"))
    result = bed.playbook(play)
    assert result.rc == 0, result
    problems, index = verify_store(store)
    assert not problems, problems
    assert index["blobs"] == reference_store["index"]["blobs"]
    assert sorted(index["images"]) == reference_store["refs"]
    record("unpack_crash", {"blobs": total_blobs, "blobs_at_kill": len(after_kill["valid"]), "temp_files_at_kill": len(after_kill["temp"]),
                            "attempts": attempts, "bundle_volumes": pack.get("volume_count", pack.get("volumes"))})
