#!/usr/bin/python
# Copyright: airgap.microshift contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r"""
---
module: registries_d
short_description: Make a host's containers tools read sigstore attachments from a mirror (registries.d)
version_added: 0.1.0
description:
  - Writes a containers-registries.d(5) file (C(/etc/containers/registries.d/*.yaml)) that sets
    C(use-sigstore-attachments) to V(true) for each of O(namespaces), so podman, skopeo and CRI-O read an
    image's signatures from the C(sha256-<hex>.sig) tags next to it.
  - Behind a mirror, the containers tools read the image and its signatures from the MIRROR, and
    look this setting up by the mirror's repository, so name the mirror (C(host:port), with its namespace
    path if the images are mirrored under one). The signature policy itself
    (M(airgap.microshift.containers_policy)) names the original registries.
  - The containers tools refuse the whole registries.d directory (so every pull fails) when two of its
    files define the same namespace or C(default-docker); the other C(*.yaml) files of the directory
    are read first and the module fails, naming the file, rather than write such a duplicate. The new
    file is rendered, read back and written atomically.
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
      - The file to write. It must end in C(.yaml); the containers tools read no other file of the directory.
    type: path
    default: /etc/containers/registries.d/microshift-mirror.yaml
  state:
    description: V(present) writes the file; V(absent) removes it.
    type: str
    choices: [present, absent]
    default: present
  namespaces:
    description:
      - Registry namespaces (C(host[:port][/path])) whose images' sigstore attachments are read, such as
        the mirror C(mirror.example.com:8443). Required with O(state=present).
    type: list
    elements: str
    default: []
  header:
    description: Comment lines at the top of the file, such as C(ansible_managed).
    type: str
  mode:
    description:
      - The permissions of the file, in octal notation such as V('0644').
      - The other common file options (O(owner), O(group), SELinux context, O(attributes)) apply to the file too;
        unset, they leave the file as it is.
    type: raw
    default: '0644'
seealso:
  - module: airgap.microshift.containers_policy
  - module: airgap.microshift.signature_check
"""

EXAMPLES = r"""
---
- name: Read signatures from the mirror's attachments
  airgap.microshift.registries_d:
    namespaces:
      - mirror.example.com:8443
    header: "{{ ansible_managed }}"
"""

RETURN = r"""
path:
  description: The file.
  returned: always
  type: str
  sample: /etc/containers/registries.d/microshift-mirror.yaml
content:
  description: The content of the file after the task (empty when absent).
  returned: always
  type: str
  sample: "docker:\n  mirror.example.com:8443:\n    use-sigstore-attachments: true\n"
"""

import os

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.common.text.converters import to_bytes, to_native

from ansible_collections.airgap.microshift.plugins.module_utils import _registries_d
from ansible_collections.airgap.microshift.plugins.module_utils._files import ensure_file, read_limited


def _read(module, path):
    try:
        return read_limited(path, _registries_d.MAX_FILE).decode("utf-8")
    except OSError as exc:
        if getattr(exc, "errno", None) == 2:
            return None
        module.fail_json(msg="Cannot read %s: %s." % (path, to_native(exc)))
    except UnicodeDecodeError:
        module.fail_json(msg="%s is not UTF-8 text." % path)
    return None


def _neighbours(module, path):
    """The other ``*.yaml`` files of the directory, parsed: a broken or duplicate one fails the task."""
    directory = os.path.dirname(path) or "."
    docs = []
    if not os.path.isdir(directory):
        return docs
    for name in sorted(os.listdir(directory)):
        other = os.path.join(directory, name)
        if not name.endswith(".yaml") or os.path.abspath(other) == os.path.abspath(path) or not os.path.isfile(other):
            continue
        try:
            docs.append((other, _registries_d.parse(_read(module, other) or "", other)))
        except _registries_d.RegistriesDError as exc:
            module.fail_json(msg="%s The containers tools cannot read the directory %s either; %s was not written." % (
                to_native(exc), directory, path))
    return docs


def main():
    module = AnsibleModule(
        argument_spec=dict(
            path=dict(type="path", default="/etc/containers/registries.d/microshift-mirror.yaml"),
            state=dict(type="str", choices=["present", "absent"], default="present"),
            namespaces=dict(type="list", elements="str", default=[]),
            header=dict(type="str"),
            mode=dict(type="raw", default="0644"),
        ),
        add_file_common_args=True,
        supports_check_mode=True,
    )
    params = module.params
    path = params["path"]
    if not path.endswith(".yaml"):
        module.fail_json(msg="The path %s does not end in .yaml; the containers tools would ignore it." % path)
    if os.path.isdir(path):
        module.fail_json(msg="The path %s is a directory." % path)
    before = _read(module, path)
    if params["state"] == "absent":
        changed = before is not None
        if changed and not module.check_mode:
            try:
                os.unlink(path)
            except OSError as exc:
                module.fail_json(msg="Cannot remove %s: %s." % (path, to_native(exc)))
        module.exit_json(changed=changed, path=path, content="", diff={"before": before or "", "after": ""})
    try:
        doc = _registries_d.attachments_document([n.strip().rstrip("/") for n in params["namespaces"]])
        content = _registries_d.checked_render(doc, params["header"], path)
        _registries_d.merge_files(_neighbours(module, path) + [(path, doc)])
    except _registries_d.RegistriesDError as exc:
        module.fail_json(msg="Option namespaces: %s %s was not written." % (to_native(exc), path))
    directory = os.path.dirname(path) or "."
    if not os.path.isdir(directory):
        changed = True  # the directory and the file are created (in check mode, would be)
        if not module.check_mode:
            try:
                os.makedirs(directory, 0o755)
            except OSError as exc:
                module.fail_json(msg="Cannot create the directory %s: %s." % (directory, to_native(exc)))
    if os.path.isdir(directory):
        changed = ensure_file(module, path, to_bytes(content), what="path")
    module.exit_json(changed=changed, path=path, content=content,
                     diff={"before": before or "", "after": content, "before_header": path, "after_header": path})


if __name__ == "__main__":
    main()
