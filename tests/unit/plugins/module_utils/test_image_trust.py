# Copyright: airgap.microshift contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""A host's own signature policy evaluated for an image: the source a pull reads from, the manifest of
the host's architecture, registries.d, the policy's keys and identity rule. The registries here are
in memory (what they serve is exactly what the test puts); real registries and the hosts' own podman
are in test_signature_check.py and the signatures Molecule scenario."""

from __future__ import annotations

import hashlib
import json
import os

import pytest

from ansible_collections.airgap.microshift.plugins.module_utils import _containers_policy as policy_mod
from ansible_collections.airgap.microshift.plugins.module_utils import _image_trust as trust
from ansible_collections.airgap.microshift.plugins.module_utils import _registries_conf, _registries_d, _signing, _sigstore

pytestmark = pytest.mark.skipif(not _signing.HAS_CRYPTOGRAPHY, reason="cryptography is not installed")

MIRROR = "mirror.example.com:8443"
KEY_PATH = "/etc/containers/release.pub"


def _digest(data):
    return "sha256:" + hashlib.sha256(data).hexdigest()


class MemoryRegistries:
    """Registries in memory: ``{(registry, repository, reference): bytes}`` and blobs; counts reads."""

    def __init__(self):
        self.manifests = {}
        self.blobs = {}
        self.reads = []
        self.broken = {}

    def manifest(self, registry, repository, reference, accept=None):
        self.reads.append((registry, repository, reference))
        if registry in self.broken:
            raise trust.SourceError(self.broken[registry])
        data = self.manifests.get((registry, repository, reference))
        return None if data is None else (data, "application/json")

    def blob(self, registry, repository, digest, max_size):
        return self.blobs.get((registry, repository, digest))

    def put_image(self, registry, repository):
        manifests = {}
        children = []
        for arch in ("amd64", "arm64"):
            raw = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                              "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": _digest(arch.encode()),
                                         "size": len(arch)}, "layers": []}).encode()
            manifests[arch] = raw
            children.append({"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": _digest(raw), "size": len(raw),
                             "platform": {"architecture": arch, "os": "linux"}})
        index = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": children}).encode()
        for raw in list(manifests.values()) + [index]:
            self.manifests[(registry, repository, _digest(raw))] = raw
        return _digest(index), dict((arch, _digest(raw)) for arch, raw in manifests.items())

    def sign(self, registry, repository, digest, signatures):
        raw, blobs = _sigstore.build_attachment(signatures)
        self.manifests[(registry, repository, _sigstore.attachment_tag(digest))] = raw
        for blob_digest, data in blobs.items():
            self.blobs[(registry, repository, blob_digest)] = data


@pytest.fixture(scope="module")
def release_key():
    return _signing.generate_private_key("ecdsa-p256")


@pytest.fixture
def host(release_key, tmp_path):
    """A host whose registries.conf sends quay.io to the mirror, its policy and registries.d as MicroShift's."""
    key_file = tmp_path / "release.pub"
    key_file.write_bytes(_signing.public_key_pem(release_key))
    conf = _registries_conf.merge_host_files([("drop-in", _registries_conf.read_host_file(_registries_conf.render(
        _registries_conf.mirror_config(MIRROR, registries=["quay.io", "registry.redhat.io"])), "drop-in"))])
    policy = policy_mod.merge({"default": [{"type": "insecureAcceptAnything"}]},
                              {"quay.io/openshift-release-dev": [policy_mod.sigstore_requirement([str(key_file)])]},
                              ["quay.io/openshift-release-dev/unsigned"])
    registries_d = _registries_d.merge_files([("mirror.yaml", _registries_d.attachments_document([MIRROR]))])
    return {"registries": conf, "policy": policy, "registries_d": registries_d, "key": str(key_file)}


def _evaluate(host, source, ref, **changes):
    settings = dict(host, **changes)
    return trust.evaluate(ref, settings["policy"], settings["registries"], settings["registries_d"], source,
                          trust.read_key_file, "amd64")


def _signed_image(source, key, repo="openshift-release-dev/ocp", sign_index=True, identity=None):
    index, arches = source.put_image(MIRROR, repo)
    ref = "quay.io/%s@%s" % (repo, index)
    for digest in ([index] if sign_index else []) + list(arches.values()):
        source.sign(MIRROR, repo, digest, [_sigstore.make_signature(key, identity or "quay.io/%s@%s" % (repo, digest), digest)])
    return ref, index, arches


