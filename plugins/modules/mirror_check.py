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
  - With O(engine=auto) (the default), the module first reads every manifest itself over kept-alive HTTPS
    connections, through the same configuration (the same registries.conf and drop-ins, merged the same
    way, the same pull sources in the same order, mirrors first, the same certificates and the same auth
    file). It only confirms images this way. Skopeo still checks every image it does not confirm (a
    failure, a reference by tag, a configuration it does not read as the containers tools do) and gives
    the verdict and the reason, so the result is the one skopeo alone gives, with far fewer processes.
    RV(reads) says how many images each way resolved.
  - Runs the checks in parallel and retries network errors, HTTP 429 and 5xx answers with exponential
    back-off. Authentication, certificate and "manifest unknown" errors are final at once.
  - Fails listing every reference that does not resolve, each with the reason the mirror gave.
  - With O(digest_only=true) (a C(mirror-by-digest-only) mirror), references by tag are never sent to the
    mirror, so they are not checked but listed in RV(tag_refs); they fail the task unless
    O(fail_on_tag_refs=false).
  - On a host that can still reach the source registries, a reference may resolve from the source itself;
    on an air-gapped host, a success proves that the mirror serves the image and is trusted.
  - With O(signature_policy), the same run then evaluates that signature policy for every image served,
    exactly as M(airgap.microshift.signature_check) does, and fails naming every image the policy would
    refuse, so that a host is verified in one module run.
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
      - With O(engine=auto), also the seconds one direct read may wait for an answer.
    type: int
    default: 120
  signature_policy:
    description:
      - The host's signature policy (usually C(/etc/containers/policy.json)). When given, every image served
        is also evaluated against it, with the signatures the host reads (C(registries.d)), as
        M(airgap.microshift.signature_check) does. RV(signatures) holds the verdicts.
      - Not given (the default), no signature is evaluated.
    type: path
    version_added: 0.2.0
  registries_d:
    description: The C(registries.d) directory (C(*.yaml)) read with O(signature_policy).
    type: path
    default: /etc/containers/registries.d
    version_added: 0.2.0
  architecture:
    description:
      - With O(signature_policy), the architecture whose manifest is checked in a multi-architecture image,
        as Ansible or Go names it (C(x86_64) or C(amd64), C(aarch64) or C(arm64)). Default is the host's.
    type: str
    version_added: 0.2.0
  engine:
    description:
      - V(auto) reads the manifests directly where it can read them exactly as the containers tools do, and
        runs C(skopeo inspect) for every image it does not confirm.
      - It runs skopeo for every image when C(CONTAINERS_REGISTRIES_CONF) or a proxy is set, when the user's
        own C(~/.config/containers/registries.conf) or its drop-in directory exists, when a registries.conf
        file sets C(credential-helpers), when a registries.conf file cannot be read, or when O(authfile)
        is not given and the containers tools would find credentials of their own. RV(reads.obstacle)
        then names the cause.
      - V(skopeo) runs C(skopeo inspect) for every image, as version 0.1.0 did.
    type: str
    choices: [auto, skopeo]
    default: auto
    version_added: 0.2.0
seealso:
  - module: airgap.microshift.registries_conf
  - module: airgap.microshift.signature_check
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

- name: Check the mirror and the host's signature policy in one run
  airgap.microshift.mirror_check:
    images: "{{ image_list_images }}"
    authfile: /etc/crio/openshift-pull-secret
    signature_policy: /etc/containers/policy.json
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
signatures:
  description:
    - With O(signature_policy), the verdicts of the policy on the images served, as
      M(airgap.microshift.signature_check) returns them (C(accepted), C(rejected), C(unchecked), C(results));
      null without it, and when no image was served.
  returned: always
  type: dict
  version_added: 0.2.0
  sample:
    accepted: [quay.io/openshift-release-dev/ocp-v4.0-art-dev@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef]
    rejected: []
    unchecked: []
