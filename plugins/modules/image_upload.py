#!/usr/bin/python
# Copyright: airgap.microshift contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r"""
---
module: image_upload
short_description: Push the images of an image store into a mirror registry, digests preserved
version_added: 0.1.0
description:
  - Pushes every image of an image store (made by M(airgap.microshift.image_download)) to a mirror
    registry with C(skopeo copy --all --preserve-digests), so every C(@sha256:) reference of the
    source resolves on the mirror to the same bytes.
  - Also reads the tree of directories made by C(skopeo copy --all --preserve-digests docker://<ref>
    dir:<dir>/<ref without registry>), so an upload can start from a download done by hand.
  - The mirror repository of C(quay.io/a/b@sha256:...) is C(<mirror>[/<namespace>]/a/b); the source
    registry is dropped, as a C(registries.conf) prefix mirror expects.
  - Images whose digest the mirror repository already serves are skipped (no push, no new tag), so
    a second run changes nothing.
  - Pushes run in parallel. Two pushes that need the same blob never run at the same time; the first
    uploads it and the later ones mount it from the repository it went to (containers/image does
    that on its own once its blob-info cache knows where the blob is), so each blob crosses the
    network once. The pushes that send blobs other images wait for (a shared base layer) start
    first, the smallest of them first, so the others are unblocked early; images that share nothing
    go largest first, so that no big one ends the run alone.
  - Whether the mirror serves a manifest (before the pushes, and to verify them) is read with plain
    HTTPS GETs over kept-alive connections, with the credentials of O(authfile) (C(Basic) logins,
    or bearer tokens from the registry's token realm, one per repository) and the certificates of
    O(cert_dir); whatever that cannot tell for sure (a credential helper, a proxy, an untrusted
    certificate, a refused login, an unexpected answer) is asked of C(skopeo inspect), which then
    words the error.
  - Network errors, HTTP 429 and 5xx answers are retried with exponential back-off. Authentication,
    permission and certificate errors fail that image at once.
  - After the pushes, checks that the mirror serves every manifest (the top-level one and each
    architecture's) of every image, and fails naming the ones it does not.
  - The sigstore signatures a store holds (fetched by M(airgap.microshift.image_download)) land in
    each image's mirror repository under the tag the containers tools read them from,
    C(sha256-<hex of the signed manifest>.sig), so a host whose C(registries.d) enables
    C(use-sigstore-attachments) for the mirror finds them. An attachment the mirror already serves
    with the same digest is skipped; one with other content is replaced. They are verified after the
    push like the manifests, and listed in the mapping.
author:
  - airgap.microshift contributors (@airgap-microshift)
extends_documentation_fragment:
  - airgap.microshift.skopeo
  - airgap.microshift.skopeo.validate_certs
  - ansible.builtin.files
  - airgap.microshift.attributes
  - airgap.microshift.attributes.actiongroup_skopeo
  - airgap.microshift.attributes.files
attributes:
  check_mode:
    support: full
    details: Reads the mirror to tell which images would be pushed and with which tags; writes nothing.
  diff_mode:
    support: none
  idempotent:
    support: full
    details: Images already on the mirror are skipped; with O(tag_policy=timestamp) new images get new tags.
  safe_file_operations:
    support: full
    details: O(mapping_file) is written to a temporary file in its directory, then moved into place.
options:
  store:
    description:
      - The image store (a directory holding C(store.json)), or a tree of C(dir:) image directories.
    type: path
    required: true
  source_format:
    description:
      - V(store) reads an image store, V(dir) a tree of C(dir:) image directories.
      - V(auto) reads a store when O(store) holds a C(store.json), a C(dir:) tree otherwise.
      - In a C(dir:) tree each image is the directory that holds a C(manifest.json); its path below
        O(store) is the image reference without its registry (such as C(ns/app@sha256:<hex>) or C(ns/app:v1)).
    type: str
    choices: [store, dir, auto]
    default: auto
  mirror:
    description:
      - The mirror registry, as C(host) or C(host:port).
    type: str
    required: true
  namespace:
    description:
      - A path put in front of every repository on the mirror (C(<mirror>/<namespace>/<repository>)).
    type: str
  tag_policy:
    description:
      - How pushed images are tagged on the mirror.
      - V(timestamp) tags C(mirror-<yymmddHHMMSS>-<counter>) with one UTC time stamp per run and a counter
        per pushed image in source order, so every push has a tag (a registry may garbage-collect untagged
        manifests) and no existing tag such as C(latest) ever moves.
      - V(digest) tags C(sha256-<hex>), the same on every run.
      - V(source) tags the source tag where the reference has one, C(sha256-<hex>) otherwise.
      - V(none) pushes by digest only.
      - Images already on the mirror are never retagged.
    type: str
    choices: [timestamp, digest, source, none]
    default: timestamp
  images:
    description:
      - Upload only these images (references as listed in the store, or paths of a C(dir:) tree).
      - All images when empty.
    type: list
    elements: str
    default: []
  keep_going:
    description:
      - When V(false), the first failed image stops new pushes (running ones finish) and the task fails with that
        image's own error first; the images never started are reported V(not_started).
      - When V(true), every image is tried, then the task fails listing those that failed.
    type: bool
    default: false
  verify:
    description:
      - Which images to check, after the pushes, manifest by manifest (the top-level index and every per-architecture manifest).
      - V(pushed) checks the images this run pushed; an image found already on the mirror was checked by its top-level digest,
        which the registry only accepts once it holds every manifest the index names. This keeps a rerun fast.
      - V(all) also checks every manifest of the images found already there, for example after a registry garbage collection.
    type: str
    choices: [pushed, all]
    default: pushed
  mapping_file:
    description:
      - Write the mapping (RV(mapping)) to this JSON file, atomically (mode C(0644) for a new file unless O(mode)
        says otherwise). Its directory must exist.
      - The common file options (O(mode), O(owner), O(group), SELinux context, O(attributes)) apply to this file.
      - The file is a report of the run; writing it does not by itself make the task changed.
    type: path
  progress_file:
    description:
      - Append one line per image pushed, failed or not started to this file (created or emptied at the start),
        then an C(end) line, so that a playbook can follow a run started with C(async) and C(poll=0); the
        P(airgap.microshift.upload#role) role does. Not written in check mode.
      - The lines are those of M(airgap.microshift.image_download)'s O(airgap.microshift.image_download#module:progress_file),
        with the bytes the image's push uploaded; images already on the mirror have no line.
    type: path
notes:
  - The manifests of a pushed image are checked by reading them back by digest and hashing the bytes
    (C(skopeo inspect --raw docker://<repository>@<digest>) where the direct read steps aside).
seealso:
  - module: airgap.microshift.image_download
  - name: containers-registries.conf(5)
    description: Mirror configuration that resolves source references to the mirror.
    link: https://github.com/containers/image/blob/main/docs/containers-registries.conf.5.md
"""

EXAMPLES = r"""
---
- name: Push the image store to the mirror registry
  airgap.microshift.image_upload:
    store: /srv/microshift-images
    mirror: mirror.example.com:8443
    authfile: /root/.pull-secret-mirror.json
    mapping_file: /srv/microshift-images/mapping.json
  register: upload

- name: Push a tree made by skopeo copy dir:, under a namespace, tagged by digest
  airgap.microshift.image_upload:
    store: /root/microshift-containers
    source_format: dir
    mirror: mirror.example.com:8443
    namespace: microshift
    tag_policy: digest
    authfile: /root/.pull-secret-mirror.json
    cert_dir: /etc/containers/certs.d/mirror.example.com:8443

- name: Show which images would be pushed
  airgap.microshift.image_upload:
    store: /srv/microshift-images
    mirror: mirror.example.com:8443
    authfile: /root/.pull-secret-mirror.json
  check_mode: true
"""

RETURN = r"""
mapping:
  description:
    - One entry per image, in source order.
    - C(status) is V(pushed), V(skipped) (the mirror already served it), V(failed) or V(not_started) (after another image
      failed, with O(keep_going=false)); in check mode, what would happen.
    - C(tag) is the tag given on the mirror, V(null) when the image was pushed by digest or skipped.
    - C(signatures), for an image whose store entry holds signatures, lists each attachment with the
      manifest it signs, where it is on the mirror, its digest and its status (V(pushed), V(skipped), V(failed)).
  returned: success and failure after the images were read
  type: list
  elements: dict
  sample:
    - source: quay.io/openshift-release-dev/ocp-v4.0-art-dev@sha256:0f2d1c2e2bd5c9d6e1e4d0cbbd2b8d8f4b0f6d5d9e2c2a9a0c9c4d9e4f6a1b2c
      mirror: mirror.example.com:8443/openshift-release-dev/ocp-v4.0-art-dev@sha256:0f2d1c2e2bd5c9d6e1e4d0cbbd2b8d8f4b0f6d5d9e2c2a9a0c9c4d9e4f6a1b2c
      digest: sha256:0f2d1c2e2bd5c9d6e1e4d0cbbd2b8d8f4b0f6d5d9e2c2a9a0c9c4d9e4f6a1b2c
      tag: mirror-261124073000-1
      status: pushed
      signatures:
        - manifest: sha256:0f2d1c2e2bd5c9d6e1e4d0cbbd2b8d8f4b0f6d5d9e2c2a9a0c9c4d9e4f6a1b2c
          mirror: mirror.example.com:8443/openshift-release-dev/ocp-v4.0-art-dev:sha256-0f2d1c2e2bd5c9d6e1e4d0cbbd2b8d8f4b0f6d5d9e2c2a9a0c9c4d9e4f6a1b2c.sig
          digest: sha256:5d1e3a3c8b7e3a1c0b5d1e3a3c8b7e3a1c0b5d1e3a3c8b7e3a1c0b5d1e3a3c8b
          status: pushed
summary:
  description:
    - Counts of the run. C(bytes) is the size of the blobs skopeo uploaded (mounted and present blobs excluded;
      in check mode, the size of the blobs the images to push hold, each counted once).
    - C(blobs_uploaded) counts blob uploads, C(blobs_reused) blobs found on the mirror or mounted from another repository.
    - C(retries) counts the pushes that were retried after a transient error (connection reset, 429, 5xx) and then went on.
    - C(duration) is in seconds.
    - C(signatures_pushed), C(signatures_skipped) and C(signatures_failed) count the images' signature attachments.
  returned: success and failure after the images were read
  type: dict
  sample: {images: 3, pushed: 2, skipped: 1, failed: 0, not_started: 0, bytes: 734003200, blobs_uploaded: 14, blobs_reused: 5,
           retries: 0, duration: 42.7, signatures_pushed: 6, signatures_skipped: 3, signatures_failed: 0}
source_format:
  description: The format that was read, V(store) or V(dir).
  returned: always
  type: str
  sample: store
failures:
  description: One sentence per image that failed, the one that stopped the upload first.
  returned: failure after the images were read
  type: list
  elements: str
  sample: ["Pushing quay.io/a/b@sha256:... to mirror.example.com:8443/a/b:mirror-261124073000-1 failed: unauthorized: authentication required"]
missing_manifests:
  description: The manifests (C(<repository>@<digest>)) and signature attachments (C(<repository>:<tag>)) the mirror did not serve after the pushes.
  returned: failure of the final check
  type: list
  elements: str
  sample: ["mirror.example.com:8443/a/b@sha256:0f2d1c2e2bd5c9d6e1e4d0cbbd2b8d8f4b0f6d5d9e2c2a9a0c9c4d9e4f6a1b2c"]
"""

import json
import os

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.airgap.microshift.plugins.module_utils import _skopeo
from ansible_collections.airgap.microshift.plugins.module_utils._files import ensure_file
from ansible_collections.airgap.microshift.plugins.module_utils._progress import ProgressFile
from ansible_collections.airgap.microshift.plugins.module_utils._upload import (
    SOURCE_FORMATS,
    TAG_POLICIES,
    Registry,
    Upload,
    UploadError,
    image_bytes,
    load_images,
    mirror_problem,
    plan_repositories,
    select_images,
)


def main():
    module = AnsibleModule(
        argument_spec=dict(
            _skopeo.argument_spec(retries=3),
            store=dict(type="path", required=True),
            source_format=dict(type="str", choices=list(SOURCE_FORMATS), default="auto"),
            mirror=dict(type="str", required=True),
            namespace=dict(type="str"),
            tag_policy=dict(type="str", choices=list(TAG_POLICIES), default="timestamp"),
            images=dict(type="list", elements="str", default=[]),
            keep_going=dict(type="bool", default=False),
            verify=dict(type="str", choices=["pushed", "all"], default="pushed"),
            mapping_file=dict(type="path"),
            progress_file=dict(type="path"),
        ),
        add_file_common_args=True,
        supports_check_mode=True,
    )
    params = module.params
    try:
        progress = ProgressFile.for_module(params["progress_file"], 0, module.check_mode)
    except OSError as exc:
        module.fail_json(msg="Cannot write progress_file %s: %s." % (params["progress_file"], exc.strerror or exc))

    def finish(failure, **result):
        if params["mapping_file"] and "mapping" in result and not module.check_mode:
            # a report of the run: writing it does not make the task changed
            ensure_file(module, params["mapping_file"], (json.dumps(result["mapping"], indent=2, sort_keys=True) + "\n").encode(),
                        what="mapping_file", default_mode=0o644)
        progress.end(not failure, failure)
        if failure:
            module.fail_json(msg=failure, **result)
        module.exit_json(**result)

    mirror, namespace = params["mirror"].strip().rstrip("/"), (params["namespace"] or "").strip("/") or None
    problem = mirror_problem(mirror, namespace) or _skopeo.option_problem(params)
    if not problem and params["mapping_file"] and not os.path.isdir(os.path.dirname(os.path.abspath(params["mapping_file"]))):
        problem = "Option mapping_file names %s, whose directory does not exist." % params["mapping_file"]
    try:
        if problem:
            raise UploadError(problem)
        binary = _skopeo.locate(params, module.get_bin_path)
        images, source_format = load_images(params["store"], params["source_format"])
        images = select_images(images, params["images"])
        plan_repositories(images, mirror, namespace)
    except (UploadError, _skopeo.OptionError) as exc:
        finish(str(exc))
    progress.reserve(len(images))
    warning = _skopeo.insecure_warning(params, "mirror %s" % mirror)
    if warning:
        module.warn(warning)
    registry = Registry(binary, params["authfile"], params["validate_certs"], params["cert_dir"], retries=params["retries"],
                        retry_delay=params["retry_delay"], direct_reads=True)
    upload = Upload(registry, images, store=params["store"], parallel=params["parallel"], keep_going=params["keep_going"],
                    on_start=progress.start, on_image=lambda image: progress.item(image.status, image.source, image_bytes(image)))
    try:
        upload.run(params["tag_policy"], module.check_mode, params["verify"])
    except UploadError as exc:
        finish(str(exc))
    failure, result = upload.outcome(module.check_mode)
    finish(failure, source_format=source_format, **result)


if __name__ == "__main__":
    main()
