# Copyright: airgap.microshift contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r"""
name: public_key_problem
short_description: Say why a text is not a PEM public key, or nothing when it is one
version_added: 0.2.0
author: airgap.microshift contributors
description:
  - Parses the text as exactly one PEM public key (a C(BEGIN PUBLIC KEY) block, as the C(sigstoreSigned) entries of a
    containers signature policy take) on the control node, with the C(cryptography) library that ansible-core depends
    on, and returns an empty string when it decodes.
  - Otherwise returns the reason in a few words, for a message that names the key, such as
    C(no BEGIN PUBLIC KEY block).
  - Runs in the process of the play, with no program started.
positional: _input
options:
  _input:
    description: The text, such as the content of a public key file.
    type: string
    required: true
seealso:
  - plugin: airgap.microshift.certificate_problem
    plugin_type: filter
"""

EXAMPLES = r"""
- name: Fail when the release key is not a public key
  ansible.builtin.assert:
    that: lookup('ansible.builtin.file', 'release.pub') | airgap.microshift.public_key_problem | length == 0
    fail_msg: release.pub is not a PEM public key.
"""

RETURN = r"""
_value:
  description: An empty string when the text holds one PEM public key that decodes, else why it does not.
  type: string
"""

from ansible_collections.airgap.microshift.plugins.module_utils._pem import public_key_problem


class FilterModule:
    """The public_key_problem filter."""

    def filters(self):
        return {"public_key_problem": public_key_problem}
