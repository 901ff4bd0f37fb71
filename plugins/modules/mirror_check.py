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
requirements:
  - skopeo 1.9 or later on the host
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
    description:
      - The image references to resolve, by their original (source registry) names.
    type: list
    elements: str
    required: true
  authfile:
    description:
      - A containers auth file with the credentials of the mirror, such as C(/etc/crio/openshift-pull-secret).
      - Without it, skopeo's default auth files are used.
    type: path
  registries_conf:
    description:
      - Use this C(registries.conf) file instead of C(/etc/containers/registries.conf) (the drop-ins of
        C(/etc/containers/registries.conf.d) are still read). Mostly for tests.
    type: path
  cert_dir:
    description:
      - A directory of C(*.crt) CA files to trust for every registry, instead of C(/etc/containers/certs.d).
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
  parallel:
    description:
      - How many references are checked at the same time.
    type: int
    default: 4
  retries:
    description:
      - How many times a check that failed with a transient error (network error, HTTP 429, 5xx) is retried.
    type: int
    default: 3
  retry_delay:
    description:
      - Base delay in seconds before the first retry; it doubles with each retry (with jitter), up to 60 seconds.
    type: float
    default: 2.0
  timeout:
    description:
      - Seconds one C(skopeo inspect) may take before it is stopped (C(--command-timeout)); V(0) for no limit.
    type: int
    default: 120
  skopeo_path:
    description:
      - The skopeo binary. Default is C(skopeo) from E(PATH).
    type: path
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

import hashlib
import os
import re
import time
from concurrent.futures import ThreadPoolExecutor

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.common.text.converters import to_native

from ansible_collections.airgap.microshift.plugins.module_utils._reference import InvalidReference, parse_reference
from ansible_collections.airgap.microshift.plugins.module_utils._skopeo import (
    PERMANENT,
    TRANSIENT,
    backoff_delay,
    classify_error,
    module_runner,
)

_MSG_RE = re.compile(r'msg="(.*)"\s*$', re.S)
_MIRRORS_RE = re.compile(r"\(Mirrors also failed: (?P<mirrors>.*)\): (?P<source>[^\s:]+(?::[0-9]+)?/[^\s]*?): (?P<error>.*)$", re.S)
_MIRROR_ITEM_RE = re.compile(r"\[(?P<ref>[^\s\]]+): (?P<error>.*?)\](?=\s*(?:\[|$))", re.S)


def fatal_message(stderr):
    """skopeo's fatal message (the ``msg="..."`` of its last error line), unescaped."""
    lines = [line for line in (stderr or "").strip().splitlines() if line.strip()]
    text = "\n".join(lines)
    start = text.rfind('level=fatal msg="')
    if start >= 0:
        text = text[start:]
    match = _MSG_RE.search(text)
    if match:
        text = match.group(1).replace('\\"', '"')
    return text.strip()


def _shorten(text, limit=300):
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit] + "..."


def explain(stderr):
    """``(kind, reason)`` for a failed ``skopeo inspect`` of a reference through registries.conf.

    When mirrors were tried, containers/image lists their errors first: those say why the mirror
    did not serve the image and decide whether a retry can help. With no mirror tried, no mirror
    is configured for that reference (or only the source was allowed, as for a tag under
    ``mirror-by-digest-only``).
    """
    message = fatal_message(stderr)
    match = _MIRRORS_RE.search(message)
    if match:
        mirrors = _MIRROR_ITEM_RE.findall(match.group("mirrors")) or [("mirror", match.group("mirrors"))]
        parts = []
        kinds = []
        for ref, error in mirrors:
            kind, cause = classify_error(error)
            kinds.append(kind)
            parts.append("%s (%s: %s)" % (cause, ref, _shorten(error, 200)))
        kind = TRANSIENT if TRANSIENT in kinds else PERMANENT
        source_kind, source_cause = classify_error(match.group("error"))
        return kind, "the mirror does not serve it: %s; the source %s failed too: %s" % (
            "; ".join(parts), match.group("source").split("/")[0], source_cause)
    kind, cause = classify_error(message)
    return kind, "no mirror was tried for it (is one configured for this registry?); the source answered: %s (%s)" % (
        cause, _shorten(message, 200))


def _build_argv(skopeo, ref, params):
    argv = [skopeo]
    if params["registries_conf"]:
        argv.append("--registries-conf=%s" % params["registries_conf"])
    if params["timeout"] > 0:
        argv.append("--command-timeout=%ds" % params["timeout"])
    argv.extend(["inspect", "--raw", "--retry-times=0"])
    if params["authfile"]:
        argv.append("--authfile=%s" % params["authfile"])
    if params["cert_dir"]:
        argv.append("--cert-dir=%s" % params["cert_dir"])
    argv.append("docker://" + ref)
    return argv


