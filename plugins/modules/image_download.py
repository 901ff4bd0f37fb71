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
  - With O(signatures=true), the sigstore signatures of every manifest (the index and each
    per-architecture manifest) are fetched from the source registry with the image. They are the
    attachments a registry keeps under the tag C(sha256-<hex>.sig) next to the image; an absent
    tag means the manifest is unsigned. They are stored as ordinary blobs of the store, so
    transfer sets carry them and M(airgap.microshift.image_upload) pushes them to the mirror.
  - With O(signature_scopes), images under those scopes must be signed by one of O(signature_keys);
    the signature of each per-architecture manifest (the one a host pulls and its policy checks)
    must verify, name that manifest's digest and the image's repository, and a signed index must
    verify too. The check runs in Python before any layer is copied (no sigstore-enabled skopeo is
    needed), and a refused image fails, naming the image and the reason.
author:
  - airgap.microshift contributors (@airgap-microshift)
requirements:
  - the Python package cryptography on the host that runs the module when O(signature_scopes) is set
extends_documentation_fragment:
  - airgap.microshift.skopeo
  - airgap.microshift.skopeo.validate_certs
  - airgap.microshift.attributes
  - airgap.microshift.attributes.actiongroup_skopeo
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
      - The image store directory. When it is missing it is created (mode C(0750)), with its missing
        parent directories (mode C(0755), as C(mkdir -p) makes them), once the first copy is about to
        start; a run that fails before (a bad reference, not enough space) leaves nothing behind.
    type: path
    required: true
  retries:
    default: 5
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
  signatures:
    description:
      - Fetch the sigstore signatures (attachments) of every manifest into the store.
      - An image stored before its signatures were looked up has them fetched on the next run
        (its layers are not fetched again).
    type: bool
    default: true
    version_added: 0.1.0
  signature_scopes:
    description:
      - Registry scopes whose images must be signed by one of O(signature_keys), as in
        containers-policy.json(5) (C(quay.io/openshift-release-dev), C(registry.redhat.io)); a
        registry, a repository namespace or a repository.
      - An image under such a scope whose signature is missing or does not verify fails, naming
        the reason; with O(keep_going=false) it stops the download like any failure.
    type: list
    elements: str
    default: []
    version_added: 0.1.0
  signature_exceptions:
    description:
      - Scopes under O(signature_scopes) whose images may be unsigned (a repository a vendor does
        not sign). The most specific of O(signature_scopes) and O(signature_exceptions) decides.
    type: list
    elements: str
    default: []
    version_added: 0.1.0
  signature_keys:
    description:
      - Public key files (PEM C(PUBLIC KEY), RSA, ECDSA or Ed25519) on the host that runs the
        module, any of which may have made the signatures required by O(signature_scopes), such as
        Red Hat's release key 3.
    type: list
    elements: path
    default: []
    version_added: 0.1.0
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

- name: Download the release, requiring Red Hat's signatures where Red Hat signs
  airgap.microshift.image_download:
    images: "{{ release_images }}"
    store: /srv/microshift-images
    authfile: /root/.config/containers/auth.json
    signature_scopes:
      - quay.io/openshift-release-dev
      - registry.redhat.io
    signature_keys:
      - /etc/containers/RedHat_ReleaseKey3.pub

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
    signatures:
      description:
        - The image's manifests that are signed and unsigned, and how many signatures were verified
          (only under O(signature_scopes)); null when signatures are not fetched.
      type: dict
      sample: {signed: 3, unsigned: 0, verified: 2}
      version_added: 0.1.0
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
    signatures: {signed: 36, unsigned: 3, verified: 24, bytes: 61440, seconds: 0.8, images_refused: 0}
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

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.airgap.microshift.plugins.module_utils import _download as download
from ansible_collections.airgap.microshift.plugins.module_utils import _progress, _skopeo


def main():
    module = AnsibleModule(
        argument_spec=dict(
            _skopeo.argument_spec(retries=5),
            images=dict(type="list", elements="str", required=True),
            store=dict(type="path", required=True),
            keep_going=dict(type="bool", default=False),
            verify=dict(type="bool", default=False),
            free_space_margin=dict(type="int", default=1073741824),
            progress_file=dict(type="path"),
            signatures=dict(type="bool", default=True),
            signature_scopes=dict(type="list", elements="str", default=[]),
            signature_exceptions=dict(type="list", elements="str", default=[]),
            signature_keys=dict(type="list", elements="path", default=[], no_log=False),
        ),
        supports_check_mode=True,
    )
    params = module.params
    refs = list(dict.fromkeys(params["images"]))
    # The progress file first: a follower then learns of every failure below from its end line.
    try:
        progress = _progress.ProgressFile.for_module(params["progress_file"], len(refs), module.check_mode)
    except OSError as exc:
        module.fail_json(msg="Cannot write progress_file %s: %s." % (params["progress_file"], exc.strerror or exc))

    def fail(msg, **result):
        progress.end(False, msg)
        module.fail_json(msg=msg, **result)

    problem = (download.request_problem(refs, params["store"]) or _skopeo.option_problem(params)
               or _skopeo.at_least("free_space_margin", params["free_space_margin"], 0))
    if not problem:
        problem, signatures = download.signature_options(params)
    if problem:
        fail(problem)
    try:
        binary = _skopeo.locate(params, module.get_bin_path)
    except _skopeo.OptionError as exc:
        fail(str(exc))
    warning = _skopeo.insecure_warning(params, "the registries")
    if warning:
        module.warn(warning)
    options = download.DownloadOptions(params["store"], _skopeo.registry_options(params), parallel=params["parallel"],
                                       keep_going=params["keep_going"], verify=params["verify"],
                                       free_space_margin=params["free_space_margin"], signatures=signatures)
    run = download.DownloadRun(refs, _skopeo.Skopeo.from_params(binary, params), options, check_mode=module.check_mode,
                               on_start=lambda count: progress.start(count, len(refs)),
                               on_image=lambda item: progress.item(item["status"], item["ref"], item["fetched_bytes"]))
    failure, result = run.outcome()
    if failure:
        fail(failure, **result)
    progress.end(True)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
