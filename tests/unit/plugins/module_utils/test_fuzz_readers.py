# Copyright: airgap.microshift contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""Property-based fuzzing of every reader of outside data: each refuses with its own error, never a traceback.

Readers: the transfer-set manifest (``bundle.json``), ``SHA256SUMS`` (through verify), the store
index (``store.json``), OCI/docker manifests and indexes (store and registry readers), receipts,
signatures and RPM headers; image signature attachments and payloads, and a host's ``policy.json``,
``registries.d`` files and ``registries.conf``. Each property feeds mutated real documents and arbitrary bytes, and
accepts only a result or the reader's own one-sentence error.

``make test`` runs AIRGAP_FUZZ_EXAMPLES examples per reader (default 150) and prints the count;
a longer run:

    AIRGAP_FUZZ_EXAMPLES=20000 .venv/bin/python -m pytest -p no:cacheprovider \\
        .build/collections/ansible_collections/airgap/microshift/tests/unit/plugins/module_utils/test_fuzz_readers.py
"""

from __future__ import annotations

import copy
import io
import json
import os
import struct

import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings, strategies as st  # noqa: E402  pylint: disable=wrong-import-position

from ansible_collections.airgap.microshift.plugins.module_utils import (  # noqa: E402  pylint: disable=wrong-import-position
    _bundle, _containers_policy, _download, _registries_conf, _registries_d, _rpm, _signing, _sigstore, _store, _strict,
)
from ansible_collections.airgap.microshift.tests.unit.plugins.helpers.stores import (  # noqa: E402  pylint: disable=wrong-import-position
    KEY, TRUSTED, build_store,
)

EXAMPLES = int(os.environ.get("AIRGAP_FUZZ_EXAMPLES", "150"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large])

JSON = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(2 ** 70), max_value=2 ** 70) | st.floats(allow_nan=False)
    | st.text(max_size=40) | st.just("sha256:" + "a" * 64) | st.just("../../etc/passwd") | st.just("/dev/zero"),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4),
    max_leaves=20)


def count(reader):
    """One example of ``reader``: a line in the session's count file (the conftest prints the totals)."""
    path = os.environ.get("AIRGAP_FUZZ_COUNTS")
    if path:
        with open(path, "a", encoding="utf-8") as handle:
            handle.write(reader + "\n")


def _paths(document, prefix=()):
    """Every (path, value) of a JSON document."""
    yield prefix, document
    if isinstance(document, dict):
        for key, value in document.items():
            yield from _paths(value, prefix + (key,))
    elif isinstance(document, list):
        for index, value in enumerate(document):
            yield from _paths(value, prefix + (index,))


def _mutate(document, data):
    """A copy of ``document`` with one place replaced by arbitrary JSON, or a key removed."""
    doc = copy.deepcopy(document)
    places = list(_paths(doc))
    path, _value = places[data.draw(st.integers(0, len(places) - 1), label="place")]
    if not path:
        return data.draw(JSON, label="whole")
    parent = doc
    for step in path[:-1]:
        parent = parent[step]
    if isinstance(parent, dict) and data.draw(st.booleans(), label="remove"):
        del parent[path[-1]]
    else:
        parent[path[-1]] = data.draw(JSON, label="value")
    return doc


def _encode(document, data):
    raw = json.dumps(document).encode("utf-8")
    if data.draw(st.booleans(), label="truncate") and raw:
        raw = raw[:data.draw(st.integers(0, len(raw) - 1), label="cut")]
    return raw


