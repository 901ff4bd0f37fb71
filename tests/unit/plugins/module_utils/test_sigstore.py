# Copyright: airgap.microshift contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""Sigstore attachments, payloads and identity rules: what containers/image accepts, and its refusals."""

from __future__ import annotations

import base64
import hashlib
import json

import pytest

from ansible_collections.airgap.microshift.plugins.module_utils import _signing, _sigstore
from ansible_collections.airgap.microshift.plugins.module_utils._sigstore import SigstoreError

pytestmark = pytest.mark.skipif(not _signing.HAS_CRYPTOGRAPHY, reason="cryptography is not installed")

MANIFEST = b'{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","layers":[]}'
DIGEST = "sha256:" + hashlib.sha256(MANIFEST).hexdigest()
REPO = "quay.io/openshift-release-dev/ocp-v4.0-art-dev"
REF = REPO + "@" + DIGEST


@pytest.fixture(scope="module")
def keys():
    from cryptography.hazmat.primitives.asymmetric import rsa
    return {"ecdsa": _signing.generate_private_key("ecdsa-p256"), "ed25519": _signing.generate_private_key("ed25519"),
            "rsa": rsa.generate_private_key(public_exponent=65537, key_size=2048)}


def _public(key):
    return _signing.load_public_keys(_signing.public_key_pem(key), "key", image=True)


def test_attachment_tag():
    assert _sigstore.attachment_tag("sha256:" + "ab" * 32) == "sha256-" + "ab" * 32 + ".sig"
    assert _sigstore.signed_digest("sha256-" + "ab" * 32 + ".sig") == "sha256:" + "ab" * 32
    for bad in ("sha512:" + "a" * 128, "sha256:ABC", "", None, "sha256:" + "a" * 63):
        with pytest.raises(ValueError):
            _sigstore.attachment_tag(bad)
    for tag in ("latest", "sha256-" + "a" * 64, "sha256-" + "A" * 64 + ".sig", "sha256-" + "a" * 64 + ".att"):
        assert _sigstore.signed_digest(tag) is None


@pytest.mark.parametrize("kind", ["ecdsa", "ed25519", "rsa"])
def test_signature_made_and_accepted(keys, kind):
    payload, annotations = _sigstore.make_signature(keys[kind], REF, DIGEST, timestamp=1767225600)
    assert _sigstore.check_signature(_public(keys[kind]), None, REF, MANIFEST, payload, annotations) is None
    doc = json.loads(payload)
    assert doc["critical"] == {"identity": {"docker-reference": REF}, "image": {"docker-manifest-digest": DIGEST},
                               "type": "cosign container image signature"}
    assert doc["optional"]["timestamp"] == 1767225600


def test_attachment_round_trip(keys):
    signatures = [_sigstore.make_signature(keys["ecdsa"], REF, DIGEST), _sigstore.make_signature(keys["rsa"], REPO + ":4.20", DIGEST)]
    raw, blobs = _sigstore.build_attachment(signatures)
    attachment = _sigstore.parse_attachment(raw, "the attachment")
    assert attachment["digest"] == "sha256:" + hashlib.sha256(raw).hexdigest()
    assert [b["digest"] for b in _sigstore.attachment_blobs(attachment)] == [attachment["config"]["digest"]] + [
        "sha256:" + hashlib.sha256(p).hexdigest() for p, a in signatures]
    assert set(blobs) == set(b["digest"] for b in _sigstore.attachment_blobs(attachment))
    found = _sigstore.signatures_of(attachment, blobs)
    assert list(found) == [(_sigstore.SIGNATURE_MEDIA_TYPE, p, a) for p, a in signatures]
    config = json.loads(blobs[attachment["config"]["digest"]])
    assert config["rootfs"] == {"type": "layers", "diff_ids": [layer["digest"] for layer in attachment["layers"]]}
    # the RSA key alone accepts the image through the second signature
    assert _sigstore.evaluate_signatures(_public(keys["rsa"]), None, REF, MANIFEST, found) == (True, None)


