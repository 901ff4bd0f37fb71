# Copyright: airgap.microshift contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""Plan and run the download of images into the image store (docs/store-format.md).

1. Plan: ``skopeo inspect --raw`` of every ref and of every per-architecture manifest (in
   parallel) gives every blob and its size, hence the exact logical, unique and missing bytes.
2. Schedule: a bounded pool of ``skopeo copy`` runs; an image starts only when none of the
   blobs it still misses is being fetched by a running copy, so every blob crosses the wire once.
3. Record: after a copy, the image's manifests (the exact bytes the plan read) and configs are
   put in place, every blob is checked, then the image is added to ``store.json``.

skopeo cannot write docker (schema 2) manifests into an OCI layout while preserving digests.
For such images skopeo fetches the layers (byte for byte the same in both formats) through a
converted copy, and the original manifests and configs are written next to them, so the
layout names the original digest and ``skopeo copy --preserve-digests oci:...`` reproduces it.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import json
import os
import threading

from ansible_collections.airgap.microshift.plugins.module_utils import _store as store_mod
from ansible_collections.airgap.microshift.plugins.module_utils._reference import parse_reference
from ansible_collections.airgap.microshift.plugins.module_utils._skopeo import SkopeoError

DOCKER_TYPES = (store_mod.MEDIA_DOCKER_LIST, store_mod.MEDIA_DOCKER_MANIFEST)


class PlanError(Exception):
    """An image whose manifests cannot be used; the message names the image."""


def sha256_bytes(data):
    return "sha256:" + hashlib.sha256(data).hexdigest()


def pinned_reference(ref, digest):
    """``registry/repository@digest``: copies use the digest the plan resolved, never a tag."""
    parsed = parse_reference(ref)
    return "%s/%s@%s" % (parsed.registry, parsed.repository, digest)


def format_platform(platform):
    if not isinstance(platform, dict):
        return None
    parts = [platform.get("os") or "", platform.get("architecture") or ""]
    if platform.get("variant"):
        parts.append(platform["variant"])
    value = "/".join(parts)
    return value if value.strip("/") else None


