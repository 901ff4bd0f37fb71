#!/usr/bin/python
# Copyright: airgap.microshift contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r"""
---
module: signature_check
short_description: Check that a host's own signature policy accepts every image of a list, through its mirror
version_added: 0.1.0
description:
  - Evaluates the host's signature policy (C(/etc/containers/policy.json)) for every image of O(images),
    by its original reference, the way the host's podman, skopeo and CRI-O do when they pull it. A
    C(skopeo inspect) never evaluates the policy, so a mirror that serves an image but not its signature
    passes M(airgap.microshift.mirror_check) and still fails every pull on a host that enforces signatures.
  - For each image, it finds the policy's requirements for its reference (the most specific scope), the
    source the host reads it from (C(registries.conf) and its drop-ins, mirrors first), the manifest of
    the host's architecture for a multi-architecture image (what a pull checks), and that manifest's
    sigstore attachment from the same source, when C(registries.d) enables C(use-sigstore-attachments)
    for the repository read (the mirror's). It then checks the signatures in Python, with the keys the
    policy names; one must verify, name that manifest's digest, and satisfy the policy's
    C(signedIdentity) rule.
  - Registries are read over HTTPS with the host's trust (the system trust store and
    C(/etc/containers/certs.d/<registry>)) and the credentials of O(authfile).
  - Fails listing every image the policy would refuse, each with the reason in the containers tools'
    own words (such as C(A signature was required, but no signature exists)).
  - Requirements it cannot check (C(signedBy) GPG signatures, C(sigstoreSigned) with Fulcio, a PKI or
    Rekor) are reported in RV(unchecked) with a warning, not guessed.
author:
  - airgap.microshift contributors (@airgap-microshift)
requirements:
  - the Python package cryptography on the host (python3-cryptography) when its policy requires signatures
extends_documentation_fragment:
  - airgap.microshift.attributes
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
    description: The image references to check, by their original (source registry) names.
    type: list
    elements: str
    required: true
  authfile:
    description:
      - The credentials of the registries (a containers auth file), such as the CRI-O pull secret
        C(/etc/crio/openshift-pull-secret). Without it, registries are read anonymously.
    type: path
  policy:
    description: The signature policy.
    type: path
    default: /etc/containers/policy.json
  registries_conf:
    description: The main C(registries.conf); its drop-ins are read from O(registries_conf_d).
    type: path
    default: /etc/containers/registries.conf
  registries_conf_d:
    description: The directory of C(registries.conf) drop-ins (C(*.conf), in name order).
    type: path
    default: /etc/containers/registries.conf.d
  registries_d:
    description: The C(registries.d) directory (C(*.yaml)).
    type: path
    default: /etc/containers/registries.d
  cert_dir:
    description: A directory of C(*.crt) CA files to trust for every registry, instead of C(/etc/containers/certs.d/<registry>).
    type: path
  architecture:
    description:
      - The architecture whose manifest is checked in a multi-architecture image, as Ansible or Go
        names it (C(x86_64) or C(amd64), C(aarch64) or C(arm64)). Default is the host's.
    type: str
  parallel:
    description: How many images are checked at the same time.
    type: int
    default: 4
  fail_on_unchecked:
    description: Fail, rather than warn, when the policy requires signatures this module cannot check.
    type: bool
    default: false
seealso:
  - module: airgap.microshift.containers_policy
  - module: airgap.microshift.registries_d
  - module: airgap.microshift.mirror_check
"""

EXAMPLES = r"""
---
- name: Check that the host's signature policy accepts every release image from the mirror
  airgap.microshift.signature_check:
    images: "{{ image_list_images }}"
    authfile: /etc/crio/openshift-pull-secret
"""

RETURN = r"""
accepted:
  description: The images the policy accepts.
  returned: always
  type: list
  elements: str
  sample: [quay.io/openshift-release-dev/ocp-v4.0-art-dev@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef]
rejected:
  description: The images the policy refuses, each with the reason, the scope that decided and where it was read.
  returned: always
  type: list
  elements: dict
  sample:
    - ref: quay.io/openshift-release-dev/ocp-v4.0-art-dev@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef
      reason: A signature was required, but no signature exists
      scope: quay.io/openshift-release-dev
      source: mirror.example.com:8443/openshift-release-dev/ocp-v4.0-art-dev
      manifest: sha256:89abcdef0123456789abcdef0123456789abcdef0123456789abcdef01234567
unchecked:
  description: The images whose requirements this module cannot check, with the reason.
  returned: always
  type: list
  elements: dict
  sample: []
results:
  description: The verdict of every image (C(accepted), C(rejected) or C(unchecked)) with its details.
  returned: always
  type: list
  elements: dict
  sample:
    - ref: quay.io/openshift-release-dev/ocp-v4.0-art-dev@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef
      verdict: accepted
      reason: null
      scope: quay.io/openshift-release-dev
      source: mirror.example.com:8443/openshift-release-dev/ocp-v4.0-art-dev
      manifest: sha256:89abcdef0123456789abcdef0123456789abcdef0123456789abcdef01234567
      requirement: sigstoreSigned
"""

import platform

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.airgap.microshift.plugins.module_utils import _image_trust


def main():
    module = AnsibleModule(
        argument_spec=dict(
            images=dict(type="list", elements="str", required=True),
            authfile=dict(type="path", no_log=False),
            policy=dict(type="path", default="/etc/containers/policy.json"),
            registries_conf=dict(type="path", default="/etc/containers/registries.conf"),
            registries_conf_d=dict(type="path", default="/etc/containers/registries.conf.d"),
            registries_d=dict(type="path", default="/etc/containers/registries.d"),
            cert_dir=dict(type="path"),
            architecture=dict(type="str"),
            parallel=dict(type="int", default=4),
            fail_on_unchecked=dict(type="bool", default=False),
        ),
        supports_check_mode=True,
    )
    problem = _image_trust.request_problem(module.params)
    if problem:
        module.fail_json(msg=problem)
    try:
        failure, warning, outcome = _image_trust.check_images(module.params, platform.machine())
    except _image_trust.HostConfigError as exc:
        module.fail_json(msg=str(exc))
    if warning:
        module.warn(warning)
    if failure:
        module.fail_json(msg=failure, **outcome)
    module.exit_json(**outcome)


if __name__ == "__main__":
    main()
