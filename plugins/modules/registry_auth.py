#!/usr/bin/python
# Copyright: airgap.microshift contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r"""
---
module: registry_auth
short_description: Add, update or remove one registry's credentials in a containers auth file
version_added: 0.1.0
description:
  - Manages one entry of a containers auth file (containers-auth.json(5)), the file skopeo,
    podman and CRI-O read registry credentials from, for example the pull secret used for
    mirroring or C(/etc/crio/openshift-pull-secret) on a MicroShift host.
  - Every other entry and every other top-level key of the file is kept.
  - The file is written through a temporary file in the same directory and an atomic rename, so
    a half-written auth file never exists. A new file is never readable by others, even briefly.
  - A malformed file (invalid JSON, C(auths) not an object, an entry whose C(auth) is not base64
    C(user:password)) fails the task and is left untouched.
  - The diff shows registries and user names only; passwords and tokens are masked.
author:
  - airgap.microshift contributors (@airgap-microshift)
extends_documentation_fragment:
  - ansible.builtin.files
  - airgap.microshift.attributes
  - airgap.microshift.attributes.files
attributes:
  check_mode:
    support: full
  diff_mode:
    support: full
    details: Secrets are masked in the diff.
  idempotent:
    support: full
    details: Entries are compared after decoding, so rewriting the same credentials is not a change.
  safe_file_operations:
    support: full
    details: A new file is never readable by others, not even before its mode is set.
options:
  path:
    description: The auth file.
    type: path
    required: true
  registry:
    description:
      - The key of the entry, C(host[:port][/namespace]) as containers-auth.json(5) describes it,
        without a scheme (V(quay.io), V(mirror.example.com:8443)).
    type: str
    required: true
  username:
    description: User name. Required with O(state=present).
    type: str
  password:
    description: Password or token. Required with O(state=present).
    type: str
  email:
    description: Optional e-mail address stored in the entry (some pull secrets carry one).
    type: str
  state:
    description: Whether the entry should exist.
    type: str
    choices: [present, absent]
    default: present
  create_dir:
    description:
      - Create the parent directory (mode C(0700)) when it does not exist. Otherwise a missing
        directory fails the task, naming it.
    type: bool
    default: false
  mode:
    description:
      - Permissions of the file. A file with other permissions is fixed (and reported as changed).
      - The other common file options (O(owner), O(group), SELinux context, O(attributes)) apply to the file too.
    type: raw
    default: '0600'
seealso:
  - module: airgap.microshift.image_download
"""

EXAMPLES = r"""
---
- name: Store the credentials used to mirror from quay.io
  airgap.microshift.registry_auth:
    path: /root/.config/containers/auth.json
    registry: quay.io
    username: "{{ quay_user }}"
    password: "{{ quay_token }}"
    create_dir: true

- name: Let CRI-O pull from the mirror registry
  airgap.microshift.registry_auth:
    path: /etc/crio/openshift-pull-secret
    registry: mirror.example.com:8443
    username: microshift
    password: "{{ mirror_password }}"
    mode: '0600'
    owner: root
    group: root

- name: Remove an old entry
  airgap.microshift.registry_auth:
    path: /etc/crio/openshift-pull-secret
    registry: old-mirror.example.com:5000
    state: absent
"""

RETURN = r"""
path:
  description: The auth file.
  returned: always
  type: str
  sample: /etc/crio/openshift-pull-secret
registry:
  description: The entry managed.
  returned: always
  type: str
  sample: mirror.example.com:8443
diff:
  description: Registries and user names before and after, secrets masked (also shown with C(--diff)).
  returned: always
  type: dict
  sample:
    before: {"auths": {"quay.io": {"username": "robot", "auth": "********"}}}
    after: {"auths": {"quay.io": {"username": "robot", "auth": "********"},
                      "mirror.example.com:8443": {"username": "microshift", "auth": "********"}}}
"""

import os

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.common.text.converters import to_bytes, to_native

from ansible_collections.airgap.microshift.plugins.module_utils._authfile import (
    AuthFileError, dumps, masked, read_authfile, remove_credentials, set_credentials, validate_registry,
)
from ansible_collections.airgap.microshift.plugins.module_utils._files import ensure_file


def _read(module, path):
    if not os.path.exists(path):
        return {"auths": {}}, False
    try:
        return read_authfile(path), True
    except AuthFileError as exc:
        module.fail_json(msg=str(exc))


def main():
    module = AnsibleModule(
        argument_spec=dict(
            path=dict(type="path", required=True),
            registry=dict(type="str", required=True),
            username=dict(type="str"),
            password=dict(type="str", no_log=True),
            email=dict(type="str"),
            state=dict(type="str", choices=["present", "absent"], default="present"),
            create_dir=dict(type="bool", default=False),
            mode=dict(type="raw", default="0600"),
        ),
        required_if=[("state", "present", ("username", "password"))],
        add_file_common_args=True,
        supports_check_mode=True,
    )
    path = module.params["path"]
    registry = module.params["registry"]
    try:
        validate_registry(registry)
    except ValueError as exc:
        module.fail_json(msg="registry: %s" % exc)
    if module.params["state"] == "present" and ":" in module.params["username"]:
        module.fail_json(msg="username for %s must not contain ':' (the auth file stores user:password)" % registry)

    directory = os.path.dirname(path) or "."
    result = dict(changed=False, path=path, registry=registry)
    if not os.path.isdir(directory):
        if not module.params["create_dir"]:
            module.fail_json(msg="the directory %s of %s does not exist; create it or set create_dir: true" % (directory, path))
        result["changed"] = True
        if not module.check_mode:
            try:
                os.makedirs(directory, 0o700)
            except OSError as exc:
                module.fail_json(msg="cannot create directory %s: %s" % (directory, to_native(exc)))

    data, exists = _read(module, path)
    if module.params["state"] == "present":
        new, content_changed = set_credentials(data, registry, module.params["username"], module.params["password"],
                                               module.params["email"])
    else:
        new, content_changed = remove_credentials(data, registry)
    # an absent entry in an absent file: nothing to create
    if module.params["state"] == "absent" and not exists:
        content_changed = False
    result["diff"] = {"before": masked(data) if exists else {}, "after": masked(new) if (exists or content_changed) else {}}
    if (exists or content_changed) and os.path.isdir(directory):
        # entries are compared decoded: a file that says the same in other words is left as it is
        written = ensure_file(module, path, to_bytes(dumps(new)) if content_changed else None, what="path")
        result["changed"] = result["changed"] or written
    module.exit_json(**result)


if __name__ == "__main__":
    main()
