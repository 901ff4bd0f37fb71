# Copyright: airgap.microshift contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""mirror_check against a real mirror: ``docker-registry serve`` with TLS from a test CA and
htpasswd auth, real skopeo, and a registries.conf that sends ``quay.io`` to the mirror.

Everything runs in a private network namespace that only has a loopback interface: the
registry listens on its 127.0.0.1 and skopeo runs in it through a small ``nsenter`` wrapper
(given to the module as ``executable``). When the mirror does not serve a reference,
containers/image falls back to ``quay.io`` itself; in the namespace that lookup fails at once,
and no packet leaves the machine.
"""

from __future__ import annotations

import json
import os
import shutil

import pytest


from ansible_collections.airgap.microshift.plugins.module_utils._registries_conf import checked_render, mirror_config
from ansible_collections.airgap.microshift.plugins.modules import mirror_check
from ansible_collections.airgap.microshift.tests.unit.plugins.helpers.images import SyntheticImages
from ansible_collections.airgap.microshift.tests.unit.plugins.helpers.modules import run_main, warning_texts
from ansible_collections.airgap.microshift.tests.unit.plugins.helpers.registry import (
    NSENTER, REGISTRY_TOOLS, UNSHARE, LocalRegistry, Namespace, make_test_ca,
)

needs_tools = pytest.mark.skipif(
    not (REGISTRY_TOOLS and UNSHARE and NSENTER) or os.geteuid() != 0,
    reason="needs root, skopeo, docker-registry, openssl, htpasswd and util-linux (the test command runs as root and installs them)",
)

PORT = 5443


@pytest.fixture(scope="module")
def mirror(tmp_path_factory):
    """A TLS + htpasswd registry on 127.0.0.1:PORT of a private network namespace, with skopeo run in it."""
    base = str(tmp_path_factory.mktemp("mirror-check"))
    namespace = Namespace()
    server = LocalRegistry(os.path.join(base, "mirror"), username="mirroruser", password="mirrorpass", netns=namespace.path, port=PORT)
    try:
        server.start()
        server.base = base
        server.hostport = server.host
        # A CA that did not sign the mirror's certificate.
        server.wrong_cert_dir = os.path.join(base, "wrong-certs")
        os.makedirs(server.wrong_cert_dir)
        shutil.copy(make_test_ca(base, "wrong-ca", "mirror_check wrong-ca")[1], os.path.join(server.wrong_cert_dir, "ca.crt"))
        images = SyntheticImages(server, os.path.join(base, "images"), seed="mirror-check")
        # quay.io/openshift-release-dev/app is served at <mirror>/ns/openshift-release-dev/app.
        server.digest_one = images.push("one", "ns/openshift-release-dev/app", ["amd64"], [("one", 4096)])["digest"]
        server.digest_two = images.push("two", "ns/openshift-release-dev/other", ["amd64"], [("two", 4096)], tag="v2")["digest"]
        server.digest_missing = images.layout_blobs(images.build("missing", ["amd64"], [("never pushed", 4096)]))[0]
        server.conf = _registries_conf(base, "digest-only.conf", "%s/ns" % server.host, True)
        server.conf_tags = _registries_conf(base, "tags.conf", "%s/ns" % server.host, False)
        server.conf_down = _registries_conf(base, "down.conf", "127.0.0.1:%d/ns" % (PORT + 1), True)
        yield server
    finally:
        server.stop()
        namespace.close()


def _registries_conf(base, name, location, digest_only):
    data = mirror_config(location.split("/", 1)[0], namespace=location.split("/", 1)[1], registries=["quay.io"],
                         digest_only=digest_only)
    path = os.path.join(base, name)
    with open(path, "w") as handle:
        handle.write(checked_render(data))
    return path


def run_module(capsys, args, check_mode=False):
    return run_main(mirror_check, capsys, args, check_mode)[0]


def base_args(mirror, **extra):
    # skopeo alone: it runs in the namespace, this process does not (test_mirror_check_direct runs
    # the whole module in there, with both engines)
    args = {"registries_conf": mirror.conf, "cert_dir": mirror.cert_dir, "authfile": mirror.authfile,
            "executable": mirror.skopeo, "retry_delay": 0.0, "timeout": 60, "engine": "skopeo"}
    args.update(extra)
    return args


APP = "quay.io/openshift-release-dev/app"
OTHER = "quay.io/openshift-release-dev/other"


@needs_tools
def test_original_refs_resolve_through_the_mirror(capsys, mirror):
    refs = ["%s@%s" % (APP, mirror.digest_one), "%s@%s" % (OTHER, mirror.digest_two)]
    result = run_module(capsys, base_args(mirror, images=refs))
    assert result.get("failed") is not True, result
    assert result["changed"] is False
    assert result["served"] == refs
    assert result["not_served"] == []
    assert result["tag_refs"] == []


@needs_tools
def test_check_mode_checks_too(capsys, mirror):
    refs = ["%s@%s" % (APP, mirror.digest_one)]
    result = run_module(capsys, base_args(mirror, images=refs), check_mode=True)
    assert result["served"] == refs
    assert result["changed"] is False


@needs_tools
def test_every_ref_not_served_is_listed_with_its_reason(capsys, mirror):
    served = "%s@%s" % (APP, mirror.digest_one)
    missing = "%s@%s" % (APP, mirror.digest_missing)
    unknown_repo = "quay.io/openshift-release-dev/never@%s" % mirror.digest_one
    result = run_module(capsys, base_args(mirror, images=[served, missing, unknown_repo, "not-a-reference"], parallel=3))
    assert result["failed"]
    assert result["served"] == [served]
    failed = {item["ref"]: item for item in result["not_served"]}
    assert set(failed) == {missing, unknown_repo, "not-a-reference"}
    assert "the mirror does not serve it: manifest unknown" in failed[missing]["reason"]
    assert "127.0.0.1:%d/ns/openshift-release-dev/app@%s" % (PORT, mirror.digest_missing) in failed[missing]["reason"]
    assert failed[missing]["attempts"] == 1
    assert "the mirror does not serve it:" in failed[unknown_repo]["reason"]
    assert "does not start with a registry host" in failed["not-a-reference"]["reason"]
    assert "3 of 4 image(s) do not resolve" in result["msg"]
    assert missing in result["msg"] and unknown_repo in result["msg"]


@needs_tools
def test_tag_refs_under_digest_only_are_reported_and_fail_by_default(capsys, mirror):
    digest_ref = "%s@%s" % (APP, mirror.digest_one)
    tag_ref = "%s:v2" % OTHER
    result = run_module(capsys, base_args(mirror, images=[digest_ref, tag_ref]))
    assert result["failed"]
    assert result["tag_refs"] == [tag_ref]
    assert result["served"] == [digest_ref]
    assert "can never be pulled through a digest-only mirror: %s" % tag_ref in result["msg"]
    assert "fail_on_tag_refs=false" in result["msg"]

    allowed = run_module(capsys, base_args(mirror, images=[digest_ref, tag_ref], fail_on_tag_refs=False))
    assert allowed.get("failed") is not True
    assert allowed["tag_refs"] == [tag_ref]
    assert any(tag_ref in text for text in warning_texts(allowed))


@needs_tools
def test_tag_refs_are_checked_when_the_mirror_serves_tags(capsys, mirror):
    tag_ref = "%s:v2" % OTHER
    result = run_module(capsys, base_args(mirror, images=[tag_ref], digest_only=False, registries_conf=mirror.conf_tags))
    assert result.get("failed") is not True, result
    assert result["served"] == [tag_ref]
    assert result["tag_refs"] == []


@needs_tools
def test_untrusted_mirror_certificate_is_a_final_error(capsys, mirror):
    ref = "%s@%s" % (APP, mirror.digest_one)
    result = run_module(capsys, base_args(mirror, images=[ref], cert_dir=mirror.wrong_cert_dir, retries=3))
    assert result["failed"]
    assert result["served"] == []
    assert "TLS certificate verification failed (x509)" in result["not_served"][0]["reason"]
    assert result["not_served"][0]["attempts"] == 1


@needs_tools
def test_missing_credentials_are_reported(capsys, mirror):
    ref = "%s@%s" % (APP, mirror.digest_one)
    empty = os.path.join(mirror.base, "empty-auth.json")
    with open(empty, "w") as handle:
        json.dump({"auths": {}}, handle)
    result = run_module(capsys, base_args(mirror, images=[ref], authfile=empty))
    assert result["failed"]
    assert "authentication failed (401 unauthorized)" in result["not_served"][0]["reason"]


@needs_tools
def test_a_mirror_that_is_down_is_retried_then_reported(capsys, mirror):
    ref = "%s@%s" % (APP, mirror.digest_one)
    result = run_module(capsys, base_args(mirror, images=[ref], registries_conf=mirror.conf_down, retries=2))
    assert result["failed"]
    item = result["not_served"][0]
    assert "connection refused" in item["reason"]
    assert item["attempts"] == 3
    assert result["retries"] == 2
    assert "still failing after 3 attempts" in item["reason"]


def test_missing_files_are_named(capsys, tmp_path):
    result = run_module(capsys, {"images": [], "authfile": str(tmp_path / "nope.json")})
    assert result["failed"]
    assert result["msg"] == "Option authfile names %s, which does not exist or is not a file." % (tmp_path / "nope.json")
    result = run_module(capsys, {"images": [], "registries_conf": str(tmp_path / "nope.conf")})
    assert result["msg"] == "Option registries_conf names %s, which does not exist or is not a file." % (tmp_path / "nope.conf")
