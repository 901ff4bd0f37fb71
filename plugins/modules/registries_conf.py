#!/usr/bin/python
# Copyright: airgap.microshift contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r"""
---
module: registries_conf
short_description: Write a validated registries.conf drop-in that sends image pulls to a mirror registry
version_added: 0.1.0
description:
  - Writes a C(containers-registries.conf.d) drop-in (registries.conf version 2) that makes CRI-O, podman
    and skopeo pull the images of the source registries (C(quay.io), C(registry.redhat.io),
    C(registry.access.redhat.com) and every other registry named in O(images)) from a mirror registry.
  - The module renders the TOML itself from these options. Before the file lands, the settings are
    checked against the registries.conf version 2 schema (known keys and types, a location on every
    table, a valid C(host[:port][/path]) location, no duplicate prefix), and the rendered text is read
    back by a strict TOML parser (and by Python's C(tomllib) where the host has it); both must give back
    the same settings.
  - The new content is written to a temporary file in the target directory and moved into place
    atomically, so a half-written or invalid drop-in never exists; an invalid one fails the task and
    leaves the current file as it was.
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
  idempotent:
    support: full
  safe_file_operations:
    support: full
options:
  path:
    description:
      - The drop-in file.
      - Its directory is created (mode C(0755)) when missing.
    type: path
    default: /etc/containers/registries.conf.d/999-microshift-mirror.conf
  state:
    description:
      - V(present) writes the drop-in, V(absent) removes it.
    type: str
    choices: [present, absent]
    default: present
  mirror:
    description:
      - The mirror registry, as C(host) or C(host:port). Required when O(state=present).
    type: str
  namespace:
    description:
      - A path on the mirror in front of every mirrored repository (C(<mirror>/<namespace>/<repository>)).
    type: str
  registries:
    description:
      - The source registries whose pulls go to the mirror.
    type: list
    elements: str
    default: [quay.io, registry.redhat.io, registry.access.redhat.com]
  images:
    description:
      - Image references; the registry of each one is mirrored too (for example C(ghcr.io)).
    type: list
    elements: str
    default: []
  digest_only:
    description:
      - Write C(mirror-by-digest-only = true), so only C(@sha256:) references are pulled from the mirror;
        references by tag still go to the source registry.
    type: bool
    default: true
  insecure:
    description:
      - Allow plain HTTP or unverified TLS to the mirror (C(insecure = true)). Anyone on the path can then
        read and change the images; the module warns.
    type: bool
    default: false
  additional_registries:
    description:
      - More C(registry) tables, each a dictionary with the registries.conf keys (C(prefix), C(location),
        C(insecure), C(blocked), C(mirror-by-digest-only), C(mirror) as a list of dictionaries with
        C(location), C(insecure), C(pull-from-mirror)). They are validated like the generated ones.
    type: list
    elements: dict
    default: []
  header:
    description:
      - Text written at the top of the file as TOML comments (each line prefixed with C(# )), for
        example the value of the C(DEFAULT_MANAGED_STR) setting.
    type: str
  mode:
    description:
      - The permissions of the file, in octal notation such as V('0644').
      - The other common file options (O(owner), O(group), SELinux context, O(attributes)) apply to the file too;
        unset, they leave the file as it is.
    type: raw
    default: '0644'
notes:
  - Containers tools read the drop-ins of C(/etc/containers/registries.conf.d) in name order, later files
    overriding earlier ones for the same prefix; the default name C(999-...) puts this one last.
seealso:
  - module: airgap.microshift.mirror_check
  - name: containers-registries.conf(5)
    description: The registries.conf version 2 format.
    link: https://github.com/containers/image/blob/main/docs/containers-registries.conf.5.md
"""

EXAMPLES = r"""
---
- name: Send pulls of the release images to the site mirror, by digest only
  airgap.microshift.registries_conf:
    mirror: mirror.example.com:8443
    images: "{{ image_list_images }}"
    header: Managed by Ansible, do not edit
    owner: root
    group: root

- name: Use a namespace on the mirror and also block docker.io
  airgap.microshift.registries_conf:
    path: /etc/containers/registries.conf.d/999-microshift-mirror.conf
    mirror: mirror.example.com:8443
    namespace: microshift
    additional_registries:
      - location: docker.io
        blocked: true

- name: Remove the drop-in
  airgap.microshift.registries_conf:
    state: absent
"""

RETURN = r"""
path:
  description: The drop-in file.
  returned: always
  type: str
  sample: /etc/containers/registries.conf.d/999-microshift-mirror.conf
content:
  description: The content of the drop-in (empty with O(state=absent)).
  returned: always
  type: str
  sample: "[[registry]]\nlocation = \"mirror.example.com:8443\"\n"
registries:
  description: The source registries sent to the mirror, in file order.
  returned: always
  type: list
  elements: str
  sample: [quay.io, registry.redhat.io, registry.access.redhat.com, ghcr.io]
mirror_location:
  description: Where the repositories of every source registry live on the mirror (C(mirror[/namespace])).
  returned: when O(state=present)
  type: str
  sample: mirror.example.com:8443/microshift
"""

import os

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.common.text.converters import to_bytes, to_native

from ansible_collections.airgap.microshift.plugins.module_utils._files import ensure_file
from ansible_collections.airgap.microshift.plugins.module_utils._registries_conf import (
    DropinOptionError, build_dropin, dropin_argument_spec, insecure_warning,
)


def _read(path):
    try:
        with open(path, "rb") as handle:
            return handle.read().decode("utf-8", "replace")
    except OSError:
        return None


def _build(module):
    params = module.params
    try:
        content, registries, location = build_dropin(
            params["mirror"], params["namespace"], params["registries"], params["images"], digest_only=params["digest_only"],
            insecure=params["insecure"], additional=params["additional_registries"], header=params["header"], path=params["path"])
    except DropinOptionError as exc:
        module.fail_json(msg=to_native(exc), **({"errors": exc.errors} if exc.errors else {}))
    if params["insecure"]:
        module.warn(insecure_warning(params["path"], location))
    return content, registries, location


def _make_directory(module, path):
    directory = os.path.dirname(path) or "."
    if not os.path.isdir(directory) and not module.check_mode:
        try:
            os.makedirs(directory, 0o755)
        except OSError as exc:
            module.fail_json(msg="Cannot create the directory %s: %s." % (directory, to_native(exc)))


def main():
    module = AnsibleModule(
        argument_spec=dict(
            path=dict(type="path", default="/etc/containers/registries.conf.d/999-microshift-mirror.conf"),
            state=dict(type="str", choices=["present", "absent"], default="present"),
            mode=dict(type="raw", default="0644"),
            **dropin_argument_spec()
        ),
        required_if=[("state", "present", ["mirror"])],
        add_file_common_args=True,
        supports_check_mode=True,
    )
    path = module.params["path"]
    if os.path.isdir(path):
        module.fail_json(msg="The drop-in path %s is a directory." % path)
    before = _read(path)
    diff = {"before": before or "", "after": "", "before_header": path, "after_header": path}

    if module.params["state"] == "absent":
        changed = before is not None or os.path.lexists(path)
        if changed and not module.check_mode:
            try:
                os.unlink(path)
            except OSError as exc:
                module.fail_json(msg="Cannot remove the drop-in %s: %s." % (path, to_native(exc)))
        module.exit_json(changed=changed, path=path, content="", registries=[], diff=diff)

    content, registries, location = _build(module)
    diff["after"] = content
    if module.check_mode and not os.path.isdir(os.path.dirname(path) or "."):
        changed = True  # the directory and the file would be created
    else:
        _make_directory(module, path)
        changed = ensure_file(module, path, to_bytes(content), what="path")
    module.exit_json(changed=changed, path=path, content=content, registries=registries, mirror_location=location, diff=diff)


if __name__ == "__main__":
    main()