@pytest.fixture(scope="module")
def packed(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("fuzz"))
    store = os.path.join(root, "store")
    build_store(store)
    media = os.path.join(root, "media")
    _bundle.pack(store, media, volume_size=2 * 1024 * 1024, part_size=1024 * 1024, signing_key=KEY)
    with open(os.path.join(media, "vol-001", "bundle.json"), "rb") as handle:
        manifest = handle.read()
    with open(os.path.join(store, "store.json"), "rb") as handle:
        index = handle.read()
    manifests = []
    for name in sorted(os.listdir(os.path.join(store, "blobs", "sha256"))):
        with open(os.path.join(store, "blobs", "sha256", name), "rb") as handle:
            head = handle.read(2)
            if head[:1] == b"{":
                handle.seek(0)
                manifests.append(handle.read())
    return {"root": root, "store": store, "media": media, "manifest": manifest, "index": index, "manifests": manifests}


@FUZZ
@given(data=st.data())
def test_bundle_manifest(packed, data):
    document = json.loads(packed["manifest"])
    raw = _encode(_mutate(document, data), data) if data.draw(st.booleans()) else data.draw(st.binary(max_size=300))
    count("bundle.json")
    try:
        manifest = _bundle.parse_manifest(raw, "vol-001/bundle.json")
    except _bundle.BundleError as exc:
        assert "\n" not in str(exc)
        return
    # Accepted: then it is a manifest whose every file can be listed without an error.
    for name in manifest["volumes"]:
        _bundle.expected_files(manifest, name, raw)


@FUZZ
@given(text=st.binary(max_size=400) | st.text(max_size=400).map(lambda t: t.encode("utf-8")))
def test_sha256sums_through_verify(packed, text):
    path = os.path.join(packed["media"], "vol-002", "SHA256SUMS")
    with open(path, "rb") as handle:
        original = handle.read()
    count("SHA256SUMS")
    try:
        with open(path, "wb") as handle:
            handle.write(text)
        report, _manifest, _found = _bundle.verify([packed["media"]], parallel=1, trusted_keys=TRUSTED)
        assert report["ok"] == (text == original)
        if text != original:
            assert "vol-002/SHA256SUMS" in report["corrupt"] + report["short"]
    finally:
        with open(path, "wb") as handle:
            handle.write(original)


@FUZZ
@given(data=st.data())
def test_store_index(packed, data):
    document = json.loads(packed["index"])
    raw = _encode(_mutate(document, data), data) if data.draw(st.booleans()) else data.draw(st.binary(max_size=300))
    count("store.json")
    try:
        index = _store.parse_index(raw, "store.json")
    except _store.StoreError as exc:
        assert "\n" not in str(exc)
        return
    for entry in index["images"].values():
        assert _strict.is_digest(entry["digest"]) and ".." not in entry["layout"].split("/")
    for digest in index["blobs"]:
        _store.blob_relpath(digest)


@FUZZ
@given(data=st.data())
def test_manifest_and_index(packed, data):
    document = json.loads(data.draw(st.sampled_from(packed["manifests"]), label="manifest"))
    raw = _encode(_mutate(document, data), data) if data.draw(st.booleans()) else data.draw(st.binary(max_size=300))
    count("OCI manifest/index")
    try:
        parsed = _store.parse_manifest(raw, "manifest")
    except _store.StoreError as exc:
        assert "\n" not in str(exc)
    else:
        descriptors = parsed.get("children") or [parsed["config"]] + parsed["layers"]
        assert all(_strict.is_digest(d["digest"]) for d in descriptors)
    try:
        _download.parse_manifest(raw, "quay.io/fuzz/image:1")
    except _download.PlanError as exc:
        assert "\n" not in str(exc)


@FUZZ
@given(data=st.data())
def test_receipt(packed, data):
    receipt = {"format": 1, "kind": "airgap.microshift.receipt", "receipt_id": "sha256:" + "b" * 64, "release": "1",
               "images": {}, "blobs": {"sha256:" + "c" * 64: 10}, "bytes": 10}
    raw = _encode(_mutate(receipt, data), data)
    path = os.path.join(packed["root"], "receipt.json")
    with open(path, "wb") as handle:
        handle.write(raw)
    count("receipt")
    try:
        held, _base = _bundle.held_from_receipt(path)
    except _bundle.BundleError as exc:
        assert "\n" not in str(exc)
        return
    assert all(_strict.is_digest(d) for d in held)


