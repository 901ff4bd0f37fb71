# Copyright: airgap.microshift contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""DownloadRun against a real registry (``local_registry``) with real skopeo: planning and
copies overlap, disk space is checked before each copy, failures stop new copies only."""

from __future__ import annotations

import os
import shutil
import threading
import time

from ansible_collections.airgap.microshift.plugins.module_utils import _download as download
from ansible_collections.airgap.microshift.plugins.module_utils import _store as store_mod
from ansible_collections.airgap.microshift.plugins.module_utils._skopeo import RegistryOptions, Skopeo

SKOPEO = shutil.which("skopeo")


class TimedSkopeo(Skopeo):
    """The real skopeo, with the start and end time of every call written down."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.calls = []
        self._lock = threading.Lock()

    def run(self, argv, what, **kwargs):
        started = time.monotonic()
        try:
            return super().run(argv, what, **kwargs)
        finally:
            with self._lock:
                self.calls.append((argv[1], started, time.monotonic()))


def _options(registry, store, **extra):
    options = download.DownloadOptions(store, RegistryOptions(registry.authfile, True, registry.cert_dir),
                                       parallel=extra.pop("parallel", 2), keep_going=extra.pop("keep_going", False))
    for name, value in extra.items():
        setattr(options, name, value)
    return options


def _images(synthetic_images, namespace, count):
    """``count`` two-arch images sharing a base layer per architecture."""
    return [synthetic_images.push("img%d" % i, "%s/img%d" % (namespace, i), ["amd64", "arm64"],
                                  [("base-{arch}", 64 * 1024), ("own%d-{arch}" % i, 16 * 1024)]) for i in range(count)]


def _prepare(store):
    def prepare():
        os.makedirs(os.path.join(store, "blobs", "sha256"))
        os.makedirs(os.path.join(store, "images"))
        store_mod.write_index(store, store_mod.empty_index())
    return prepare


def test_copies_start_while_later_images_are_still_planned(local_registry, synthetic_images, tmp_path):
    images = _images(synthetic_images, "run-overlap", 6)
    store = str(tmp_path / "store")
    skopeo = TimedSkopeo(SKOPEO, retries=0)
    offset = local_registry.log_offset()
    # one manifest reader: the plan of the last image is ready well after the first one's
    run = download.DownloadRun([i["ref"] for i in images], skopeo, _options(local_registry, store, plan_parallel=1),
                               prepare_store=_prepare(store)).run()
    assert [run.results[i["ref"]]["status"] for i in images] == ["fetched"] * 6
    first_copy = min(start for kind, start, end in skopeo.calls if kind == "copy")
    last_inspect = max(end for kind, start, end in skopeo.calls if kind == "inspect")
    assert first_copy < last_inspect, "the first copy waited for the whole plan"
    index = store_mod.read_index(store)
    for image in images:
        assert store_mod.image_complete(store, index, image["ref"])
    # and still every blob crossed the wire once: the shared base layers too
    gets = local_registry.blob_gets(offset, "run-overlap/")
    assert sorted(gets) == sorted(set(gets))
    layers = set()
    for image in images:
        layers.update(d for d, size in image["blobs"].items() if size >= 16 * 1024)
    assert layers <= set(gets)


def test_a_list_that_does_not_fit_is_refused_before_any_copy(local_registry, synthetic_images, tmp_path):
    images = _images(synthetic_images, "run-space", 4)
    store = str(tmp_path / "store")
    unique = {}
    for image in images:
        unique.update(image["blobs"])
    # room for about half the list: an early start would be allowed by the first plans alone
    room = sum(unique.values()) // 2
    run = download.DownloadRun([i["ref"] for i in images], Skopeo(SKOPEO, retries=0), _options(local_registry, store),
                               free_bytes=lambda path: room, prepare_store=_prepare(store)).run()
    assert run.space_error and "not enough free space for store %s" % store in run.space_error
    assert "%d free" % room in run.space_error
    assert sorted(result["status"] for result in run.results.values()) == ["not_started"] * 4
    assert not os.path.exists(store), "the store was created although nothing could be copied"


def test_space_that_runs_out_while_planning_stops_new_copies_and_keeps_the_finished_ones(local_registry, synthetic_images, tmp_path):
    images = _images(synthetic_images, "run-shrink", 5)
    store = str(tmp_path / "store")
    readings = []

    def free_bytes(path):
        # ample space for the first copy, then (another writer filled the disk) almost none
        readings.append(path)
        return 2 ** 40 if len(readings) == 1 else 1024

    run = download.DownloadRun([i["ref"] for i in images], Skopeo(SKOPEO, retries=0),
                               _options(local_registry, store, parallel=1, plan_parallel=1),
                               free_bytes=free_bytes, prepare_store=_prepare(store)).run()
    statuses = [run.results[i["ref"]]["status"] for i in images]
    assert statuses.count("fetched") == 1 and statuses.count("not_started") == 4, statuses
    assert run.space_error and "1024 free" in run.space_error
    index = store_mod.read_index(store)
    assert list(index["images"]) == [ref for ref, result in run.results.items() if result["status"] == "fetched"]
    for ref in index["images"]:
        assert store_mod.image_complete(store, index, ref)


def test_every_unreadable_reference_is_named_and_no_copy_starts_after_it(local_registry, synthetic_images, tmp_path):
    images = _images(synthetic_images, "run-bad", 3)
    missing = ["%s/run-bad/ghost%d@sha256:%s" % (local_registry.host, i, str(i) * 64) for i in range(2)]
    store = str(tmp_path / "store")
    seen = []
    run = download.DownloadRun(missing + [i["ref"] for i in images], Skopeo(SKOPEO, retries=0),
                               _options(local_registry, store, plan_parallel=1), on_image=seen.append,
                               prepare_store=_prepare(store)).run()
    for ref in missing:
        assert run.results[ref]["status"] == "failed"
        assert ref in run.results[ref]["error"] and "unknown" in run.results[ref]["error"]
    # planning went on, so both bad references are named; nothing started after the first failure
    assert {result["status"] for ref, result in run.results.items() if ref not in missing} == {"not_started"}
    assert sorted(result["ref"] for result in seen) == sorted(run.results)
    assert run.stopped and missing[0] in run.stopped


def test_keep_going_fetches_everything_that_can_be_read(local_registry, synthetic_images, tmp_path):
    images = _images(synthetic_images, "run-keep", 3)
    ghost = "%s/run-keep/ghost@sha256:%s" % (local_registry.host, "7" * 64)
    store = str(tmp_path / "store")
    counts = []
    run = download.DownloadRun([ghost] + [i["ref"] for i in images], Skopeo(SKOPEO, retries=0),
                               _options(local_registry, store, keep_going=True), on_start=counts.append,
                               prepare_store=_prepare(store)).run()
    assert counts == [4]
    assert run.results[ghost]["status"] == "failed"
    assert [run.results[i["ref"]]["status"] for i in images] == ["fetched"] * 3
    assert run.stopped is None
    # a second run skips what is complete and plans only the missing reference
    again = download.DownloadRun([ghost] + [i["ref"] for i in images], Skopeo(SKOPEO, retries=0),
                                 _options(local_registry, store, keep_going=True), on_start=counts.append).run()
    assert counts[-1] == 1 and sorted(again.skipped) == sorted(i["ref"] for i in images)
