# Copyright: airgap.microshift contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r"""
name: certificate_problem
short_description: Say why a text is not a PEM certificate, or nothing when it is one
version_added: 0.2.0
author: airgap.microshift contributors
description:
  - Parses the text as one or more PEM X.509 certificates (a CA, or a bundle of CAs) on the control node, with the
    C(cryptography) library that ansible-core depends on, and returns an empty string when every
    C(BEGIN CERTIFICATE) block decodes to a certificate.
  - Otherwise returns the reason in a few words, for a message that names the file, such as
    C(no BEGIN CERTIFICATE block) or C(its certificate block does not decode to an X.509 certificate).
  - Runs in the process of the play, once per host that evaluates it, with no program started; a role can check a
    CA before it touches any host.
  - Text outside the blocks is ignored, as C(openssl) ignores it.
positional: _input
options:
  _input:
    description: The text, such as the content of a CA file.
    type: string
    required: true
seealso:
  - plugin: airgap.microshift.public_key_problem
    plugin_type: filter
"""

EXAMPLES = r"""
- name: Fail before anything is changed when the mirror CA is not a certificate
  ansible.builtin.assert:
    that: __problem | length == 0
    fail_msg: "The mirror CA {{ mirror_ca }} is not a PEM certificate ({{ __problem }})."
    quiet: true
  vars:
    __problem: "{{ lookup('ansible.builtin.file', mirror_ca) | airgap.microshift.certificate_problem }}"
"""

RETURN = r"""
_value:
  description: An empty string when the text holds PEM certificates that all decode, else why it does not.
  type: string
"""

from ansible_collections.airgap.microshift.plugins.module_utils._pem import certificate_problem


class FilterModule:
    """The certificate_problem filter."""

    def filters(self):
        return {"certificate_problem": certificate_problem}
