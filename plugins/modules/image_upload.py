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
author:
  - airgap.microshift contributors (@airgap-microshift)
requirements:
  - skopeo 1.9 or later on the host that runs the module
extends_documentation_fragment:
  - airgap.microshift.attributes
attributes:
  check_mode:
    support: full
    details: Reads the mirror to tell which images would be pushed and with which tags; writes nothing.
  diff_mode:
    support: none
  idempotent:
    support: full
    details: Images already on the mirror are skipped; with O(tag_policy=timestamp) new images get new tags.
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
  authfile:
    description:
      - The containers auth file holding the credentials for O(mirror) (C(containers-auth.json) format).
      - Defaults to skopeo's own default (C(${XDG_RUNTIME_DIR}/containers/auth.json)).
    type: path
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
  parallel:
    description:
      - How many pushes (and manifest checks) run at the same time.
    type: int
    default: 4
  retries:
    description:
      - How many times in a row a push or a check that failed for a transient reason (network, HTTP 429, 5xx) is retried.
      - A push that failed after getting past a blob no earlier try had got past (uploaded, mounted or found
        on the mirror) does not count; the count starts over after it.
    type: int
    default: 3
  retry_delay:
    description:
      - Seconds before the first retry; each further retry waits up to twice as long (with random jitter, at most 60 seconds).
    type: float
    default: 2.0
  keep_going:
    description:
      - When V(false), the first failed image stops new pushes (running ones finish) and the task fails.
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
  tls_verify:
    description:
      - Verify the mirror's TLS certificate. Turning it off is for test registries only and prints a warning.
    type: bool
    default: true
  cert_dir:
    description:
      - A directory of C(*.crt) CA certificates (and C(*.cert)/C(*.key) client certificates) for the mirror,
        used in addition to the system trust store.
    type: path
  mapping_file:
    description:
      - Write the mapping (RV(mapping)) to this JSON file, atomically.
      - The file is a report of the run; writing it does not by itself make the task changed.
    type: path
  skopeo_path:
    description:
      - The skopeo binary. Found on E(PATH) when not set.
    type: path
notes:
  - Credentials are never put on a command line; they come from O(authfile).
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
    - C(status) is V(pushed), V(skipped) (the mirror already served it) or V(failed); in check mode, what would happen.
    - C(tag) is the tag given on the mirror, V(null) when the image was pushed by digest or skipped.
  returned: success and failure after the images were read
  type: list
  elements: dict
  sample:
    - source: quay.io/openshift-release-dev/ocp-v4.0-art-dev@sha256:0f2d1c2e2bd5c9d6e1e4d0cbbd2b8d8f4b0f6d5d9e2c2a9a0c9c4d9e4f6a1b2c
      mirror: mirror.example.com:8443/openshift-release-dev/ocp-v4.0-art-dev@sha256:0f2d1c2e2bd5c9d6e1e4d0cbbd2b8d8f4b0f6d5d9e2c2a9a0c9c4d9e4f6a1b2c
      digest: sha256:0f2d1c2e2bd5c9d6e1e4d0cbbd2b8d8f4b0f6d5d9e2c2a9a0c9c4d9e4f6a1b2c
      tag: mirror-261124073000-1
      status: pushed
summary:
  description:
    - Counts of the run. C(bytes) is the size of the blobs skopeo uploaded (mounted and present blobs excluded;
      in check mode, the size of the blobs the images to push hold, each counted once).
    - C(blobs_uploaded) counts blob uploads, C(blobs_reused) blobs found on the mirror or mounted from another repository.
    - C(retries) counts the pushes that were retried after a transient error (connection reset, 429, 5xx) and then went on.
    - C(duration) is in seconds.
  returned: success and failure after the images were read
  type: dict
  sample: {images: 3, pushed: 2, skipped: 1, failed: 0, bytes: 734003200, blobs_uploaded: 14, blobs_reused: 5, retries: 0, duration: 42.7}
source_format:
  description: The format that was read, V(store) or V(dir).
  returned: always
  type: str
  sample: store
failures:
  description: One sentence per image that failed.
  returned: failure after the images were read
  type: list
  elements: str
  sample: ["Pushing quay.io/a/b@sha256:... to mirror.example.com:8443/a/b:mirror-261124073000-1 failed: unauthorized: authentication required"]
missing_manifests:
  description: The manifests (C(<repository>@<digest>)) the mirror did not serve after the pushes.
  returned: failure of the final check
  type: list
  elements: str
  sample: ["mirror.example.com:8443/a/b@sha256:0f2d1c2e2bd5c9d6e1e4d0cbbd2b8d8f4b0f6d5d9e2c2a9a0c9c4d9e4f6a1b2c"]
