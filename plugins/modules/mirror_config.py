#!/usr/bin/python
# Copyright: airgap.microshift contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r"""
---
module: mirror_config
short_description: Configure a host to pull through a mirror registry in one run - CA, registries.conf drop-in, credentials
version_added: 0.2.0
description:
  - Writes everything a MicroShift host needs to pull its images from a mirror registry, in one module
    run - the mirror's CA in the system trust store (and, on request, in C(/etc/containers/certs.d)),
    the registries.conf drop-in that sends the pulls of the source registries to the mirror, and the
    mirror's credentials in the pull secret and in other auth files (such as C(/etc/ostree/auth.json)) -
    then rebuilds the system trust store when the CA changed.
  - One run instead of one task per file - a fleet pays every task on every host (a round trip, a
    Python start on the host, a worker on the control node).
  - All or nothing. Every input is checked before any file is written - the drop-in as the
    M(airgap.microshift.registries_conf) module checks it (schema, strict read-back), every auth
    file as M(airgap.microshift.registry_auth) reads it. The files are then written one after the
    other, each through a temporary file and an atomic rename; when one cannot be written, or the
    trust store command fails, every file already written is put back as it was, the directories
    created are removed, and the task fails naming the file or the command.
  - A file that already holds what it should, with its mode, owner and group, is not touched. An
    auth file is compared decoded - one that already holds these credentials, in other words, is left as it is.
  - Modes are fixed by what a file is - C(0644) for the CA and the drop-in, C(0600) for an auth file
    (created unreadable by others), C(0755) for a directory created on the way.
  - The password is never returned - the diff masks every credential of an auth file.
author:
  - airgap.microshift contributors (@airgap-microshift)
extends_documentation_fragment:
  - airgap.microshift.attributes
  - airgap.microshift.attributes.files
attributes:
  check_mode:
    support: full
    details: Reports which files would change (and shows them with C(--diff)); runs no command.
  diff_mode:
    support: full
    details: One diff per file that changes; credentials are masked.
  idempotent:
    support: full
  safe_file_operations:
    support: full
    details: Every file is replaced atomically; a failure puts back every file the run wrote.
