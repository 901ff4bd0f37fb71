# Copyright: airgap.microshift contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""Sigstore image signatures as registries hold them: attachments, payloads and identity rules.

Plain functions with no Ansible dependency; the keys and the cryptography are ``_signing``'s.

- An image's signatures live next to it, in its own repository, under the tag
  ``sha256-<hex of the manifest digest>.sig`` (:func:`attachment_tag`): an OCI image manifest (the
  attachment) whose layers each hold one signature: a simple-signing payload (media type
  ``application/vnd.dev.cosign.simplesigning.v1+json``) with the base64 signature of that payload in
  the layer annotation ``dev.cosignproject.cosign/signature``. Every manifest is signed on its own:
  an index and each of its per-architecture manifests have an attachment each.
- A signature is accepted for an image (:func:`check_signature`) as containers/image accepts it
  for a ``sigstoreSigned`` requirement with public keys: one of the keys verifies the payload, the
  payload names the digest of the manifest being pulled, and its identity satisfies the
  requirement's ``signedIdentity`` rule (:func:`identity_matches`) against the reference the image
  is pulled by (its original name, not the mirror's).
- :func:`evaluate_signatures` decides a requirement over all the signatures found, with the
  reasons containers/image gives ("A signature was required, but no signature exists", ...), so
  that a refusal here reads like the refusal of the host's own podman.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re

from ansible_collections.airgap.microshift.plugins.module_utils import _signing, _strict
from ansible_collections.airgap.microshift.plugins.module_utils._reference import InvalidReference, parse_reference

ATTACHMENT_SUFFIX = ".sig"
SIGNATURE_MEDIA_TYPE = "application/vnd.dev.cosign.simplesigning.v1+json"
SIGNATURE_ANNOTATION = "dev.cosignproject.cosign/signature"
ATTACHMENT_MEDIA_TYPE = "application/vnd.oci.image.manifest.v1+json"
CONFIG_MEDIA_TYPE = "application/vnd.oci.image.config.v1+json"
# containers/image's limits: a signature payload, an attachment manifest and its config.
MAX_PAYLOAD = 4 * 1024 * 1024
MAX_ATTACHMENT = 4 * 1024 * 1024
MAX_CONFIG = 4 * 1024 * 1024
MAX_LAYERS = 1000

IDENTITY_TYPES = {
    "matchExact": (),
    "matchRepoDigestOrExact": (),
    "matchRepository": (),
    "exactReference": ("dockerReference",),
    "exactRepository": ("dockerRepository",),
    "remapIdentity": ("prefix", "signedPrefix"),
}
DEFAULT_IDENTITY = {"type": "matchRepoDigestOrExact"}

NO_SIGNATURE = "A signature was required, but no signature exists"

_TAG_RE = re.compile(r"^sha256-([a-f0-9]{64})\.sig$")
_DIGEST_ALGORITHMS = {"sha256": 64, "sha384": 96, "sha512": 128}


class SigstoreError(ValueError):
    """An attachment that cannot be used; the message is one sentence naming it."""


# ---------------------------------------------------------------- naming


def attachment_tag(digest):
    """``sha256-<hex>.sig``: the tag of the signatures of the manifest ``digest``."""
    if not _strict.is_digest(digest):
        raise ValueError("%r is not a sha256 digest" % (digest,))
    return digest.replace(":", "-", 1) + ATTACHMENT_SUFFIX


def signed_digest(tag):
    """The manifest digest an attachment tag names, or None when ``tag`` is not one."""
    match = _TAG_RE.match(tag or "")
    return "sha256:" + match.group(1) if match else None


# ---------------------------------------------------------------- the attachment


def _descriptor(entry, where, annotations=False):
    if not isinstance(entry, dict):
        raise SigstoreError("%s is not a JSON object." % where)
    out = {"digest": _strict.field(entry, "digest", "digest", where), "size": _strict.field(entry, "size", "size", where),
           "media_type": _strict.field(entry, "mediaType", "string", where)}
    if annotations:
        values = _strict.field(entry, "annotations", "object", where, optional=True) or {}
        for key, value in values.items():
            if not isinstance(value, str):
                raise SigstoreError("%s: the annotation %s is not a string." % (where, repr(key)[:60]))
        out["annotations"] = dict(values)
    return out


def parse_attachment(raw, what):
    """A sigstore attachment manifest from its bytes, strictly.

    Returns ``{"digest", "size", "media_type", "config": descriptor, "layers": [descriptor + annotations]}``.
    Raises :class:`SigstoreError` naming ``what``.
    """
    try:
        doc = _strict.load_json(raw, what, max_size=MAX_ATTACHMENT)
        if not isinstance(doc, dict):
            raise SigstoreError("%s is not a JSON object." % what)
        if doc.get("schemaVersion") != 2:
            raise SigstoreError("%s is not a schema 2 manifest." % what)
        media_type = _strict.field(doc, "mediaType", "string", what, optional=True) or ATTACHMENT_MEDIA_TYPE
        if media_type != ATTACHMENT_MEDIA_TYPE:
            raise SigstoreError("%s has the media type %s, not an OCI image manifest." % (what, repr(media_type)[:80]))
        config = _descriptor(_strict.field(doc, "config", "object", what), what + ", config")
        layers = _strict.field(doc, "layers", "list", what)
        if len(layers) > MAX_LAYERS:
            raise SigstoreError("%s lists %d layers, more than the %d an attachment may have." % (what, len(layers), MAX_LAYERS))
        layers = [_descriptor(layer, "%s, layer %d" % (what, number + 1), annotations=True) for number, layer in enumerate(layers)]
    except SigstoreError:
        raise
    except _strict.OutsideDataError as exc:
        raise SigstoreError(str(exc))
    if config["size"] > MAX_CONFIG:
        raise SigstoreError("%s names a config of %d bytes, more than %d." % (what, config["size"], MAX_CONFIG))
    for layer in layers:
        if layer["size"] > MAX_PAYLOAD:
            raise SigstoreError("%s names a payload of %d bytes, more than the %d a signature may have." % (what, layer["size"], MAX_PAYLOAD))
    return {"digest": "sha256:" + hashlib.sha256(raw).hexdigest(), "size": len(raw), "media_type": media_type,
            "config": config, "layers": layers}


def attachment_blobs(attachment):
    """The blobs of a parsed attachment, config first: ``[{"digest", "size", "media_type"}]``."""
    seen, out = set(), []
    for desc in [attachment["config"]] + attachment["layers"]:
        if desc["digest"] not in seen:
            seen.add(desc["digest"])
            out.append({"digest": desc["digest"], "size": desc["size"], "media_type": desc["media_type"]})
    return out


def signatures_of(attachment, payloads):
    """``[(media_type, payload, annotations)]`` of an attachment; ``payloads`` maps layer digests to bytes.

    Every payload must hash to its layer's digest and have its size (raises :class:`SigstoreError`).
    """
    out = []
    for layer in attachment["layers"]:
        data = payloads.get(layer["digest"])
        if data is None:
            raise SigstoreError("The attachment %s lacks its layer %s." % (attachment["digest"], layer["digest"]))
        if len(data) != layer["size"] or "sha256:" + hashlib.sha256(data).hexdigest() != layer["digest"]:
            raise SigstoreError("The layer %s of the attachment %s does not match its digest or size." % (layer["digest"], attachment["digest"]))
        out.append((layer["media_type"], data, layer.get("annotations") or {}))
    return out


def _compact(doc):
    return json.dumps(doc, separators=(",", ":")).encode("utf-8")


def build_attachment(signatures):
    """The attachment holding ``signatures`` (``[(payload, annotations)]``), as containers/image writes it.

    Returns ``(manifest bytes, {digest: blob bytes})`` (the config and every payload).
    """
    blobs = {}
    layers = []
    for payload, annotations in signatures:
        digest = "sha256:" + hashlib.sha256(payload).hexdigest()
        blobs[digest] = payload
        layers.append({"mediaType": SIGNATURE_MEDIA_TYPE, "digest": digest, "size": len(payload), "annotations": dict(annotations)})
    config = _compact({"architecture": "", "os": "", "config": {}, "rootfs": {"type": "layers", "diff_ids": [layer["digest"] for layer in layers]}})
    config_digest = "sha256:" + hashlib.sha256(config).hexdigest()
    blobs[config_digest] = config
    manifest = _compact({"schemaVersion": 2, "mediaType": ATTACHMENT_MEDIA_TYPE,
                         "config": {"mediaType": CONFIG_MEDIA_TYPE, "digest": config_digest, "size": len(config)},
                         "layers": layers})
    return manifest, blobs


def make_signature(private_key, docker_reference, manifest_digest, creator="airgap.microshift", timestamp=None):
    """One signature ``(payload, annotations)`` of ``manifest_digest`` for the identity ``docker_reference``."""
    optional = {"creator": creator} if creator else {}
    if timestamp is not None:
        optional["timestamp"] = int(timestamp)
    payload = _signing.simple_signing_payload(docker_reference, manifest_digest, optional)
    signature = base64.b64encode(_signing.image_sign(private_key, payload)).decode("ascii")
    return payload, {SIGNATURE_ANNOTATION: signature}


# ---------------------------------------------------------------- identities


def normalized_reference(text):
    """``(name, tag, digest)`` of a docker reference as containers/image normalizes it, or None.

    A name without a registry is on ``docker.io`` (and ``library/`` for a one-component name).
    """
    if not isinstance(text, str) or not text:
        return None
    first = text.split("/", 1)[0]
    if "/" not in text or not ("." in first or ":" in first or first == "localhost"):
        text = "docker.io/" + (text if "/" in text else "library/" + text)
    try:
        parsed = parse_reference(text)
    except InvalidReference:
        return None
    return "%s/%s" % (parsed.registry, parsed.repository), parsed.tag, parsed.digest


def _string(name, tag, digest):
    return name + (":" + tag if tag else "") + ("@" + digest if digest else "")


def _repo_digest_or_exact(intended, signed):
    if signed is None or (signed[1] is None and signed[2] is None):
        return False
    if intended[1]:  # a tag (with or without a digest): the exact reference
        return _string(*signed) == _string(*intended)
    if intended[2]:  # by digest only: the repository (the digest is checked against the manifest)
        return signed[0] == intended[0]
    return False


def _prefix_matches(name, prefix):
    return name == prefix or (name.startswith(prefix) and len(name) > len(prefix) and name[len(prefix)] == "/")


def identity_problem(rule):
    """None when ``rule`` is a valid ``signedIdentity``, else a sentence saying why not."""
    if not isinstance(rule, dict):
        return "signedIdentity must be an object"
    kind = rule.get("type")
    if not isinstance(kind, str) or kind not in IDENTITY_TYPES:
        return "signedIdentity type %s is not one of %s" % (repr(kind)[:60], ", ".join(sorted(IDENTITY_TYPES)))
    wanted = set(("type",) + IDENTITY_TYPES[kind])
    if set(rule) != wanted:
        return "signedIdentity of type %s takes exactly the keys %s" % (kind, ", ".join(sorted(wanted)))
    for key in IDENTITY_TYPES[kind]:
        if not isinstance(rule[key], str):
            return "signedIdentity %s must be a string" % key
    if kind == "exactReference":
        ref = normalized_reference(rule["dockerReference"])
        if ref is None or (ref[1] is None and ref[2] is None):
            return "signedIdentity dockerReference %s is not a reference with a tag or digest" % repr(rule["dockerReference"])[:120]
    if kind == "exactRepository" and normalized_reference(rule["dockerRepository"]) is None:
        return "signedIdentity dockerRepository %s is not a repository" % repr(rule["dockerRepository"])[:120]
    return None


def identity_matches(rule, image_ref, signed_ref):
    """Whether a signature for the identity ``signed_ref`` is accepted for the image pulled by ``image_ref``.

    ``rule`` is a ``signedIdentity`` object of containers-policy.json(5); None means
    ``matchRepoDigestOrExact``, the default of ``sigstoreSigned``.
    """
    rule = rule or DEFAULT_IDENTITY
    kind = rule.get("type")
    intended = normalized_reference(image_ref)
    signed = normalized_reference(signed_ref)
    if kind == "exactReference":
        wanted = normalized_reference(rule.get("dockerReference"))
        if wanted is None or (wanted[1] is None and wanted[2] is None):
            return False
        return signed_ref == _string(*wanted)
    if kind == "exactRepository":
        wanted = normalized_reference(rule.get("dockerRepository"))
        return wanted is not None and signed is not None and signed[0] == wanted[0]
    if intended is None or signed is None:
        return False
    if kind == "matchExact":
        if (intended[1] is None and intended[2] is None) or (signed[1] is None and signed[2] is None):
            return False
        return _string(*signed) == _string(*intended)
    if kind == "matchRepository":
        return signed[0] == intended[0]
    if kind == "remapIdentity":
        prefix, signed_prefix = rule.get("prefix"), rule.get("signedPrefix")
        if isinstance(prefix, str) and isinstance(signed_prefix, str) and _prefix_matches(intended[0], prefix):
            remapped = normalized_reference(_string(*intended).replace(prefix, signed_prefix, 1))
            if remapped is None:
                return False
            intended = remapped
        return _repo_digest_or_exact(intended, signed)
    if kind == "matchRepoDigestOrExact":
        return _repo_digest_or_exact(intended, signed)
    return False


# ---------------------------------------------------------------- acceptance


def _digest_matches(manifest, digest):
    if not isinstance(digest, str) or ":" not in digest:
        return False
    algorithm, hexdigest = digest.split(":", 1)
    length = _DIGEST_ALGORITHMS.get(algorithm)
    if length is None or not re.match(r"^[a-f0-9]{%d}$" % length, hexdigest):
        return False
    return hashlib.new(algorithm, manifest).hexdigest() == hexdigest


def check_signature(keys, rule, image_ref, manifest, payload, annotations):
    """None when the signature is accepted for the image, else the reason (containers/image's words).

    ``keys``: the requirement's public keys; ``manifest``: the bytes of the manifest being pulled
    (the per-architecture one, or the index when that is what is checked).
    """
    encoded = annotations.get(SIGNATURE_ANNOTATION)
    if encoded is None:
        return "missing %s annotation" % SIGNATURE_ANNOTATION
    try:
        signature = base64.b64decode(encoded.encode("ascii"), validate=True)
    except (ValueError, binascii.Error, UnicodeEncodeError) as exc:
        return "base64 decoding: %s" % exc
    if not any(_signing.image_verify(key, signature, payload) for key in keys):
        return "cryptographic signature verification failed"
    try:
        signed_ref, digest = _signing.parse_simple_signing_payload(payload, "the signature payload")
    except _signing.SigningError as exc:
        return str(exc).rstrip(".")
    if not _digest_matches(manifest, digest):
        return "Signature for digest %s does not match" % digest
    if not identity_matches(rule, image_ref, signed_ref):
        return "Signature for identity %s is not accepted" % json.dumps(signed_ref)
    return None


def evaluate_signatures(keys, rule, image_ref, manifest, signatures):
    """``(accepted, reason)`` of a ``sigstoreSigned`` requirement over ``[(media_type, payload, annotations)]``.

    One accepted signature is enough. Layers of other media types are other attachments, not
    signatures. The reason is None when accepted, else what containers/image says.
    """
    rejections = []
    others = 0
    for media_type, payload, annotations in signatures:
        if media_type != SIGNATURE_MEDIA_TYPE:
            others += 1
            continue
        reason = check_signature(keys, rule, image_ref, manifest, payload, annotations)
        if reason is None:
            return True, None
        rejections.append(reason)
    if not rejections:
        if others:
            return False, "%s (0 non-sigstore signatures, %d sigstore non-signature attachments)" % (NO_SIGNATURE, others)
        return False, NO_SIGNATURE
    if len(rejections) == 1:
        return False, rejections[0]
    return False, "None of the signatures were accepted, reasons: " + "; ".join(rejections)
