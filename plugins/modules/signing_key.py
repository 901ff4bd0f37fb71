#!/usr/bin/python
# Copyright: airgap.microshift contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r"""
---
module: signing_key
short_description: Generate the key pair that signs transfer sets
version_added: 0.1.0
description:
  - Makes sure a private key file and its public key file exist on the host; it generates the pair when the
    private key is missing, and (re)writes the public key from the private one when it is missing or
    differs. An existing private key is kept, never replaced, unless O(force=true).
  - The private key stays on the connected side, where M(airgap.microshift.image_bundle) signs transfer sets
    with it; the public key is installed on the air-gapped side (by hand or by your own configuration
    management, never on the medium), where M(airgap.microshift.image_bundle) checks the sets against it.
  - The same keys sign sigstore image signatures (ECDSA P-256, O(key_format=sigstore)).
author:
  - airgap.microshift contributors (@airgap-microshift)
requirements:
  - the Python package C(cryptography) on the host (C(python3-cryptography) on RHEL)
  - the Python package C(pynacl) for O(key_format=sigstore) and O(key_format=cosign)
extends_documentation_fragment:
  - ansible.builtin.files
  - airgap.microshift.attributes
  - airgap.microshift.attributes.files
attributes:
  check_mode:
    support: full
    details: Tells whether the pair would be generated or the public key rewritten; writes nothing.
  diff_mode:
    support: none
  idempotent:
    support: full
    details: An existing private key that reads with the passphrase is kept; a second run changes nothing.
  safe_file_operations:
    support: full
    details: A new private key file is never readable by others, not even before its mode is set.
options:
  path:
    description:
      - The private key file. Its directory must exist.
    type: path
    required: true
  public_key_path:
    description:
      - The public key file (SubjectPublicKeyInfo PEM). Defaults to O(path) with C(.pub) appended.
    type: path
  state:
    description:
      - V(present) makes sure both files exist; V(absent) removes both.
    type: str
    choices: [present, absent]
    default: present
  key_type:
    description:
      - The algorithm of a generated key. V(ecdsa-p256) is what cosign and containers/image use for sigstore
        signatures.
    type: str
    choices: [ecdsa-p256, ed25519]
    default: ecdsa-p256
  key_format:
    description:
      - How a generated private key is written. V(pkcs8) is PKCS#8 PEM (encrypted with O(passphrase) when one is
        given), what C(openssl) reads. V(sigstore) and V(cosign) are the encrypted PEM of containers/image and
        cosign (C(skopeo --sign-by-sigstore-private-key)); they need O(passphrase) and an ECDSA P-256 key.
    type: str
    choices: [pkcs8, sigstore, cosign]
    default: pkcs8
  passphrase:
    description:
      - The passphrase of the private key. Without one a V(pkcs8) key is written unencrypted; then protect it by
        its file mode and the host alone.
    type: str
  force:
    description:
      - Generate a new pair even when a private key exists (a key rotation on the connected side; trust the new
        public key on the air-gapped side first).
    type: bool
    default: false
  mode:
    description:
      - The mode of the private key file.
      - The other common file options (O(owner), O(group), SELinux context, O(attributes)) apply to both files.
    type: raw
    default: "0600"
  public_key_mode:
    description:
      - The mode of the public key file.
    type: raw
    default: "0644"
seealso:
  - module: airgap.microshift.image_bundle
notes:
  - See C(docs/signing.md) for where each half lives on both sites and how to rotate a key.
"""

EXAMPLES = r"""
---
- name: Make sure the connected side has its transfer signing key
  airgap.microshift.signing_key:
    path: /etc/airgap-microshift/transfer-signing.key
    passphrase: "{{ vault_transfer_signing_passphrase }}"
  register: signing

- name: Show the public key to install on the air-gapped side
  ansible.builtin.debug:
    msg: "{{ signing.public_key }}"

- name: A key in the format skopeo signs images with
  airgap.microshift.signing_key:
    path: /etc/airgap-microshift/image-signing.key
    key_format: sigstore
    passphrase: "{{ vault_image_signing_passphrase }}"
