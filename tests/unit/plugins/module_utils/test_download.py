# Copyright: airgap.microshift contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""Download planning and scheduling: pure functions over synthetic manifests and blob sets."""

from __future__ import annotations

import hashlib
import json
import random

import pytest

from ansible_collections.airgap.microshift.plugins.module_utils import _download as download
from ansible_collections.airgap.microshift.plugins.module_utils import _store as store_mod

REG = "registry.example.com:5000/ns/app"


def _digest(data):
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _manifest(arch, layers, media_type=store_mod.MEDIA_OCI_MANIFEST):
    config = json.dumps({"architecture": arch}).encode()
    doc = {"schemaVersion": 2, "mediaType": media_type,
           "config": {"mediaType": "c", "digest": _digest(config), "size": len(config)},
           "layers": [{"mediaType": "l", "digest": _digest(layer), "size": len(layer)} for layer in layers]}
    return json.dumps(doc).encode()


def _index(manifests, media_type=store_mod.MEDIA_OCI_INDEX):
    doc = {"schemaVersion": 2, "mediaType": media_type,
           "manifests": [{"mediaType": store_mod.MEDIA_OCI_MANIFEST, "digest": _digest(raw), "size": len(raw),
                          "platform": {"os": "linux", "architecture": arch}} for arch, raw in manifests]}
    return json.dumps(doc).encode()


def test_plan_of_a_multi_arch_index():
    amd = _manifest("amd64", [b"base-amd64", b"app-amd64"])
    arm = _manifest("arm64", [b"base-arm64", b"app-arm64"])
    top = _index([("amd64", amd), ("arm64", arm)])
    ref = "%s@%s" % (REG, _digest(top))
    plan = download.build_image_plan(ref, top, {_digest(amd): amd, _digest(arm): arm})
    assert plan["digest"] == _digest(top)
    assert plan["layout"] == "images/registry.example.com_5000/ns/app/sha256-" + _digest(top)[7:]
    assert [m["platform"] for m in plan["manifests"]] == ["linux/amd64", "linux/arm64"]
    assert len(plan["blobs"]) == 1 + 2 + 2 + 4  # index, manifests, configs, layers
    assert len(plan["fetchable"]) == 6
    assert plan["size"] == sum(plan["blobs"].values())
    assert not plan["docker_typed"]
    entry = download.store_entry(plan)
    assert store_mod.image_blobs(entry) == plan["blobs"]


def test_plan_of_a_single_docker_manifest_by_tag():
    raw = _manifest("amd64", [b"x"], store_mod.MEDIA_DOCKER_MANIFEST)
    plan = download.build_image_plan(REG + ":4.18", raw, {})
    assert plan["layout"].endswith("/tag-4.18")
    assert plan["digest"] == _digest(raw) and len(plan["manifests"]) == 1 and plan["docker_typed"]
    assert len(plan["blobs"]) == 3


def test_plan_refuses_a_digest_mismatch_and_schema1():
    raw = _manifest("amd64", [b"x"])
    with pytest.raises(download.PlanError, match="whose digest is"):
        download.build_image_plan("%s@sha256:%s" % (REG, "0" * 64), raw, {})
    with pytest.raises(download.PlanError, match="schema 1"):
        download.parse_manifest(b'{"schemaVersion": 1, "fsLayers": []}', REG + ":1")
    with pytest.raises(download.PlanError, match="not valid JSON"):
        download.parse_manifest(b"<html>", REG + ":1")


def test_plan_refuses_a_child_that_does_not_match_its_descriptor():
    amd = _manifest("amd64", [b"a"])
    top = _index([("amd64", amd)])
    with pytest.raises(download.PlanError, match="does not match its descriptor"):
        download.build_image_plan(REG + ":1", top, {_digest(amd): amd + b" "})


def _random_sets(rng, images, blobs, per_image):
    pool = ["b%d" % i for i in range(blobs)]
    return dict(("img%d" % i, set(rng.sample(pool, rng.randint(0, min(per_image, blobs))))) for i in range(images))


@pytest.mark.parametrize("seed", range(40))
def test_scheduler_never_runs_two_images_sharing_a_missing_blob(seed):
    rng = random.Random(seed)
    missing = _random_sets(rng, rng.randint(1, 25), rng.randint(1, 40), 8)
    sizes = dict(("b%d" % i, rng.randint(1, 1000)) for i in range(40))
    scheduler = download.BlobScheduler(missing, sizes)
    started, running = [], []
    while scheduler.pending or scheduler.running:
        while len(scheduler.running) < 4:
            name = scheduler.next_ready()
            if name is None:
                break
            # the invariant: what this image still misses is not being fetched by a running one
            assert not (scheduler.remaining(name) & scheduler.in_flight())
            scheduler.start(name)
            started.append(name)
            running.append(name)
        assert scheduler.running, "a pending image could never start"
        finished = running.pop(rng.randrange(len(running)))
        scheduler.finish(finished, success=rng.random() > 0.1)
    assert sorted(started) == sorted(missing)


def test_scheduler_runs_disjoint_images_in_parallel_and_serialises_shared_ones():
    missing = {"a": {"base", "a1"}, "b": {"base", "b1"}, "c": {"c1"}, "d": {"d1"}}
    snapshots = download.simulate_schedule(missing, parallel=4, sizes={"base": 100, "a1": 10, "b1": 5, "c1": 1, "d1": 1})
    assert snapshots[0] == {"a"}  # largest first
    assert {"a", "c", "d"} in snapshots
    assert all(not ({"a", "b"} <= snap) for snap in snapshots)
    # once "a" has fetched the base layer, "b" only misses b1
    scheduler = download.BlobScheduler(missing)
    scheduler.start("a")
    assert scheduler.next_ready() in ("c", "d")
    scheduler.finish("a")
    assert scheduler.remaining("b") == {"b1"}


def test_scheduler_after_a_failure_the_blob_is_still_missing():
    scheduler = download.BlobScheduler({"a": {"x"}, "b": {"x"}})
    first = scheduler.next_ready()
    scheduler.start(first)
    assert scheduler.next_ready() is None
    scheduler.finish(first, success=False)
    other = scheduler.next_ready()
    assert other != first and scheduler.remaining(other) == {"x"}


def test_images_with_nothing_missing_never_wait():
    scheduler = download.BlobScheduler({"a": {"x"}, "b": set(), "c": set()})
    scheduler.start("a")
    assert scheduler.next_ready() in ("b", "c")


def test_free_bytes_of_a_missing_path_uses_its_parent(tmp_path):
    # Other processes write to the same filesystem meanwhile: bracket the reading, with slack.
    before = store_mod.free_bytes(str(tmp_path))
    missing = store_mod.free_bytes(str(tmp_path / "not" / "yet"))
    after = store_mod.free_bytes(str(tmp_path))
    slack = 256 * 1024 * 1024
    assert min(before, after) - slack <= missing <= max(before, after) + slack


def test_pinned_reference_drops_the_tag():
    assert download.pinned_reference(REG + ":1", "sha256:" + "b" * 64) == REG + "@sha256:" + "b" * 64
