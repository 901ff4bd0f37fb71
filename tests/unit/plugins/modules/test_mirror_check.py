# Copyright: airgap.microshift contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""mirror_check against a real mirror: ``docker-registry serve`` with TLS from a test CA and
htpasswd auth, real skopeo, and a registries.conf that sends ``quay.io`` to the mirror.

Everything runs in a private network namespace that only has a loopback interface: the
registry listens on its 127.0.0.1 and skopeo runs in it through a small ``nsenter`` wrapper
(given to the module as ``skopeo_path``). When the mirror does not serve a reference,
containers/image falls back to ``quay.io`` itself; in the namespace that lookup fails at once,
and no packet leaves the machine.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import io
import json
import os
import shutil
import signal
import stat
import subprocess
import tarfile
import time

import pytest


from ansible_collections.airgap.microshift.plugins.module_utils._registries_conf import checked_render, mirror_config
from ansible_collections.airgap.microshift.plugins.modules import mirror_check
from ansible_collections.airgap.microshift.tests.unit.plugins.helpers import (
    die_with_parent,
    make_server_cert,
    make_test_ca,
    run_main,
    warning_texts,
)

SKOPEO = shutil.which("skopeo")
REGISTRY = shutil.which("docker-registry") or shutil.which("registry")
OPENSSL = shutil.which("openssl")
HTPASSWD = shutil.which("htpasswd")
UNSHARE = shutil.which("unshare")
NSENTER = shutil.which("nsenter")

needs_tools = pytest.mark.skipif(
    not (SKOPEO and REGISTRY and OPENSSL and HTPASSWD and UNSHARE and NSENTER) or os.geteuid() != 0,
    reason="needs root, skopeo, docker-registry, openssl, htpasswd and util-linux (the test command runs as root and installs them)",
)

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
PORT = 5443


def _run(args, **kwargs):
    result = subprocess.run(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True, check=False, **kwargs)
    if result.returncode != 0:
        raise AssertionError("%s failed (%d): %s" % (" ".join(args), result.returncode, result.stderr[-2000:]))
    return result.stdout


def _blob(layout, data):
    digest = hashlib.sha256(data).hexdigest()
    with open(os.path.join(layout, "blobs", "sha256", digest), "wb") as handle:
        handle.write(data)
    return {"digest": "sha256:" + digest, "size": len(data)}


def make_oci_layout(layout, name, text):
    """An OCI layout with one tiny single-architecture image tagged ``name``; returns the manifest digest."""
    os.makedirs(os.path.join(layout, "blobs", "sha256"), exist_ok=True)
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        content = text.encode()
        info = tarfile.TarInfo("hello.txt")
        info.size = len(content)
        info.mtime = 0
        tar.addfile(info, io.BytesIO(content))
    layer_tar = raw.getvalue()
    layer = dict(_blob(layout, gzip.compress(layer_tar, mtime=0)), mediaType="application/vnd.oci.image.layer.v1.tar+gzip")
    config = {"architecture": "amd64", "os": "linux", "config": {},
              "rootfs": {"type": "layers", "diff_ids": ["sha256:" + hashlib.sha256(layer_tar).hexdigest()]}}
    config_desc = dict(_blob(layout, json.dumps(config, sort_keys=True).encode()), mediaType="application/vnd.oci.image.config.v1+json")
    manifest = json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": config_desc, "layers": [layer]},
                          sort_keys=True).encode()
    manifest_desc = dict(_blob(layout, manifest), mediaType=OCI_MANIFEST)
    index_path = os.path.join(layout, "index.json")
    index = {"schemaVersion": 2, "manifests": []}
    if os.path.exists(index_path):
        with open(index_path) as handle:
            index = json.load(handle)
    manifest_desc["annotations"] = {"org.opencontainers.image.ref.name": name}
    index["manifests"].append(manifest_desc)
    with open(index_path, "w") as handle:
        json.dump(index, handle)
    with open(os.path.join(layout, "oci-layout"), "w") as handle:
        json.dump({"imageLayoutVersion": "1.0.0"}, handle)
    return manifest_desc["digest"]