reads:
  description: How the images were resolved.
  returned: always
  type: dict
  version_added: 0.2.0
  contains:
    direct:
      description: Images confirmed by a direct read of their manifest through the host's configuration.
      type: int
      returned: always
      sample: 9
    skopeo:
      description: C(skopeo inspect) processes run, retries included.
      type: int
      returned: always
      sample: 0
    obstacle:
      description: With O(engine=auto), why no image was read directly (null when the direct reads ran).
      type: str
      returned: always
      sample: null
  sample: {"direct": 9, "skopeo": 0, "obstacle": null}
"""

import os
import platform

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.airgap.microshift.plugins.module_utils import _image_trust, _mirror_check, _skopeo
from ansible_collections.airgap.microshift.plugins.module_utils._registry import RegistrySource


def direct_reader(params):
    """``(DirectReader, None)`` through the host's registries.conf, or ``(None, why not)``."""
    obstacle = _mirror_check.direct_read_obstacle(params["authfile"])
    if obstacle:
        return None, obstacle
    try:
        main_file = params["registries_conf"] or _mirror_check.DEFAULT_REGISTRIES_CONF
        registries, files = _image_trust.read_host_registries(main_file, _mirror_check.REGISTRIES_CONF_D)
    except _image_trust.HostConfigError as exc:
        return None, str(exc)
    obstacle = _mirror_check.configuration_obstacle(files)
    if obstacle:
        return None, obstacle
    insecure = [entry.get("location") or prefix for prefix, entry in registries.items() if entry.get("insecure")]
    insecure += [m["location"] for entry in registries.values() for m in entry.get("mirror", []) if m.get("insecure")]
    source = RegistrySource(params["authfile"], True, params["cert_dir"], timeout=float(params["timeout"] or 120),
                            insecure=[location.split("/", 1)[0] for location in insecure])
    return _mirror_check.DirectReader(registries, source), None


def main():
    module = AnsibleModule(
        argument_spec=dict(
            _skopeo.argument_spec(retries=3, validate_certs=False),
            images=dict(type="list", elements="str", required=True),
            registries_conf=dict(type="path"),
            digest_only=dict(type="bool", default=True),
            fail_on_tag_refs=dict(type="bool", default=True),
            timeout=dict(type="int", default=120),
            engine=dict(type="str", default="auto", choices=["auto", "skopeo"]),
            signature_policy=dict(type="path"),
            registries_d=dict(type="path", default="/etc/containers/registries.d"),
            architecture=dict(type="str"),
        ),
        supports_check_mode=True,
    )
    params = module.params
    problem = _skopeo.option_problem(params) or _skopeo.at_least("timeout", params["timeout"], 0)
    if not problem and params["signature_policy"] is not None and not params["signature_policy"]:
        problem = "Option signature_policy is empty; give the path of the host's policy.json, or leave it out."
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
    reader, obstacle = None, None
    if params["engine"] == "auto":
        reader, obstacle = direct_reader(params)
    check = _mirror_check.MirrorCheck(params["images"], _skopeo.Skopeo.from_params(binary, params, global_args=global_args),
                                      _skopeo.registry_options(params), digest_only=params["digest_only"],
                                      parallel=params["parallel"], reader=reader, obstacle=obstacle).run()
    result = check.result()
    failure, warning = check.problems(result, params["fail_on_tag_refs"])
    result["signatures"] = None
    if params["signature_policy"] and result["served"]:
        try:
            refused, unchecked, outcome = _image_trust.check_images(dict(
                images=result["served"], policy=params["signature_policy"], authfile=params["authfile"], cert_dir=params["cert_dir"],
                registries_conf=params["registries_conf"] or _mirror_check.DEFAULT_REGISTRIES_CONF,
                registries_conf_d=_mirror_check.REGISTRIES_CONF_D, registries_d=params["registries_d"],
                architecture=params["architecture"], parallel=params["parallel"], fail_on_unchecked=False), platform.machine())
        except _image_trust.HostConfigError as exc:
            refused, unchecked, outcome = str(exc), None, None
        result["signatures"] = outcome and dict((key, outcome[key]) for key in ("accepted", "rejected", "unchecked", "results"))
        failure = " ".join(text for text in (failure, refused) if text) or None
        warning = " ".join(text for text in (warning, unchecked) if text) or None
    if warning:
        module.warn(warning)
    if failure:
        module.fail_json(msg=failure, **result)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
