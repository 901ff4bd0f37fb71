# Copyright: airgap.microshift contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Sigstore signatures for the test bed, written as Red Hat's registries serve them.

Written with the ``cryptography`` library and plain JSON, independently of the collection's own
code (which reads them): a test release key pair (RSA 4096, as Red Hat's release key 3), a
simple-signing payload per signature, and the attachment manifest containers/image writes (an OCI
manifest whose layers are the payloads, each with its base64 signature in the
``dev.cosignproject.cosign/signature`` annotation), tagged ``sha256-<hex>.sig`` in the image's own
repository of a distribution registry's storage.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

PAYLOAD_TYPE = "application/vnd.dev.cosign.simplesigning.v1+json"
ANNOTATION = "dev.cosignproject.cosign/signature"
MT_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MT_CONFIG = "application/vnd.oci.image.config.v1+json"
RELEASE_KEY_BITS = 4096


def generate_key(kind="rsa"):
    """A private key: RSA 4096 (as Red Hat's release key) or ECDSA P-256 (as skopeo generate-sigstore-key)."""
    if kind == "rsa":
        return rsa.generate_private_key(public_exponent=65537, key_size=RELEASE_KEY_BITS)
    return ec.generate_private_key(ec.SECP256R1())


def write_key_pair(key, directory, name):
    """``<name>.pem`` (PKCS#8, unencrypted: a test key) and ``<name>.pub`` (SubjectPublicKeyInfo)."""
    os.makedirs(directory, exist_ok=True)
    private = os.path.join(directory, name + ".pem")
    public = os.path.join(directory, name + ".pub")
    with open(private, "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    os.chmod(private, 0o600)
    with open(public, "wb") as f:
        f.write(key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    return private, public


def load_key(path):
    with open(path, "rb") as f:
        return serialization.load_pem_private_key(f.read(), password=None)


def sign(key, identity, manifest_digest, timestamp=1767225600):
    """One signature: ``(payload bytes, annotations)`` for ``identity`` over ``manifest_digest``."""
    payload = json.dumps({"critical": {"identity": {"docker-reference": identity},
                                       "image": {"docker-manifest-digest": manifest_digest},
                                       "type": "cosign container image signature"},
                          "optional": {"creator": "airgap-microshift test bed", "timestamp": timestamp}},
                         separators=(",", ":")).encode()
    if isinstance(key, rsa.RSAPrivateKey):
        raw = key.sign(payload, padding.PKCS1v15(), hashes.SHA256())
    else:
        raw = key.sign(payload, ec.ECDSA(hashes.SHA256()))
    return payload, {ANNOTATION: base64.b64encode(raw).decode()}


def attachment(signatures):
    """``(manifest bytes, {digest: bytes})`` of an attachment holding ``signatures``."""
    blobs, layers = {}, []
    for payload, annotations in signatures:
        digest = "sha256:" + hashlib.sha256(payload).hexdigest()
        blobs[digest] = payload
        layers.append({"mediaType": PAYLOAD_TYPE, "digest": digest, "size": len(payload), "annotations": annotations})
    config = json.dumps({"architecture": "", "os": "", "config": {},
                         "rootfs": {"type": "layers", "diff_ids": [layer["digest"] for layer in layers]}}, separators=(",", ":")).encode()
    config_digest = "sha256:" + hashlib.sha256(config).hexdigest()
    blobs[config_digest] = config
    manifest = json.dumps({"schemaVersion": 2, "mediaType": MT_MANIFEST,
                           "config": {"mediaType": MT_CONFIG, "digest": config_digest, "size": len(config)},
                           "layers": layers}, separators=(",", ":")).encode()
    return manifest, blobs


def tag_of(digest):
    return digest.replace(":", "-", 1) + ".sig"


def _link(path, digest):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="ascii") as f:
        f.write(digest)
    os.replace(tmp, path)


def _put_blob(v2, data):
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    hexd = digest[7:]
    path = os.path.join(v2, "blobs", "sha256", hexd[:2], hexd, "data")
    if not os.path.exists(path):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path + ".tmp", "wb") as f:
            f.write(data)
        os.replace(path + ".tmp", path)
    return digest


def write_attachment(storage_root, repo, manifest_digest, signatures):
    """Tag an attachment holding ``signatures`` as the signatures of ``manifest_digest`` in ``repo``.

    ``storage_root`` is a distribution registry's filesystem root. Replaces an attachment already
    there. Returns the attachment's digest.
    """
    v2 = os.path.join(storage_root, "docker", "registry", "v2")
    manifest, blobs = attachment(signatures)
    for digest, data in blobs.items():
        _put_blob(v2, data)
        _link(os.path.join(v2, "repositories", repo, "_layers", "sha256", digest[7:], "link"), digest)
    digest = _put_blob(v2, manifest)
    _link(os.path.join(v2, "repositories", repo, "_manifests", "revisions", "sha256", digest[7:], "link"), digest)
    base = os.path.join(v2, "repositories", repo, "_manifests", "tags", tag_of(manifest_digest))
    _link(os.path.join(base, "index", "sha256", digest[7:], "link"), digest)
    _link(os.path.join(base, "current", "link"), digest)
    return digest


def remove_attachment(storage_root, repo, manifest_digest):
    """Drop the tag of the signatures of ``manifest_digest`` in ``repo`` (True when there was one)."""
    base = os.path.join(storage_root, "docker", "registry", "v2", "repositories", repo, "_manifests", "tags", tag_of(manifest_digest))
    if not os.path.isdir(base):
        return False
    shutil.rmtree(base)
    return True