options:
  mirror:
    description: The mirror registry, C(host) or C(host:port), without a scheme or a path.
    type: str
    required: true
  namespace:
    description: The path on the mirror under which the source registries' repositories live (O(mirror)C(/)O(namespace)).
    type: str
  registries:
    description: Source registries sent to the mirror; the registries of O(images) are added.
    type: list
    elements: str
    default: [quay.io, registry.redhat.io, registry.access.redhat.com]
  images:
    description: The image references the host pulls; their registries are sent to the mirror too.
    type: list
    elements: str
    default: []
  digest_only:
    description: Pull through the mirror by digest only (C(mirror-by-digest-only)), as a mirror that holds made-up tags needs.
    type: bool
    default: true
  insecure:
    description: Let the containers tools talk to the mirror over plain HTTP or unverified TLS. Warns.
    type: bool
    default: false
  additional_registries:
    description: Further C([[registry]]) tables appended to the drop-in as given (checked against the schema).
    type: list
    elements: dict
    default: []
  registries_conf:
    description: The drop-in file.
    type: path
    default: /etc/containers/registries.conf.d/999-microshift-mirror.conf
  header:
    description: Comment written at the top of the drop-in (such as Ansible's managed string).
    type: str
  ca:
    description: The mirror's CA certificate (PEM), written as given. Required by O(ca_path) and O(certs_d).
    type: str
  ca_path:
    description: Where the CA goes in the system trust store (the anchors directory of the OS family).
    type: path
  trust_command:
    description:
      - The command (argv) that rebuilds the system trust store, run when the file at O(ca_path) changed,
        and once more after the files were put back when it fails.
      - For example V([update-ca-trust, extract]) or V([update-ca-certificates]).
    type: list
    elements: str
    default: []
  certs_d:
    description: Also write the CA as C(<certs_d_dir>/<mirror>/ca.crt), where the containers tools look for a registry's CA.
    type: bool
    default: false
  certs_d_dir:
    description: The containers tools' certificate directory.
    type: path
    default: /etc/containers/certs.d
  username:
    description: The mirror user. With O(password), written as the O(mirror) entry of every file of O(auth_files).
    type: str
  password:
    description: The mirror password or token.
    type: str
  auth_files:
    description:
      - Auth files (containers-auth.json(5)) that get the mirror's credentials; every other entry and key is kept.
      - Only used with O(username).
    type: list
    elements: path
    default: [/etc/crio/openshift-pull-secret]
  owner:
    description: Owner of every file and directory written. By default, that of an existing file is kept, and a new one belongs to the user running the module.
    type: str
  group:
    description: Group of every file and directory written, as O(owner).
    type: str
notes:
  - Used by the C(airgap.microshift.host_config) role, which saves the files first with M(airgap.microshift.host_state)
    so that it can put them back when the verification through the mirror fails after this module ran.
seealso:
  - module: airgap.microshift.registries_conf
  - module: airgap.microshift.registry_auth
  - module: airgap.microshift.host_state
"""

EXAMPLES = r"""
---
- name: Pull through the site mirror
  airgap.microshift.mirror_config:
    mirror: mirror.example.com:8443
    images: "{{ image_list_images }}"
    ca: "{{ lookup('ansible.builtin.file', 'files/mirror-ca.pem') }}"
    ca_path: /etc/pki/ca-trust/source/anchors/microshift-mirror.pem
    trust_command: [update-ca-trust, extract]
    username: microshift
    password: "{{ mirror_password }}"
    auth_files: [/etc/crio/openshift-pull-secret, /etc/ostree/auth.json]
    owner: root
    group: root
  register: mirror_config
"""

RETURN = r"""
changed_files:
  description: The files written (in check mode, those that would be).
  returned: always
  type: list
  elements: str
  sample: [/etc/pki/ca-trust/source/anchors/microshift-mirror.pem, /etc/containers/registries.conf.d/999-microshift-mirror.conf]
trust_store_rebuilt:
  description: Whether O(trust_command) ran.
  returned: always
  type: bool
  sample: true
registries:
  description: The source registries sent to the mirror.
  returned: always
  type: list
  elements: str
  sample: [quay.io, registry.redhat.io, registry.access.redhat.com]
mirror_location:
  description: Where the source registries' repositories are looked up, O(mirror)C(/)O(namespace).
  returned: always
  type: str
  sample: mirror.example.com:8443/microshift
"""

import json
import os

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.common.text.converters import to_bytes, to_native, to_text

from ansible_collections.airgap.microshift.plugins.module_utils._authfile import (
    AuthFileError, dumps, masked, read_authfile, set_credentials, validate_registry,
)
from ansible_collections.airgap.microshift.plugins.module_utils._host_state import (
    HostStateError, apply_files, file_differs, undo_files,
)
from ansible_collections.airgap.microshift.plugins.module_utils._registries_conf import (
    DropinOptionError, build_dropin, dropin_argument_spec, insecure_warning,
)

_TEXT_MODE = 0o644
_SECRET_MODE = 0o600
_DIR_MODE = 0o755


def _read_text(path):
    try:
        with open(path, "rb") as handle:
            return to_text(handle.read(), errors="surrogate_or_replace")
    except OSError:
        return ""


def _auth_file(module, path):
    """``(bytes to write, before, after)`` of one auth file; before and after are masked for the diff."""
    params = module.params
    exists = os.path.lexists(path)
    try:
        data = read_authfile(path) if exists else {"auths": {}}
    except AuthFileError as exc:
        module.fail_json(msg="%s; nothing was changed." % to_native(exc))
    new, content_changed = set_credentials(data, params["mirror"], params["username"], params["password"])
    if content_changed or not exists:
        payload = to_bytes(dumps(new))
    else:
        # The same credentials in other words: the content stays as it is.
        with open(path, "rb") as handle:
            payload = handle.read()
    return payload, masked(data) if exists else {}, masked(new)


def _plan(module):
    """Every file to write, in order: ``[(entry for apply_files, diff)]``; fails before anything is written."""
    params = module.params
    try:
        dropin, registries, location = build_dropin(
            params["mirror"], params["namespace"], params["registries"], params["images"], digest_only=params["digest_only"],
            insecure=params["insecure"], additional=params["additional_registries"], header=params["header"],
            path=params["registries_conf"])
    except DropinOptionError as exc:
        module.fail_json(msg=to_native(exc), **({"errors": exc.errors} if exc.errors else {}))
    mirror = params["mirror"].strip().rstrip("/")
    attrs = {"owner": params["owner"], "group": params["group"], "dir_mode": _DIR_MODE}
    files = []
    ca_paths = ([params["ca_path"]] if params["ca_path"] else []) + (
        [os.path.join(params["certs_d_dir"], mirror, "ca.crt")] if params["certs_d"] else [])
    for path in ca_paths:
        files.append((dict(attrs, path=path, data=to_bytes(params["ca"]), mode=_TEXT_MODE),
                      {"before": _read_text(path), "after": params["ca"]}))
    files.append((dict(attrs, path=params["registries_conf"], data=to_bytes(dropin), mode=_TEXT_MODE),
                  {"before": _read_text(params["registries_conf"]), "after": dropin}))
    if params["username"]:
        for path in dict.fromkeys(params["auth_files"]):
            if os.path.isdir(path):
                module.fail_json(msg="The auth file %s is a directory; nothing was changed." % path)
            payload, before, after = _auth_file(module, path)
            files.append((dict(attrs, path=path, data=payload, mode=_SECRET_MODE),
                          {"before": json.dumps(before, indent=2, sort_keys=True) + "\n" if before else "",
                           "after": json.dumps(after, indent=2, sort_keys=True) + "\n"}))
    for entry, diff in files:
        diff.update(before_header=entry["path"], after_header=entry["path"])
    return files, registries, location


def _check_options(module):
    params = module.params
    if (params["ca_path"] or params["certs_d"]) and not params["ca"]:
        module.fail_json(msg="Option ca is empty, and ca_path or certs_d needs the CA; nothing was changed.")
    if params["ca"] and "-----BEGIN CERTIFICATE-----" not in params["ca"]:
        module.fail_json(msg="Option ca is not a PEM certificate (no BEGIN CERTIFICATE line); nothing was changed.")
    if bool(params["username"]) != bool(params["password"]):
        module.fail_json(msg="Options username and password go together: set both or neither; nothing was changed.")
    if params["username"] and ":" in params["username"]:
        module.fail_json(msg="Option username must not contain ':' (an auth file stores user:password); nothing was changed.")
    if params["username"]:
        try:
            validate_registry(params["mirror"].strip().rstrip("/"))
        except ValueError as exc:
            module.fail_json(msg="Option mirror: %s; nothing was changed." % exc)
    for option in ("registries_conf", "ca_path"):
        if params[option] and os.path.isdir(params[option]):
            module.fail_json(msg="Option %s %s is a directory, not a file; nothing was changed." % (option, params[option]))


def main():
    module = AnsibleModule(
        argument_spec=dict(
            **dict(dropin_argument_spec(), mirror=dict(type="str", required=True)),
            registries_conf=dict(type="path", default="/etc/containers/registries.conf.d/999-microshift-mirror.conf"),
            ca=dict(type="str"),
            ca_path=dict(type="path"),
            trust_command=dict(type="list", elements="str", default=[]),
            certs_d=dict(type="bool", default=False),
            certs_d_dir=dict(type="path", default="/etc/containers/certs.d"),
            username=dict(type="str"),
            password=dict(type="str", no_log=True),
            auth_files=dict(type="list", elements="path", default=["/etc/crio/openshift-pull-secret"]),
            owner=dict(type="str"),
            group=dict(type="str"),
        ),
        supports_check_mode=True,
    )
    _check_options(module)
    params = module.params
    files, registries, location = _plan(module)
    if params["insecure"]:
        module.warn(insecure_warning(params["registries_conf"], location))
    try:
        changing = [(entry, diff) for entry, diff in files
                    if file_differs(entry["path"], entry["data"], entry["mode"], entry.get("owner"), entry.get("group"))]
    except HostStateError as exc:
        module.fail_json(msg="%s; nothing was changed." % exc)
    result = dict(changed=bool(changing), changed_files=[entry["path"] for entry, dummy in changing], trust_store_rebuilt=False,
                  registries=registries, mirror_location=location, diff=[diff for dummy, diff in changing])
    if module.check_mode or not changing:
        module.exit_json(**result)

    def move(temp, target):
        module.add_cleanup_file(temp)
        module.atomic_move(temp, target)

    try:
        journal = apply_files([entry for entry, dummy in changing], move=move)
    except HostStateError as exc:
        module.fail_json(msg="The mirror configuration was not applied: %s." % exc)
    if params["ca_path"] in journal["changed"] and params["trust_command"]:
        rc, dummy, err = module.run_command(params["trust_command"])
        if rc != 0:
            why = (to_native(err).strip().splitlines() or ["no output"])[0]
            try:
                undo_files(journal)
            except HostStateError as exc:
                module.fail_json(msg="The trust store command %s failed (rc %d: %s), and putting back the files failed: %s."
                                 % (" ".join(params["trust_command"]), rc, why, exc))
            module.run_command(params["trust_command"])
            module.fail_json(msg="The trust store command %s failed (rc %d: %s); the files were put back as they were."
                             % (" ".join(params["trust_command"]), rc, why))
        result["trust_store_rebuilt"] = True
    module.exit_json(**result)


if __name__ == "__main__":
    main()
