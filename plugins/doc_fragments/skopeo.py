# -*- coding: utf-8 -*-
# Copyright: airgap.microshift contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations


class ModuleDocFragment:
    """The options of every module that runs skopeo (argument spec: module_utils/_skopeo.argument_spec)."""

    DOCUMENTATION = r"""
options:
  authfile:
    description:
      - The containers auth file (C(containers-auth.json(5))) with the credentials for the registries, for
        example one written by M(airgap.microshift.registry_auth). skopeo reads it; credentials never
        appear on a command line.
      - Without it, skopeo's default auth file is used (C(${XDG_RUNTIME_DIR}/containers/auth.json)).
    type: path
  cert_dir:
    description:
      - A directory of C(*.crt) CA certificates (and C(*.cert)/C(*.key) client certificates) for the
        registries, given to skopeo as C(--cert-dir) in place of the C(/etc/containers/certs.d) directory
        of each registry. The system trust store still applies.
    type: path
  parallel:
    description:
      - How many skopeo runs (copies, pushes or inspections) go on at the same time.
    type: int
    default: 4
  retries:
    description:
      - How many times in a row a skopeo run that failed for a transient reason (a network error, HTTP 429,
        a 5xx answer) is retried, with exponential back-off. Authentication, permission, certificate and
        C(manifest unknown) errors are never retried.
      - A try that moved the work forward (a copy after which fewer blobs are missing, a push that got past a
        blob no earlier try had got past) does not count; the count starts over after it.
    type: int
    default: 3
  retry_delay:
    description:
      - Seconds before the first retry; retry C(n) waits between half and all of
        C(retry_delay * 2**(n-1)) (random jitter), at most 60 seconds.
    type: float
    default: 2.0
  executable:
    description:
      - The skopeo binary. Looked up in E(PATH) when not set.
      - Its version must be 1.9 or later.
    type: path
    aliases: [skopeo_path]
notes:
  - The options O(authfile), O(cert_dir), O(parallel), O(retries), O(retry_delay) and O(executable) are the
    same in every module that runs skopeo; set them once for all of them with
    C(module_defaults) and C(group/airgap.microshift.skopeo).
requirements:
  - skopeo 1.9 or later on the host that runs the module
"""

    # Modules that talk to registries named by their options: the TLS verification of those.
    VALIDATE_CERTS = r"""
options:
  validate_certs:
    description:
      - Verify the registries' TLS certificates. V(false) is for test registries only; the module then warns.
    type: bool
    default: true
    aliases: [tls_verify]
"""