def test_payload_not_matching_its_layer_is_refused(keys):
    raw, blobs = _sigstore.build_attachment([_sigstore.make_signature(keys["ecdsa"], REF, DIGEST)])
    attachment = _sigstore.parse_attachment(raw, "a")
    layer = attachment["layers"][0]["digest"]
    with pytest.raises(SigstoreError, match="does not match its digest"):
        _sigstore.signatures_of(attachment, dict(blobs, **{layer: blobs[layer] + b" "}))
    with pytest.raises(SigstoreError, match="lacks its layer"):
        _sigstore.signatures_of(attachment, {})


@pytest.mark.parametrize("doc, words", [
    ({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": []}, "not an OCI image manifest"),
    ({"schemaVersion": 1}, "not a schema 2 manifest"),
    ({"schemaVersion": 2, "layers": []}, "lacks the key 'config'"),
    ({"schemaVersion": 2, "config": {"mediaType": "x", "digest": "sha256:../x", "size": 1}, "layers": []}, "not a sha256 digest"),
    ({"schemaVersion": 2, "config": {"mediaType": "x", "digest": DIGEST, "size": 1},
      "layers": [{"mediaType": "x", "digest": DIGEST, "size": 1, "annotations": {"a": 1}}]}, "is not a string"),
    ({"schemaVersion": 2, "config": {"mediaType": "x", "digest": DIGEST, "size": 1},
      "layers": [{"mediaType": "x", "digest": DIGEST, "size": 1 << 40}]}, "more than the"),
    ([], "not a JSON object"),
])
def test_bad_attachments_are_named(doc, words):
    with pytest.raises(SigstoreError, match=words):
        _sigstore.parse_attachment(json.dumps(doc).encode(), "the attachment of x")


@pytest.mark.parametrize("rule, image, signed, accepted", [
    # matchRepoDigestOrExact (Red Hat's): by digest, the repository; by tag, the exact reference
    (None, REF, REPO + ":4.20", True),
    (None, REF, REPO + "@sha256:" + "1" * 64, True),
    (None, REF, REPO, False),                                  # a name alone is never accepted
    (None, REF, "quay.io/openshift-release-dev/other@" + DIGEST, False),
    (None, REPO + ":4.20", REPO + ":4.20", True),
    (None, REPO + ":4.20", REPO + ":4.21", False),
    (None, REF, "not a reference", False),
    ({"type": "matchExact"}, REF, REF, True),
    ({"type": "matchExact"}, REF, REPO + ":4.20", False),
    ({"type": "matchRepository"}, REF, REPO, True),
    ({"type": "matchRepository"}, REF, "quay.io/other/repo:1", False),
    ({"type": "exactReference", "dockerReference": REPO + ":4.20"}, REF, REPO + ":4.20", True),
    ({"type": "exactReference", "dockerReference": REPO + ":4.20"}, REF, REF, False),
    ({"type": "exactRepository", "dockerRepository": REPO}, "mirror.example.com/x@" + DIGEST, REPO + ":1", True),
    ({"type": "remapIdentity", "prefix": "mirror.example.com:8443/ocp", "signedPrefix": "quay.io/openshift-release-dev"},
     "mirror.example.com:8443/ocp/ocp-v4.0-art-dev@" + DIGEST, REPO + ":4.20", True),
    ({"type": "remapIdentity", "prefix": "mirror.example.com:8443/ocp", "signedPrefix": "quay.io/openshift-release-dev"},
     "mirror.example.com:8443/ocpx/ocp-v4.0-art-dev@" + DIGEST, REPO + ":4.20", False),
    # names without a registry are docker.io's, as containers/image normalizes them
    ({"type": "matchRepository"}, "docker.io/library/busybox:1", "busybox:2", True),
])
def test_identity_rules(rule, image, signed, accepted):
    assert _sigstore.identity_matches(rule, image, signed) is accepted


@pytest.mark.parametrize("rule, problem", [
    ({"type": "matchRepoDigestOrExact"}, None),
    ({"type": "exactReference", "dockerReference": REPO}, "with a tag or digest"),
    ({"type": "exactReference"}, "takes exactly the keys"),
    ({"type": "matchExact", "extra": 1}, "takes exactly the keys"),
    ({"type": "nope"}, "is not one of"),
    ("matchExact", "must be an object"),
])
def test_identity_problems(rule, problem):
    found = _sigstore.identity_problem(rule)
    assert (found is None) if problem is None else (problem in found)


def test_refusals_in_containers_image_words(keys):
    public = _public(keys["ecdsa"])
    good = _sigstore.make_signature(keys["ecdsa"], REF, DIGEST)
    other_key = _sigstore.make_signature(keys["ed25519"], REF, DIGEST)
    other_repo = _sigstore.make_signature(keys["ecdsa"], "quay.io/openshift-release-dev/other@" + DIGEST, DIGEST)
    other_digest = _sigstore.make_signature(keys["ecdsa"], REF, "sha256:" + "0" * 64)

    def evaluate(*signatures):
        return _sigstore.evaluate_signatures(public, None, REF, MANIFEST,
                                             [(_sigstore.SIGNATURE_MEDIA_TYPE, p, a) for p, a in signatures])

    assert evaluate() == (False, "A signature was required, but no signature exists")
    assert evaluate(other_key) == (False, "cryptographic signature verification failed")
    assert evaluate(other_repo) == (False, 'Signature for identity "quay.io/openshift-release-dev/other@%s" is not accepted' % DIGEST)
    assert evaluate(other_digest) == (False, "Signature for digest sha256:%s does not match" % ("0" * 64))
    assert evaluate(other_key, good) == (True, None)
    accepted, reason = evaluate(other_key, other_repo)
    assert not accepted and reason.startswith("None of the signatures were accepted, reasons: cryptographic")
    assert evaluate((good[0], {})) == (False, "missing dev.cosignproject.cosign/signature annotation")
    assert evaluate((good[0], {_sigstore.SIGNATURE_ANNOTATION: "not base64!"}))[1].startswith("base64 decoding")
    others = _sigstore.evaluate_signatures(public, None, REF, MANIFEST, [("application/vnd.in-toto+json", b"{}", {})])
    assert others == (False, "A signature was required, but no signature exists (0 non-sigstore signatures, 1 sigstore non-signature attachments)")


def test_payload_read_as_strictly_as_containers_image(keys):
    def signed(doc):
        payload = json.dumps(doc).encode()
        return payload, {_sigstore.SIGNATURE_ANNOTATION: base64.b64encode(_signing.image_sign(keys["ecdsa"], payload)).decode()}

    good = {"critical": {"identity": {"docker-reference": REF}, "image": {"docker-manifest-digest": DIGEST},
                         "type": "cosign container image signature"}, "optional": None}
    public = _public(keys["ecdsa"])
    assert _sigstore.check_signature(public, None, REF, MANIFEST, *signed(good)) is None
    for mutate, words in [
        (lambda d: d.update(extra=1), "exactly the keys critical, optional"),
        (lambda d: d["critical"].update(extra=1), "exactly the keys type, image, identity"),
        (lambda d: d["critical"]["image"].update(other=1), "docker-manifest-digest"),
        (lambda d: d["critical"].update(type="other"), "not a container image signature"),
        (lambda d: d.update(optional={"timestamp": 1.5}), "timestamp is not an integer"),
        (lambda d: d.update(optional={"creator": 7}), "creator is not a string"),
    ]:
        doc = json.loads(json.dumps(good))
        mutate(doc)
        reason = _sigstore.check_signature(public, None, REF, MANIFEST, *signed(doc))
        assert reason and words in reason, (doc, reason)
    # a timestamp written as a float with no fraction is an integer to Go too
    doc = json.loads(json.dumps(good))
    doc["optional"] = {"timestamp": 1767225600.0, "creator": "x", "other": [1]}
    assert _sigstore.check_signature(public, None, REF, MANIFEST, *signed(doc)) is None


def test_rsa_keys_for_images_only(keys):
    from cryptography.hazmat.primitives.asymmetric import rsa
    pem = _signing.public_key_pem(keys["rsa"])
    assert _signing.key_type(_signing.load_public_keys(pem, image=True)[0]) == "rsa"
    with pytest.raises(_signing.SigningError, match="not an ECDSA P-256, ECDSA P-384 or Ed25519 key"):
        _signing.load_public_keys(pem)
    small = _signing.public_key_pem(rsa.generate_private_key(public_exponent=65537, key_size=1024))
    with pytest.raises(_signing.SigningError, match="at least 2048"):
        _signing.load_public_keys(small, "small.pub", image=True)
