# Copyright: airgap.microshift contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Booted hosts of the test bed: the plan of host kinds, the apt sources reader, and one nspawn host
for real (systemd, SSH, the gap, a reboot that keeps its files, a clean teardown)."""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from tests.sandbox import booted, ns, rootfs
from tests.sandbox.sandbox import Sandbox


def test_plan_of_host_kinds():
    names = ["microshift-%d" % i for i in range(1, 6)]
    assert set(booted.plan(names, "ns").values()) == {"ns"}
    kinds = booted.plan(names, "booted", qemu_hosts=2)
    assert [kinds[n] for n in names] == ["nspawn", "nspawn", "nspawn", "qemu", "qemu"]
    kinds = booted.plan(names, "mixed", qemu_hosts=1)
    assert [kinds[n] for n in names] == ["nspawn", "qemu", "ns", "ns", "ns"]
    kinds = booted.plan(names, "last")
    assert [kinds[n] for n in names] == ["ns", "ns", "ns", "ns", "nspawn"]
    with pytest.raises(booted.BootedError, match="3 QEMU host"):
        booted.plan(names[:2], "booted", qemu_hosts=3)
    with pytest.raises(booted.BootedError, match="host kind"):
        booted.plan(names, "containers")
    assert booted.address(1) == "10.213.0.11" and booted.address(50) == "10.213.0.60"


def test_the_archive_comes_from_the_machine_apt_sources(tmp_path):
    (tmp_path / "sources.list.d").mkdir()
    (tmp_path / "sources.list.d" / "debian.sources").write_text(
        "Types: deb\nURIs: http://archive.example/debian\nSuites: bookworm bookworm-updates\nComponents: main\n"
        "Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n\n"
        "Types: deb\nURIs: http://archive.example/debian-security\nSuites: bookworm-security\nComponents: main\n")
    (tmp_path / "sources.list").write_text("# deb http://old.example/debian bookworm main\ndeb http://other.example/debian bookworm main\n")
    assert rootfs.machine_mirrors(str(tmp_path), "bookworm") == [
        ("http://archive.example/debian", "/usr/share/keyrings/debian-archive-keyring.gpg"), ("http://other.example/debian", "")]
    assert rootfs.machine_mirrors(str(tmp_path), "trixie") == []


def test_recipe_hash_names_the_cache_entry():
    assert rootfs.recipe_hash() == rootfs.recipe_hash()
    assert len(rootfs.recipe_hash()) == 16
    assert "podman" in rootfs.recipe()["packages"] and rootfs.recipe()["suite"] == "trixie"
    # No archive host is part of the recipe (nor written anywhere): the machine's sources are read at build time.
    assert "http" not in json.dumps(rootfs.recipe())


@pytest.fixture(scope="module")
def booted_bed(tmp_path_factory):
    if os.geteuid() != 0:
        pytest.skip("the test bed needs root")
    ok, reason = rootfs.support()
    if not ok:
        pytest.skip("booted hosts are not possible here: %s" % reason)
    sb = Sandbox(str(tmp_path_factory.mktemp("booted")), size="tiny", hosts=1, host_kind="booted", ostree_hosts=["microshift-1"])
    sb.up()
    yield sb
    sb.down()
    assert not any(ns.leftovers(sb.sid).values())
    assert sb.sid not in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout


def _on(sb, argv, **kwargs):
    return sb.run("microshift-1", argv, **kwargs)


def test_booted_host_runs_systemd_and_answers_ssh(booted_bed):
    sb = booted_bed
    assert rootfs.cached(sb.rootfs_cache)
    assert _on(sb, ["cat", "/proc/1/comm"]).stdout.strip() == "systemd"
    assert _on(sb, ["hostname"]).stdout.strip() == "microshift-1"
    assert _on(sb, ["systemctl", "is-enabled", "microshift.service"], check=False).stdout.strip() == "disabled"
    assert "stand-in" in _on(sb, ["systemctl", "show", "--property=Description", "microshift.service"]).stdout
    assert _on(sb, ["test", "-e", "/run/ostree-booted"]).returncode == 0
    # An nspawn host does not wait out systemd's default stop timeouts for scopes it is never told are empty.
    assert _on(sb, ["systemctl", "show", "--property=DefaultTimeoutStopUSec"]).stdout.strip() == "DefaultTimeoutStopUSec=5s"
    assert _on(sb, ["systemctl", "show", "--property=TimeoutStopUSec", "user@0.service"]).stdout.strip() == "TimeoutStopUSec=5s"
    with open(os.path.join(sb.state["release"]["dir"], "release-x86_64.json"), encoding="utf-8") as f:
        release = f.read()
    assert _on(sb, ["cat", "/usr/share/microshift/release/release-x86_64.json"]).stdout == release


def test_booted_host_reaches_the_mirror_and_nothing_else(booted_bed):
    sb = booted_bed
    probe = "import socket,sys\ntry:\n socket.create_connection((sys.argv[1], int(sys.argv[2])), 3).close(); print('open')\nexcept OSError as e: print(e)\n"
    assert _on(sb, ["python3", "-c", probe, "mirror.airgap.test", "8443"]).stdout.strip() == "open"
    ref = [r for r in sb.state["verified_refs"] if r.startswith("quay.io/")][0]
    assert _on(sb, ["skopeo", "inspect", "--raw", "docker://" + ref], check=False).returncode != 0
    # The internet registries' addresses do not exist on this side: only the host's own loopback answers.
    assert _on(sb, ["python3", "-c", probe, "127.0.0.2", "443"]).stdout.strip() != "open"
    assert _on(sb, ["ip", "route"]).stdout.strip().splitlines() == ["10.213.0.0/24 dev eth0 proto kernel scope link src 10.213.0.11"]


def test_ansible_reaches_the_booted_host_over_ssh(booted_bed):
    sb = booted_bed
    ansible = os.path.join(os.path.dirname(sb.python), "ansible")
    if not os.path.exists(ansible):
        pytest.skip("ansible is not installed next to %s" % sb.python)
    env = dict(os.environ, **sb.state["ansible"]["env"])
    out = subprocess.run([ansible, "microshift-1", "-m", "ansible.builtin.setup", "-a", "gather_subset=min"], env=env,
                         capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stdout + out.stderr
    assert '"ansible_os_family": "Debian"' in out.stdout and '"ansible_distribution_major_version": "13"' in out.stdout


def test_reboot_gives_a_new_boot_and_keeps_the_host_files(booted_bed):
    sb = booted_bed
    _on(sb, ["sh", "-c", "echo kept > /etc/amsb-reboot-test"])
    before = _on(sb, ["cat", "/proc/sys/kernel/random/boot_id"]).stdout.strip()
    _on(sb, ["systemctl", "reboot"], check=False)
    for unused in range(240):
        proc = _on(sb, ["cat", "/proc/sys/kernel/random/boot_id"], check=False)
        if proc.returncode == 0 and proc.stdout.strip() not in ("", before):
            break
        subprocess.run(["sleep", "0.5"], check=True)
    else:
        pytest.fail("microshift-1 did not come back after its reboot")
    assert _on(sb, ["cat", "/etc/amsb-reboot-test"]).stdout == "kept\n"
    exits = [e for e in booted.events(sb.state) if e["host"] == "microshift-1" and e["event"] == "exit"]
    assert [e["rc"] for e in exits] == [133]
    assert [e["event"] for e in booted.events(sb.state)].count("start") == 2
    # The machine's own /etc never sees a host's files.
    assert not os.path.exists("/etc/amsb-reboot-test")


def test_booted_hosts_without_a_mirror_in_reach(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("the test bed needs root")
    ok, reason = rootfs.support()
    if not ok:
        pytest.skip("booted hosts are not possible here: %s" % reason)
    sb = Sandbox(str(tmp_path), size="tiny", hosts=1, host_kind="booted", booted_mirror=False)
    try:
        sb.up()
        probe = "import socket,sys\ntry:\n socket.create_connection((sys.argv[1], int(sys.argv[2])), 3).close(); print('open')\nexcept OSError as e: print(e)\n"
        assert _on(sb, ["python3", "-c", probe, booted.GATEWAY, "8443"]).stdout.strip() != "open"
        assert _on(sb, ["getent", "hosts", "mirror.airgap.test"], check=False).returncode != 0
        # The namespace side still has its mirror.
        assert sb.run("airgap-bastion", ["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", sb.state["mirror"]["url"] + "/v2/"]).stdout == "401"
    finally:
        sb.down()
    assert not any(ns.leftovers(sb.sid).values())
