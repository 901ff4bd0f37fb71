# Copyright: airgap.microshift contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The whole test bed on this machine: the sites, the gap, host isolation, and a clean teardown."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys

import pytest

from tests.sandbox import ns
from tests.sandbox.sandbox import Sandbox

pytest_plugins = ["tests.sandbox.pytest_plugin"]
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
WATCHED = ["/etc/hosts", "/etc/resolv.conf", "/etc/hostname", "/etc/ssl/certs", "/etc/containers", "/etc/pki", "/etc/crio",
           "/etc/microshift", "/var/lib/containers", "/usr/local/sbin", "/usr/local/share/ca-certificates"]


def _snapshot():
    snap = {"hostname": socket.gethostname()}
    for top in WATCHED:
        if not os.path.exists(top):
            snap[top] = None
            continue
        paths = [top] if os.path.isfile(top) else sorted(os.path.join(d, f) for d, unused, fs in os.walk(top) for f in fs)
        for p in paths:
            if os.path.islink(p):
                snap[p] = "link:" + os.readlink(p)
            else:
                with open(p, "rb") as f:
                    snap[p] = hashlib.sha256(f.read()).hexdigest()
    return snap


@pytest.fixture(scope="module")
def bed(tmp_path_factory):
    if os.geteuid() != 0:
        pytest.skip("the test bed needs root")
    before = _snapshot()
    sb = Sandbox(str(tmp_path_factory.mktemp("bed")), size="tiny", hosts=2)
    sb.up()
    yield sb, before
    sb.down()
    assert not any(ns.leftovers(sb.sid).values())
    assert _snapshot() == before


def _skopeo(sb, node, ref, auth=True):
    argv = ["skopeo", "inspect", "--raw"]
    if auth:
        argv += ["--authfile", sb.state["pull_secret"]]
    return sb.run(node, argv + ["docker://" + ref], check=False)


def test_state_file_names_everything(bed):
    sb, unused = bed
    with open(os.path.join(sb.state_dir, "sandbox.json"), encoding="utf-8") as f:
        state = json.load(f)
    for key in ("registries", "mirror", "pull_secret", "public_ca", "site_ca", "release", "inventory", "namespaces", "nodes"):
        assert state[key]
    assert set(state["registries"]) == {"quay.io", "registry.redhat.io", "registry.access.redhat.com", "ghcr.io"}
    assert os.path.exists(state["release"]["rpm"]) and os.path.isdir(state["release"]["dir"])
    assert state["release"]["logical_bytes"] > state["release"]["unique_bytes"] > 0


def test_internet_serves_by_digest_with_auth_only(bed):
    sb, unused = bed
    for ref in sb.state["verified_refs"]:
        assert _skopeo(sb, "connected", ref).returncode == 0
        denied = _skopeo(sb, "connected", ref, auth=False)
        assert denied.returncode != 0 and "unauthorized" in denied.stderr


def test_gap_is_real_and_the_mirror_answers(bed):
    sb, unused = bed
    ref = [r for r in sb.state["verified_refs"] if r.startswith("quay.io/")][0]
    for node in ("airgap-bastion", "microshift-1", "gap"):
        assert _skopeo(sb, node, ref).returncode != 0
    m = sb.state["mirror"]
    ok = sb.run("airgap-bastion", ["curl", "-sS", "--fail", "-u", "%s:%s" % (m["user"], m["password"]), m["url"] + "/v2/_catalog"])
    assert json.loads(ok.stdout) == {"repositories": []}
    # Pushing from a bastion-local copy works end to end.
    local = os.path.join(sb.state["transfer_dir"], "one")
    assert sb.run("connected", ["skopeo", "copy", "--all", "--preserve-digests", "--authfile", sb.state["pull_secret"],
                                "docker://" + ref, "dir:" + local]).returncode == 0
    digest = ref.split("@", 1)[1]
    sb.run("airgap-bastion", ["skopeo", "copy", "--all", "--preserve-digests", "--authfile", m["auth_file"], "dir:" + local,
                              "docker://%s/openshift-release-dev/test:one" % m["hostport"]])
    out = sb.run("airgap-bastion", ["skopeo", "inspect", "--raw", "--authfile", m["auth_file"],
                                    "docker://%s/openshift-release-dev/test@%s" % (m["hostport"], digest)])
    assert "sha256:" + hashlib.sha256(out.stdout.encode()).hexdigest() == digest
    # The connected host cannot see the site's mirror either.
    assert sb.run("connected", ["curl", "-sS", m["url"] + "/v2/"], check=False).returncode != 0


def test_hosts_are_isolated(bed):
    sb, unused = bed
    sb.run("microshift-1", ["sh", "-c", "echo one > /etc/crio/amsb-test.conf && mkdir -p /etc/pki/ca-trust/source/anchors"])
    assert sb.run("microshift-1", ["cat", "/etc/crio/amsb-test.conf"]).stdout == "one\n"
    assert sb.run("microshift-2", ["test", "-e", "/etc/crio/amsb-test.conf"], check=False).returncode == 1
    assert not os.path.exists("/etc/crio/amsb-test.conf")
    assert sb.run("microshift-2", ["hostname"]).stdout.strip() == "microshift-2"
    assert sb.run("microshift-1", ["cat", "/etc/containers/policy.json"]).returncode == 0
    assert sb.run("microshift-1", ["ls", "-A", "/etc/containers/registries.conf.d"]).stdout == ""
    # each host has its own /dev/shm (podman's lock segment lives there)
    sb.run("microshift-1", ["sh", "-c", "echo one > /dev/shm/amsb-test"])
    assert sb.run("microshift-2", ["test", "-e", "/dev/shm/amsb-test"], check=False).returncode == 1
    assert not os.path.exists("/dev/shm/amsb-test")


