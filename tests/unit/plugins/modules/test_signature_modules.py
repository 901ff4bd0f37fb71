# Copyright: airgap.microshift contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""main() of containers_policy, registries_d and signature_check: real files in a temporary
directory, and for signature_check a real registry (TLS, htpasswd) serving signed images."""

from __future__ import annotations

import json
import os
import stat

import pytest

from ansible_collections.airgap.microshift.plugins.module_utils import _registries_conf, _signing
from ansible_collections.airgap.microshift.plugins.modules import containers_policy, mirror_check, registries_d, signature_check
from ansible_collections.airgap.microshift.tests.unit.plugins.helpers.modules import run_main, warning_texts
from ansible_collections.airgap.microshift.tests.unit.plugins.helpers.signatures import sign_image

pytestmark = pytest.mark.skipif(not _signing.HAS_CRYPTOGRAPHY, reason="cryptography is not installed")

DEBIAN_POLICY = {"default": [{"type": "insecureAcceptAnything"}], "transports": {"docker-daemon": {"": [{"type": "insecureAcceptAnything"}]}}}


@pytest.fixture(scope="module")
def release_key():
    return _signing.generate_private_key("ecdsa-p256")


@pytest.fixture
def etc(tmp_path, release_key):
    root = tmp_path / "containers"
    (root / "registries.d").mkdir(parents=True)
    (root / "registries.conf.d").mkdir()
    (root / "policy.json").write_text(json.dumps(DEBIAN_POLICY, indent=4) + "\n")
    (root / "release.pub").write_bytes(_signing.public_key_pem(release_key))
    return root


def _policy_args(etc, **extra):
    args = {"path": str(etc / "policy.json"), "scopes": ["quay.io/openshift-release-dev", "registry.redhat.io"],
            "exceptions": ["registry.redhat.io/unsigned"], "keys": [str(etc / "release.pub")]}
    args.update(extra)
    return args


def test_policy_merged_idempotent_check_mode_and_diff(capsys, etc):
    before = (etc / "policy.json").read_text()
    checked, dummy = run_main(containers_policy, capsys, _policy_args(etc), check_mode=True, diff=True)
    assert checked["changed"] is True and (etc / "policy.json").read_text() == before
    assert '"sigstoreSigned"' in checked["diff"]["after"] and checked["diff"]["before"] == before
    result, dummy = run_main(containers_policy, capsys, _policy_args(etc))
    assert result["changed"] is True
    written = json.loads((etc / "policy.json").read_text())
    assert written["transports"]["docker-daemon"] == DEBIAN_POLICY["transports"]["docker-daemon"]
    assert written["transports"]["docker"]["registry.redhat.io"][0]["keyPath"] == str(etc / "release.pub")
    assert written["transports"]["docker"]["registry.redhat.io/unsigned"] == [{"type": "insecureAcceptAnything"}]
    assert written == result["policy"]
    assert stat.S_IMODE(os.stat(str(etc / "policy.json")).st_mode) == 0o644
    inode = os.stat(str(etc / "policy.json")).st_ino
    again, dummy = run_main(containers_policy, capsys, _policy_args(etc))
    assert again["changed"] is False and os.stat(str(etc / "policy.json")).st_ino == inode
    gone, dummy = run_main(containers_policy, capsys, _policy_args(etc, state="absent"))
    assert gone["changed"] is True and json.loads((etc / "policy.json").read_text()) == DEBIAN_POLICY


@pytest.mark.parametrize("change, words", [
    ({"keys": []}, "Option keys is required"),
    ({"keys": ["/nonexistent/key.pub"]}, "Cannot read the key file /nonexistent/key.pub"),
    ({"scopes": ["https://quay.io"]}, "is not a registry scope"),
    ({"exceptions": ["quay.io/openshift-release-dev"]}, "both a signed scope and an exception"),
])
def test_policy_bad_input_leaves_the_file(capsys, etc, change, words):
    before = (etc / "policy.json").read_text()
    result, dummy = run_main(containers_policy, capsys, _policy_args(etc, **change))
    assert result["failed"] and words in result["msg"] and "not changed" in result["msg"]
    assert (etc / "policy.json").read_text() == before


def test_policy_refuses_to_merge_into_a_broken_one(capsys, etc):
    (etc / "policy.json").write_text('{"default": []}')
    result, dummy = run_main(containers_policy, capsys, _policy_args(etc))
    assert result["failed"] and "default is an empty list" in result["msg"] and "fix it first" in result["msg"]
    assert (etc / "policy.json").read_text() == '{"default": []}'


def test_policy_check_mode_with_a_key_not_there_yet(capsys, etc):
    result, dummy = run_main(containers_policy, capsys, _policy_args(etc, keys=[str(etc / "later.pub")]), check_mode=True)
    assert result["changed"] is True and "does not exist yet" in " ".join(warning_texts(result))


def test_registries_d_written_checked_against_its_neighbours(capsys, etc):
    path = str(etc / "registries.d" / "microshift-mirror.yaml")
    args = {"path": path, "namespaces": ["mirror.example.com:8443"], "header": "Ansible managed"}
    checked, dummy = run_main(registries_d, capsys, args, check_mode=True)
    assert checked["changed"] is True and not os.path.exists(path)
    result, dummy = run_main(registries_d, capsys, args)
    assert result["changed"] is True
    assert (etc / "registries.d" / "microshift-mirror.yaml").read_text() == (
        "# Ansible managed\ndocker:\n  mirror.example.com:8443:\n    use-sigstore-attachments: true\n")
    assert run_main(registries_d, capsys, args)[0]["changed"] is False
    (etc / "registries.d" / "mirror.registry.yaml").write_text("docker:\n  mirror.example.com:8443:\n    use-sigstore-attachments: true\n")
    again, dummy = run_main(registries_d, capsys, args)
    assert again["failed"] and "mirror.example.com:8443 is defined both in" in again["msg"] and "was not written" in again["msg"]
    os.unlink(str(etc / "registries.d" / "mirror.registry.yaml"))
    (etc / "registries.d" / "broken.yaml").write_text("docker: [\n")
    broken, dummy = run_main(registries_d, capsys, args)
    assert broken["failed"] and "broken.yaml" in broken["msg"]
    os.unlink(str(etc / "registries.d" / "broken.yaml"))
    assert run_main(registries_d, capsys, dict(args, path=path[:-5] + ".yml"))[0]["msg"].endswith("would ignore it.")
    gone, dummy = run_main(registries_d, capsys, {"path": path, "state": "absent"})
    assert gone["changed"] is True and not os.path.exists(path)


def test_signature_check_against_a_real_registry(capsys, etc, local_registry, synthetic_images, release_key, tmp_path):
    signed = synthetic_images.push("good", "ocp/good", ["amd64", "arm64"], [("g-{arch}", 8 * 1024)])
    bare = synthetic_images.push("bare", "ocp/bare", ["amd64", "arm64"], [("b-{arch}", 8 * 1024)])
    other = synthetic_images.push("free", "free/app", ["amd64"], [("f", 8 * 1024)])
    # signed for its original name, which the host pulls it by
    sign_image(local_registry, signed, release_key, str(tmp_path), identity="quay.io/ocp/good@{digest}")
    # the host pulls quay.io/ocp/* through the registry (a mirror) and reads its attachments
    (etc / "registries.conf.d" / "999-mirror.conf").write_text(_registries_conf.render(_registries_conf.mirror_config(
        local_registry.host, registries=["quay.io"])))
    (etc / "registries.d" / "mirror.yaml").write_text("docker:\n  %s:\n    use-sigstore-attachments: true\n" % local_registry.host)
    run_main(containers_policy, capsys, {"path": str(etc / "policy.json"), "scopes": ["quay.io/ocp"], "keys": [str(etc / "release.pub")]})
    refs = ["quay.io/%s@%s" % (image["repository"], image["digest"]) for image in (signed, bare)] + [other["ref"]]
    args = {"images": refs, "authfile": local_registry.authfile, "policy": str(etc / "policy.json"),
            "registries_conf": str(etc / "none.conf"), "registries_conf_d": str(etc / "registries.conf.d"),
            "registries_d": str(etc / "registries.d"), "cert_dir": local_registry.cert_dir, "architecture": "x86_64"}
    result, dummy = run_main(signature_check, capsys, args, check_mode=True)
    assert result["failed"] and result["changed"] is False
    assert result["accepted"] == [refs[0], refs[2]]
    assert result["rejected"] == [{"ref": refs[1], "reason": "A signature was required, but no signature exists", "scope": "quay.io/ocp",
                                   "source": "%s/ocp/bare" % local_registry.host,
                                   "manifest": [r for r in result["results"] if r["ref"] == refs[1]][0]["manifest"]}]
    assert "1 of 3 image(s) would be refused" in result["msg"] and refs[1] in result["msg"]
    # without use-sigstore-attachments for the mirror, the signed image is refused too (as podman does)
    os.unlink(str(etc / "registries.d" / "mirror.yaml"))
    result, dummy = run_main(signature_check, capsys, dict(args, images=refs[:1]))
    assert result["failed"] and "registries.d does not enable use-sigstore-attachments" in result["msg"]


def test_mirror_check_evaluates_the_policy_in_the_same_run(capsys, etc, local_registry, synthetic_images, release_key, tmp_path):
    """mirror_check with signature_policy: the same verdicts as signature_check, in the run that resolves the images."""
    signed = synthetic_images.push("good-m", "ocp/good", ["amd64", "arm64"], [("gm-{arch}", 8 * 1024)])
    bare = synthetic_images.push("bare-m", "ocp/bare", ["amd64", "arm64"], [("bm-{arch}", 8 * 1024)])
    sign_image(local_registry, signed, release_key, str(tmp_path), identity="quay.io/ocp/good@{digest}")
    # quay.io/ocp is read from the registry (a mirror); the source itself is a closed port, so
    # nothing here ever leaves the machine
    conf = etc / "mirror.conf"
    conf.write_text('[[registry]]\nprefix = "quay.io/ocp"\nlocation = "127.0.0.1:9/ocp"\n'
                    '[[registry.mirror]]\nlocation = "%s/ocp"\n' % local_registry.host)
    (etc / "registries.d" / "mirror.yaml").write_text("docker:\n  %s:\n    use-sigstore-attachments: true\n" % local_registry.host)
    run_main(containers_policy, capsys, {"path": str(etc / "policy.json"), "scopes": ["quay.io/ocp"], "keys": [str(etc / "release.pub")]})
    refs = ["quay.io/%s@%s" % (image["repository"], image["digest"]) for image in (signed, bare)]
    args = {"images": refs, "authfile": local_registry.authfile, "registries_conf": str(conf), "cert_dir": local_registry.cert_dir,
            "registries_d": str(etc / "registries.d"), "architecture": "x86_64", "retries": 0}
    result, dummy = run_main(mirror_check, capsys, dict(args, signature_policy=str(etc / "policy.json")), check_mode=True)
    assert result["failed"] and result["changed"] is False
    assert result["served"] == refs and result["not_served"] == []
    assert result["reads"] == {"direct": 2, "skopeo": 0, "obstacle": None}
    assert result["signatures"]["accepted"] == refs[:1]
    assert [(r["ref"], r["reason"], r["source"]) for r in result["signatures"]["rejected"]] == [
        (refs[1], "A signature was required, but no signature exists", "%s/ocp/bare" % local_registry.host)]
    assert "1 of 2 image(s) would be refused by the signature policy" in result["msg"] and refs[1] in result["msg"]
    # signature_check on the same host files gives the same verdicts
    alone, dummy = run_main(signature_check, capsys, {
        "images": refs, "authfile": local_registry.authfile, "policy": str(etc / "policy.json"), "registries_conf": str(conf),
        "registries_d": str(etc / "registries.d"), "cert_dir": local_registry.cert_dir, "architecture": "x86_64"})
    assert [(r["ref"], r["verdict"], r["reason"]) for r in alone["results"]] == [
        (r["ref"], r["verdict"], r["reason"]) for r in result["signatures"]["results"]]
    # without the option, no signature is evaluated; a policy that is not there is named
    plain, dummy = run_main(mirror_check, capsys, args)
    assert plain.get("failed") is not True and plain["signatures"] is None
    missing, dummy = run_main(mirror_check, capsys, dict(args, images=refs[:1], signature_policy=str(etc / "none.json")))
    assert missing["failed"] and "%s does not exist" % (etc / "none.json") in missing["msg"]


@pytest.mark.parametrize("change, words", [
    ({"policy": "/nonexistent/policy.json"}, "/nonexistent/policy.json does not exist"),
    ({"images": ["not a reference"]}, "Option images"),
    ({"parallel": 0}, "parallel must be 1 or more"),
    ({"authfile": "/nonexistent/auth.json"}, "Option authfile names /nonexistent/auth.json, which does not exist"),
])
def test_signature_check_bad_input(capsys, etc, change, words):
    args = {"images": ["quay.io/a/b@sha256:" + "a" * 64], "policy": str(etc / "policy.json"), "registries_d": str(etc / "registries.d"),
            "registries_conf": str(etc / "none.conf"), "registries_conf_d": str(etc / "registries.conf.d")}
    args.update(change)
    result, dummy = run_main(signature_check, capsys, args)
    assert result["failed"] and words in result["msg"]