def parse_manifest(raw, what):
    """Parse manifest or index bytes into ``{"media_type", "kind", "children" | "config"+"layers"}``."""
    try:
        doc = json.loads(raw.decode("utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise PlanError("%s: the registry returned a manifest that is not JSON (%s)" % (what, exc))
    if not isinstance(doc, dict):
        raise PlanError("%s: the registry returned a manifest that is not a JSON object" % what)
    if doc.get("schemaVersion") == 1:
        raise PlanError("%s: docker schema 1 manifests are not supported (they have no stable digest)" % what)
    media_type = doc.get("mediaType")
    if media_type is None:
        media_type = store_mod.MEDIA_OCI_INDEX if "manifests" in doc else store_mod.MEDIA_OCI_MANIFEST
    try:
        if media_type in store_mod.INDEX_MEDIA_TYPES:
            children = [{"digest": m["digest"], "size": int(m["size"]), "media_type": m.get("mediaType"),
                         "platform": format_platform(m.get("platform"))} for m in doc["manifests"]]
            return {"media_type": media_type, "kind": "index", "children": children}
        if media_type in store_mod.MANIFEST_MEDIA_TYPES:
            config = doc["config"]
            layers = [{"digest": layer["digest"], "size": int(layer["size"]), "media_type": layer.get("mediaType")}
                      for layer in doc.get("layers") or []]
            for layer in layers:
                if not layer["digest"].startswith("sha256:"):
                    raise PlanError("%s: layer %s does not use sha256" % (what, layer["digest"]))
            return {"media_type": media_type, "kind": "manifest",
                    "config": {"digest": config["digest"], "size": int(config["size"]), "media_type": config.get("mediaType")},
                    "layers": layers}
    except (KeyError, TypeError, ValueError) as exc:
        raise PlanError("%s: the manifest lacks a required field (%s)" % (what, exc))
    raise PlanError("%s: unsupported manifest media type %s" % (what, media_type))


def build_image_plan(ref, top_raw, children_raw):
    """Assemble the plan of one image from raw manifests.

    ``children_raw`` maps each per-architecture manifest digest to its bytes (unused for a
    single manifest). Pure: unit tests call it with synthetic manifests.
    """
    parsed_ref = parse_reference(ref)
    digest = sha256_bytes(top_raw)
    if parsed_ref.digest and parsed_ref.digest != digest:
        raise PlanError("%s: the registry returned a manifest whose digest is %s" % (ref, digest))
    top = parse_manifest(top_raw, ref)
    manifests = []
    if top["kind"] == "index":
        entries = [(child, children_raw.get(child["digest"])) for child in top["children"]]
    else:
        entries = [({"digest": digest, "size": len(top_raw), "media_type": top["media_type"], "platform": None}, top_raw)]
    for child, raw in entries:
        if raw is None:
            raise PlanError("%s: manifest %s was not read" % (ref, child["digest"]))
        if sha256_bytes(raw) != child["digest"] or len(raw) != child["size"]:
            raise PlanError("%s: manifest %s does not match its descriptor" % (ref, child["digest"]))
        parsed = parse_manifest(raw, "%s (manifest %s)" % (ref, child["digest"])) if raw is not top_raw else top
        if parsed["kind"] != "manifest":
            raise PlanError("%s: nested indexes are not supported (%s)" % (ref, child["digest"]))
        blobs = [parsed["config"]] + parsed["layers"]
        manifests.append({"digest": child["digest"], "size": child["size"], "media_type": parsed["media_type"],
                          "platform": child["platform"], "raw": raw, "config": parsed["config"], "blobs": blobs})
    all_blobs = {digest: len(top_raw)}
    for manifest in manifests:
        all_blobs[manifest["digest"]] = manifest["size"]
        for blob in manifest["blobs"]:
            all_blobs[blob["digest"]] = blob["size"]
    docker_typed = top["media_type"] in DOCKER_TYPES or any(m["media_type"] in DOCKER_TYPES for m in manifests)
    return {
        "ref": ref,
        "layout": store_mod.layout_path(ref),
        "digest": digest,
        "media_type": top["media_type"],
        "manifest_size": len(top_raw),
        "raw": top_raw,
        "manifests": manifests,
        "blobs": all_blobs,
        "fetchable": dict((b["digest"], b["size"]) for m in manifests for b in m["blobs"]),
        "size": sum(all_blobs.values()),
        "docker_typed": docker_typed,
    }


def store_entry(plan, platforms=None):
    """The ``store.json`` entry of a downloaded image (``platforms`` fills single-arch gaps)."""
    platforms = platforms or {}
    return {
        "digest": plan["digest"],
        "media_type": plan["media_type"],
        "manifest_size": plan["manifest_size"],
        "layout": plan["layout"],
        "manifests": [{"digest": m["digest"], "media_type": m["media_type"], "size": m["size"],
                       "platform": m["platform"] or platforms.get(m["digest"]),
                       "blobs": [{"digest": b["digest"], "size": b["size"], "media_type": b["media_type"]} for b in m["blobs"]]}
                      for m in plan["manifests"]],
        "size": plan["size"],
        "fetched": store_mod.utc_now(),
    }


# Scheduling -------------------------------------------------------------------------------


class BlobScheduler(object):
    """Greedy scheduler: start an image only when none of the blobs it misses is in flight.

    ``missing`` maps each image to the set of blobs it must fetch; ``sizes`` (optional) maps
    blobs to sizes so the largest remaining download starts first. Pure: no threads inside.
    """

    def __init__(self, missing, sizes=None):
        self.order = list(missing)
        self.missing = dict((name, set(blobs)) for name, blobs in missing.items())
        self.sizes = sizes or {}
        self.pending = list(self.order)
        self.running = {}
        self.completed = set()

    def remaining(self, name):
        return self.missing[name] - self.completed

    def in_flight(self):
        busy = set()
        for blobs in self.running.values():
            busy |= blobs
        return busy

    def _weight(self, name):
        return sum(self.sizes.get(blob, 0) for blob in self.remaining(name))

    def next_ready(self):
        """The image to start now, or None when every pending image conflicts with a running one."""
        busy = self.in_flight()
        ready = [name for name in self.pending if not (self.remaining(name) & busy)]
        if not ready:
            return None
        return max(ready, key=lambda name: (self._weight(name), -self.order.index(name)))

    def start(self, name):
        self.pending.remove(name)
        self.running[name] = self.remaining(name)

    def finish(self, name, success=True):
        blobs = self.running.pop(name)
        if success:
            self.completed |= blobs

    def cancel_pending(self):
        cancelled, self.pending = self.pending, []
        return cancelled


def simulate_schedule(missing, parallel, sizes=None):
    """Run the scheduler with ``parallel`` slots, finishing the oldest copy first.

    Returns the list of concurrent sets observed (each a set of image names). For tests and
    for reasoning about a plan; the real run finishes copies in whatever order they end.
    """
    scheduler = BlobScheduler(missing, sizes)
    snapshots = []
    started = []
    while scheduler.pending or scheduler.running:
        while len(scheduler.running) < parallel:
            name = scheduler.next_ready()
            if name is None:
                break
            scheduler.start(name)
            started.append(name)
            snapshots.append(set(scheduler.running))
        oldest = next(n for n in started if n in scheduler.running)
        scheduler.finish(oldest)
    return snapshots


# Running ----------------------------------------------------------------------------------


class DownloadOptions(object):
    def __init__(self, store, registry_options, parallel=4, keep_going=False, verify=False):
        self.store = store
        self.registry = registry_options
        self.parallel = max(1, int(parallel))
        self.keep_going = keep_going
        self.verify = verify


def _parallel_map(function, items, parallel):
    """``{item: (result, error)}`` running ``function`` over ``items`` in a thread pool."""
    results = {}
    if not items:
        return results
    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, min(parallel, len(items)))) as pool:
        futures = dict((pool.submit(function, item), item) for item in items)
        for future in concurrent.futures.as_completed(futures):
            item = futures[future]
            try:
                results[item] = (future.result(), None)
            except (SkopeoError, PlanError) as exc:
                results[item] = (None, exc)
    return results


