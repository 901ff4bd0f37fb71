#!/usr/bin/python
# Copyright: airgap.microshift contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r"""
---
module: mirror_check
short_description: Check that a host resolves every image of a list through its mirror configuration
version_added: 0.1.0
description:
  - Resolves every image reference of O(images) by its original name (such as
    C(quay.io/openshift-release-dev/ocp-v4.0-art-dev@sha256:...)) with C(skopeo inspect --raw docker://<ref>)
    on the host, through the host's own containers configuration (C(registries.conf) and its drop-ins,
    C(certs.d), the system trust store) and optionally the CRI-O pull secret, as CRI-O will when
    MicroShift starts.
  - Checks that the manifest returned has the digest of the reference.
  - Runs the checks in parallel and retries network errors, HTTP 429 and 5xx answers with exponential
    back-off. Authentication, certificate and "manifest unknown" errors are final at once.
  - Fails listing every reference that does not resolve, each with the reason the mirror gave.
  - With O(digest_only=true) (a C(mirror-by-digest-only) mirror), references by tag are never sent to the
    mirror, so they are not checked but listed in RV(tag_refs); they fail the task unless
    O(fail_on_tag_refs=false).
  - On a host that can still reach the source registries, a reference may resolve from the source itself;
    on an air-gapped host, a success proves that the mirror serves the image and is trusted.
author:
  - airgap.microshift contributors (@airgap-microshift)
extends_documentation_fragment:
  - airgap.microshift.skopeo
  - airgap.microshift.attributes
  - airgap.microshift.attributes.actiongroup_skopeo
attributes:
  check_mode:
    support: full
    details: The module only reads; it runs the same checks in check mode.
  diff_mode:
    support: none
  idempotent:
    support: full
options:
  images:
    description:
      - The image references to resolve, by their original (source registry) names.
    type: list
    elements: str
    required: true
  registries_conf:
    description:
      - Use this C(registries.conf) file instead of C(/etc/containers/registries.conf) (the drop-ins of
        C(/etc/containers/registries.conf.d) are still read). Mostly for tests.
    type: path
  digest_only:
    description:
      - The mirror serves references by digest only (C(mirror-by-digest-only = true)), so references by tag are
        reported in RV(tag_refs) instead of being checked.
      - Set to V(false) when the mirror also serves tags; tag references are then checked like the others.
    type: bool
    default: true
  fail_on_tag_refs:
    description:
      - With O(digest_only=true), fail when O(images) holds references by tag, which can never be pulled
        through a digest-only mirror. V(false) only warns.
    type: bool
    default: true
  timeout:
    description:
      - Seconds one C(skopeo inspect) may take before it is stopped (C(--command-timeout)); V(0) for no limit.
    type: int
    default: 120
seealso:
  - module: airgap.microshift.registries_conf
"""

EXAMPLES = r"""
---
- name: Check that the host pulls every release image through the mirror
  airgap.microshift.mirror_check:
    images: "{{ image_list_images }}"
    authfile: /etc/crio/openshift-pull-secret

- name: Report references by tag without failing
  airgap.microshift.mirror_check:
    images:
      - quay.io/openshift-release-dev/ocp-v4.0-art-dev@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef
      - ghcr.io/example/app:v1
    fail_on_tag_refs: false
  register: mirror_result
"""

RETURN = r"""
served:
  description: The references that resolved, with the digest they were asked for.
  returned: always
  type: list
  elements: str
  sample: [quay.io/openshift-release-dev/ocp-v4.0-art-dev@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef]
not_served:
  description:
    - The references that did not resolve, each with the reason.
    - (Not named C(failed), which Ansible keeps for the task status.)
  returned: always
  type: list
  elements: dict
  contains:
    ref:
      description: The image reference.
      type: str
      returned: always
      sample: quay.io/openshift-release-dev/ocp-v4.0-art-dev@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef
    reason:
      description: Why it did not resolve.
      type: str
      returned: always
      sample: "the mirror does not serve it: manifest unknown: the image, tag or digest does not exist in the registry"
    attempts:
      description: How many times it was tried.
      type: int
      returned: always
      sample: 1
  sample:
    - ref: quay.io/openshift-release-dev/ocp-v4.0-art-dev@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef
      reason: "the mirror does not serve it: manifest unknown: the image, tag or digest does not exist in the registry"
      attempts: 1
tag_refs:
  description: The references by tag that a digest-only mirror never serves (not checked).
  returned: always
  type: list
  elements: str
  sample: [ghcr.io/example/app:v1]
retries:
  description: How many retries the transient errors took, in total.
  returned: always
  type: int
  sample: 0
"""

import os

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.airgap.microshift.plugins.module_utils import _skopeo
from ansible_collections.airgap.microshift.plugins.module_utils._mirror_check import MirrorCheck


def main():
    module = AnsibleModule(
        argument_spec=dict(
            _skopeo.argument_spec(retries=3, validate_certs=False),
            images=dict(type="list", elements="str", required=True),
            registries_conf=dict(type="path"),
            digest_only=dict(type="bool", default=True),
            fail_on_tag_refs=dict(type="bool", default=True),
            timeout=dict(type="int", default=120),
        ),
        supports_check_mode=True,
    )
    params = module.params
    problem = _skopeo.option_problem(params) or _skopeo.at_least("timeout", params["timeout"], 0)
    if not problem and params["registries_conf"] and not os.path.isfile(params["registries_conf"]):
        problem = "Option registries_conf names %s, which does not exist or is not a file." % params["registries_conf"]
    if problem:
        module.fail_json(msg=problem)
    try:
        binary = _skopeo.locate(params, module.get_bin_path)
    except _skopeo.OptionError as exc:
        module.fail_json(msg=str(exc))
    global_args = ["--registries-conf=%s" % params["registries_conf"]] if params["registries_conf"] else []
    if params["timeout"] > 0:
        global_args.append("--command-timeout=%ds" % params["timeout"])
    check = MirrorCheck(params["images"], _skopeo.Skopeo.from_params(binary, params, global_args=global_args),
                        _skopeo.registry_options(params), digest_only=params["digest_only"], parallel=params["parallel"]).run()
    result = check.result()
    failure, warning = check.problems(result, params["fail_on_tag_refs"])
    if warning:
        module.warn(warning)
    if failure:
        module.fail_json(msg=failure, **result)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