def test_signed_image_through_the_mirror_is_accepted(host, release_key):
    source = MemoryRegistries()
    ref, index, arches = _signed_image(source, release_key)
    result = _evaluate(host, source, ref)
    assert result["verdict"] == "accepted", result
    assert result["source"] == MIRROR + "/openshift-release-dev/ocp"
    assert result["manifest"] == arches["amd64"]           # what a pull on this host checks
    assert result["scope"] == "quay.io/openshift-release-dev"
    # the index's own signature is not what a pull checks
    source = MemoryRegistries()
    ref, index, arches = _signed_image(source, release_key, sign_index=False)
    assert _evaluate(host, source, ref)["verdict"] == "accepted"


def test_refusals(host, release_key):
    source = MemoryRegistries()
    ref, index, arches = _signed_image(source, release_key)
    del source.manifests[(MIRROR, "openshift-release-dev/ocp", _sigstore.attachment_tag(arches["amd64"]))]
    assert _evaluate(host, source, ref)["reason"] == "A signature was required, but no signature exists"

    other = _signing.generate_private_key("ed25519")
    ref2, index2, arches2 = _signed_image(source, release_key, repo="openshift-release-dev/b")
    source.sign(MIRROR, "openshift-release-dev/b", arches2["amd64"], [_sigstore.make_signature(other, ref2, arches2["amd64"])])
    assert _evaluate(host, source, ref2)["reason"] == "cryptographic signature verification failed"

    ref3, index3, arches3 = _signed_image(source, release_key, repo="openshift-release-dev/c", identity="quay.io/openshift-release-dev/d:1")
    result = _evaluate(host, source, ref3)
    assert result["verdict"] == "rejected" and result["reason"] == 'Signature for identity "quay.io/openshift-release-dev/d:1" is not accepted'


def test_attachments_are_read_only_where_registries_d_says(host, release_key):
    source = MemoryRegistries()
    ref, index, arches = _signed_image(source, release_key)
    # registries.d naming the original registry instead of the mirror: the tools never look at the attachments
    wrong = _registries_d.merge_files([("quay.yaml", _registries_d.attachments_document(["quay.io"]))])
    result = _evaluate(host, source, ref, registries_d=wrong)
    assert result["verdict"] == "rejected"
    assert result["reason"].startswith("A signature was required, but no signature exists (registries.d does not enable")
    assert not [r for r in source.reads if r[2].endswith(".sig")]


def test_policies_that_need_no_registry(host):
    source = MemoryRegistries()
    assert _evaluate(host, source, "ghcr.io/a/b@sha256:" + "1" * 64)["verdict"] == "accepted"
    assert _evaluate(host, source, "quay.io/openshift-release-dev/unsigned/x@sha256:" + "1" * 64)["verdict"] == "accepted"
    reject = policy_mod.merge(host["policy"], default=[{"type": "reject"}])
    result = _evaluate(host, source, "ghcr.io/a/b@sha256:" + "1" * 64, policy=reject)
    assert result["verdict"] == "rejected" and "rejected by policy" in result["reason"]
    gpg = policy_mod.merge(host["policy"], {"registry.redhat.io": [{"type": "signedBy", "keyType": "GPGKeys", "keyPath": "/k"}]})
    result = _evaluate(host, source, "registry.redhat.io/a/b@sha256:" + "1" * 64, policy=gpg)
    assert result["verdict"] == "unchecked" and "signedBy" in result["reason"]
    assert source.reads == []


def test_sources_in_order_and_failures_named(host, release_key):
    source = MemoryRegistries()
    ref, index, arches = _signed_image(source, release_key)
    source.broken[MIRROR] = "the mirror answered HTTP 401"
    result = _evaluate(host, source, ref)
    assert result["verdict"] == "rejected"
    assert "mirror.example.com:8443/openshift-release-dev/ocp@%s: the mirror answered HTTP 401" % index in result["reason"]
    assert "quay.io/openshift-release-dev/ocp@%s: manifest unknown" % index in result["reason"]


def test_key_problems(host, release_key, tmp_path):
    source = MemoryRegistries()
    ref, index, arches = _signed_image(source, release_key)
    missing = policy_mod.merge(host["policy"], {"quay.io/openshift-release-dev": [policy_mod.sigstore_requirement([str(tmp_path / "no.pub")])]})
    assert "cannot read the key file" in _evaluate(host, source, ref, policy=missing)["reason"]
    bad = tmp_path / "bad.pub"
    bad.write_text("not a key\n")
    wrong = policy_mod.merge(host["policy"], {"quay.io/openshift-release-dev": [policy_mod.sigstore_requirement([str(bad)])]})
    assert "holds no PEM block" in _evaluate(host, source, ref, policy=wrong)["reason"]