def plan_downloads(refs, skopeo, options):
    """Inspect every ref not already complete in the store and build the download plan.

    Returns ``{"index", "skipped": [ref], "plans": {ref: plan}, "failed": {ref: message},
    "retries": n, "attempts": {failed ref: skopeo calls made for it}}``.
    """
    index = store_mod.read_index(options.store) if os.path.isdir(options.store) else store_mod.empty_index()
    skipped, to_inspect = [], []
    for ref in refs:
        if store_mod.image_complete(options.store, index, ref):
            skipped.append(ref)
        else:
            to_inspect.append(ref)

    counters = {"retries": 0}
    lock = threading.Lock()

    def inspect(ref):
        result = skopeo.inspect_raw(ref, options.registry)
        with lock:
            counters["retries"] += result.retries
        return result.stdout

    tops = _parallel_map(inspect, to_inspect, options.parallel)
    failed, parsed_tops, child_refs, attempts = {}, {}, set(), {}
    for ref in to_inspect:
        raw, error = tops[ref]
        if error is not None:
            failed[ref] = error.message if isinstance(error, SkopeoError) else str(error)
            attempts[ref] = getattr(error, "attempts", 1)
            continue
        try:
            top = parse_manifest(raw, ref)
        except PlanError as exc:
            failed[ref] = str(exc)
            continue
        parsed_tops[ref] = (raw, top)
        if top["kind"] == "index":
            for child in top["children"]:
                child_refs.add(pinned_reference(ref, child["digest"]))
    children = _parallel_map(inspect, sorted(child_refs), options.parallel)

    plans = {}
    for ref, (raw, top) in parsed_tops.items():
        children_raw = {}
        try:
            if top["kind"] == "index":
                for child in top["children"]:
                    child_raw, error = children[pinned_reference(ref, child["digest"])]
                    if error is not None:
                        attempts[ref] = getattr(error, "attempts", 1)
                        raise PlanError(error.message if isinstance(error, SkopeoError) else str(error))
                    children_raw[child["digest"]] = child_raw
            plans[ref] = build_image_plan(ref, raw, children_raw)
        except PlanError as exc:
            failed[ref] = str(exc)
    return {"index": index, "skipped": skipped, "plans": plans, "failed": failed, "retries": counters["retries"],
            "attempts": attempts}


