# Copyright: airgap.microshift contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""Keys and signatures: formats openssl writes, the sigstore format, rotation, and clear refusals."""

from __future__ import annotations

import base64
import subprocess

import pytest

from ansible_collections.airgap.microshift.plugins.module_utils import _signing
from ansible_collections.airgap.microshift.plugins.module_utils._signing import SigningError

DATA = b'{"kind": "airgap.microshift.bundle"}\n'


@pytest.mark.parametrize("kind", ["ecdsa-p256", "ed25519"])
def test_sign_and_verify(kind):
    key = _signing.generate_private_key(kind)
    signature = _signing.sign(key, DATA)
    public = _signing.load_public_keys(_signing.public_key_pem(key))[0]
    assert _signing.verify(public, signature, DATA)
    assert not _signing.verify(public, signature, DATA + b" ")
    assert _signing.decode_signature(_signing.encode_signature(signature)) == signature


def test_key_rotation_accepts_any_trusted_key():
    old, new, stranger = (_signing.generate_private_key() for _i in range(3))
    ring = _signing.load_public_keys(_signing.public_key_pem(old) + _signing.public_key_pem(new))
    assert len(ring) == 2
    found = _signing.verify_any(ring, _signing.sign(new, DATA), DATA)
    assert _signing.fingerprint(found) == _signing.fingerprint(new.public_key())
    assert _signing.verify_any(ring, _signing.sign(stranger, DATA), DATA) is None


def test_openssl_keys_and_signatures(tmp_path):
    key_path = str(tmp_path / "k.pem")
    subprocess.run(["openssl", "genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", key_path,
                    "-aes256", "-pass", "pass:pw"], check=True)
    key = _signing.read_private_key(key_path, "pw")
    with pytest.raises(SigningError, match="is encrypted: give its passphrase"):
        _signing.read_private_key(key_path)
    with pytest.raises(SigningError, match="passphrase is wrong"):
        _signing.read_private_key(key_path, "nope")
    # What we sign, openssl verifies.
    (tmp_path / "data").write_bytes(DATA)
    (tmp_path / "sig").write_bytes(_signing.sign(key, DATA))
    (tmp_path / "pub.pem").write_bytes(_signing.public_key_pem(key))
    subprocess.run(["openssl", "dgst", "-sha256", "-verify", str(tmp_path / "pub.pem"), "-signature", str(tmp_path / "sig"),
                    str(tmp_path / "data")], check=True, stdout=subprocess.DEVNULL)


@pytest.mark.parametrize("text, words", [
    (b"not a key", "holds no PEM block"),
    (b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n", "type CERTIFICATE"),
    (b"-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n", "cannot be read"),
])
def test_bad_public_keys(text, words):
    with pytest.raises(SigningError, match=words):
        _signing.load_public_keys(text, "trusted.pub")


def test_rsa_keys_are_refused(tmp_path):
    path = str(tmp_path / "rsa.pem")
    subprocess.run(["openssl", "genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:1024", "-out", path],
                   check=True, stderr=subprocess.DEVNULL)
    with pytest.raises(SigningError, match="not an ECDSA P-256, ECDSA P-384 or Ed25519 key"):
        _signing.read_private_key(path)


@pytest.mark.skipif(not _signing.HAS_NACL, reason="pynacl is not installed")
def test_sigstore_encrypted_key_round_trip():
    key = _signing.generate_private_key()
    pem = _signing.private_key_pem(key, "pw", "sigstore")
    assert pem.startswith(b"-----BEGIN ENCRYPTED SIGSTORE PRIVATE KEY-----")
    body = b"".join(pem.strip().splitlines()[1:-1])
    envelope = base64.b64decode(body)
    assert b'"scrypt"' in envelope and b'"nacl/secretbox"' in envelope
    again = _signing.load_private_key(pem, "pw")
    assert _signing.fingerprint(again.public_key()) == _signing.fingerprint(key.public_key())
    with pytest.raises(SigningError, match="passphrase is wrong"):
        _signing.load_private_key(pem, "other")


def test_sigstore_key_without_pynacl_names_the_package(monkeypatch):
    pem = b"-----BEGIN ENCRYPTED SIGSTORE PRIVATE KEY-----\neyJ9\n-----END ENCRYPTED SIGSTORE PRIVATE KEY-----\n"
    monkeypatch.setattr(_signing, "HAS_NACL", False)
    with pytest.raises(SigningError, match="pynacl"):
        _signing.load_private_key(pem, "pw", "image.key")


def test_simple_signing_payload():
    payload = _signing.simple_signing_payload("quay.io/a/b", "sha256:" + "a" * 64)
    assert _signing.parse_simple_signing_payload(payload) == ("quay.io/a/b", "sha256:" + "a" * 64)
    with pytest.raises(SigningError, match="not a container image signature"):
        _signing.parse_simple_signing_payload(payload.replace(b"cosign container image signature", b"other"))