"""

import json
import os
import time

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.common.text.converters import to_native

from ansible_collections.airgap.microshift.plugins.module_utils._files import same_content, write_file
from ansible_collections.airgap.microshift.plugins.module_utils._reference import (
    InvalidReference,
    parse_reference,
)
from ansible_collections.airgap.microshift.plugins.module_utils._upload import (
    SOURCE_FORMATS,
    TAG_POLICIES,
    Registry,
    Upload,
    UploadError,
    assign_tags,
    load_images,
    mapping_document,
    plan_repositories,
    planned_summary,
    select_images,
    timestamp_stamp,
)
from ansible_collections.airgap.microshift.plugins.module_utils._skopeo import module_runner


def _validate_mirror(module, mirror, namespace):
    try:
        parsed = parse_reference("%s/%s/probe" % (mirror, namespace.strip("/")) if namespace else "%s/probe" % mirror)
    except InvalidReference:
        parsed = None
    if parsed is None or parsed.registry != mirror:
        module.fail_json(msg="Option mirror %r is not a registry host[:port], or namespace %r is not a repository path." % (mirror, namespace))


def _write_mapping(module, path, mapping):
    content = (json.dumps(mapping, indent=2, sort_keys=True) + "\n").encode("utf-8")
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        module.fail_json(msg="Cannot write mapping_file %s: directory %s does not exist." % (path, directory))
    if same_content(path, content):
        return
    try:
        write_file(os.path.abspath(path), content, mode=0o644, move=module.atomic_move)
    except (OSError, IOError) as exc:
        module.fail_json(msg="Cannot write mapping_file %s: %s." % (path, to_native(exc)))


def main():
    module = AnsibleModule(
        argument_spec=dict(
            store=dict(type="path", required=True),
            source_format=dict(type="str", choices=list(SOURCE_FORMATS), default="auto"),
            mirror=dict(type="str", required=True),
            namespace=dict(type="str"),
            authfile=dict(type="path", no_log=False),
            tag_policy=dict(type="str", choices=list(TAG_POLICIES), default="timestamp"),
            images=dict(type="list", elements="str", default=[]),
            parallel=dict(type="int", default=4),
            retries=dict(type="int", default=3),
            retry_delay=dict(type="float", default=2.0),
            keep_going=dict(type="bool", default=False),
            verify=dict(type="str", choices=["pushed", "all"], default="pushed"),
            tls_verify=dict(type="bool", default=True),
            cert_dir=dict(type="path"),
            mapping_file=dict(type="path"),
            skopeo_path=dict(type="path"),
        ),
        supports_check_mode=True,
    )
    params = module.params
    started = time.time()
    mirror = params["mirror"].strip().rstrip("/")
    namespace = (params["namespace"] or "").strip("/") or None
    _validate_mirror(module, mirror, namespace)
    if params["parallel"] < 1:
        module.fail_json(msg="Option parallel must be 1 or more, not %d." % params["parallel"])
    if params["retries"] < 0 or params["retry_delay"] < 0:
        module.fail_json(msg="Options retries and retry_delay must not be negative.")
    if params["authfile"] and not os.path.isfile(params["authfile"]):
        module.fail_json(msg="The authfile %s does not exist." % params["authfile"])
    if params["cert_dir"] and not os.path.isdir(params["cert_dir"]):
        module.fail_json(msg="The cert_dir %s is not a directory." % params["cert_dir"])
    if not params["tls_verify"]:
        module.warn("TLS verification of mirror %s is off (tls_verify=false): anyone on the path can read and change the images." % mirror)
    skopeo = params["skopeo_path"] or module.get_bin_path("skopeo", required=True)

    try:
        images, source_format = load_images(params["store"], params["source_format"])
        images = select_images(images, params["images"])
        primaries = plan_repositories(images, mirror, namespace)
    except UploadError as exc:
        module.fail_json(msg=to_native(exc))

    registry = Registry(skopeo, params["authfile"], params["tls_verify"], params["cert_dir"], runner=module_runner(module),
                        retries=params["retries"], retry_delay=params["retry_delay"], direct_reads=True)
    upload = Upload(registry, images, store=params["store"], parallel=params["parallel"], keep_going=params["keep_going"])

    def fail(msg, **extra):
        upload.finish()
        mapping = mapping_document(images)
        if params["mapping_file"] and not module.check_mode:
            _write_mapping(module, params["mapping_file"], mapping)
        failures = [image.error for image in sorted(primaries, key=lambda i: i.source) if image.status == "failed" and image.error]
        module.fail_json(msg=msg, mapping=mapping, summary=upload.summary(time.time() - started), failures=failures,
                         source_format=source_format, changed=any(image.status == "pushed" for image in images), **extra)

    to_push = upload.check_present()
    if upload.stopped:
        fail(upload.first_failure().error)
    try:
        assign_tags(to_push, params["tag_policy"], timestamp_stamp(started))
    except UploadError as exc:
        module.fail_json(msg=to_native(exc))

    if module.check_mode:
        for image in to_push:
            image.status = "pushed"
        upload.finish()
        module.exit_json(changed=bool(to_push), mapping=mapping_document(images), summary=planned_summary(images, to_push),
                         source_format=source_format)

    upload.push_all(to_push)
    missing = upload.verify(params["verify"])
    failed = [image for image in sorted(primaries, key=lambda i: i.source) if image.status == "failed"]
    if missing:
        fail("The mirror does not serve %d manifest(s) after the upload: %s." % (
            len(missing), ", ".join("%s@%s" % (image.repository, digest) for image, digest, dummy in missing)),
            missing_manifests=["%s@%s" % (image.repository, digest) for image, digest, dummy in missing])
    if failed:
        first = failed[0].error
        if len(failed) == 1:
            fail(first)
        fail("%d image(s) failed to upload (%s); the first: %s" % (len(failed), ", ".join(image.source for image in failed), first))

    upload.finish()
    mapping = mapping_document(images)
    if params["mapping_file"]:
        _write_mapping(module, params["mapping_file"], mapping)
    module.exit_json(changed=bool(to_push), mapping=mapping, summary=upload.summary(time.time() - started), source_format=source_format)


if __name__ == "__main__":
    main()
