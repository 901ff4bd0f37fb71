#!/usr/bin/python
# Copyright: airgap.microshift contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r"""
---
module: release_images
short_description: List the container images a MicroShift release needs
version_added: 0.1.0
description:
  - Reads MicroShift's release files (C(release-<arch>.json) for the core and
    C(release-<component>-<arch>.json) for optional components) from directories, single files
    or C(microshift-*-release-info) RPM packages that need not be installed.
  - Returns the sorted, de-duplicated list of image references of the selected architectures
    and components, with where each reference comes from, and optionally writes that list to a file.
  - RPM packages are read in Python. gzip, xz and bzip2 payloads need nothing else; a zstd payload
    needs the C(zstandard) Python package, the C(zstd) command or C(rpm2cpio).
  - Warns about references that name a tag and no digest (a mirror configured with
    C(mirror-by-digest-only = true) can never serve them) and about registries other than
    C(quay.io), C(registry.redhat.io) and C(registry.access.redhat.com).
author:
  - airgap.microshift contributors (@airgap-microshift)
options:
  path:
    description:
      - Directories of release files and/or release files (named C(release-<arch>.json) or
        C(release-<component>-<arch>.json)).
      - When neither O(path) nor O(rpm) is given, V(/usr/share/microshift/release) (where the
        C(microshift-release-info) RPMs install them) is read.
    type: list
    elements: path
  rpm:
    description:
      - C(microshift-*-release-info) RPM files to read the release files from, without installing them.
      - Only members under C(/usr/share/microshift/release/) named C(release-*.json) are read.
    type: list
    elements: path
  arch:
    description:
      - Architectures to list images for. V(amd64) and V(arm64) are accepted as aliases of
        V(x86_64) and V(aarch64).
      - Defaults to the architecture of the host that runs the module.
    type: list
    elements: str
  components:
    description:
      - Components to list images for. V(core) is C(release-<arch>.json); the others are
        C(release-<component>-<arch>.json).
      - V(all) takes every component present in the sources for each architecture.
      - A component or architecture with no file in the sources is an error that lists what exists.
      - Known components are V(core), V(olm), V(multus), V(gateway-api), V(cert-manager), V(sriov),
        V(metrics-server), V(node-exporter), V(kube-state-metrics) and V(ai-model-serving).
    type: list
    elements: str
    default: [core]
  query:
    description:
      - A JMESPath expression applied to each release document, which must yield a list of strings
        or an object whose values are strings (the image references).
      - By default every value of the C(images) object is taken (the same as C(jq -r '.images | .[]')).
      - Needs the C(jmespath) Python library.
    type: str
  extra_images:
    description:
      - Image references to add to the list (for example the images of your own workloads).
    type: list
    elements: str
    default: []
  extra_images_file:
    description:
      - A text file of image references to add, one a line. Blank lines are ignored and C(#) starts a comment.
    type: path
  dest:
    description:
      - Write the list to this file, one reference a line, atomically.
      - The task reports a change only when the file's content (or its attributes) changes.
    type: path
extends_documentation_fragment:
  - ansible.builtin.files
  - airgap.microshift.attributes
  - airgap.microshift.attributes.files
attributes:
  check_mode:
    support: full
    details: Computes the list and whether O(dest) would change, without writing it.
  diff_mode:
    support: full
    details: Shows the difference of the O(dest) file.
  idempotent:
    support: full
    details: Reading release files changes nothing; O(dest) is only written when its content differs.
  safe_file_operations:
    support: full
    details: O(dest) is written to a temporary file in its directory, then moved into place.
requirements:
  - jmespath (only with O(query))
  - zstandard, the zstd command or rpm2cpio (only for RPM packages with a zstd payload)
seealso:
  - module: ansible.builtin.copy
notes:
  - Every reference is validated as a fully qualified image reference (registry, repository,
    optional tag, optional sha256 digest).
"""

EXAMPLES = r"""
---
- name: List the core images of the installed MicroShift release for this host's architecture
  airgap.microshift.release_images:
  register: release

- name: List every component of two architectures from a release-info RPM, into a file
  airgap.microshift.release_images:
    rpm:
      - /srv/rpms/microshift-release-info-4.20.0-1.el9.noarch.rpm
    arch: [x86_64, aarch64]
    components: [all]
    dest: /srv/mirror/images.txt
    mode: "0644"

- name: List core and OLM images from a directory of release files, plus the images of a workload
  airgap.microshift.release_images:
    path:
      - /srv/microshift/release
    arch: [amd64]
    components: [core, olm]
    extra_images:
      - quay.io/example/app@sha256:0f7ab1ee2a45d1e3c8e7a0d9b1f6e8a4c2b3d5f7a9c1e3b5d7f9a1c3e5b7d9f1
    extra_images_file: /srv/mirror/workload-images.txt

- name: Take only the images kept in registry.redhat.io
  airgap.microshift.release_images:
    path: [/srv/microshift/release]
    arch: [x86_64]
    query: "values(images)[?starts_with(@, 'registry.redhat.io/')]"
"""

RETURN = r"""
images:
  description: The sorted, de-duplicated image references.
  returned: success
  type: list
  elements: str
  sample:
    - quay.io/openshift-release-dev/ocp-v4.0-art-dev@sha256:0b3502e2298e86afec259e9ca44b454e029ef065f99ce54014740051308e4883
    - registry.redhat.io/lvms4/lvms-rhel9-operator@sha256:10c9ccab4f2857d113b55e12cac29aed0dc97d5a4e29ed2e4ea0f77551ee55f8
entries:
  description:
    - One entry per reference, sorted by reference, with where it comes from.
    - RPM members are named C(<rpm file name>:<member path>).
    - References from O(extra_images) name C(extra_images) in RV(entries[].files); those from
      O(extra_images_file) name that file.
  returned: success
  type: list
  elements: dict
  contains:
    ref:
      description: The image reference.
      type: str
      returned: success
      sample: registry.redhat.io/lvms4/lvms-rhel9-operator@sha256:10c9ccab4f2857d113b55e12cac29aed0dc97d5a4e29ed2e4ea0f77551ee55f8
    image_keys:
      description: The keys of the C(images) object that name the reference, sorted.
      type: list
      elements: str
      returned: success
      sample: [lvms_operator]
    components:
      description: The components whose release files name the reference, sorted.
      type: list
      elements: str
      returned: success
      sample: [core]
    arches:
      description: The architectures whose release files name the reference, sorted.
      type: list
      elements: str
      returned: success
      sample: [aarch64, x86_64]
    files:
      description: The release files that name the reference, sorted.
      type: list
      elements: str
      returned: success
      sample: [/usr/share/microshift/release/release-aarch64.json, /usr/share/microshift/release/release-x86_64.json]
    releases:
      description: The release versions (C(release.base)) of those files, sorted.
      type: list
      elements: str
      returned: success
      sample: [4.20.0-202510201126.p0.g7b3c2a1.assembly.4.20.0.el9]
  sample:
    - ref: registry.redhat.io/lvms4/lvms-rhel9-operator@sha256:10c9ccab4f2857d113b55e12cac29aed0dc97d5a4e29ed2e4ea0f77551ee55f8
      image_keys: [lvms_operator]
      components: [core]
      arches: [x86_64]
      files: [/usr/share/microshift/release/release-x86_64.json]
      releases: [4.20.0]
releases:
  description:
    - The release version (C(release.base)) of each component read.
    - When the sources hold several versions of a component, they are joined by C(", ").
  returned: success
  type: dict
  sample:
    core: 4.20.0-202510201126.p0.g7b3c2a1.assembly.4.20.0.el9
    olm: 4.20.0-202510201126.p0.g7b3c2a1.assembly.4.20.0.el9
files:
  description: The release files read, in the order they were read.
  returned: success
  type: list
  elements: str
  sample:
    - /usr/share/microshift/release/release-x86_64.json
    - microshift-release-info-4.20.0-1.el9.noarch.rpm:./usr/share/microshift/release/release-olm-x86_64.json
tag_refs:
  description: The references that name a tag and no digest, sorted; a digest-only mirror cannot serve them.
  returned: success
  type: list
  elements: str
  sample: [quay.io/opendatahub/vllm:fast]
registries:
  description: Every registry host the references name, sorted.
  returned: success
  type: list
  elements: str
  sample: [quay.io, registry.redhat.io]
dest:
  description: The file the list was written to.
  returned: when O(dest) is set
  type: str
  sample: /srv/mirror/images.txt
"""

import os
import platform

from ansible.module_utils.basic import AnsibleModule, missing_required_lib
from ansible.module_utils.common.text.converters import to_bytes, to_native

from ansible_collections.airgap.microshift.plugins.module_utils._release import (
    JMESPATH_IMPORT_ERROR,
    ReleaseError,
    list_images,
    render_list,
    warnings_for,
)
from ansible_collections.airgap.microshift.plugins.module_utils._files import ensure_file
from ansible_collections.airgap.microshift.plugins.module_utils._rpm import CommandRunner, spawn_process


def _runner(module):
    # Decompressors are streamed (spawn_process), never buffered whole like run_command's output.
    return CommandRunner(which=module.get_bin_path, spawn=spawn_process)


def _read_text(path):
    try:
        with open(path, "rb") as handle:
            return handle.read().decode("utf-8", "replace")
    except FileNotFoundError:
        return None


def write_list(module, dest, content):
    """Write ``content`` to ``dest`` when it differs; return ``(changed, diff)``."""
    try:
        before = None if os.path.isdir(dest) else _read_text(dest)
    except OSError as exc:
        module.fail_json(msg="dest %s cannot be read: %s." % (dest, to_native(exc.strerror or exc)))
    diff = {"before_header": dest, "after_header": dest, "before": before or "", "after": content}
    return ensure_file(module, dest, to_bytes(content), what="dest"), diff


def main():
    module = AnsibleModule(
        argument_spec=dict(
            path=dict(type="list", elements="path"),
            rpm=dict(type="list", elements="path"),
            arch=dict(type="list", elements="str"),
            components=dict(type="list", elements="str", default=["core"]),
            query=dict(type="str"),
            extra_images=dict(type="list", elements="str", default=[]),
            extra_images_file=dict(type="path"),
            dest=dict(type="path"),
        ),
        add_file_common_args=True,
        supports_check_mode=True,
    )
    params = module.params
    if params["query"] and JMESPATH_IMPORT_ERROR is not None:
        module.fail_json(msg=missing_required_lib("jmespath", reason="for the query option"), exception=JMESPATH_IMPORT_ERROR)
    arches = params["arch"] or [platform.machine()]

    try:
        result = list_images(
            paths=params["path"],
            rpms=params["rpm"],
            arches=arches,
            components=params["components"],
            query=params["query"],
            extra_images=params["extra_images"],
            extra_images_file=params["extra_images_file"],
            runner=_runner(module),
        )
    except ReleaseError as exc:
        module.fail_json(msg=to_native(exc))

    for message in warnings_for(result):
        module.warn(message)

    changed = False
    if params["dest"]:
        changed, diff = write_list(module, params["dest"], render_list(result["images"]))
        result["dest"] = params["dest"]
        if module._diff:
            result["diff"] = diff
    module.exit_json(changed=changed, **result)


if __name__ == "__main__":
    main()