def test_pull_sources():
    conf = _registries_conf.merge_host_files([
        ("main", {"registry": [{"prefix": "quay.io", "location": "quay.io", "mirror-by-digest-only": True,
                                "mirror": [{"location": "m1.example.com/ns"}, {"location": "m2.example.com"}]},
                               {"prefix": "quay.io/openshift-release-dev/ocp", "location": "quay.io/openshift-release-dev/ocp",
                                "mirror": [{"location": "m3.example.com/ocp", "pull-from-mirror": "tag-only"}]},
                               {"location": "blocked.example.com", "blocked": True}]}),
        ("drop-in", {"registry": [{"prefix": "quay.io", "location": "quay.io",
                                   "mirror": [{"location": "m4.example.com"}]}]})])
    digest = "@sha256:" + "a" * 64
    # the drop-in replaced the main file's quay.io entry
    assert [s["ref"] for s in _registries_conf.pull_sources(conf, "quay.io/a/b" + digest)] == ["m4.example.com/a/b" + digest, "quay.io/a/b" + digest]
    # the longest prefix wins; a tag-only mirror is not tried for a digest
    assert [s["ref"] for s in _registries_conf.pull_sources(conf, "quay.io/openshift-release-dev/ocp" + digest)] == [
        "quay.io/openshift-release-dev/ocp" + digest]
    assert [s["ref"] for s in _registries_conf.pull_sources(conf, "quay.io/openshift-release-dev/ocp:v1")] == [
        "m3.example.com/ocp:v1", "quay.io/openshift-release-dev/ocp:v1"]
    assert _registries_conf.pull_sources(conf, "ghcr.io/x/y" + digest) == [{"ref": "ghcr.io/x/y" + digest, "mirror": False, "insecure": False}]
    with pytest.raises(_registries_conf.RegistriesConfError, match="blocked"):
        _registries_conf.pull_sources(conf, "blocked.example.com/x" + digest)
    # "quay.io" does not match "quay.iox"
    assert _registries_conf.find_registry(conf, "quay.iox/a@sha256:" + "a" * 64) is None


def test_read_host_configuration(tmp_path, release_key):
    etc = tmp_path / "containers"
    (etc / "registries.conf.d").mkdir(parents=True)
    (etc / "registries.d").mkdir()
    (etc / "policy.json").write_text(json.dumps({"default": [{"type": "insecureAcceptAnything"}]}))
    (etc / "registries.conf").write_text('unqualified-search-registries = ["registry.access.redhat.com", "docker.io"]\n'
                                         'short-name-mode = "enforcing"\n')
    (etc / "registries.conf.d" / "999-mirror.conf").write_text(_registries_conf.render(_registries_conf.mirror_config(MIRROR)))
    (etc / "registries.conf.d" / "ignored.txt").write_text("not toml")
    (etc / "registries.d" / "default.yaml").write_text("default-docker:\n  lookaside-staging: file:///var/lib/containers/sigstore\n")
    (etc / "registries.d" / "mirror.yaml").write_text(_registries_d.render(_registries_d.attachments_document([MIRROR])))
    paths = [str(etc / "policy.json"), str(etc / "registries.conf"), str(etc / "registries.conf.d"), str(etc / "registries.d")]
    policy, registries, registries_d = trust.read_host_configuration(*paths)
    assert "quay.io" in registries and registries_d["docker"][MIRROR]["use-sigstore-attachments"] is True
    (etc / "registries.d" / "again.yaml").write_text(_registries_d.render(_registries_d.attachments_document([MIRROR])))
    with pytest.raises(trust.HostConfigError, match="defined both in"):
        trust.read_host_configuration(*paths)
    os.unlink(str(etc / "registries.d" / "again.yaml"))
    (etc / "policy.json").write_text('{"default": []}')
    with pytest.raises(trust.HostConfigError, match="policy.json is invalid: default is an empty list"):
        trust.read_host_configuration(*paths)
    os.unlink(str(etc / "policy.json"))
    with pytest.raises(trust.HostConfigError, match="does not exist"):
        trust.read_host_configuration(*paths)