@FUZZ
@given(raw=st.binary(max_size=200), key=st.binary(max_size=300))
def test_signature_and_key_readers(raw, key):
    count("signature and keys")
    try:
        _signing.decode_signature(raw, "bundle.json.sig")
    except _signing.SigningError:
        pass
    for reader in (_signing.load_public_keys, _signing.load_private_key):
        try:
            reader(b"-----BEGIN PUBLIC KEY-----\n" + key + b"\n-----END PUBLIC KEY-----\n")
        except _signing.SigningError:
            pass


def _rpm_bytes(data):
    """An RPM-looking file: lead, then headers whose counts, sizes and entries are drawn."""
    lead = _rpm.LEAD_MAGIC + bytes(92)
    out = [lead]
    for _header in range(2):
        nindex = data.draw(st.integers(0, 8) | st.integers(0, 2 ** 32 - 1), label="nindex")
        hsize = data.draw(st.integers(0, 64) | st.integers(0, 2 ** 32 - 1), label="hsize")
        entries = b"".join(struct.pack(">iiii", data.draw(st.sampled_from([1000, 1001, 1002, 1027, 1116, 1117, 1118, 1124, 1125])),
                                       data.draw(st.integers(-2, 10)), data.draw(st.integers(-5, 80)), data.draw(st.integers(-2, 20)))
                           for _i in range(min(nindex, 8)))
        out.append(_rpm.HEADER_MAGIC + b"\x01" + bytes(4) + struct.pack(">II", nindex, hsize) + entries
                   + data.draw(st.binary(max_size=80), label="store"))
    out.append(data.draw(st.binary(max_size=64), label="payload"))
    return b"".join(out)


@FUZZ
@given(data=st.data())
def test_rpm_header(data):
    raw = _rpm_bytes(data) if data.draw(st.booleans()) else data.draw(st.binary(max_size=400))
    count("RPM header")
    try:
        header = _rpm.read_headers(io.BytesIO(raw), "fuzz.rpm")
    except _rpm.RpmError as exc:
        assert "\n" not in str(exc)
        return
    assert isinstance(header.files, list)


# -- the readers of image signatures and of a host's containers configuration ----------------------

_SIG_KEY = _signing.generate_private_key("ecdsa-p256") if _signing.HAS_CRYPTOGRAPHY else None
_SIG_DIGEST = "sha256:" + "d" * 64
_SIG_REF = "quay.io/openshift-release-dev/ocp@" + _SIG_DIGEST


_ATTACHMENT = []


def _attachment_doc():
    """One attachment for the whole session: an ECDSA signature differs each time it is made, and
    hypothesis wants the same data for the same draws."""
    if not _ATTACHMENT:
        raw, _blobs = _sigstore.build_attachment([_sigstore.make_signature(_SIG_KEY, _SIG_REF, _SIG_DIGEST)])
        _ATTACHMENT.append(raw)
    return json.loads(_ATTACHMENT[0])


@pytest.mark.skipif(not _signing.HAS_CRYPTOGRAPHY, reason="cryptography is not installed")
@FUZZ
@given(data=st.data())
def test_signature_attachment_and_payload(data):
    raw = _encode(_mutate(_attachment_doc(), data), data) if data.draw(st.booleans()) else data.draw(st.binary(max_size=300))
    count("signature attachment")
    try:
        attachment = _sigstore.parse_attachment(raw, "the attachment")
    except _sigstore.SigstoreError as exc:
        assert "\n" not in str(exc)
    else:
        assert all(_strict.is_digest(b["digest"]) for b in _sigstore.attachment_blobs(attachment))
    payload = json.loads(_signing.simple_signing_payload(_SIG_REF, _SIG_DIGEST, {"creator": "x", "timestamp": 1}))
    raw = _encode(_mutate(payload, data), data) if data.draw(st.booleans()) else data.draw(st.binary(max_size=300))
    count("signature payload")
    try:
        reference, digest = _signing.parse_simple_signing_payload(raw, "the payload")
    except _signing.SigningError as exc:
        assert "\n" not in str(exc)
    else:
        assert isinstance(reference, str) and isinstance(digest, str)
    # whatever the payload, a check answers with a reason or accepts; it never raises
    reason = _sigstore.check_signature([_SIG_KEY.public_key()], None, _SIG_REF, b"{}", raw,
                                       {_sigstore.SIGNATURE_ANNOTATION: data.draw(st.text(max_size=60), label="sig")})
    assert reason is None or "\n" not in reason