class _Checker(object):
    def __init__(self, run, skopeo, params, sleep=time.sleep):
        self.run = run
        self.skopeo = skopeo
        self.params = params
        self.sleep = sleep

    def check(self, ref):
        """``(ref, None, attempts)`` when served, else ``(ref, reason, attempts)``."""
        digest = parse_reference(ref).digest
        argv = _build_argv(self.skopeo, ref, self.params)
        attempt = 0
        while True:
            attempt += 1
            try:
                rc, out, err = self.run(argv)
            except OSError as exc:
                return ref, "cannot run %s: %s" % (self.skopeo, to_native(exc)), attempt
            if rc == 0:
                if digest:
                    served = "sha256:" + hashlib.sha256(out).hexdigest()
                    if served != digest:
                        return ref, "the manifest served has the digest %s, not %s" % (served, digest), attempt
                return ref, None, attempt
            kind, reason = explain(err)
            if kind == PERMANENT or attempt > self.params["retries"]:
                if kind == TRANSIENT:
                    reason += " (still failing after %d attempts)" % attempt
                return ref, reason, attempt
            self.sleep(backoff_delay(attempt, self.params["retry_delay"]))


def main():
    module = AnsibleModule(
        argument_spec=dict(
            images=dict(type="list", elements="str", required=True),
            authfile=dict(type="path", no_log=False),
            registries_conf=dict(type="path"),
            cert_dir=dict(type="path"),
            digest_only=dict(type="bool", default=True),
            fail_on_tag_refs=dict(type="bool", default=True),
            parallel=dict(type="int", default=4),
            retries=dict(type="int", default=3),
            retry_delay=dict(type="float", default=2.0),
            timeout=dict(type="int", default=120),
            skopeo_path=dict(type="path"),
        ),
        supports_check_mode=True,
    )
    params = module.params
    if params["parallel"] < 1:
        module.fail_json(msg="Option parallel must be 1 or more, not %d." % params["parallel"])
    if params["retries"] < 0 or params["retry_delay"] < 0 or params["timeout"] < 0:
        module.fail_json(msg="Options retries, retry_delay and timeout must not be negative.")
    for option in ("authfile", "registries_conf"):
        if params[option] and not os.path.isfile(params[option]):
            module.fail_json(msg="The %s %s does not exist." % (option, params[option]))
    if params["cert_dir"] and not os.path.isdir(params["cert_dir"]):
        module.fail_json(msg="The cert_dir %s is not a directory." % params["cert_dir"])

    refs = []
    invalid = []
    tag_refs = []
    for ref in params["images"]:
        if ref in refs or ref in tag_refs or ref in [item["ref"] for item in invalid]:
            continue
        try:
            parsed = parse_reference(ref)
        except InvalidReference as exc:
            invalid.append({"ref": ref, "reason": to_native(exc), "attempts": 0})
            continue
        if parsed.digest is None and params["digest_only"]:
            tag_refs.append(ref)
        else:
            refs.append(ref)

    skopeo = params["skopeo_path"] or module.get_bin_path("skopeo", required=True)
    run = module_runner(module)
    checker = _Checker(run, skopeo, params)
    results = []
    if refs:
        with ThreadPoolExecutor(max_workers=min(params["parallel"], len(refs))) as pool:
            results = list(pool.map(checker.check, refs))

    served = [ref for ref, reason, attempts in results if reason is None]
    not_served = invalid + [{"ref": ref, "reason": reason, "attempts": attempts} for ref, reason, attempts in results if reason is not None]
    retries = sum(attempts - 1 for ref, reason, attempts in results)
    outcome = dict(changed=False, served=served, not_served=not_served, tag_refs=tag_refs, retries=retries)

    problems = []
    if not_served:
        problems.append("%d of %d image(s) do not resolve through the host's containers configuration: %s." % (
            len(not_served), len(not_served) + len(served), "; ".join("%s: %s" % (item["ref"], item["reason"]) for item in not_served)))
    if tag_refs:
        text = ("%d reference(s) by tag can never be pulled through a digest-only mirror: %s" % (len(tag_refs), ", ".join(tag_refs)))
        if params["fail_on_tag_refs"]:
            problems.append(text + " (set fail_on_tag_refs=false to allow them, or list them by digest).")
        else:
            module.warn(text + ".")
    if problems:
        module.fail_json(msg=" ".join(problems), **outcome)
    module.exit_json(**outcome)


if __name__ == "__main__":
    main()
