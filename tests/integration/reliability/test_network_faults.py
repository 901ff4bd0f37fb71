# Copyright: airgap.microshift contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Network faults on the WAN and on the site network: the transfer completes with the same digests."""

from __future__ import annotations

import base64
import json
import os
import threading
import time

from conftest import kill_group, record, verify_store

# 5% of connections reset, and 5% of requests answered 429 or 503 (half each).
FAULTS = "reset=0.05,http429=0.025,http503=0.025"
SUBSET = ["core", "olm", "multus", "gateway-api", "cert-manager"]


def _download_ok(bed, result, store, refs):
    assert result.rc == 0, result
    problems, index = verify_store(store)
    assert not problems, problems
    # Identical digests: every digest ref is stored under the digest it pins.
    assert sorted(r for r in index["images"] if "@" in r) == refs
    for ref in refs:
        assert index["images"][ref]["digest"] == ref.split("@", 1)[1]
    return result.task("Record the download result")["ansible_facts"]["download_result"]["summary"]


def test_download_absorbs_resets_429_and_503(calm):
    """5% of connections reset, 5% of requests answered 429 and 5% 503: the download completes."""
    bed = calm
    store = os.path.join(bed.work, "store-faults")
    refs = bed.digest_refs(components=SUBSET)
    bed.wan_reset()
    bed.wan(faults=FAULTS)
    result = bed.playbook(bed.download_play(store, {"image_list_components": SUBSET, "download_retries": 12}))
    counters = bed.wan_total()
    bed.wan_calm()
    summary = _download_ok(bed, result, store, refs)
    injected = counters["resets"] + counters["http429"] + counters["http503"]
    assert injected > 0, counters
    assert int(summary["retries"]) > 0, summary
    record("download_faults", {"connections": counters["connections"], "requests": counters["requests"], "resets": counters["resets"],
                               "http429": counters["http429"], "http503": counters["http503"], "injected": injected,
                               "retries_absorbed": int(summary["retries"]), "images": len(refs)})


def test_download_survives_a_registry_outage(calm):
    """quay.io is down for about 30 s when the download starts: retries carry the download over it."""
    bed = calm
    store = os.path.join(bed.work, "store-outage")
    refs = bed.digest_refs(components=["core", "olm"])
    bed.stop_registry("quay.io")
    stopped = time.monotonic()
    restarted = threading.Event()

    def restart():
        # Bounded: 30 s, then the registry comes back.
        time.sleep(30)
        bed.start_registry("quay.io")
        restarted.set()

    thread = threading.Thread(target=restart, daemon=True)
    thread.start()
    try:
        bed.wan_reset()
        result = bed.playbook(bed.download_play(store, {"image_list_components": ["core", "olm"], "download_retries": 7,
                                                        "download_retry_delay": 2.0}))
        counters = bed.wan_total()
    finally:
        thread.join(60)
        if not restarted.is_set():
            bed.start_registry("quay.io")
    summary = _download_ok(bed, result, store, refs)
    assert int(summary["retries"]) > 0, summary
    assert counters["upstream_errors"] > 0, counters
    record("registry_outage", {"outage_seconds": 30, "refused_connections": counters["upstream_errors"],
                               "retries_absorbed": int(summary["retries"]), "recovered_after": round(time.monotonic() - stopped, 1)})


def test_download_survives_a_stalled_transfer(calm):
    """The WAN stalls in the middle of the download (a 20 s latency spike held for 10 s), then recovers."""
    bed = calm
    store = os.path.join(bed.work, "store-stall")
    refs = bed.digest_refs(components=["core"])
    bed.wan(bandwidth="200000")
    proc = bed.start_playbook(bed.download_play(store, {"image_list_components": ["core"]}))
    stalled = False
    try:
        blobs = os.path.join(store, "blobs", "sha256")
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and proc.poll() is None:
            if os.path.isdir(blobs) and len(os.listdir(blobs)) >= 3:
                break
            time.sleep(0.05)
        if proc.poll() is None:
            # Every byte sent during the spike waits 10 s (half the round trip); later bytes queue behind.
            bed.wan(latency="20s")
            stalled = True
            time.sleep(10)
            bed.wan(latency=0, bandwidth=0)
        proc.wait(600)
    finally:
        bed.wan_calm()
        if proc.poll() is None:
            kill_group(proc)
    assert stalled, "the download ended before the stall"
    with open(os.path.join(os.path.dirname(proc.args[3]), "stdout"), encoding="utf-8") as handle:
        output = handle.read()
    assert proc.returncode == 0, output[-3000:]
    problems, index = verify_store(store)
    assert not problems, problems
    for ref in refs:
        assert index["images"][ref]["digest"] == ref.split("@", 1)[1]
    record("stalled_transfer", {"stall_seconds": 10, "images": len(refs)})


