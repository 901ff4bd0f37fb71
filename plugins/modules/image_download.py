#!/usr/bin/python
# Copyright: airgap.microshift contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r"""
---
module: image_download
short_description: Download container images into a deduplicated local image store
version_added: 0.1.0
description:
  - Copies a list of image references into the image store with C(skopeo), one OCI layout per
    image and one shared blob directory, so a layer shared by several images is fetched and
    stored once. The store layout is described in the collection's C(docs/store-format.md).
  - It plans each image. C(skopeo inspect --raw) of every reference and of every per-architecture
    manifest, run in parallel, gives every blob and its size, hence the exact logical, unique and
    missing bytes. Images already complete in the store are skipped without any network access.
  - A bounded pool of copies runs in parallel, fed as the plans arrive; the first copy starts as
    soon as its image is planned, not after the whole list. An image starts only when none of the
    blobs it still misses is being fetched by a running copy, so each blob is fetched once.
  - Before each copy it checks that the store's filesystem has room for the bytes still missing
    (of every image planned so far) plus O(free_space_margin). While the plan is incomplete, a copy
    starts early only when the free space is at least twice what the plan so far extrapolates to
    for the whole list, so a list that does not fit is refused before any download.
  - Transient registry errors (connection reset or refused, EOF, timeouts, 429, 5xx) are retried
    with exponential backoff and jitter. Permanent errors (401, 403, unknown manifest or
    repository, untrusted certificate) fail the image at once, with a message naming the image
    and the cause.
  - After each copy the image's blobs are checked (sizes, and with O(verify) the sha256 of the
    new blobs), then the image is recorded in C(store.json), written atomically under a lock.
  - Docker schema 2 images keep their original manifests and digests (the layout references the
    docker media types), so an upload with C(--preserve-digests) reproduces the source digests.
author:
  - airgap.microshift contributors (@airgap-microshift)
requirements:
  - skopeo (1.9 or later) on the host that runs the module
extends_documentation_fragment:
  - airgap.microshift.attributes
attributes:
  check_mode:
    support: full
    details: Check mode inspects the registries (read only) and returns the plan; it writes nothing.
  diff_mode:
    support: none
  idempotent:
    support: full
    details: An image complete in the store is skipped. A ref by tag is not re-resolved once stored.