class Mirror:
    """A TLS + htpasswd registry on 127.0.0.1:PORT of a private network namespace."""

    def __init__(self, base):
        self.base = base
        self.holder = None
        self.registry = None
        self.hostport = "127.0.0.1:%d" % PORT

    def start(self):
        pki = os.path.join(self.base, "pki")
        os.makedirs(pki)
        self.cert_dir = os.path.join(self.base, "certs")
        self.wrong_cert_dir = os.path.join(self.base, "wrong-certs")
        os.makedirs(self.cert_dir)
        os.makedirs(self.wrong_cert_dir)
        ca = make_test_ca(pki, "ca", "mirror_check ca")
        make_test_ca(pki, "wrong-ca", "mirror_check wrong-ca")
        make_server_cert(pki, ca, san="IP:127.0.0.1")
        shutil.copy(os.path.join(pki, "ca.crt"), os.path.join(self.cert_dir, "ca.crt"))
        shutil.copy(os.path.join(pki, "wrong-ca.crt"), os.path.join(self.wrong_cert_dir, "ca.crt"))
        with open(os.path.join(pki, "htpasswd"), "w") as handle:
            handle.write(_run([HTPASSWD, "-Bbn", "mirroruser", "mirrorpass"]))
        self.authfile = os.path.join(self.base, "auth.json")
        with open(self.authfile, "w") as handle:
            json.dump({"auths": {self.hostport: {"auth": base64.b64encode(b"mirroruser:mirrorpass").decode()}}}, handle)

        # A process that holds the namespace, with its loopback up.
        self.holder = subprocess.Popen([UNSHARE, "--net", "--", "sh", "-c", "ip link set lo up && exec sleep 3600"],
                                       preexec_fn=die_with_parent)
        self.netns = "/proc/%d/ns/net" % self.holder.pid
        for dummy in range(100):
            if os.readlink(self.netns) != os.readlink("/proc/self/ns/net"):
                break
            time.sleep(0.05)
        self.skopeo = os.path.join(self.base, "skopeo-in-netns")
        with open(self.skopeo, "w") as handle:
            handle.write("#!/bin/sh\nexec %s --net=%s -- %s \"$@\"\n" % (NSENTER, self.netns, SKOPEO))
        os.chmod(self.skopeo, stat.S_IRWXU)

        config = os.path.join(self.base, "registry.yml")
        with open(config, "w") as handle:
            handle.write("\n".join([
                "version: 0.1",
                "log:",
                "  level: info",
                "storage:",
                "  filesystem:",
                "    rootdirectory: %s" % os.path.join(self.base, "data"),
                "http:",
                "  addr: %s" % self.hostport,
                "  secret: mirror-check-test",
                "  tls:",
                "    certificate: %s" % os.path.join(pki, "server.crt"),
                "    key: %s" % os.path.join(pki, "server.key"),
                "auth:",
                "  htpasswd:",
                "    realm: mirror-check-test",
                "    path: %s" % os.path.join(pki, "htpasswd"),
            ]) + "\n")
        self.log_path = os.path.join(self.base, "registry.log")
        log = open(self.log_path, "w")
        self.registry = subprocess.Popen([NSENTER, "--net=%s" % self.netns, "--", REGISTRY, "serve", config],
                                         stdout=log, stderr=subprocess.STDOUT, preexec_fn=die_with_parent)
        log.close()
        for dummy in range(200):
            if self.registry.poll() is not None:
                with open(self.log_path) as handle:
                    raise RuntimeError("registry exited: %s" % handle.read()[-2000:])
            probe = subprocess.run([NSENTER, "--net=%s" % self.netns, "--", "bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/%d" % PORT],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
            if probe.returncode == 0:
                break
            time.sleep(0.05)
        else:
            raise RuntimeError("registry did not start")

    def push(self, layout, name, repository, tag=None):
        dest = "docker://%s/%s%s" % (self.hostport, repository, ":" + tag if tag else "")
        _run([self.skopeo, "copy", "--preserve-digests", "--dest-authfile", self.authfile, "--dest-cert-dir", self.cert_dir,
              "oci:%s:%s" % (layout, name), dest])

    def stop(self):
        for proc in (self.registry, self.holder):
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()


@pytest.fixture(scope="module")
def mirror(tmp_path_factory):
    base = str(tmp_path_factory.mktemp("mirror-check"))
    server = Mirror(base)
    try:
        server.start()
        layout = os.path.join(base, "layout")
        server.digest_one = make_oci_layout(layout, "one", "one\n")
        server.digest_two = make_oci_layout(layout, "two", "two\n")
        server.digest_missing = make_oci_layout(layout, "missing", "never pushed\n")
        # quay.io/openshift-release-dev/app is served at <mirror>/ns/openshift-release-dev/app.
        server.push(layout, "one", "ns/openshift-release-dev/app")
        server.push(layout, "two", "ns/openshift-release-dev/other", tag="v2")
        server.conf = _registries_conf(base, "digest-only.conf", "%s/ns" % server.hostport, True)
        server.conf_tags = _registries_conf(base, "tags.conf", "%s/ns" % server.hostport, False)
        server.conf_down = _registries_conf(base, "down.conf", "127.0.0.1:%d/ns" % (PORT + 1), True)
        yield server
    finally:
        server.stop()


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
    args = {"registries_conf": mirror.conf, "cert_dir": mirror.cert_dir, "authfile": mirror.authfile,
            "skopeo_path": mirror.skopeo, "retry_delay": 0.0, "timeout": 60}
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
