#!/usr/bin/python
# Copyright: airgap.microshift contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r"""
---
module: image_load
short_description: Load a release's images into a host's container storage, without any registry
version_added: 0.1.0
description:
  - Puts every image of O(images) into the container storage of the host it runs on (the one CRI-O
    reads, C(/var/lib/containers/storage) by default), from an image store (see C(docs/store-format.md))
    or a transfer set (see C(docs/bundle-format.md)) that is on the host, so that MicroShift finds its
    images locally and never pulls. No registry, registries.conf drop-in, CA or pull secret is involved.
  - Digests are preserved and every image is named by its original reference, C(<repository>@sha256:<digest>),
    or C(<repository>:<tag>) for a reference by tag (the storage then resolves C(<repository>@sha256:<digest>)
    to it as well, by the digests it records); C(podman image exists) and
    C(skopeo inspect containers-storage:<reference>) then answer, and a pull of it needs no network.
  - Only the manifest of the host's architecture (O(architecture)) is loaded, with its config and layers.
    An image the storage already holds by digest is skipped. A layer the storage already holds (in an
    image of this or an earlier release) is neither read nor written again, and two images that add the
    same new layer are never loaded at the same time, so every layer is written once per host.
  - A transfer set is checked exactly as M(airgap.microshift.image_bundle) O(airgap.microshift.image_bundle#module:state=unpack) checks it, by the same
    code. Its signature is checked against O(trusted_keys) before anything else is read from the medium, then every
    file's presence and size (a file the set does not list is never opened), C(SHA256SUMS), and the set's
    C(store.json) and layouts against the signed manifest. Only the blobs the host needs are then read, each hashed
    before it is used, into O(staging). A blob the set holds whole in a file on the filesystem of O(staging) (a set
    copied onto the host's disk) is hashed in place and hard-linked there instead of copied; blobs on other
    filesystems (a mounted medium) are copied, so that skopeo reads them from the host's disk.
  - Before anything is written, the module checks that the source holds every blob it needs, and that the
    storage, the temporary directory of skopeo and O(staging) have room for what is missing; a filesystem
    without room fails naming its path and the bytes.
  - Afterwards every image of O(images) is read back through C(skopeo inspect --raw containers-storage:...)
    and must hash to its digest.
  - The storage is only ever read and written through skopeo (C(containers-storage:) transport), never by
    looking at its files.
author:
  - airgap.microshift contributors (@airgap-microshift)
requirements:
  - the Python package cryptography on the host, to check a transfer set's signature
extends_documentation_fragment:
  - airgap.microshift.skopeo
  - airgap.microshift.attributes
  - airgap.microshift.attributes.actiongroup_skopeo
  - airgap.microshift.attributes.files
attributes:
  check_mode:
    support: full
    details: Returns the plan (images to load, blobs and bytes, the blobs a store still lacks in RV(fetch)) and writes nothing.
  diff_mode:
    support: none
  idempotent:
    support: full
    details: Images already in the storage by digest are skipped; a second run reports no change.
  safe_file_operations:
    support: full
    details: The O(record) is written under a temporary name in its directory, fsynced and renamed into place.
options:
  src:
    description:
      - Where the images are, on the host. One image store directory (holding C(store.json)), or the
        volumes of a transfer set (each path a C(vol-NNN) directory or a directory holding some, for
        example the mount points of the media).
    type: list
    elements: path
    required: true
  trusted_keys:
    description:
      - With a transfer set as O(src), the public keys (SubjectPublicKeyInfo PEM files on the host; a file may hold
        several) the set may be signed with, as for M(airgap.microshift.image_bundle). Several keys are accepted at
        once, for a key rotation. See C(docs/signing.md).
      - Required with a transfer set unless O(allow_unsigned=true). An image store (O(src) holding C(store.json), or
        O(index)) carries no signature; it was checked when its set was unpacked.
    type: list
    elements: path
    default: []
  allow_unsigned:
    description:
      - With a transfer set as O(src), accept a set that is not signed, or check none when no O(trusted_keys) are
        given, with a warning. Only for sets whose origin is checked some other way. A signature that does not
        verify against a given trusted key is always refused.
    type: bool
    default: false
  images:
    description:
      - The original references of the images to load, as listed by M(airgap.microshift.release_images)
        (the host's release, architecture and components).
    type: list
    elements: str
    required: true
  index:
    description:
      - The store index (the content of the C(store.json)) of a store that is not on the host, as JSON
        text. O(src) is then the directory the store's blobs are copied into (C(blobs/sha256/<hex>)). In
        check mode the module returns in RV(fetch) the blobs that directory still lacks, so that only those
        are carried to the host; outside check mode every blob the load needs must be there.
    type: str
  architecture:
    description:
      - The architecture whose manifests are loaded (V(amd64), V(arm64), or C(uname -m) names such as
        V(x86_64) and V(aarch64)). Defaults to the host's.
    type: str
  graphroot:
    description:
      - The storage's root directory. Defaults to the one of the host's C(storage.conf)
        (C(/etc/containers/storage.conf)), which is the one CRI-O reads unless its own configuration says otherwise.
    type: path
  runroot:
    description: The storage's run directory. Defaults to the one of C(storage.conf).
    type: path
  driver:
    description: The storage driver (V(overlay), V(vfs)...). Defaults to the one of C(storage.conf).
    type: str
  staging:
    description:
      - With a transfer set as O(src), the directory the blobs to load are joined into (a partial image
        store), each hashed on the way. The module owns it; it is emptied before the blobs are joined, removed once
        the images are loaded, and after a failure.
      - On the filesystem of the transfer set, it costs no space and no copy (the set's files are hard-linked into
        it); put it there when the set was copied onto the host.
    type: path
    default: /var/lib/airgap-microshift/host-images-staging
  record:
    description:
      - A file recording which images this module loaded into which storage, so that O(prune) removes
        only those. Empty to keep no record (then O(prune) has nothing to remove).
    type: path
    default: /var/lib/airgap-microshift/host-images.json
  prune:
    description:
      - Also remove from the storage the images this module loaded earlier (see O(record)) that no
        reference of O(images) names any more. Never removes an image it did not load.
    type: bool
    default: false
  parallel:
    description:
      - How many images are loaded (and read back) at the same time. Two images that add the same new layer
        never load at the same time whatever this says.
    type: int
    default: 2
  retries:
    description:
      - How many times in a row a skopeo run against the storage that failed for a transient reason is retried.
        A load reads and writes only local files, so none is retried by default.
    type: int
    default: 0
  authfile:
    description:
      - Not used (nothing is read from a registry); accepted so that C(module_defaults) for
        C(group/airgap.microshift.skopeo) apply to this module as well.
    type: path
  cert_dir:
    description:
      - Not used (nothing is read from a registry); accepted so that C(module_defaults) for
        C(group/airgap.microshift.skopeo) apply to this module as well.
    type: path
seealso:
  - module: airgap.microshift.image_bundle
  - module: airgap.microshift.release_images
notes:
  - The unpacked size of a layer, for the free-space check, is read from the layer itself (the trailer
    of a gzip layer, the header of a zstd one). A layer that is not on the host yet (with O(index)) counts
    three times its compressed size; the check is made again with the real sizes before the storage is written.
  - A delta transfer set carries only new blobs; the layers it does not carry must be in images the
    storage already holds (the release it builds on), otherwise the module fails naming the blob.
"""

EXAMPLES = r"""
---
- name: Load the release from the medium mounted on the host, its signature checked first
  airgap.microshift.image_load:
    src: [/run/media/admin/AIRGAP]
    images: "{{ image_list_images }}"
    trusted_keys: [/etc/airgap-microshift/transfer-trusted.pub]
  register: host_images_load

- name: Plan which blobs of the bastion's store this host lacks (nothing is written)
  airgap.microshift.image_load:
    src: [/var/lib/airgap-microshift/host-images-store]
    index: "{{ store_index.content | b64decode }}"
    images: "{{ image_list_images }}"
  check_mode: true
  register: host_images_plan

- name: Load into a storage of its own, with the vfs driver, removing images of releases no longer listed
  airgap.microshift.image_load:
    src: [/srv/store]
    images: "{{ image_list_images }}"
    graphroot: /srv/containers/storage
    runroot: /run/srv-containers
    driver: vfs
    prune: true
"""

RETURN = r"""
loaded:
  description: The references loaded by this run (in check mode, those that would be).
  returned: always
  type: list
  elements: str
  sample: ["quay.io/openshift-release-dev/ocp-v4.0-art-dev@sha256:0d6e1e8b83e4f1f7b7b1ed9d7b5f0f5a1ac1c3f5f2d4e6a7b8c9d0e1f2a3b4c5"]
present:
  description: The references the storage already held by digest (skipped).
  returned: always
  type: list
  elements: str
  sample: []
pruned:
  description: The references removed because of O(prune).
  returned: always
  type: list
  elements: str
  sample: []
images:
  description: How many images O(images) names.
  returned: always
  type: int
  sample: 57
blobs:
  description: How many blobs the images to load read from the source (manifests, configs, and the layers the storage does not hold).
  returned: always
  type: int
  sample: 212
bytes:
  description: The bytes of those blobs, compressed as stored (what has to reach the host for this load).
  returned: always
  type: int
  sample: 812345678
unique_bytes:
  description: The bytes of every blob of every image of O(images) for this architecture, each counted once.
  returned: always
  type: int
  sample: 823456789
fetch:
  description: The blobs (paths relative to the store, C(blobs/sha256/<hex>)) the store given as O(src) lacks.
  returned: always
  type: list
  elements: str
  sample: ["blobs/sha256/5f4b0e1c4a7b1c0d9e8f7a6b5c4d3e2f1a0b9c8d7e6f5a4b3c2d1e0f9a8b7c6d"]
fetch_bytes:
  description: The bytes of RV(fetch).
  returned: always
  type: int
  sample: 812345678
staging_bytes:
  description: With a transfer set, the bytes to copy into O(staging) (blobs hard-linked from the set's own files are not counted).
  returned: always
  type: int
  sample: 0
storage_bytes:
  description: The estimate of what the storage writes (layers unpacked; with the vfs driver a layer holds the whole tree below it).
  returned: always
  type: int
  sample: 2123456789
temp_bytes:
  description: The largest compressed size of the new layers of one image (skopeo keeps them in its temporary directory while it loads).
  returned: always
  type: int
  sample: 312345678
bytes_staged:
  description: Bytes this run copied into O(staging).
  returned: not check mode
  type: int
  sample: 0
bytes_linked:
  description: Bytes of blobs this run hashed in place in the transfer set and hard-linked into O(staging) instead of copying.
  returned: not check mode
  type: int
  sample: 823495188
verified:
  description: How many images were read back from the storage and matched their digests.
  returned: not check mode
  type: int
  sample: 57
timings:
  description:
    - Seconds spent asking the storage what it holds (V(query)), checking or joining the blobs (V(prepare)),
      loading (V(load)) and reading every image back (V(verify)).
  returned: not check mode
  type: dict
  sample: {"query": 0.9, "prepare": 1.2, "load": 38.1, "verify": 1.5}
seconds:
  description: Wall time of the module.
  returned: always
  type: float
  sample: 41.7
platform:
  description: The platform whose manifests are loaded.
  returned: always
  type: str
  sample: linux/amd64
source:
  description:
    - What was read (kind V(store) or V(transfer_set), its path; for a set its bundle id, release, whether it is a
      delta, and in C(signed_by) the fingerprint of the trusted key that signed it, null when unsigned or unchecked).
  returned: always
  type: dict
  sample: {"kind": "transfer_set", "path": "/run/media/admin/AIRGAP", "bundle_id": "sha256:...", "release": "4.20.1", "delta": false,
           "signed_by": "sha256:3f1c..."}
storage:
  description: The storage written (graphroot, runroot, driver, and whether they come from C(storage.conf)).
  returned: always
  type: dict
  sample: {"graphroot": "/var/lib/containers/storage", "runroot": "/run/containers/storage", "driver": "overlay", "from_storage_conf": true}
"""

import platform

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.airgap.microshift.plugins.module_utils import _skopeo
from ansible_collections.airgap.microshift.plugins.module_utils._containers_storage import (
    Storage,
    StorageError,
    StorageTool,
    oci_architecture,
)
from ansible_collections.airgap.microshift.plugins.module_utils._files import ensure_file
from ansible_collections.airgap.microshift.plugins.module_utils._load import LoadError, Loader, open_source


def main():
    argument_spec = _skopeo.argument_spec(retries=0, validate_certs=False)
    argument_spec["parallel"]["default"] = 2
    argument_spec.update(
        src=dict(type="list", elements="path", required=True),
        images=dict(type="list", elements="str", required=True),
        index=dict(type="str"),
        architecture=dict(type="str"),
        graphroot=dict(type="path"),
        runroot=dict(type="path"),
        driver=dict(type="str"),
        staging=dict(type="path", default="/var/lib/airgap-microshift/host-images-staging"),
        record=dict(type="path", default="/var/lib/airgap-microshift/host-images.json"),
        prune=dict(type="bool", default=False),
        trusted_keys=dict(type="list", elements="path", default=[], no_log=False),
        allow_unsigned=dict(type="bool", default=False),
    )
    module = AnsibleModule(argument_spec=argument_spec, supports_check_mode=True)
    params = module.params
    problem = _skopeo.option_problem(params)
    if not problem and not params["src"]:
        problem = "Option src must name at least one image store or transfer set directory."
    if problem:
        module.fail_json(msg=problem)
    try:
        binary = _skopeo.locate(params, module.get_bin_path)
    except _skopeo.OptionError as exc:
        module.fail_json(msg=str(exc))
    architecture = oci_architecture(params["architecture"] or platform.machine())

    def write_record(path, data):
        ensure_file(module, path, data, what="record", default_mode=0o644)

    try:
        storage = Storage(params["graphroot"], params["runroot"], params["driver"])
        source = open_source(params["src"], params["staging"], params["index"], trusted_keys=params["trusted_keys"],
                             allow_unsigned=params["allow_unsigned"])
        for warning in source.warnings:
            module.warn(warning)
        tool = StorageTool(_skopeo.Skopeo.from_params(binary, params), storage)
        loader = Loader(tool, source, params["images"], architecture, parallel=params["parallel"], prune=params["prune"],
                        record_path=params["record"] or None, check_mode=module.check_mode, write_file=write_record)
        result = loader.run()
    except LoadError as exc:
        module.fail_json(msg=str(exc), **exc.details)
    except StorageError as exc:
        module.fail_json(msg=str(exc))
    except OSError as exc:
        module.fail_json(msg="Loading failed on %s: %s." % (exc.filename or "a file", exc.strerror or exc))
    module.exit_json(**result)


if __name__ == "__main__":
    main()
