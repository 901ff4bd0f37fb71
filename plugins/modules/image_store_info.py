#!/usr/bin/python
# Copyright: airgap.microshift contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r"""
---
module: image_store_info
short_description: Tell which images an image store holds complete
version_added: 0.1.0
description:
  - Reads an image store (made by M(airgap.microshift.image_download); its format is described in
    the collection's C(docs/store-format.md)) and tells, for a list of image references or for
    every image it records, which are complete and which are missing.
  - An image is complete when the store index records it, its layout names its digest and every one
    of its blobs (manifests, configs, layers) is in place with its size. No network access; nothing
    is written.
  - With O(checksum=true) the sha256 of every blob of the complete images is computed too, and an
    image with a blob that does not hash to its digest is reported as corrupt (and not complete).
author:
  - airgap.microshift contributors (@airgap-microshift)
extends_documentation_fragment:
  - airgap.microshift.attributes
attributes:
  check_mode:
    support: full
    details: The module only reads; check mode changes nothing in what it does.
  diff_mode:
    support: none
  idempotent:
    support: full
options:
  store:
    description:
      - The image store directory. A store that does not exist yet holds no image (every image listed is missing).
    type: path
    required: true
  images:
    description:
      - The image references to look for, as given to M(airgap.microshift.image_download). Duplicates are ignored.
      - When empty, every image the store index records.
    type: list
    elements: str
    default: []
  checksum:
    description:
      - Also compute the sha256 of every blob of the complete images (reads every byte of them).
    type: bool
    default: false
seealso:
  - module: airgap.microshift.image_download
  - module: airgap.microshift.image_bundle
"""

EXAMPLES = r"""
---
- name: Find what the store still misses of the release
  airgap.microshift.image_store_info:
    store: /srv/microshift-images
    images: "{{ image_list_images }}"
  register: store_info

- name: Stop when the store is not ready to be carried across the gap
  ansible.builtin.assert:
    that: store_info.missing | length == 0
    fail_msg: "The store misses {{ store_info.missing | length }} image(s), for example {{ store_info.missing | first | default('') }}"

- name: Check every byte of every image the store records
  airgap.microshift.image_store_info:
    store: /srv/microshift-images
    checksum: true
  register: store_check
"""

RETURN = r"""
images:
  description: One entry per image, in the order given (or in the index's order when O(images) is empty).
  returned: always
  type: list
  elements: dict
  contains:
    ref:
      description: The reference.
      type: str
      sample: quay.io/example/app@sha256:0d6e1e8b83e4f1f7b7b1ed9d7b5f0f5a1ac1c3f5f2d4e6a7b8c9d0e1f2a3b4c5
    status:
      description:
        - V(complete); V(missing) (not recorded); V(incomplete) (recorded but a blob or its layout is
          missing or has another size); V(corrupt) (with O(checksum), a blob does not hash to its digest).
      type: str
      sample: complete
    digest:
      description: The digest the store recorded for the image (null when not recorded).
      type: str
      sample: sha256:0d6e1e8b83e4f1f7b7b1ed9d7b5f0f5a1ac1c3f5f2d4e6a7b8c9d0e1f2a3b4c5
    size:
      description: Logical size of the image in bytes (0 when not recorded).
      type: int
      sample: 123456789
    problem:
      description: What is wrong with an incomplete or corrupt image, naming the blob; null otherwise.
      type: str
      sample: "blob sha256:5f4b... is missing"
    signatures:
      description:
        - How many of the image's manifests (the index and each per-architecture manifest) the store holds a
          sigstore signature attachment for, and how many were unsigned at the source; null when the image's
          signatures were never looked up (or the image is not recorded).
      type: dict
      sample: {signed: 3, unsigned: 0}
      version_added: 0.1.0
complete:
  description: The references that are complete.
  returned: always
  type: list
  elements: str
  sample: ["quay.io/example/app@sha256:0d6e1e8b83e4f1f7b7b1ed9d7b5f0f5a1ac1c3f5f2d4e6a7b8c9d0e1f2a3b4c5"]
missing:
  description: The references that are not complete (missing, incomplete or corrupt).
  returned: always
  type: list
  elements: str
  sample: []
summary:
  description:
    - Counts, and the sizes of the complete images. C(unique_bytes) counts every blob they share once;
      C(logical_bytes) counts each image whole.
    - C(signed_manifests) and C(unsigned_manifests) count the manifests of the complete images with and without
      a signature attachment (those whose signatures were looked up).
  returned: always
  type: dict
  sample: {images: 57, complete: 57, missing: 0, logical_bytes: 25777411211, unique_bytes: 1646962297, blobs: 447, dedup_ratio: 15.651,
           signed_manifests: 108, unsigned_manifests: 63}
signatures_not_looked_up:
  description: The complete images whose signatures were never looked up (stored before signatures were fetched).
  returned: always
  type: list
  elements: str
  sample: []
  version_added: 0.1.0
store_exists:
  description: Whether the store directory exists.
  returned: always
  type: bool
  sample: true
"""

import os

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.airgap.microshift.plugins.module_utils import _store as store_mod


def main():
    module = AnsibleModule(
        argument_spec=dict(
            store=dict(type="path", required=True),
            images=dict(type="list", elements="str", default=[]),
            checksum=dict(type="bool", default=False),
        ),
        supports_check_mode=True,
    )
    store = module.params["store"]
    if os.path.exists(store) and not os.path.isdir(store):
        module.fail_json(msg="store %s exists and is not a directory" % store)
    exists = os.path.isdir(store)
    try:
        index = store_mod.read_index(store) if exists else store_mod.empty_index()
    except store_mod.StoreError as exc:
        module.fail_json(msg="store %s: %s" % (store, exc))
    refs = []
    for ref in module.params["images"] or sorted(index["images"]):
        if ref not in refs:
            refs.append(ref)
    images = [store_mod.image_status(store, index, ref, checksum=module.params["checksum"]) for ref in refs]
    for image in images:
        entry = index["images"].get(image["ref"])
        image["signatures"] = store_mod.signature_summary(entry) if entry else None
    complete = [image["ref"] for image in images if image["status"] == "complete"]
    unique = {}
    logical = 0
    for ref in complete:
        unique.update(store_mod.image_blobs(index["images"][ref]))
        logical += index["images"][ref].get("size", 0)
    unique_bytes = sum(unique.values())
    summary = {
        "images": len(images),
        "complete": len(complete),
        "missing": len(images) - len(complete),
        "logical_bytes": logical,
        "unique_bytes": unique_bytes,
        "blobs": len(unique),
        "dedup_ratio": round(float(logical) / unique_bytes, 3) if unique_bytes else 1.0,
        "signed_manifests": sum((image["signatures"] or {}).get("signed", 0) for image in images if image["ref"] in complete),
        "unsigned_manifests": sum((image["signatures"] or {}).get("unsigned", 0) for image in images if image["ref"] in complete),
    }
    module.exit_json(changed=False, images=images, complete=complete,
                     missing=[image["ref"] for image in images if image["status"] != "complete"],
                     signatures_not_looked_up=[image["ref"] for image in images if image["status"] == "complete" and image["signatures"] is None],
                     summary=summary, store_exists=exists)


if __name__ == "__main__":
    main()
