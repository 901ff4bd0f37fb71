#!/usr/bin/python
# Copyright: airgap.microshift contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r"""
---
module: image_bundle
short_description: Carry an image store across an air gap as verified volumes
version_added: 0.1.0
description:
  - Turns an image store (see C(docs/store-format.md)) into a transfer set of volume
    directories C(vol-001), C(vol-002)... that fit on removable media, checks such a set on the
    air-gapped side, rebuilds the store from it, and records what the air-gapped side holds so
    the next set carries only new blobs.
  - The set is signed on the connected side (O(signing_key)) and checked on the air-gapped side against
    the public keys installed there (O(trusted_keys)) before anything else is read from the medium. The
    signature covers C(bundle.json), which lists the path, size and sha256 of every file of every volume,
    so a changed byte, an added file or a volume from another set is refused.
  - The medium is read as hostile data. Only the files the set lists are opened, never through a symbolic
    link, only regular files of exactly the recorded size; anything else in a volume is reported and
    not opened. The set's C(store.json) and layouts are checked against the signed manifest, and an
    image already in the store is never replaced by another digest.
  - Every file name in a transfer set is portable (ASCII letters, digits, C(-), C(_), C(.)) and no
    file is larger than O(part_size), so FAT32, exFAT, NTFS, UDF and ISO 9660 media all take it.
  - Each volume holds a C(bundle.json) manifest and a C(SHA256SUMS) file in coreutils format, so
    C(cd vol-001 && sha256sum -c SHA256SUMS) checks a volume by hand, and C(bundle.json.sig) is the base64
    signature C(cosign sign-blob) would write (C(openssl dgst -sha256 -verify) checks it by hand).
  - Blobs are hashed while they are copied, in both directions; a blob whose content does not match
    its digest is never packed and never written into a store.
author:
  - airgap.microshift contributors (@airgap-microshift)
requirements:
  - the Python package C(cryptography) on the host that runs the module (C(python3-cryptography) on RHEL), to sign or check
    signatures
  - the Python package C(pynacl) only to read a signing key in the encrypted sigstore/cosign format
