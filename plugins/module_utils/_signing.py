# Copyright: airgap.microshift contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""Signing keys and signatures, on the ``cryptography`` library (no cryptography of our own).

Plain functions with no Ansible dependency. The one owner of keys and signatures in the
collection: transfer sets are signed with it, and image signatures (sigstore) build on it.

- Public keys: SubjectPublicKeyInfo PEM (``-----BEGIN PUBLIC KEY-----``), ECDSA P-256/P-384 or
  Ed25519; a file may hold several (a key ring). A key is named by its fingerprint,
  ``sha256:<hex>`` of its DER encoding.
- Private keys: PKCS#8 PEM, plain or passphrase-encrypted (``openssl genpkey``'s output), and the
  encrypted sigstore/cosign PEM that containers/image and cosign read (``ENCRYPTED SIGSTORE
  PRIVATE KEY`` or ``ENCRYPTED COSIGN PRIVATE KEY``: scrypt + NaCl secretbox over PKCS#8 DER),
  which needs the ``pynacl`` package.
- Signatures are those of ``cosign sign-blob``: ECDSA over SHA-256 (P-256) or SHA-384 (P-384),
  DER-encoded; Ed25519 over the bytes themselves. Several trusted keys are accepted at once, so a
  key can be rotated without a flag day.
- Image signatures (sigstore, as containers/image makes and checks them): the simple-signing payload
  (a JSON document naming the image's manifest digest and its identity) is signed over SHA-256
  whatever the key (ECDSA on any curve, RSA PKCS#1 v1.5, Ed25519 over the bytes themselves), and the
  signature travels base64-encoded in an annotation. Trusted keys of image signatures may also be
  RSA (Red Hat's release keys are RSA 4096). Payloads are built and read strictly here.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re

from ansible_collections.airgap.microshift.plugins.module_utils import _files
from ansible_collections.airgap.microshift.plugins.module_utils._strict import OutsideDataError, load_json

try:
    from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
    from cryptography.hazmat.primitives.kdf.scrypt import Scrypt
    HAS_CRYPTOGRAPHY = True
    CRYPTOGRAPHY_IMPORT_ERROR = None
except ImportError as exc:  # pragma: no cover - depends on the host
    HAS_CRYPTOGRAPHY = False
    CRYPTOGRAPHY_IMPORT_ERROR = exc

try:
    import nacl.exceptions
    import nacl.secret
    HAS_NACL = True
except ImportError:  # pragma: no cover - depends on the host
    HAS_NACL = False

KEY_TYPES = ("ecdsa-p256", "ed25519")
# What an image signature's trusted key may be (containers/image accepts these through sigstore).
IMAGE_KEY_TYPES = ("ecdsa-p256", "ecdsa-p384", "ecdsa-p521", "ed25519", "rsa")
MIN_RSA_BITS = 2048
KEY_FORMATS = ("pkcs8", "sigstore", "cosign")
SIGSTORE_PEM = "ENCRYPTED SIGSTORE PRIVATE KEY"
COSIGN_PEM = "ENCRYPTED COSIGN PRIVATE KEY"
# cosign's and containers/image's parameters: every reader of the format accepts them.
SCRYPT_PARAMS = {"N": 32768, "r": 8, "p": 1}
MAX_KEY_FILE = 1024 * 1024
SIMPLE_SIGNING_TYPE = "cosign container image signature"

_PEM_RE = re.compile(rb"-----BEGIN ([A-Z0-9 ]+)-----\r?\n(.*?)-----END \1-----", re.S)


class SigningError(ValueError):
    """A key or signature problem; the message is one sentence naming the key file."""


def require_cryptography():
    if not HAS_CRYPTOGRAPHY:
        raise SigningError("Signing and verifying need the Python package cryptography (python3-cryptography on RHEL), "
                           "which cannot be imported here: %s." % CRYPTOGRAPHY_IMPORT_ERROR)


def _require_nacl(what):
    if not HAS_NACL:
        raise SigningError("%s is an encrypted sigstore key; reading or writing one needs the Python package pynacl "
                           "(python3-pynacl), which is not installed." % what)


# ---------------------------------------------------------------- keys


def _pem_blocks(data, what):
    if isinstance(data, str):
        data = data.encode("utf-8")
    if len(data) > MAX_KEY_FILE:
        raise SigningError("%s has %d bytes, too many for a key file." % (what, len(data)))
    blocks = [(m.group(1).decode("ascii"), m.group(0)) for m in _PEM_RE.finditer(data)]
    if not blocks:
        raise SigningError("%s holds no PEM block (-----BEGIN ...-----)." % what)
    return blocks


def fingerprint(public_key):
    """``sha256:<hex>`` of the key's SubjectPublicKeyInfo DER."""
    der = public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return "sha256:" + hashlib.sha256(der).hexdigest()


def key_type(key):
    """``ecdsa-p256``, ``ecdsa-p384``, ``ecdsa-p521``, ``ed25519`` or ``rsa`` for a public or private key; None for others."""
    if isinstance(key, (ed25519.Ed25519PublicKey, ed25519.Ed25519PrivateKey)):
        return "ed25519"
    if isinstance(key, (ec.EllipticCurvePublicKey, ec.EllipticCurvePrivateKey)):
        return {"secp256r1": "ecdsa-p256", "secp384r1": "ecdsa-p384", "secp521r1": "ecdsa-p521"}.get(key.curve.name)
    if isinstance(key, (rsa.RSAPublicKey, rsa.RSAPrivateKey)):
        return "rsa"
    return None


def _check_supported(key, what, image=False):
    kind = key_type(key)
    if image:
        if kind not in IMAGE_KEY_TYPES:
            raise SigningError("%s is not an ECDSA, RSA or Ed25519 key, the kinds an image signature is made with." % what)
        if kind == "rsa" and key.key_size < MIN_RSA_BITS:
            raise SigningError("%s is an RSA key of %d bits; image signature keys have at least %d." % (what, key.key_size, MIN_RSA_BITS))
        return key
    if kind not in ("ecdsa-p256", "ecdsa-p384", "ed25519"):
        raise SigningError("%s is not an ECDSA P-256, ECDSA P-384 or Ed25519 key." % what)
    return key


def load_public_keys(data, what="the public key", image=False):
    """Every public key of a PEM text (one or several ``PUBLIC KEY`` blocks).

    With ``image``, the keys an image signature may be checked with (RSA as well); otherwise the
    keys of transfer-set signatures.
    """
    require_cryptography()
    keys = []
    for kind, block in _pem_blocks(data, what):
        if kind != "PUBLIC KEY":
            raise SigningError("%s holds a PEM block of type %s; a trusted key is a PUBLIC KEY (SubjectPublicKeyInfo) block."
                               % (what, kind))
        try:
            key = serialization.load_pem_public_key(block)
        except (ValueError, UnsupportedAlgorithm) as exc:
            raise SigningError("%s holds a public key that cannot be read (%s)." % (what, exc))
        keys.append(_check_supported(key, what, image))
    return keys


def read_public_keys(paths, image=False):
    """The public keys of the files ``paths`` (a trusted key ring), each file checked on its own."""
    keys = []
    for path in paths:
        keys.extend(load_public_keys(_read_key_file(path), "The trusted key file %s" % path, image))
    return keys


def _read_key_file(path):
    try:
        return _files.read_limited(path, MAX_KEY_FILE)
    except OSError as exc:
        raise SigningError("Cannot read the key file %s: %s." % (path, exc.strerror or exc))


def _passphrase_bytes(passphrase):
    if passphrase is None or passphrase == "":
        return None
    return passphrase.encode("utf-8") if isinstance(passphrase, str) else bytes(passphrase)


def load_private_key(data, passphrase=None, what="the signing key"):
    """A private key from PKCS#8 PEM (plain or encrypted) or the encrypted sigstore/cosign PEM."""
    require_cryptography()
    blocks = _pem_blocks(data, what)
    if len(blocks) != 1:
        raise SigningError("%s holds %d PEM blocks; a signing key file holds one." % (what, len(blocks)))
    kind, block = blocks[0]
    secret = _passphrase_bytes(passphrase)
    if kind in (SIGSTORE_PEM, COSIGN_PEM):
        _require_nacl(what)
        if secret is None:
            raise SigningError("%s is encrypted: give its passphrase." % what)
        der = _sigstore_decrypt(_pem_body(block), secret, what)
        try:
            key = serialization.load_der_private_key(der, password=None)
        except (ValueError, UnsupportedAlgorithm) as exc:
            raise SigningError("%s decrypts to something that is not a PKCS#8 key (%s)." % (what, exc))
        return _check_supported(key, what)
    if kind not in ("PRIVATE KEY", "ENCRYPTED PRIVATE KEY", "EC PRIVATE KEY"):
        raise SigningError("%s holds a PEM block of type %s, not a private key." % (what, kind))
    if kind == "ENCRYPTED PRIVATE KEY" and secret is None:
        raise SigningError("%s is encrypted: give its passphrase." % what)
    try:
        key = serialization.load_pem_private_key(block, password=secret if b"ENCRYPTED" in block else None)
    except TypeError:
        raise SigningError("%s is not encrypted, but a passphrase was given." % what)
    except (ValueError, UnsupportedAlgorithm):
        raise SigningError("%s cannot be read: the passphrase is wrong or the key is damaged." % what)
    return _check_supported(key, what)


def read_private_key(path, passphrase=None):
    return load_private_key(_read_key_file(path), passphrase, "The signing key file %s" % path)


def _pem_body(block):
    lines = block.decode("ascii", "replace").strip().splitlines()
    try:
        return base64.b64decode("".join(line for line in lines[1:-1] if ":" not in line), validate=True)
    except ValueError:
        raise SigningError("The PEM body of the key is not base64.")


def _pem(kind, der):
    body = base64.b64encode(der).decode("ascii")
    return ("-----BEGIN %s-----\n%s\n-----END %s-----\n" % (
        kind, "\n".join(body[i:i + 64] for i in range(0, len(body), 64)), kind)).encode("ascii")


def _scrypt(secret, salt, params):
    return Scrypt(salt=salt, length=32, n=params["N"], r=params["r"], p=params["p"]).derive(secret)


def _sigstore_decrypt(body, secret, what):
    try:
        envelope = json.loads(body.decode("utf-8"))
        kdf, cipher = envelope["kdf"], envelope["cipher"]
        if kdf["name"] != "scrypt" or cipher["name"] != "nacl/secretbox":
            raise SigningError("%s uses %s and %s; only scrypt and nacl/secretbox are read." % (what, kdf["name"], cipher["name"]))
        params = dict((k, int(kdf["params"][k])) for k in ("N", "r", "p"))
        if params["N"] > 1 << 20 or params["r"] > 32 or params["p"] > 16:
            raise SigningError("%s asks for scrypt parameters beyond what is reasonable." % what)
        salt = base64.b64decode(kdf["salt"])
        nonce = base64.b64decode(cipher["nonce"])
        ciphertext = base64.b64decode(envelope["ciphertext"])
    except SigningError:
        raise
    except (ValueError, KeyError, TypeError, AttributeError):
        raise SigningError("%s is not a valid encrypted sigstore key." % what)
    try:
        return nacl.secret.SecretBox(_scrypt(secret, salt, params)).decrypt(ciphertext, nonce)
    except (nacl.exceptions.CryptoError, ValueError, TypeError):
        raise SigningError("%s cannot be decrypted: the passphrase is wrong or the key is damaged." % what)


def generate_private_key(kind="ecdsa-p256"):
    require_cryptography()
    if kind == "ecdsa-p256":
        return ec.generate_private_key(ec.SECP256R1())
    if kind == "ed25519":
        return ed25519.Ed25519PrivateKey.generate()
    raise SigningError("The key type %r is not one of %s." % (kind, ", ".join(KEY_TYPES)))


def private_key_pem(key, passphrase=None, key_format="pkcs8"):
    """PEM of a private key: PKCS#8 (encrypted with the best available cipher when a passphrase is
    given), or the encrypted sigstore (``sigstore``) or cosign 1 (``cosign``) PEM of containers/image."""
    secret = _passphrase_bytes(passphrase)
    if key_format == "pkcs8":
        encryption = serialization.BestAvailableEncryption(secret) if secret else serialization.NoEncryption()
        return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption)
    if key_format not in ("sigstore", "cosign"):
        raise SigningError("The key format %r is not one of %s." % (key_format, ", ".join(KEY_FORMATS)))
    _require_nacl("The key")
    if not secret:
        raise SigningError("An encrypted sigstore key needs a passphrase.")
    if key_type(key) != "ecdsa-p256":
        raise SigningError("The sigstore key format holds ECDSA P-256 keys only.")
    der = key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    salt, nonce = os.urandom(32), os.urandom(nacl.secret.SecretBox.NONCE_SIZE)
    box = nacl.secret.SecretBox(_scrypt(secret, salt, SCRYPT_PARAMS)).encrypt(der, nonce).ciphertext
    envelope = {"kdf": {"name": "scrypt", "params": SCRYPT_PARAMS, "salt": base64.b64encode(salt).decode("ascii")},
                "cipher": {"name": "nacl/secretbox", "nonce": base64.b64encode(nonce).decode("ascii")},
                "ciphertext": base64.b64encode(box).decode("ascii")}
    return _pem(SIGSTORE_PEM if key_format == "sigstore" else COSIGN_PEM,
                json.dumps(envelope, separators=(",", ":")).encode("utf-8"))


def public_key_pem(key):
    """SubjectPublicKeyInfo PEM of a public key or of the public half of a private key."""
    public = key.public_key() if hasattr(key, "private_bytes") else key
    return public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


# ---------------------------------------------------------------- signatures


def sign(private_key, data):
    """The signature of ``data`` (bytes), as ``cosign sign-blob`` makes it (before base64)."""
    kind = key_type(private_key)
    if kind == "ed25519":
        return private_key.sign(data)
    return private_key.sign(data, ec.ECDSA(hashes.SHA384() if kind == "ecdsa-p384" else hashes.SHA256()))


def verify(public_key, signature, data):
    """True when ``signature`` is ``public_key``'s signature of ``data``."""
    kind = key_type(public_key)
    try:
        if kind == "ed25519":
            public_key.verify(signature, data)
        else:
            public_key.verify(signature, data, ec.ECDSA(hashes.SHA384() if kind == "ecdsa-p384" else hashes.SHA256()))
    except (InvalidSignature, ValueError, TypeError):
        return False
    return True


def verify_any(public_keys, signature, data):
    """The first of ``public_keys`` that made ``signature`` over ``data``, or None."""
    for key in public_keys:
        if verify(key, signature, data):
            return key
    return None


def encode_signature(signature):
    """A signature file's content: base64 on one line, as ``cosign sign-blob --output-signature`` writes."""
    return base64.b64encode(signature) + b"\n"


def decode_signature(data, what="the signature"):
    text = data.strip()
    if not text or len(text) > 4096:
        raise SigningError("%s is empty or too long to be a signature." % what)
    try:
        return base64.b64decode(text, validate=True)
    except ValueError:
        raise SigningError("%s is not base64." % what)


# ---------------------------------------------------------------- image signatures (sigstore)


def image_sign(private_key, payload):
    """The signature of an image signature's ``payload``, as containers/image and cosign make it.

    SHA-256 whatever the key: ECDSA (DER) on any curve, RSA PKCS#1 v1.5, Ed25519 over the bytes.
    """
    require_cryptography()
    kind = key_type(private_key)
    if kind == "ed25519":
        return private_key.sign(payload)
    if kind == "rsa":
        return private_key.sign(payload, padding.PKCS1v15(), hashes.SHA256())
    if kind and kind.startswith("ecdsa-"):
        return private_key.sign(payload, ec.ECDSA(hashes.SHA256()))
    raise SigningError("The key is not an ECDSA, RSA or Ed25519 key.")


def image_verify(public_key, signature, payload):
    """True when ``signature`` is ``public_key``'s image signature of ``payload`` (see :func:`image_sign`)."""
    kind = key_type(public_key)
    try:
        if kind == "ed25519":
            public_key.verify(signature, payload)
        elif kind == "rsa":
            public_key.verify(signature, payload, padding.PKCS1v15(), hashes.SHA256())
        elif kind and kind.startswith("ecdsa-"):
            public_key.verify(signature, payload, ec.ECDSA(hashes.SHA256()))
        else:
            return False
    except (InvalidSignature, ValueError, TypeError):
        return False
    return True


def simple_signing_payload(docker_reference, manifest_digest, optional=None):
    """The payload a sigstore image signature signs (containers/image ``simple signing``), as bytes."""
    payload = {"critical": {"identity": {"docker-reference": docker_reference},
                            "image": {"docker-manifest-digest": manifest_digest},
                            "type": SIMPLE_SIGNING_TYPE},
               "optional": optional or {}}
    return json.dumps(payload, separators=(",", ":"), sort_keys=True).encode("utf-8")


def _exact_fields(obj, names, where):
    if not isinstance(obj, dict):
        raise SigningError("%s is not a JSON object." % where)
    missing = [name for name in names if name not in obj]
    extra = sorted(key for key in obj if key not in names)
    if missing or extra:
        raise SigningError("%s must have exactly the keys %s (%s)." % (
            where, ", ".join(names), "; ".join(filter(None, ["missing %s" % ", ".join(missing) if missing else "",
                                                             "unexpected %s" % ", ".join(repr(k)[:40] for k in extra[:3]) if extra else ""]))))
    return obj


def parse_simple_signing_payload(data, what="the signature payload"):
    """``(docker_reference, manifest_digest)`` of a simple-signing payload, read as strictly as containers/image.

    ``critical`` and ``optional`` and nothing else; ``critical`` holds exactly ``type``, ``image`` and
    ``identity``; ``image`` exactly ``docker-manifest-digest``; ``identity`` exactly ``docker-reference``;
    ``optional`` may be null, and its ``creator`` must be a string and its ``timestamp`` an integer.
    Raises :class:`SigningError`, one sentence naming ``what``.
    """
    try:
        doc = load_json(data, what, max_size=64 * 1024)
    except OutsideDataError as exc:
        raise SigningError(str(exc))
    _exact_fields(doc, ("critical", "optional"), what)
    critical = _exact_fields(doc["critical"], ("type", "image", "identity"), what + ", critical")
    if critical["type"] != SIMPLE_SIGNING_TYPE:
        raise SigningError("%s is not a container image signature (type %s)." % (what, repr(critical["type"])[:80]))
    image = _exact_fields(critical["image"], ("docker-manifest-digest",), what + ", critical.image")
    identity = _exact_fields(critical["identity"], ("docker-reference",), what + ", critical.identity")
    optional = doc["optional"]
    if optional is not None:
        if not isinstance(optional, dict):
            raise SigningError("%s: optional is not a JSON object." % what)
        if "creator" in optional and not isinstance(optional["creator"], str):
            raise SigningError("%s: optional.creator is not a string." % what)
        stamp = optional.get("timestamp")
        if "timestamp" in optional and (isinstance(stamp, bool) or not isinstance(stamp, (int, float))
                                        or (isinstance(stamp, float) and not stamp.is_integer())):
            raise SigningError("%s: optional.timestamp is not an integer." % what)
    digest, reference = image["docker-manifest-digest"], identity["docker-reference"]
    if not isinstance(digest, str) or not isinstance(reference, str):
        raise SigningError("%s: the manifest digest and the docker reference must be strings." % what)
    return reference, digest