def test_update_ca_trust_shim_trusts_the_site_ca(bed):
    sb, unused = bed
    m = sb.state["mirror"]
    curl = ["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", m["url"] + "/v2/"]
    assert sb.run("microshift-2", curl, check=False).returncode != 0  # untrusted CA
    sb.run("microshift-2", ["cp", m["ca"], "/etc/pki/ca-trust/source/anchors/mirror-ca.pem"])
    sb.run("microshift-2", ["update-ca-trust"])
    assert sb.run("microshift-2", curl, check=False).stdout == "401"
    assert sb.run("microshift-1", curl, check=False).returncode != 0


def test_ansible_reaches_the_nodes(bed):
    sb, unused = bed
    env = dict(os.environ, **sb.state["ansible"]["env"])
    ansible = os.path.join(os.path.dirname(sb.python), "ansible")
    if not os.path.exists(ansible):
        pytest.skip("ansible is not installed next to %s" % sb.python)
    out = subprocess.run([ansible, "all", "-m", "ansible.builtin.command", "-a", "hostname"], env=env, capture_output=True, text=True,
                         check=False)
    assert out.returncode == 0, out.stdout + out.stderr
    for node in ("microshift-1", "microshift-2", "airgap-bastion", "connected-host"):
        assert node in out.stdout


def test_wan_proxy_counts_the_connected_traffic(sandbox_factory):
    sb = sandbox_factory(size="tiny", hosts=1, wan={"bandwidth": "400mbit", "latency": "2ms"})
    sb.wan_control({"cmd": "reset_counters"})
    ref = sb.state["verified_refs"][0]
    assert _skopeo(sb, "connected", ref).returncode == 0
    counters = sb.wan_counters()
    host = ref.split("/", 1)[0]
    assert counters["listeners"][host]["bytes_down"] > 0
    assert counters["settings"]["bandwidth"] == 50_000_000
    sb.wan_set(faults="reset=1")
    assert _skopeo(sb, "connected", ref).returncode != 0


def test_up_removes_leftovers_of_a_crashed_run(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("the test bed needs root")
    first = Sandbox(str(tmp_path), hosts=1)
    first.up()
    first.detach()  # as if the process had died without down()
    second = Sandbox(str(tmp_path), hosts=1)
    try:
        state = second.up()
        assert state["status"] == "up"
        assert len(ns.find_processes(second.sid)) == len(state["processes"])
    finally:
        second.down()
    assert not any(ns.leftovers(second.sid).values())


def test_release_update_is_served_next_to_the_release(sandbox_factory):
    sb = sandbox_factory(size="tiny", hosts=0)
    old_pids = {k: v for k, v in sb.state["processes"].items() if k != "registry-mirror"}
    update = sb.publish_update(changed=2)
    assert update["changed"] == 2 and len(update["changed_images"]) == 2
    with open(os.path.join(sb.state_dir, "sandbox.json"), encoding="utf-8") as f:
        assert json.load(f)["update"]["release"]["dir"] == update["release"]["dir"]
    with open(sb.state["inventory"], encoding="utf-8") as f:
        assert "sandbox_update_release_dir: %s" % update["release"]["dir"] in f.read()
    assert all(sb.state["processes"][k] != pid and ns.alive(sb.state["processes"][k]) for k, pid in old_pids.items())
    # The new refs and the previous refs of the changed images, by digest.
    for img in update["changed_images"]:
        for ref in img["refs_after"] + img["refs_before"]:
            out = sb.run("connected", ["skopeo", "inspect", "--raw", "--authfile", sb.state["pull_secret"], "docker://" + ref],
                         text=False)
            assert "sha256:" + hashlib.sha256(out.stdout).hexdigest() == ref.split("@", 1)[1]
    # Every other ref of the release is the same in both releases, and still served.
    for fname, refs in sb.state["release"]["files"].items():
        moved = set(refs) - set(update["release"]["files"][fname])
        assert moved <= {r for img in update["changed_images"] for r in img["refs_before"]}
    assert _skopeo(sb, "connected", sb.state["verified_refs"][0]).returncode == 0
    # The CLI publishes the same update again (restarting the registries) and the bed still comes down clean.
    cli = subprocess.run([sys.executable, "-m", "tests.sandbox", "update", "--state-dir", sb.state_dir, "--changed", "2", "--json"],
                         capture_output=True, text=True, check=False, cwd=REPO_ROOT)
    assert cli.returncode == 0, cli.stderr
    assert json.loads(cli.stdout)["release"]["dir"] == update["release"]["dir"]
    sb.state = None
    sb.down()
    assert not any(ns.leftovers(sb.sid).values())