options:
  images:
    description:
      - Image references to download, fully qualified (C(registry/repository@sha256:...) or
        C(registry/repository:tag)). Duplicates are ignored.
      - A ref by tag is stored under C(tag-<tag>) with the digest it resolved to.
    type: list
    elements: str
    required: true
  store:
    description:
      - The image store directory. It is created if missing (its parent must exist).
    type: path
    required: true
  authfile:
    description:
      - Auth file with the registry credentials (containers-auth.json(5)), for example one
        written by M(airgap.microshift.registry_auth).
      - When omitted, skopeo's default auth file is used.
    type: path
  parallel:
    description: Number of image copies (and inspections) run at the same time.
    type: int
    default: 4
  retries:
    description:
      - How many times in a row a call that failed with a transient error is retried.
      - A copy that failed after more of its blobs reached the store than before does not count
        (blobs stay in the store, so each try goes further); the count starts over after it.
    type: int
    default: 5
  retry_delay:
    description:
      - Base delay in seconds of the exponential backoff. Retry C(n) waits between half and all
        of C(retry_delay * 2**(n-1)), at most 60 seconds.
    type: float
    default: 2.0
  keep_going:
    description:
      - When V(true), a failed image does not stop the others; the module still fails at the end
        and lists every failed image and its cause, and every image that succeeded is recorded.
      - When V(false), the first failure stops new copies; running ones finish and are recorded.
        Planning goes on, so every reference that cannot be read is named in one run.
    type: bool
    default: false
  verify:
    description: Also compute the sha256 of every newly fetched blob and compare it with its digest.
    type: bool
    default: false
  tls_verify:
    description:
      - Verify the registries' TLS certificates. Set to V(false) only for a test registry; the
        module then warns.
    type: bool
    default: true
  cert_dir:
    description: Directory with extra CA certificates (C(*.crt)) and client certificates for the registries.
    type: path
  free_space_margin:
    description:
      - Bytes that must remain free on the store's filesystem after the download. The module
        fails when the missing bytes plus this margin exceed the free space; no copy starts then,
        and the images already copied stay recorded.
    type: int
    default: 1073741824
  progress_file:
    description:
      - Append one line per finished image to this file (created or emptied at the start), then an
        C(end) line, so that a playbook can follow a run started with C(async) and C(poll=0); the
        P(airgap.microshift.download#role) role does. Not written in check mode.
      - "Lines, tab-separated: C(<k> <status> <ref> <bytes fetched>) with C(status) one of V(fetched),
        V(failed) and V(not_started) (skipped images have no line), and last C(end <ok|failed> <message>).
        Should the module die before it can write the C(end) line, a watcher process writes C(end failed) for it."
    type: path
    version_added: 0.1.0
  skopeo_path:
    description: Path of the skopeo binary. By default skopeo is looked up in the C(PATH).
    type: path
notes:
  - Secrets never appear on a command line; credentials are read by skopeo from O(authfile).
seealso:
  - module: airgap.microshift.registry_auth
"""

EXAMPLES = r"""
---
- name: Download the release images into the store
  airgap.microshift.image_download:
    images:
      - quay.io/openshift-release-dev/ocp-v4.0-art-dev@sha256:5f4bd7f0b6d3bc5cf1e8b83ec12e9e4d3d7b1b2a04b1d6e3f0a9d8e7b6c5a4f3
      - registry.redhat.io/lvms4/topolvm-rhel9@sha256:0d6e1e8b83e4f1f7b7b1ed9d7b5f0f5a1ac1c3f5f2d4e6a7b8c9d0e1f2a3b4c5
    store: /srv/microshift-images
    authfile: /root/.config/containers/auth.json
    parallel: 6
  register: download

- name: Show what was fetched
  ansible.builtin.debug:
    msg: "{{ download.summary }}"

- name: Plan only (how many bytes are still missing)
  airgap.microshift.image_download:
    images: "{{ release_images }}"
    store: /srv/microshift-images
  check_mode: true
  register: plan
"""

RETURN = r"""
images:
  description: One entry per requested image, in the order given.
  returned: always
  type: list
  elements: dict
  contains:
    ref:
      description: The reference as given.
      type: str
      sample: quay.io/example/app@sha256:0d6e1e8b83e4f1f7b7b1ed9d7b5f0f5a1ac1c3f5f2d4e6a7b8c9d0e1f2a3b4c5
    digest:
      description: Digest of the top-level manifest or index (for a tag, what it resolved to).
      type: str
      sample: sha256:0d6e1e8b83e4f1f7b7b1ed9d7b5f0f5a1ac1c3f5f2d4e6a7b8c9d0e1f2a3b4c5
    status:
      description:
        - V(fetched), V(skipped) (already complete in the store), V(failed), V(not_started)
          (after a failure without O(keep_going)) or V(planned) (check mode).
      type: str
      sample: fetched
    size:
      description: Logical size of the image in bytes (all its manifests and blobs).
      type: int
      sample: 123456789
    fetched_bytes:
      description: Bytes of blobs this image's copy added to the store.
      type: int
      sample: 4567890
    attempts:
      description: skopeo copy runs made for this image (more than one when transient errors were retried).
      type: int
      sample: 1
    retries:
      description: Transient errors absorbed by retries for this image (copy and config reads).
      type: int
      sample: 0
    layout:
      description: The image's OCI layout, relative to the store.
      type: str
      sample: images/quay.io/example/app/sha256-0d6e1e8b83e4f1f7b7b1ed9d7b5f0f5a1ac1c3f5f2d4e6a7b8c9d0e1f2a3b4c5
    error:
      description: Why the image failed, naming the image and the cause; null otherwise.
      type: str
      sample: "quay.io/example/app:1.0: manifest unknown: the image, tag or digest does not exist in the registry"
summary:
  description: Totals of the run.
  returned: always
  type: dict
  sample:
    images_fetched: 12
    images_skipped: 3
    images_failed: 0
    bytes_fetched: 734003200
    logical_bytes: 1468006400
    unique_bytes: 917504000
    dedup_ratio: 1.6
    duration: 48.2
    throughput: 15228282
    retries: 1
plan:
  description:
    - The download plan. Images to fetch, skipped and failed at planning, logical and unique bytes,
      bytes and blobs still to fetch, dedup ratio and free bytes of the store's filesystem.
  returned: always
  type: dict
  sample:
    images_to_fetch: ["quay.io/example/app@sha256:0d6e1e8b83e4f1f7b7b1ed9d7b5f0f5a1ac1c3f5f2d4e6a7b8c9d0e1f2a3b4c5"]
    images_skipped: []
    images_failed: []
    logical_bytes: 1468006400
    unique_bytes: 917504000
    bytes_to_fetch: 917504000
    blobs_to_fetch: 120
    dedup_ratio: 1.6
    free_bytes: 85899345920
store:
  description: The store directory.
  returned: always
  type: str
  sample: /srv/microshift-images
"""

import os
import time

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.airgap.microshift.plugins.module_utils import _download as download
from ansible_collections.airgap.microshift.plugins.module_utils import _store as store_mod
from ansible_collections.airgap.microshift.plugins.module_utils._progress import ProgressFile
from ansible_collections.airgap.microshift.plugins.module_utils._reference import InvalidReference, parse_reference
from ansible_collections.airgap.microshift.plugins.module_utils._skopeo import RegistryOptions, Skopeo


def _unique(items):
    seen, result = set(), []
    for item in items:
        if item not in seen:
            seen.add(item)
            result.append(item)
    return result


def main():
    module = AnsibleModule(
        argument_spec=dict(
            images=dict(type="list", elements="str", required=True),
            store=dict(type="path", required=True),
            authfile=dict(type="path", no_log=False),
            parallel=dict(type="int", default=4),
            retries=dict(type="int", default=5),
            retry_delay=dict(type="float", default=2.0),
            keep_going=dict(type="bool", default=False),
            verify=dict(type="bool", default=False),
            tls_verify=dict(type="bool", default=True),
            cert_dir=dict(type="path"),
            free_space_margin=dict(type="int", default=1073741824),
            progress_file=dict(type="path"),
            skopeo_path=dict(type="path"),
        ),
        supports_check_mode=True,
    )
    params = module.params
    store = params["store"]
    # The progress file first: a follower then learns of every failure below from its end line.
    progress = None
    if params["progress_file"] and not module.check_mode:
        try:
            progress = ProgressFile(params["progress_file"], items=len(set(params["images"])))
        except (OSError, IOError) as exc:
            module.fail_json(msg="cannot write progress_file %s: %s" % (params["progress_file"], exc))
        progress.guard()

    def fail(msg, **extra):
        if progress is not None:
            progress.end(False, msg)
        module.fail_json(msg=msg, **extra)

    refs = _unique(params["images"])
    for ref in refs:
        try:
            parse_reference(ref)
            store_mod.layout_name(ref)
        except (InvalidReference, store_mod.StoreError) as exc:
            fail("images: %s" % exc)
    for name in ("parallel",):
        if params[name] < 1:
            fail("%s must be at least 1, not %d" % (name, params[name]))
    if params["retries"] < 0 or params["retry_delay"] < 0 or params["free_space_margin"] < 0:
        fail("retries, retry_delay and free_space_margin must not be negative")
    if params["authfile"] and not os.path.isfile(params["authfile"]):
        fail("authfile %s does not exist or is not a file" % params["authfile"])
    if params["cert_dir"] and not os.path.isdir(params["cert_dir"]):
        fail("cert_dir %s does not exist or is not a directory" % params["cert_dir"])
    if ":" in os.path.abspath(store):
        fail("store %s contains ':', which skopeo reads as the end of its oci: transport name; choose a path without ':'" % store)
    if os.path.exists(store) and not os.path.isdir(store):
        fail("store %s exists and is not a directory" % store)
    if not os.path.isdir(os.path.dirname(os.path.abspath(store))):
        fail("the parent directory of store %s does not exist" % store)
    if not params["tls_verify"]:
        module.warn("tls_verify is false: registry certificates are not verified; use this only with a test registry")

    binary = params["skopeo_path"]
    if binary:
        if not os.access(binary, os.X_OK):
            fail("skopeo_path %s is not an executable file" % binary)
    else:
        binary = module.get_bin_path("skopeo")
        if not binary:
            fail("skopeo is required to download images and was not found in PATH; install the skopeo package")

    started = time.monotonic()
    skopeo = Skopeo(binary, retries=params["retries"], retry_delay=params["retry_delay"])
    options = download.DownloadOptions(store, RegistryOptions(params["authfile"], params["tls_verify"], params["cert_dir"]),
                                       parallel=params["parallel"], keep_going=params["keep_going"], verify=params["verify"],
                                       free_space_margin=params["free_space_margin"])

    def prepare_store():
        # only once the first copy is about to start: a refused plan leaves no store behind
        if not os.path.isdir(store):
            os.mkdir(store, 0o750)
        os.makedirs(os.path.join(store, store_mod.BLOBS_DIR, "sha256"), exist_ok=True)
        os.makedirs(os.path.join(store, store_mod.IMAGES_DIR), exist_ok=True)
        if not os.path.exists(os.path.join(store, store_mod.STORE_INDEX)):
            with store_mod.StoreLock(store):
                if not os.path.exists(os.path.join(store, store_mod.STORE_INDEX)):
                    store_mod.write_index(store, store_mod.empty_index())

    def on_image(result):
        if progress is not None:
            progress.item(result["status"], result["ref"], result["fetched_bytes"])

    def on_start(to_plan):
        if progress is not None:
            progress.start(to_plan, len(refs))

    run = download.DownloadRun(refs, skopeo, options, check_mode=module.check_mode, on_start=on_start, on_image=on_image,
                               prepare_store=prepare_store)

    def finish(failed, msg=None, **extra):
        if failed:
            fail(msg, store=store, **extra)
        if progress is not None:
            progress.end(True)
        module.exit_json(store=store, **extra)

    try:
        run.run()
    except store_mod.StoreError as exc:
        finish(True, "store %s: %s" % (store, exc), changed=bool(run.results and any(
            r["status"] == "fetched" for r in run.results.values())))
    except OSError as exc:
        finish(True, "cannot create store %s: %s" % (store, exc.strerror or exc), changed=False)

    plan = run.summary_plan()
    plan["free_bytes"] = store_mod.free_bytes(store)
    images = []
    for ref in refs:
        if ref in run.results:
            images.append(run.results[ref])
        elif ref in run.skipped:
            item = run.index["images"][ref]
            images.append({"ref": ref, "digest": item["digest"], "status": "skipped", "size": item.get("size", 0), "fetched_bytes": 0,
                           "attempts": 0, "retries": 0, "layout": item["layout"], "error": None})
        else:
            item = run.plans[ref]
            images.append({"ref": ref, "digest": item["digest"], "status": "planned", "size": item["size"], "fetched_bytes": 0,
                           "attempts": 0, "retries": 0, "layout": item["layout"], "error": None})
    summary = _summary(images, plan, started, run.plan_retries)
    changed = summary["images_fetched"] > 0 or (module.check_mode and bool(run.plans))
    failures = [image for image in images if image["status"] == "failed"]
    if run.space_error:
        finish(True, run.space_error, changed=changed, images=images, summary=summary, plan=plan)
    if failures:
        finish(True, "%d of %d image(s) failed: %s" % (len(failures), len(images), "; ".join(i["error"] for i in failures)),
               changed=changed, images=images, summary=summary, plan=plan)
    finish(False, changed=changed, images=images, summary=summary, plan=plan)


def _summary(images, plan, started, planning_retries):
    duration = max(time.monotonic() - started, 0.0)
    fetched = sum(image["fetched_bytes"] for image in images)
    return {
        "images_fetched": sum(1 for image in images if image["status"] == "fetched"),
        "images_skipped": sum(1 for image in images if image["status"] == "skipped"),
        "images_failed": sum(1 for image in images if image["status"] == "failed"),
        "bytes_fetched": fetched,
        "logical_bytes": plan["logical_bytes"],
        "unique_bytes": plan["unique_bytes"],
        "dedup_ratio": plan["dedup_ratio"],
        "duration": round(duration, 3),
        "throughput": int(fetched / duration) if duration > 0 else 0,
        "retries": planning_retries + sum(image["retries"] for image in images),
    }


if __name__ == "__main__":
    main()
