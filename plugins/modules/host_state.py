#!/usr/bin/python
# Copyright: airgap.microshift contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r"""
---
module: host_state
short_description: Read what a host is and holds in one pass; save and restore the files a role manages
version_added: 0.1.0
description:
  - Answers in one module run the questions a role asks a host before it changes it, instead of one
    task each (a cost every host of a fleet pays for every task) - the OS family (from
    C(/etc/os-release)), whether paths exist (such as C(/run/ostree-booted)), where commands are
    (such as C(skopeo)), the state of systemd units, and whether the task runs in check mode.
  - With O(save), also returns the content (base64), mode, owner and group of each file, or that it
    does not exist, so that a failed change can put back exactly what was there.
  - With O(restore) (what O(save) returned), puts every file back as it was - content, mode, owner
    and group, written to a temporary file and renamed into place - and removes the files that did
    not exist. A file that is already as saved is left alone.
  - Used by the C(airgap.microshift.host_config) role; the content of saved files (a pull secret)
    is secret, so run it with C(no_log).
author:
  - airgap.microshift contributors (@airgap-microshift)
extends_documentation_fragment:
  - airgap.microshift.attributes
attributes:
  check_mode:
    support: full
    details: Reading and saving run in check mode too; a restore reports what it would change and writes nothing.
  diff_mode:
    support: none
  idempotent:
    support: full
    details: A second restore of the same state changes nothing.
options:
  exists:
    description: Paths whose existence is reported in RV(exists).
    type: list
    elements: path
    default: []
  commands:
    description: Commands looked up in C(PATH) and the usual system directories; found or not in RV(commands).
    type: list
    elements: str
    default: []
  units:
    description:
      - systemd units whose C(LoadState) and C(UnitFileState) are reported in RV(units).
      - On a host without C(systemctl), RV(systemd) is V(false) and RV(units) is empty.
    type: list
    elements: str
    default: []
  save:
    description: Files whose state is returned in RV(saved). A path that is not a regular file, or larger than 4 MiB, fails the task.
    type: list
    elements: path
    default: []
  restore:
    description:
      - The RV(saved) result of an earlier run - every file is put back as it was then.
      - Mutually exclusive with O(save).
    type: dict
"""

EXAMPLES = r"""
---
- name: Read the host and save the files about to change
  airgap.microshift.host_state:
    exists: [/run/ostree-booted]
    commands: [skopeo]
    units: [microshift.service]
    save:
      - /etc/containers/registries.conf.d/999-microshift-mirror.conf
      - /etc/crio/openshift-pull-secret
  register: host_before
  no_log: true

- name: Put the files back
  airgap.microshift.host_state:
    restore: "{{ host_before.saved }}"
  no_log: true
"""

RETURN = r"""
os_family:
  description: The OS family as Ansible's facts name it (V(RedHat), V(Debian)), else the C(ID) of C(/etc/os-release).
  returned: always
  type: str
  sample: RedHat
check_mode:
  description: Whether this task ran in check mode (from the command line, the play or the task).
  returned: always
  type: bool
  sample: false
exists:
  description: For each path of O(exists), whether it exists.
  returned: always
  type: dict
  sample: {/run/ostree-booted: false}
commands:
  description: For each command of O(commands), its path, or an empty string when it was not found.
  returned: always
  type: dict
  sample: {skopeo: /usr/bin/skopeo}
systemd:
  description: Whether C(systemctl) answered (it does not on a host without systemd as PID 1).
  returned: always
  type: bool
  sample: true
units:
  description: For each unit of O(units), its C(LoadState) and C(UnitFileState).
  returned: always
  type: dict
  sample: {microshift.service: {LoadState: loaded, UnitFileState: disabled}}
saved:
  description: For each file of O(save), whether it exists and, when it does, its C(mode), C(owner), C(group) and C(content) (base64).
  returned: always
  type: dict
  sample: {/etc/crio/openshift-pull-secret: {exists: false}}
restored:
  description: The files a restore put back or removed (would have, in check mode).
  returned: always
  type: list
  elements: str
  sample: [/etc/crio/openshift-pull-secret]
"""

import os

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.airgap.microshift.plugins.module_utils._host_state import (
    HostStateError,
    read_os_family,
    restore_all,
    save_all,
    unit_states,
)


def _units(module, units):
    if not units:
        return True, {}
    systemctl = module.get_bin_path("systemctl")
    if not systemctl:
        return False, {}
    rc, out, dummy = module.run_command([systemctl, "show", "--property=Id,LoadState,UnitFileState", "--"] + list(units))
    if rc != 0:
        return False, {}
    states = unit_states(out)
    # systemctl shows a unit under its canonical name: match by position when the names differ.
    return True, {unit: states.get(unit, {}) for unit in units}


def main():
    module = AnsibleModule(
        argument_spec=dict(
            exists=dict(type="list", elements="path", default=[]),
            commands=dict(type="list", elements="str", default=[]),
            units=dict(type="list", elements="str", default=[]),
            save=dict(type="list", elements="path", default=[]),
            restore=dict(type="dict"),
        ),
        mutually_exclusive=[("save", "restore")],
        supports_check_mode=True,
    )
    params = module.params
    result = dict(changed=False, check_mode=module.check_mode, os_family=read_os_family(),
                  exists={path: os.path.lexists(path) for path in params["exists"]},
                  commands={name: module.get_bin_path(name) or "" for name in params["commands"]},
                  saved={}, restored=[])
    result["systemd"], result["units"] = _units(module, params["units"])
    try:
        if params["save"]:
            result["saved"] = save_all(params["save"])
        if params["restore"]:
            result["restored"] = restore_all(params["restore"], check_mode=module.check_mode)
            result["changed"] = bool(result["restored"])
    except HostStateError as exc:
        module.fail_json(msg=str(exc), **result)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