def test_upload_absorbs_resets_429_and_503(calm, reference_store):
    """The same faults between the bastion and the mirror: the upload completes, digests preserved."""
    bed = calm
    # 5% of connections reset and 5% of requests answered 429 or 503. Each retry of a push starts the
    # image over and asks the mirror again for every blob (HEAD): tries that get past a blob no try
    # had got past do not count, the retries are for the tries that end before that.
    bed.start_site_proxy({"faults": "reset=0.05,http429=0.025,http503=0.025"})
    mapping_file = os.path.join(bed.work, "mapping-faults.json")
    # The images of three components (both registries, shared and own layers): enough requests for
    # faults, without the long tail of backoffs a whole release takes under these rates.
    images = [ref for ref in reference_store["refs"] if ref in bed.digest_refs(components=["core", "olm", "cert-manager"])]
    play = [{"name": "Upload", "hosts": "airgapped", "gather_facts": False, "vars": {
        "upload_store": reference_store["store"], "upload_mirror": bed.mirror["hostport"], "upload_namespace": "faults",
        "upload_authfile": bed.mirror["auth_file"], "upload_retries": 12, "upload_retry_delay": 0.2,
        "upload_mapping_file": mapping_file, "upload_tag_policy": "digest", "upload_images": images},
        "tasks": [{"name": "Upload the store", "ansible.builtin.include_role": {"name": "airgap.microshift.upload"}}]}]
    try:
        result = bed.playbook(play)
        counters = bed.site_proxy({"cmd": "get"})["total"]
    finally:
        bed.stop_site_proxy()
    assert result.rc == 0, result
    upload = result.task("Collect the push result")
    injected = counters["resets"] + counters["http429"] + counters["http503"]
    assert injected > 0, counters
    assert upload["summary"]["retries"] > 0, upload["summary"]
    with open(mapping_file, encoding="utf-8") as handle:
        mapping = json.load(handle)
    assert sorted(entry["source"] for entry in mapping) == sorted(images)
    for entry in mapping:
        assert bed.mirror_digest(entry["mirror"]) == entry["digest"] == reference_store["index"]["images"][entry["source"]]["digest"]
    record("upload_faults", {"requests": counters["requests"], "resets": counters["resets"], "http429": counters["http429"],
                             "http503": counters["http503"], "injected": injected,
                             "retries_absorbed": upload["summary"].get("retries"), "images": len(mapping)})


def test_permanent_errors_fail_fast_and_name_the_image(calm, tmp_path):
    """401 (wrong password) and manifest unknown: one attempt, no retry, the image named."""
    bed = calm
    good = bed.digest_refs(components=["core"])[0]
    repo, digest = good.split("@", 1)
    wrong = tmp_path / "wrong-auth.json"
    with open(bed.state["pull_secret"], encoding="utf-8") as handle:
        auths = json.load(handle)
    for entry in auths["auths"].values():
        user = base64.b64decode(entry["auth"]).decode().split(":", 1)[0]
        entry["auth"] = base64.b64encode(("%s:wrong-password" % user).encode()).decode()
    wrong.write_text(json.dumps(auths))
    unknown = "%s@sha256:%s" % (repo, "0" * 64)
    cases = [(good, str(wrong), "authentication failed (401"), (unknown, bed.state["pull_secret"], "manifest unknown")]
    for ref, authfile, cause in cases:
        store = str(tmp_path / ("store-%d" % cases.index((ref, authfile, cause))))
        result, task = bed.module("image_download", {"images": [ref], "store": store, "authfile": authfile, "retries": 5,
                                                     "retry_delay": 5.0, "free_space_margin": 0})
        assert result.rc != 0
        assert task["failed"]
        assert ref in task["msg"] and cause in task["msg"], task["msg"]
        assert [image["attempts"] for image in task["images"]] == [1], task["images"]
        assert task["summary"]["retries"] == 0
        assert not os.path.exists(os.path.join(store, "store.json"))
