#!/usr/bin/python
# Copyright: airgap.microshift contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r"""
---
module: containers_policy
short_description: Require sigstore signatures for registry scopes in a host's containers policy.json
version_added: 0.1.0
description:
  - Merges C(sigstoreSigned) requirements into the host's signature policy (containers-policy.json(5),
    C(/etc/containers/policy.json)), which podman, skopeo and CRI-O enforce on every pull.
  - Each scope of O(scopes) (a registry, a repository namespace or a repository, by its original name
    such as C(quay.io/openshift-release-dev)) then requires a signature made by one of O(keys), whose
    identity satisfies O(signed_identity). Each scope of O(exceptions) accepts unsigned images (a
    repository under a signed scope that its vendor does not sign).
  - Every other entry of the policy (other scopes, other transports, the default) is kept as it is,
    unless O(default_policy) replaces the default.
  - The new policy is validated as strictly as containers/image reads it (known keys only, a default,
    no empty requirement list, one key source per requirement), rendered, read back, and written
    atomically; a policy that would break every pull on the host is never written. The key files
    must exist on the host and hold public keys (RSA, ECDSA or Ed25519).
  - Signatures are looked for where C(registries.d) enables C(use-sigstore-attachments); behind a
    mirror, for the mirror's repositories (see M(airgap.microshift.registries_d)).
  - With O(state=absent), the entries of O(scopes) and O(exceptions) are removed (those images fall
    back to broader scopes or the default).
author:
  - airgap.microshift contributors (@airgap-microshift)
requirements:
  - the Python package cryptography on the host (python3-cryptography), to read the key files
extends_documentation_fragment:
  - ansible.builtin.files
  - airgap.microshift.attributes
  - airgap.microshift.attributes.files
attributes:
  check_mode:
    support: full
    details: A key file that does not exist yet (put on the host by a task check mode skipped) is only warned about.
  diff_mode:
    support: full
    details: The diff shows the policy before and after, as text.
  idempotent:
    support: full
  safe_file_operations:
    support: full
