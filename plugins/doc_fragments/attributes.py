# -*- coding: utf-8 -*-
# Copyright: airgap.microshift contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations


class ModuleDocFragment:
    """What the attributes every module of the collection documents mean; each module says its support."""

    DOCUMENTATION = r"""
options: {}
attributes:
  check_mode:
    description: Can run in check_mode and return changed status prediction without modifying target.
  diff_mode:
    description: Will return details on what has changed (or possibly needs changing in check_mode), when in diff mode.
  idempotent:
    description: When run twice in a row outside check mode, with the same arguments, the second invocation indicates no change.
"""

    # Modules that write a file through the collection's one file writer.
    FILES = r"""
options: {}
attributes:
  safe_file_operations:
    description: Uses Ansible's strict file operation functions to ensure proper permissions and avoid data corruption.
"""

    # Modules that run skopeo with the shared options (airgap.microshift.skopeo).
    ACTIONGROUP_SKOPEO = r"""
options: {}
attributes:
  action_group:
    description: Use C(group/airgap.microshift.skopeo) in C(module_defaults) to set defaults for this module.
    support: full
    membership:
      - airgap.microshift.skopeo
"""
