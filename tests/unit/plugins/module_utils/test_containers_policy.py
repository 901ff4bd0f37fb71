# Copyright: airgap.microshift contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""policy.json: the merge keeps every other entry, validation refuses what containers/image refuses,
and the requirements of a reference are found as containers/image finds them."""

from __future__ import annotations

import copy
import json

import pytest

from ansible_collections.airgap.microshift.plugins.module_utils import _containers_policy as policy
from ansible_collections.airgap.microshift.plugins.module_utils._containers_policy import PolicyError

KEY = "/etc/containers/RedHat_ReleaseKey3.pub"
DIGEST = "sha256:" + "a" * 64

# RHEL 9's own policy.json (containers-common), as shipped.
RHEL = {
    "default": [{"type": "insecureAcceptAnything"}],
    "transports": {
        "docker": {
            "registry.access.redhat.com": [{"type": "signedBy", "keyType": "GPGKeys",
                                            "keyPaths": ["/etc/pki/rpm-gpg/RPM-GPG-KEY-redhat-release",
                                                         "/etc/pki/rpm-gpg/RPM-GPG-KEY-redhat-beta"]}],
            "registry.redhat.io": [{"type": "signedBy", "keyType": "GPGKeys",
                                    "keyPaths": ["/etc/pki/rpm-gpg/RPM-GPG-KEY-redhat-release",
                                                 "/etc/pki/rpm-gpg/RPM-GPG-KEY-redhat-beta"]}],
        },
        "docker-daemon": {"": [{"type": "insecureAcceptAnything"}]},
    },
}
SIGNED = {"quay.io/openshift-release-dev": [policy.sigstore_requirement([KEY])], "registry.redhat.io": [policy.sigstore_requirement([KEY])]}


def test_merge_keeps_every_other_entry_and_is_idempotent():
    merged = policy.merge(RHEL, SIGNED, ["registry.redhat.io/unsigned"])
    docker = merged["transports"]["docker"]
    assert docker["registry.access.redhat.com"] == RHEL["transports"]["docker"]["registry.access.redhat.com"]
    assert merged["transports"]["docker-daemon"] == RHEL["transports"]["docker-daemon"]
    assert merged["default"] == RHEL["default"]
    assert docker["quay.io/openshift-release-dev"] == [{"type": "sigstoreSigned", "keyPath": KEY,
                                                        "signedIdentity": {"type": "matchRepoDigestOrExact"}}]
    assert docker["registry.redhat.io"] == docker["quay.io/openshift-release-dev"]
    assert docker["registry.redhat.io/unsigned"] == [{"type": "insecureAcceptAnything"}]
    assert RHEL["transports"]["docker"]["registry.redhat.io"][0]["type"] == "signedBy"   # the input is untouched
    assert policy.merge(merged, SIGNED, ["registry.redhat.io/unsigned"]) == merged
    assert policy.parse(policy.checked_render(merged)) == merged


def test_merge_default_and_a_missing_policy():
    reject = policy.merge(RHEL, SIGNED, default=[{"type": "reject"}])
    assert reject["default"] == [{"type": "reject"}]
    fresh = policy.merge(None, SIGNED)
    assert fresh["default"] == [{"type": "insecureAcceptAnything"}] and set(fresh["transports"]["docker"]) == set(SIGNED)
    two_keys = policy.sigstore_requirement([KEY, "/etc/containers/next.pub"])
    assert two_keys["keyPaths"] == [KEY, "/etc/containers/next.pub"] and "keyPath" not in two_keys


@pytest.mark.parametrize("signed, exceptions, words", [
    ({"https://quay.io": []}, [], "is not a registry scope"),
    ({"quay.io/Upper": []}, [], "is not a registry scope"),
    ({"quay.io": []}, ["quay.io"], "both a signed scope and an exception"),
    ({}, ["*.example.com/path"], "is not a registry scope"),
])
def test_merge_refuses_bad_scopes(signed, exceptions, words):
    with pytest.raises(PolicyError, match=words):
        policy.merge(RHEL, signed, exceptions)


def test_remove():
    merged = policy.merge(RHEL, SIGNED)
    back = policy.remove(merged, ["quay.io/openshift-release-dev"])
    assert "quay.io/openshift-release-dev" not in back["transports"]["docker"]
    assert back["transports"]["docker"]["registry.redhat.io"] == SIGNED["registry.redhat.io"]


@pytest.mark.parametrize("mutate, words", [
    (lambda d: d.pop("default"), "default requirements are missing"),
    (lambda d: d.update(default=[]), "empty list of requirements"),
    (lambda d: d.update(extra={}), "unknown top-level key"),
    (lambda d: d["transports"]["docker"].update({"quay.io": [{"type": "sigstoreSigned"}]}), "exactly one of keyPath"),
    (lambda d: d["transports"]["docker"].update({"quay.io": [{"type": "sigstoreSigned", "keyPath": KEY, "keyData": "QQ=="}]}),
     "exactly one of keyPath"),
    (lambda d: d["transports"]["docker"].update({"quay.io": [{"type": "sigstoreSigned", "keyPath": KEY, "keypath": KEY}]}),
     "unknown key 'keypath'"),
    (lambda d: d["transports"]["docker"].update({"quay.io": [{"type": "sigstoreSigned", "keyData": "not base64"}]}), "is not base64"),
    (lambda d: d["transports"]["docker"].update({"quay.io": [{"type": "sigstoreSigned", "keyPath": KEY,
                                                              "signedIdentity": {"type": "matchEverything"}}]}), "signedIdentity type"),
    (lambda d: d["transports"]["docker"].update({"quay.io": [{"type": "signedBy", "keyPath": KEY}]}), "keyType must be one of"),
    (lambda d: d["transports"]["docker"].update({"quay.io": [{"type": "sigstoreSigned", "fulcio": {}}]}), "fulcio needs a rekorPublicKey"),
    (lambda d: d["transports"]["docker"].update({"quay.io": {"type": "reject"}}), "must be a list of requirements"),
    (lambda d: d["transports"]["docker"].update({"quay.io": [{"type": "acceptSometimes"}]}), "has the type"),
    (lambda d: d.update(transports=[]), "transports must be an object"),
])
def test_validation_refuses_what_containers_image_refuses(mutate, words):
    doc = copy.deepcopy(RHEL)
    mutate(doc)
    with pytest.raises(PolicyError, match=words):
        policy.check(doc, "policy.json")
    with pytest.raises(PolicyError, match="policy.json is invalid"):
        policy.parse(json.dumps(doc), "policy.json")


@pytest.mark.parametrize("text, words", [
    (b'{"default": [{"type": "reject"}], "default": []}', "appears twice"),
    (b'{"default": [{"type": "reject"}]', "not valid JSON"),
    (b'\xff', "not UTF-8"),
])
def test_unreadable_policies_are_named(text, words):
    with pytest.raises(PolicyError, match=words):
        policy.parse(text, "/etc/containers/policy.json")


def test_scope_candidates_and_requirements_for():
    ref = "mirror.example.com:8443/ns/app/x@" + DIGEST
    assert policy.scope_candidates(ref) == [ref, "mirror.example.com:8443/ns/app/x", "mirror.example.com:8443/ns/app",
                                            "mirror.example.com:8443/ns", "mirror.example.com:8443", "*.example.com", "*.com", ""]
    assert policy.scope_candidates("quay.io/a/b:v1")[:3] == ["quay.io/a/b:v1", "quay.io/a/b", "quay.io/a"]
    merged = policy.merge(RHEL, SIGNED, ["registry.redhat.io/unsigned"])
    scope, reqs = policy.requirements_for(merged, "quay.io/openshift-release-dev/ocp-v4.0-art-dev@" + DIGEST)
    assert scope == "quay.io/openshift-release-dev" and reqs[0]["type"] == "sigstoreSigned"
    assert policy.requirements_for(merged, "registry.redhat.io/unsigned/istio@" + DIGEST)[0] == "registry.redhat.io/unsigned"
    assert policy.requirements_for(merged, "registry.redhat.io/lvms4/lvms@" + DIGEST)[0] == "registry.redhat.io"
    assert policy.requirements_for(merged, "ghcr.io/x/y@" + DIGEST) == (None, [{"type": "insecureAcceptAnything"}])
    wildcard = policy.merge(RHEL, {"*.example.com": [{"type": "reject"}]})
    assert policy.requirements_for(wildcard, ref)[0] == "*.example.com"
    # the transport default "" comes before the policy's default
    default = copy.deepcopy(RHEL)
    default["transports"]["docker"][""] = [{"type": "reject"}]
    assert policy.requirements_for(default, "ghcr.io/x/y@" + DIGEST) == ("", [{"type": "reject"}])


def test_key_files():
    assert policy.key_files(policy.merge(RHEL, SIGNED)) == sorted(
        [KEY, "/etc/pki/rpm-gpg/RPM-GPG-KEY-redhat-release", "/etc/pki/rpm-gpg/RPM-GPG-KEY-redhat-beta"])
