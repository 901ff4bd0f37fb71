# Copyright: airgap.microshift contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

import pytest

from ansible_collections.airgap.microshift.plugins.module_utils._reference import (
    InvalidReference,
    by_digest,
    format_reference,
    is_digest,
    mirror_repository,
    parse_reference,
    repository_path,
)

DIGEST = "sha256:" + "ab" * 32


@pytest.mark.parametrize(
    "ref, expected",
    [
        ("quay.io/openshift-release-dev/ocp-v4.0-art-dev@" + DIGEST,
         ("quay.io", "openshift-release-dev/ocp-v4.0-art-dev", None, DIGEST)),
        ("registry.redhat.io/lvms4/topolvm-rhel9:v4.18@" + DIGEST,
         ("registry.redhat.io", "lvms4/topolvm-rhel9", "v4.18", DIGEST)),
        ("ghcr.io/kserve/kserve-controller:v0.14.0", ("ghcr.io", "kserve/kserve-controller", "v0.14.0", None)),
        ("mirror.example.com:8443/a/b/c:latest", ("mirror.example.com:8443", "a/b/c", "latest", None)),
        ("localhost/app", ("localhost", "app", None, None)),
        ("[::1]:5000/app@" + DIGEST, ("[::1]:5000", "app", None, DIGEST)),
    ],
)
def test_parse_valid(ref, expected):
    assert tuple(parse_reference(ref)) == expected


@pytest.mark.parametrize(
    "ref, fragment",
    [
        ("ubuntu", "does not start with a registry host"),
        ("library/ubuntu:22.04", "does not start with a registry host"),
        ("quay.io/UPPER/case", "not a valid image reference"),
        ("quay.io/a@sha256:abc", "digest that is not sha256"),
        ("quay.io/a@md5:" + "a" * 32, "digest that is not sha256"),
        (" quay.io/a", "white space"),
        ("", "empty"),
        ("quay.io/a:" + "t" * 200, "not a valid image reference"),
        (42, "not a string"),
    ],
)
def test_parse_invalid(ref, fragment):
    with pytest.raises(InvalidReference, match=fragment):
        parse_reference(ref)


def test_helpers():
    ref = "quay.io/org/repo:1.0@" + DIGEST
    assert by_digest(ref)
    assert not by_digest("quay.io/org/repo:1.0")
    assert repository_path(ref) == "quay.io/org/repo"
    assert is_digest(DIGEST) and not is_digest("sha256:xyz")
    assert format_reference("quay.io", "org/repo", "1.0", DIGEST) == ref
    assert mirror_repository(ref, "mirror:8443") == "mirror:8443/org/repo"
    assert mirror_repository(ref, "mirror:8443/", "/edge/site1/") == "mirror:8443/edge/site1/org/repo"