options:
  path:
    description: The policy file.
    type: path
    default: /etc/containers/policy.json
  state:
    description: V(present) sets the entries of O(scopes) and O(exceptions); V(absent) removes them.
    type: str
    choices: [present, absent]
    default: present
  scopes:
    description:
      - Scopes whose images must be signed, by their original names (a policy scope matches the name an
        image is pulled by, not the mirror it is read from).
    type: list
    elements: str
    default: []
  exceptions:
    description:
      - Scopes, usually under one of O(scopes), whose images are accepted unsigned. The most specific
        scope that matches an image decides.
    type: list
    elements: str
    default: []
  keys:
    description:
      - Public key files on the host (PEM C(PUBLIC KEY)), any of which may have made the signatures;
        several keys allow a key rotation. Required when O(scopes) is set and O(state=present).
    type: list
    elements: path
    default: []
  signed_identity:
    description:
      - Which identity a signature must name. V(matchRepoDigestOrExact) (Red Hat's choice) means the image's
        repository for a pull by digest, the exact reference for a pull by tag. V(matchRepository) means the
        repository. V(matchExact) means the exact reference.
    type: str
    choices: [matchRepoDigestOrExact, matchRepository, matchExact]
    default: matchRepoDigestOrExact
  default_policy:
    description:
      - V(keep) leaves the policy's default requirements as they are. V(reject) rejects every image no
        scope names (MicroShift's own hardened policy); V(insecureAcceptAnything) accepts them.
    type: str
    choices: [keep, reject, insecureAcceptAnything]
    default: keep
  mode:
    description:
      - The permissions of the file, in octal notation such as V('0644').
      - The other common file options (O(owner), O(group), SELinux context, O(attributes)) apply to the file too;
        unset, they leave the file as it is.
    type: raw
    default: '0644'
notes:
  - Images already in the host's container storage are not verified again; after enforcing signatures
    on a MicroShift host, wipe CRI-O's storage (C(crio wipe --force) with CRI-O and MicroShift stopped).
seealso:
  - module: airgap.microshift.registries_d
  - module: airgap.microshift.signature_check
  - ref: airgap.microshift.host_config role <ansible_collections.airgap.microshift.host_config_role>
    description: Sets this policy (and registries.d) on MicroShift hosts, with verification and rollback.
"""

EXAMPLES = r"""
---
- name: Require Red Hat's signatures for the release images
  airgap.microshift.containers_policy:
    scopes:
      - quay.io/openshift-release-dev
      - registry.redhat.io
    exceptions:
      - registry.redhat.io/openshift-service-mesh-tech-preview
    keys:
      - /etc/containers/RedHat_ReleaseKey3.pub

- name: Reject every image that no scope names, as MicroShift's hardened policy does
  airgap.microshift.containers_policy:
    scopes: [quay.io/openshift-release-dev, registry.redhat.io]
    keys: [/etc/containers/RedHat_ReleaseKey3.pub]
    default_policy: reject

- name: Stop requiring signatures for these scopes
  airgap.microshift.containers_policy:
    scopes: [quay.io/openshift-release-dev, registry.redhat.io]
    state: absent
"""

RETURN = r"""
path:
  description: The policy file.
  returned: always
  type: str
  sample: /etc/containers/policy.json
policy:
  description: The policy as it is after the task (in check mode, as it would be).
  returned: always
  type: dict
  sample:
    default: [{type: insecureAcceptAnything}]
    transports:
      docker:
        quay.io/openshift-release-dev:
          - {type: sigstoreSigned, keyPath: /etc/containers/RedHat_ReleaseKey3.pub, signedIdentity: {type: matchRepoDigestOrExact}}
created:
  description: Whether the policy file did not exist (it is then started from a policy accepting anything).
  returned: always
  type: bool
  sample: false
"""

import os

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.common.text.converters import to_bytes, to_native

from ansible_collections.airgap.microshift.plugins.module_utils import _containers_policy as policy_mod
from ansible_collections.airgap.microshift.plugins.module_utils import _signing
from ansible_collections.airgap.microshift.plugins.module_utils._files import ensure_file, read_limited


def _read(module, path):
    try:
        return read_limited(path, policy_mod.MAX_POLICY_SIZE).decode("utf-8")
    except OSError as exc:
        if getattr(exc, "errno", None) == 2:
            return None
        module.fail_json(msg="Cannot read the policy %s: %s." % (path, to_native(exc)))
    except UnicodeDecodeError:
        module.fail_json(msg="The policy %s is not UTF-8 text; it was not changed." % path)
    return None


def _check_keys(module, paths):
    for path in paths:
        if module.check_mode and not os.path.lexists(path):
            # A key put on the host by an earlier task that check mode skipped.
            module.warn("The key file %s does not exist yet; it is read when the policy is written (check mode)." % path)
            continue
        try:
            _signing.read_public_keys([path], image=True)
        except _signing.SigningError as exc:
            module.fail_json(msg="Option keys: %s; the policy %s was not changed." % (str(exc).rstrip("."), module.params["path"]))


def build(module, before):
    """The new policy document, from the current text ``before`` (None when absent)."""
    params = module.params
    current = None
    if before is not None:
        try:
            current = policy_mod.parse(before, "The current policy %s" % params["path"])
        except policy_mod.PolicyError as exc:
            module.fail_json(msg="%s It was not changed: fix it first (the containers tools cannot read it either)." % to_native(exc))
    try:
        if params["state"] == "absent":
            return policy_mod.remove(current, params["scopes"] + params["exceptions"]) if current is not None else None
        if params["scopes"] and not params["keys"]:
            module.fail_json(msg="Option keys is required to sign scopes (%s); the policy %s was not changed."
                             % (", ".join(params["scopes"]), params["path"]))
        _check_keys(module, params["keys"])
        requirement = policy_mod.sigstore_requirement(params["keys"], {"type": params["signed_identity"]}) if params["scopes"] else None
        default = None if params["default_policy"] == "keep" else [{"type": params["default_policy"]}]
        return policy_mod.merge(current, dict((scope, [requirement]) for scope in params["scopes"]), params["exceptions"], default)
    except policy_mod.PolicyError as exc:
        module.fail_json(msg="%s The policy %s was not changed." % (to_native(exc), params["path"]), errors=exc.errors)
    return None


def main():
    module = AnsibleModule(
        argument_spec=dict(
            path=dict(type="path", default="/etc/containers/policy.json"),
            state=dict(type="str", choices=["present", "absent"], default="present"),
            scopes=dict(type="list", elements="str", default=[]),
            exceptions=dict(type="list", elements="str", default=[]),
            keys=dict(type="list", elements="path", default=[], no_log=False),
            signed_identity=dict(type="str", choices=["matchRepoDigestOrExact", "matchRepository", "matchExact"],
                                 default="matchRepoDigestOrExact"),
            default_policy=dict(type="str", choices=["keep", "reject", "insecureAcceptAnything"], default="keep"),
            mode=dict(type="raw", default="0644"),
        ),
        add_file_common_args=True,
        supports_check_mode=True,
    )
    path = module.params["path"]
    if os.path.isdir(path):
        module.fail_json(msg="The policy path %s is a directory." % path)
    before = _read(module, path)
    after_doc = build(module, before)
    if after_doc is None:  # absent, and no policy at all
        module.exit_json(changed=False, path=path, policy={}, created=False, diff={"before": "", "after": ""})
    try:
        after = policy_mod.checked_render(after_doc, "The new policy %s" % path)
    except policy_mod.PolicyError as exc:
        module.fail_json(msg="%s It was not written." % to_native(exc), errors=exc.errors)
    # the same policy in another layout is left as the host wrote it
    same = before is not None and policy_mod.parse(before) == after_doc
    changed = ensure_file(module, path, None if same else to_bytes(after), what="the policy")
    module.exit_json(changed=changed, path=path, policy=after_doc, created=before is None,
                     diff={"before": before or "", "after": after if before is None or changed else before,
                           "before_header": path, "after_header": path})


if __name__ == "__main__":
    main()