@FUZZ
@given(data=st.data())
def test_policy_json(data):
    document = {"default": [{"type": "reject"}],
                "transports": {"docker": {"quay.io/openshift-release-dev": [{"type": "sigstoreSigned", "keyPath": "/k.pub",
                                                                             "signedIdentity": {"type": "matchRepoDigestOrExact"}}],
                                          "registry.redhat.io": [{"type": "signedBy", "keyType": "GPGKeys", "keyPaths": ["/a"]}]},
                               "docker-daemon": {"": [{"type": "insecureAcceptAnything"}]}}}
    raw = _encode(_mutate(document, data), data) if data.draw(st.booleans()) else data.draw(st.binary(max_size=300))
    count("policy.json")
    try:
        policy = _containers_policy.parse(raw, "/etc/containers/policy.json")
    except _containers_policy.PolicyError as exc:
        assert "\n" not in str(exc)
        return
    # an accepted policy answers for any reference, merges and renders back to itself
    _containers_policy.requirements_for(policy, _SIG_REF)
    assert _containers_policy.parse(_containers_policy.checked_render(policy)) == policy


_YAML_LINES = ["docker:", "  mirror.example.com:8443:", "    use-sigstore-attachments: true", "default-docker:", "  lookaside: https://x",
               "# comment", "", "  'quay.io/a': {}", "    sigstore: file:///var/lib/x", "  - item", "\tx: 1", "a: [1]", "b: 'c'", ": x"]


@FUZZ
@given(lines=st.lists(st.sampled_from(_YAML_LINES) | st.text(max_size=30), max_size=12))
def test_registries_d_files(lines):
    text = "\n".join(lines)
    count("registries.d file")
    try:
        doc = _registries_d.parse_yaml_subset(text)
    except _registries_d.RegistriesDError as exc:
        assert "\n" not in str(exc)
    else:
        assert isinstance(doc, dict)
    try:
        merged = _registries_d.merge_files([("/etc/containers/registries.d/x.yaml", _registries_d.parse(text, "x.yaml"))])
    except _registries_d.RegistriesDError as exc:
        assert "\n" not in str(exc)
    else:
        _registries_d.use_sigstore_attachments(merged, "mirror.example.com:8443/a/b")


@FUZZ
@given(data=st.data())
def test_host_registries_conf(data):
    document = {"unqualified-search-registries": ["registry.access.redhat.com"],
                "registry": [{"prefix": "quay.io", "location": "quay.io", "mirror-by-digest-only": True,
                              "mirror": [{"location": "mirror.example.com:8443/ns"}]}]}
    text = data.draw(st.text(max_size=200))
    if data.draw(st.booleans()):
        try:
            text = _registries_conf.render(_mutate(document, data))
        except (TypeError, AttributeError):
            pass    # a mutation render() cannot write: the drawn text stands
    count("registries.conf of a host")
    try:
        registries = _registries_conf.merge_host_files([("/etc/containers/registries.conf", _registries_conf.read_host_file(text, "x.conf"))])
        _registries_conf.pull_sources(registries, _SIG_REF)
    except _registries_conf.RegistriesConfError as exc:
        assert "\n" not in str(exc)