options:
  state:
    description:
      - V(pack) writes the transfer set at O(dest) from the store at O(store).
      - V(verify) checks the volumes under O(src) (sizes, then the sha256 of every file) and fails
        naming the missing volumes and the missing, short or corrupt files.
      - V(unpack) rebuilds or updates the store at O(store) from the volumes under O(src).
      - V(receipt) writes to O(dest) what the store at O(store) holds, to carry back to the
        connected side for the next delta (O(receipt)).
    type: str
    required: true
    choices: [pack, verify, unpack, receipt]
    aliases: [action]
  store:
    description:
      - The image store. Read by V(pack) and V(receipt), written by V(unpack).
      - Required with O(state=pack), O(state=unpack) and O(state=receipt).
    type: path
  dest:
    description:
      - With O(state=pack), the directory the volume directories are written into (a mounted
        medium or a staging directory). Created when missing.
      - With O(state=receipt), the receipt file to write.
    type: path
  src:
    description:
      - With O(state=verify) and O(state=unpack), where the volumes are. Each path is a volume
        directory (C(vol-NNN)) or a directory holding volume directories, for example the mount
        points of several media. The volumes may be found in any order.
    type: list
    elements: path
  volume_size:
    description:
      - The largest volume, in bytes or with a unit (V(700MiB), V(4.7GB), V(2G); C(K), C(M), C(G), C(T)
        alone are decimal, C(KiB), C(MiB), C(GiB), C(TiB) binary) or the name of a medium
        (V(fat32) = 4 GiB - 1 byte, V(cd) = 737280000, V(dvd) = 4700372992, V(dvd-dl) = 8543666176,
        V(bd25) = 25025314816, V(bd50) = 50050629632).
      - Counts every file of the volume, C(bundle.json) and C(SHA256SUMS) included.
      - When omitted, the set is one volume.
    type: str
  part_size:
    description:
      - The largest file. A blob larger than this or than a volume is split into numbered parts
        (C(<hex>.part-001)...), joined again by O(state=unpack).
      - The default keeps every file within FAT32's limit.
    type: str
    default: fat32
  release:
    description:
      - A label recorded in the manifest and the receipt, for example the MicroShift version.
    type: str
  versions:
    description:
      - Further version labels recorded in the manifest (for example each component's version).
    type: list
    elements: str
    default: []
  receipt:
    description:
      - With O(state=pack), a receipt written by O(state=receipt) on the air-gapped side; the set
        then carries only the blobs the receipt does not list (a delta).
    type: path
  base:
    description:
      - With O(state=pack), the C(bundle.json) of an earlier set that the air-gapped side has
        unpacked; the new set is a delta that carries only the blobs that set did not hold.
    type: path
  parallel:
    description:
      - How many files are copied or hashed at the same time.
    type: int
    default: 4
  link:
    description:
      - With O(state=pack), hard-link whole blobs into the volumes instead of copying them when
        O(dest) is on the store's filesystem (a staging directory). The blobs are still hashed.
    type: bool
    default: false
  signing_key:
    description:
      - With O(state=pack), the private key that signs the set, a file on the host that packs, in PKCS#8 PEM
        (plain or passphrase-encrypted, as M(airgap.microshift.signing_key) or C(openssl genpkey) writes it)
        or the encrypted sigstore/cosign PEM (needs C(pynacl)). ECDSA P-256, ECDSA P-384 or Ed25519.
      - Required with O(state=pack) unless O(allow_unsigned=true).
    type: path
  signing_key_passphrase:
    description:
      - The passphrase of an encrypted O(signing_key).
    type: str
  trusted_keys:
    description:
      - With O(state=verify) and O(state=unpack), the public keys (SubjectPublicKeyInfo PEM files on the air-gapped
        host; a file may hold several) a set may be signed with. Several keys are accepted at once, so a
        key can be rotated (trust the new key next to the old one, then drop the old one).
      - Required with O(state=verify) and O(state=unpack) unless O(allow_unsigned=true).
    type: list
    elements: path
    default: []
  allow_unsigned:
    description:
      - Accept working without signatures, with a warning. With O(state=pack), write an unsigned set when no
        O(signing_key) is given. With O(state=verify) and O(state=unpack), accept a set that is not signed, or
        check none when no O(trusted_keys) are given. A signature that does not verify against a given trusted
        key is always refused.
      - Only for sets whose origin is checked some other way.
    type: bool
    default: false
  volumes:
    description:
      - With O(state=pack), write only these volume numbers (for example V([2]) to fill the
        second medium). The plan is the same as for the whole set.
      - Part files of a split blob are hashed when they are written, so pack the whole set once
        before writing single volumes of a set that has parts.
    type: list
    elements: int
  mode:
    description:
      - With O(state=receipt), the permissions of the receipt file; a new one gets V('0644') when not set.
      - The common file options (O(mode), O(owner), O(group), SELinux context, O(attributes)) apply to the receipt
        file only; the other states refuse them (volumes are written on media that often keep no owner).
    type: raw
extends_documentation_fragment:
  - ansible.builtin.files
  - airgap.microshift.attributes
  - airgap.microshift.attributes.files
attributes:
  check_mode:
    support: full
    details: Returns the plan (volumes, bytes, files to write) and writes nothing.
  diff_mode:
    support: none
    details: Reports counts and lists of files, not a diff.
  idempotent:
    support: full
    details: Files already complete are found by size and recorded hash and skipped; a second run reports no change.
  safe_file_operations:
    support: full
    details: Every file is written under a temporary name in its directory, fsynced and renamed into place.
seealso:
  - module: ansible.posix.synchronize
notes:
  - A rerun of V(pack) or V(unpack) after an interruption completes the work, since every file is written
    under a temporary name and renamed only once complete and checked.
  - V(unpack) merges C(store.json) last, after every blob it lists is in place.
  - See C(docs/signing.md) for key generation, rotation and where each half of the key lives.
  - See C(docs/bundle-format.md) for the transfer set format.
"""

EXAMPLES = r"""
---
- name: Pack the store onto a mounted FAT32 stick in DVD-sized volumes, signed
  airgap.microshift.image_bundle:
    state: pack
    store: /srv/mirror/store
    dest: /run/media/usb0
    volume_size: dvd
    release: "4.20.1"
    signing_key: /etc/airgap-microshift/transfer-signing.key
    signing_key_passphrase: "{{ vault_transfer_signing_passphrase }}"

- name: Pack only what the air-gapped side lacks, from the receipt it sent back
  airgap.microshift.image_bundle:
    state: pack
    store: /srv/mirror/store
    dest: /srv/mirror/outgoing
    volume_size: 4GiB
    receipt: /srv/mirror/receipts/site-a.json
    release: "4.20.2"
    signing_key: /etc/airgap-microshift/transfer-signing.key
    signing_key_passphrase: "{{ vault_transfer_signing_passphrase }}"

- name: Check the volumes of two media on the air-gapped side
  airgap.microshift.image_bundle:
    state: verify
    src:
      - /run/media/usb0
      - /run/media/usb1
    trusted_keys:
      - /etc/airgap-microshift/transfer-trusted.pub

- name: Rebuild the store from them
  airgap.microshift.image_bundle:
    state: unpack
    src:
      - /run/media/usb0
      - /run/media/usb1
    store: /var/lib/mirror/store
    trusted_keys:
      - /etc/airgap-microshift/transfer-trusted.pub

- name: Record what the air-gapped store holds, to carry back
  airgap.microshift.image_bundle:
    state: receipt
    store: /var/lib/mirror/store
    dest: /run/media/usb0/receipt.json
"""

RETURN = r"""
bundle_id:
  description: The content address of the transfer set (the same store and options give the same id).
  returned: state is pack, verify or unpack
  type: str
  sample: sha256:6c3f8e0b2d0e3a1f4f1b7c9d5e2a8b0c6d4e2f1a3b5c7d9e1f3a5b7c9d1e3f5a
delta:
  description: Whether the set carries only the blobs missing on the air-gapped side.
  returned: state is pack, verify or unpack
  type: bool
  sample: false
base:
  description: What a delta builds on (a receipt or an earlier manifest); null for a full set.
  returned: state is pack
  type: dict
  sample: {"kind": "receipt", "id": "sha256:...", "file": "site-a.json", "release": "4.20.1"}
volume_count:
  description: How many volumes the set has.
  returned: state is pack or verify
  type: int
  sample: 3
volumes:
  description: The plan, per volume (name, total bytes, files, blobs).
  returned: state is pack
  type: list
  elements: dict
  sample: [{"name": "vol-001", "bytes": 4700000000, "files": 212, "blobs": 209}]
blobs:
  description: With pack, the blobs the set carries. With receipt, the blobs the store holds.
  returned: state is pack or receipt
  type: int
  sample: 209
parts:
  description: Part files of split blobs.
  returned: state is pack
  type: int
  sample: 2
base_blobs:
  description: Blobs of the store that a delta does not carry because the air-gapped side has them.
  returned: state is pack
  type: int
  sample: 180
unique_bytes:
  description: Bytes of the blobs the set carries.
  returned: state is pack
  type: int
  sample: 9876543210
bytes:
  description: With pack, bytes of the whole set (metadata included). With receipt, bytes of the blobs held.
  returned: state is pack or receipt
  type: int
  sample: 9876600000
files_to_write:
  description: Data files that were (or, in check mode, would be) written; complete ones are skipped.
  returned: state is pack
  type: int
  sample: 12
bytes_to_write:
  description: Bytes of the data files or blobs that were (or would be) written.
  returned: state is pack or unpack
  type: int
  sample: 123456789
files_written:
  description: Data files written by this run.
  returned: state is pack and not check mode
  type: int
  sample: 12
bytes_written:
  description: Bytes written by this run.
  returned: state is pack or unpack, not check mode
  type: int
  sample: 123456789
volumes_found:
  description: The volumes found under O(src).
  returned: state is verify
  type: list
  elements: str
  sample: [vol-001, vol-002]
missing_volumes:
  description: The volumes of the set not found under O(src).
  returned: state is verify, also on failure
  type: list
  elements: str
  sample: [vol-003]
missing:
  description: Files of the found volumes that are missing (volume/path).
  returned: state is verify, also on failure
  type: list
  elements: str
  sample: [vol-002/blobs/sha256/0f3a...]
short:
  description: Files shorter than recorded (volume/path).
  returned: state is verify, also on failure
  type: list
  elements: str
  sample: []
corrupt:
  description: Files whose sha256 (or size) does not match the record (volume/path).
  returned: state is verify, also on failure
  type: list
  elements: str
  sample: []
unexpected:
  description: Files, links or directories in a volume that the set does not list; they are not opened (volume/path).
  returned: state is verify, also on failure
  type: list
  elements: str
  sample: [vol-001/blobs/sha256/notes.txt]
signed_by:
  description: The fingerprint (sha256 of the public key's DER) of the key that signed the set; null when unsigned or not checked.
  returned: state is pack, verify or unpack
  type: str
  sample: sha256:4cc3225418d055bbea8a74144125ca25b6223ccc57504e7be5ada3911613477e
files_verified:
  description: Files checked.
  returned: state is verify
  type: int
  sample: 214
bytes_verified:
  description: Bytes hashed.
  returned: state is verify
  type: int
  sample: 9876600000
blobs_to_write:
  description: Blobs of the set the store did not hold yet.
  returned: state is unpack
  type: int
  sample: 31
blobs_written:
  description: Blobs written into the store by this run.
  returned: state is unpack and not check mode
  type: int
  sample: 31
blobs_present:
  description: Blobs of the set the store already held.
  returned: state is unpack
  type: int
  sample: 178
images:
  description: Images in the set (pack, unpack) or in the store (receipt).
  returned: state is pack, unpack or receipt
  type: int
  sample: 64
store:
  description: The store written.
  returned: state is unpack
  type: str
  sample: /var/lib/mirror/store
dest:
  description: The transfer set directory (pack) or the receipt file (receipt).
  returned: state is pack or receipt
  type: str
  sample: /run/media/usb0
receipt_id:
  description: The content address of the receipt.
  returned: state is receipt
  type: str
  sample: sha256:0b1c...
"""


from ansible.module_utils.basic import AnsibleModule

from ansible_collections.airgap.microshift.plugins.module_utils._bundle import (
    BundleError,
    canonical_json,
    load_signing_key,
    load_trusted_keys,
    make_receipt,
    pack,
    parse_size,
    unpack,
    verify,
    verify_message,
)
from ansible_collections.airgap.microshift.plugins.module_utils._files import ensure_file
from ansible_collections.airgap.microshift.plugins.module_utils._signing import HAS_CRYPTOGRAPHY, CRYPTOGRAPHY_IMPORT_ERROR


FILE_OPTIONS = ("mode", "owner", "group", "seuser", "serole", "selevel", "setype", "attributes")


def _receipt(module):
    params = module.params
    receipt, absent = make_receipt(params["store"], release=params["release"])
    if absent:
        module.warn("The store %s lists %d blob(s) it does not hold; the receipt leaves them out." % (params["store"], len(absent)))
    changed = ensure_file(module, params["dest"], canonical_json(receipt), what="dest", default_mode=0o644)
    return {"dest": params["dest"], "receipt_id": receipt["receipt_id"], "blobs": len(receipt["blobs"]),
            "bytes": receipt["bytes"], "images": len(receipt["images"]), "changed": changed}


def _keys(module, state):
    """The signing key (pack) or the trusted keys (verify, unpack); None when signatures are not used."""
    params = module.params
    if state == "receipt" or (not params["signing_key"] and not params["trusted_keys"]):
        if state in ("pack", "verify", "unpack") and not params["allow_unsigned"]:
            option = "signing_key" if state == "pack" else "trusted_keys"
            module.fail_json(msg="Option %s is required with state=%s: transfer sets are signed on the connected side and checked "
                                 "on the air-gapped side (set allow_unsigned to work without, with a warning)." % (option, state))
        if state == "pack":
            module.warn("The transfer set is written unsigned (allow_unsigned): the air-gapped side cannot tell who wrote it.")
        return None
    if not HAS_CRYPTOGRAPHY:
        module.fail_json(msg="Signing and verifying transfer sets need the Python package cryptography (python3-cryptography on "
                             "RHEL) on %s: %s." % ("the host that runs this module", CRYPTOGRAPHY_IMPORT_ERROR))
    if state == "pack":
        return load_signing_key(params["signing_key"], params["signing_key_passphrase"]) if params["signing_key"] else None
    return load_trusted_keys(params["trusted_keys"])


def _run(module, state, keys):
    """The result of ``state``; BundleError and OSError go to the caller."""
    params = module.params
    if state == "pack":
        volume_size = parse_size(params["volume_size"]) if params["volume_size"] else None
        return pack(params["store"], params["dest"], volume_size=volume_size, part_size=parse_size(params["part_size"], option="part_size"),
                    receipt=params["receipt"], base=params["base"], release=params["release"], versions=params["versions"],
                    parallel=params["parallel"], link=params["link"], only_volumes=params["volumes"], check_mode=module.check_mode,
                    signing_key=keys)
    if state == "verify":
        result, dummy, dummy2 = verify(params["src"], parallel=params["parallel"], trusted_keys=keys, allow_unsigned=params["allow_unsigned"])
        ok = result.pop("ok")
        for warning in result.pop("warnings"):
            module.warn(warning)
        if not ok:
            module.fail_json(msg=verify_message(result), **result)
        result["changed"] = False
        return result
    if state == "unpack":
        result = unpack(params["src"], params["store"], parallel=params["parallel"], check_mode=module.check_mode,
                        trusted_keys=keys, allow_unsigned=params["allow_unsigned"])
        for warning in result.pop("warnings"):
            module.warn(warning)
        return result
    return _receipt(module)


def main():
    module = AnsibleModule(
        argument_spec=dict(
            state=dict(type="str", required=True, choices=["pack", "verify", "unpack", "receipt"], aliases=["action"]),
            store=dict(type="path"),
            dest=dict(type="path"),
            src=dict(type="list", elements="path"),
            volume_size=dict(type="str"),
            part_size=dict(type="str", default="fat32"),
            release=dict(type="str"),
            versions=dict(type="list", elements="str", default=[]),
            receipt=dict(type="path"),
            base=dict(type="path"),
            parallel=dict(type="int", default=4),
            link=dict(type="bool", default=False),
            volumes=dict(type="list", elements="int"),
            signing_key=dict(type="path", no_log=False),
            signing_key_passphrase=dict(type="str", no_log=True),
            trusted_keys=dict(type="list", elements="path", default=[], no_log=False),
            allow_unsigned=dict(type="bool", default=False),
        ),
        add_file_common_args=True,
        required_if=[
            ("state", "pack", ("store", "dest")),
            ("state", "verify", ("src",)),
            ("state", "unpack", ("src", "store")),
            ("state", "receipt", ("store", "dest")),
        ],
        mutually_exclusive=[("receipt", "base")],
        supports_check_mode=True,
    )
    params = module.params
    state = params["state"]
    if params["parallel"] < 1:
        module.fail_json(msg="Option parallel must be 1 or more, not %d." % params["parallel"])
    misplaced = [name for name in FILE_OPTIONS if params[name] is not None]
    if misplaced and state != "receipt":
        module.fail_json(msg="Option%s %s appl%s to the receipt file only (state=receipt), not with state=%s."
                         % ("s" if len(misplaced) > 1 else "", ", ".join(misplaced), "y" if len(misplaced) > 1 else "ies", state))
    try:
        result = _run(module, state, _keys(module, state))
    except BundleError as exc:
        module.fail_json(msg=str(exc), **exc.details)
    except OSError as exc:
        module.fail_json(msg="%s failed on %s: %s." % (state, exc.filename or "a file", exc.strerror or exc))
    module.exit_json(**result)


if __name__ == "__main__":
    main()