def missing_blobs(store, blobs):
    """The blobs of ``{digest: size}`` not in place in ``store``."""
    return dict((digest, size) for digest, size in blobs.items() if not store_mod.blob_present(store, digest, size))


def summarize_plan(refs, planning, store):
    """Byte counts of a plan: logical, unique, still to fetch (dedup across images)."""
    index = planning["index"]
    unique, logical = {}, 0
    for ref in refs:
        if ref in planning["plans"]:
            plan = planning["plans"][ref]
            unique.update(plan["blobs"])
            logical += plan["size"]
        elif ref in planning["skipped"]:
            entry = index["images"][ref]
            unique.update(store_mod.image_blobs(entry))
            logical += entry.get("size", 0)
    to_fetch = {}
    for plan in planning["plans"].values():
        to_fetch.update(missing_blobs(store, plan["blobs"]))
    unique_bytes = sum(unique.values())
    return {
        "images_to_fetch": [ref for ref in refs if ref in planning["plans"]],
        "images_skipped": [ref for ref in refs if ref in planning["skipped"]],
        "images_failed": [ref for ref in refs if ref in planning["failed"]],
        "logical_bytes": logical,
        "unique_bytes": unique_bytes,
        "bytes_to_fetch": sum(to_fetch.values()),
        "blobs_to_fetch": len(to_fetch),
        "dedup_ratio": round(float(logical) / unique_bytes, 3) if unique_bytes else 1.0,
    }