"""

RETURN = r"""
path:
  description: The private key file.
  returned: always
  type: str
  sample: /etc/airgap-microshift/transfer-signing.key
public_key_path:
  description: The public key file.
  returned: always
  type: str
  sample: /etc/airgap-microshift/transfer-signing.key.pub
public_key:
  description: The public key (SubjectPublicKeyInfo PEM), to install on the air-gapped side.
  returned: state is present and the key exists (or would, in check mode after a generation it cannot show)
  type: str
  sample: "-----BEGIN PUBLIC KEY-----\nMFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE...\n-----END PUBLIC KEY-----\n"
fingerprint:
  description: The sha256 of the public key's DER encoding, as image_bundle reports C(signed_by).
  returned: state is present and the key exists
  type: str
  sample: sha256:4cc3225418d055bbea8a74144125ca25b6223ccc57504e7be5ada3911613477e
key_type:
  description: The algorithm of the key.
  returned: state is present and the key exists
  type: str
  sample: ecdsa-p256
generated:
  description: Whether a new pair was (or, in check mode, would be) generated.
  returned: state is present
  type: bool
  sample: true
"""

import os

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.airgap.microshift.plugins.module_utils import _signing
from ansible_collections.airgap.microshift.plugins.module_utils._files import ensure_file


def _absent(module, path, public_path):
    present = [p for p in (path, public_path) if os.path.lexists(p)]
    if present and not module.check_mode:
        for item in present:
            os.unlink(item)
    module.exit_json(changed=bool(present), path=path, public_key_path=public_path)


def main():
    module = AnsibleModule(
        argument_spec=dict(
            path=dict(type="path", required=True),
            public_key_path=dict(type="path"),
            state=dict(type="str", choices=["present", "absent"], default="present"),
            key_type=dict(type="str", choices=list(_signing.KEY_TYPES), default="ecdsa-p256"),
            key_format=dict(type="str", choices=list(_signing.KEY_FORMATS), default="pkcs8"),
            passphrase=dict(type="str", no_log=True),
            force=dict(type="bool", default=False),
            mode=dict(type="raw", default="0600"),
            public_key_mode=dict(type="raw", default="0644"),
        ),
        add_file_common_args=True,
        supports_check_mode=True,
    )
    params = module.params
    path = params["path"]
    public_path = params["public_key_path"] or path + ".pub"
    if params["state"] == "absent":
        _absent(module, path, public_path)
    if not _signing.HAS_CRYPTOGRAPHY:
        module.fail_json(msg="The Python package cryptography (python3-cryptography on RHEL) is needed on this host: %s."
                         % _signing.CRYPTOGRAPHY_IMPORT_ERROR)
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        module.fail_json(msg="The directory %s of the key file %s does not exist." % (directory, path))
    if params["key_format"] != "pkcs8" and not params["passphrase"]:
        module.fail_json(msg="key_format %s writes an encrypted key: give its passphrase." % params["key_format"])
    try:
        key = None
        if os.path.lexists(path) and not params["force"]:
            key = _signing.read_private_key(path, params["passphrase"])
        generated = key is None
        if generated:
            key = _signing.generate_private_key(params["key_type"])
            private_pem = _signing.private_key_pem(key, params["passphrase"], params["key_format"])
    except _signing.SigningError as exc:
        module.fail_json(msg="%s; the key file was left as it was." % str(exc).rstrip("."))
    public_pem = _signing.public_key_pem(key)
    result = dict(path=path, public_key_path=public_path, generated=generated, key_type=_signing.key_type(key),
                  public_key=public_pem.decode("ascii"), fingerprint=_signing.fingerprint(key.public_key()))
    changed = ensure_file(module, path, private_pem if generated else None, what="path")
    changed = ensure_file(module, public_path, public_pem, what="public_key_path", mode=params["public_key_mode"]) or changed
    module.exit_json(changed=changed, **result)


if __name__ == "__main__":
    main()