def _layout_blob_digests(store, layout_dir):
    """Digests named by skopeo's own index.json of a layout (index, manifests, configs)."""
    found = set()
    try:
        with open(os.path.join(layout_dir, "index.json"), "rb") as handle:
            index = json.loads(handle.read().decode("utf-8"))
    except (OSError, ValueError):
        return found
    queue = [m.get("digest") for m in index.get("manifests", []) if isinstance(m, dict)]
    while queue:
        digest = queue.pop()
        if not digest or digest in found:
            continue
        found.add(digest)
        try:
            with open(store_mod.blob_path(store, digest), "rb") as handle:
                doc = json.loads(handle.read().decode("utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(doc, dict):
            queue.extend(m.get("digest") for m in doc.get("manifests", []) if isinstance(m, dict))
            if isinstance(doc.get("config"), dict):
                found.add(doc["config"].get("digest"))
    return found


def _config_platform(store, digest):
    try:
        with open(store_mod.blob_path(store, digest), "rb") as handle:
            config = json.loads(handle.read().decode("utf-8"))
    except (OSError, ValueError):
        return None
    return format_platform(config) if isinstance(config, dict) else None


def download_image(plan, skopeo, options, protected):
    """Fetch one planned image into the store and record it. Returns a result dict (never raises)."""
    store = options.store
    ref = plan["ref"]
    result = {"ref": ref, "digest": plan["digest"], "status": "failed", "size": plan["size"], "attempts": 0,
              "fetched_bytes": 0, "retries": 0, "layout": plan["layout"], "error": None}
    layout_dir = os.path.join(store, *plan["layout"].split("/"))
    to_fetch = missing_blobs(store, plan["fetchable"])
    try:
        os.makedirs(layout_dir, exist_ok=True)
        # an index.json left by an interrupted run would make skopeo add a second image
        for leftover in ("index.json", "oci-layout"):
            if os.path.exists(os.path.join(layout_dir, leftover)):
                os.unlink(os.path.join(layout_dir, leftover))
        pinned = pinned_reference(ref, plan["digest"])
        if to_fetch:
            extra = ["--dest-oci-accept-uncompressed-layers"]
            argv = skopeo.copy_argv("docker://" + pinned, "oci:" + layout_dir, src_options=options.registry,
                                    all_images=plan["media_type"] in store_mod.INDEX_MEDIA_TYPES,
                                    preserve_digests=not plan["docker_typed"],
                                    dest_shared_blob_dir=os.path.join(store, store_mod.BLOBS_DIR), extra=extra)
            copied = skopeo.run(argv, ref)
            result["attempts"] = copied.attempts
            result["retries"] += copied.retries
            if plan["docker_typed"]:
                # skopeo wrote converted (OCI) manifests and configs: drop the ones nobody needs
                for digest in _layout_blob_digests(store, layout_dir) - protected:
                    try:
                        os.unlink(store_mod.blob_path(store, digest))
                    except OSError:
                        pass
        store_mod.put_blob(store, plan["digest"], plan["raw"])
        for manifest in plan["manifests"]:
            store_mod.put_blob(store, manifest["digest"], manifest["raw"])
            config = manifest["config"]
            if not store_mod.blob_present(store, config["digest"], config["size"]):
                fetched = skopeo.inspect_raw(pinned_reference(ref, manifest["digest"]), options.registry, config=True,
                                             what="%s (config %s)" % (ref, config["digest"]))
                result["retries"] += fetched.retries
                store_mod.put_blob(store, config["digest"], fetched.stdout)
        for digest, size in sorted(plan["blobs"].items()):
            problem = store_mod.verify_blob(store, digest, size, check_digest=options.verify and digest in to_fetch)
            if problem:
                raise store_mod.StoreError("%s: %s after the copy" % (ref, problem))
        store_mod.write_layout(store, plan["layout"], plan["digest"], plan["media_type"], plan["manifest_size"])
        platforms = dict((m["digest"], _config_platform(store, m["config"]["digest"]))
                         for m in plan["manifests"] if not m["platform"])
        store_mod.record_image(store, ref, store_entry(plan, platforms))
    except SkopeoError as exc:
        if "copy" in exc.argv[1:2]:
            result["attempts"] = exc.attempts
        result["retries"] += exc.attempts - 1
        result["error"] = exc.message
        return result
    except (store_mod.StoreError, OSError) as exc:
        result["error"] = "%s: %s" % (ref, exc) if not str(exc).startswith(ref) else str(exc)
        return result
    result["status"] = "fetched"
    result["fetched_bytes"] = sum(to_fetch.values())
    return result


def run_downloads(refs, planning, skopeo, options):
    """Download every planned image with the scheduler; returns results in ``refs`` order."""
    plans = planning["plans"]
    missing = dict((ref, set(missing_blobs(options.store, plans[ref]["fetchable"]))) for ref in refs if ref in plans)
    sizes = {}
    protected = set(planning["index"].get("blobs", {}))
    for plan in plans.values():
        sizes.update(plan["fetchable"])
        protected.update(plan["blobs"])
    scheduler = BlobScheduler(missing, sizes)
    results = {}
    stop = False
    with concurrent.futures.ThreadPoolExecutor(max_workers=options.parallel) as pool:
        running = {}
        while scheduler.pending or running:
            while not stop and len(running) < options.parallel:
                ref = scheduler.next_ready()
                if ref is None:
                    break
                scheduler.start(ref)
                running[pool.submit(download_image, plans[ref], skopeo, options, protected)] = ref
            if not running:
                break
            done, dummy = concurrent.futures.wait(list(running), return_when=concurrent.futures.FIRST_COMPLETED)
            for future in done:
                ref = running.pop(future)
                result = future.result()
                results[ref] = result
                scheduler.finish(ref, result["status"] == "fetched")
                if result["status"] == "failed" and not options.keep_going:
                    stop = True
        for ref in scheduler.cancel_pending():
            results[ref] = {"ref": ref, "digest": plans[ref]["digest"], "status": "not_started", "size": plans[ref]["size"],
                            "attempts": 0, "fetched_bytes": 0, "retries": 0, "layout": plans[ref]["layout"],
                            "error": "not started: an earlier image failed and keep_going is false"}
    return results
