# Copyright: airgap.microshift contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Booted MicroShift hosts: real systemd machines in the air-gapped site, reached over SSH.

Two kinds, both booting the cached Debian 13 tree of ``rootfs.py``:

* ``nspawn``: ``systemd-nspawn --boot`` on an overlay of the shared read-only tree and a
  persistent upper dir per host (``<state>/hosts/<host>/upper``), so what a role writes survives
  the host's reboots; a few MB of disk and about 60 MB of memory per host.
* ``qemu``: a full machine (``qemu-system-x86_64 -accel tcg``, a fresh process per boot) booting the tree's kernel and
  initrd on the cached ext4 image under a per-guest qcow2 layer; about 1 GiB of memory.

Network: each nspawn host has its own network namespace ``amsb-<id>-h<N>`` holding one end of a
veth pair (``eth0``) whose other end is on the bridge ``br0`` of the air-gapped namespace; a QEMU
guest's tap device is on the same bridge. The bridge and the hosts have addresses of
``10.213.0.0/24`` that exist only inside those namespaces (there is no route out of them), the
mirror registry listens there too, and the controller reaches a host with ``ssh`` whose
``ProxyCommand`` enters the air-gapped namespace (``nsenter ... socat``). Every host has its own
SSH host key (pinned in a known_hosts file) and authorizes the test bed's key for root.

One supervisor process (``hostd.py``) runs every machine and boots it again when it reboots.
"""

from __future__ import annotations

import json
import os
import secrets
import shlex
import shutil
import stat
import subprocess
import sys
import threading
import time
import uuid

from . import ns
from . import rootfs

HERE = os.path.dirname(os.path.abspath(__file__))
BRIDGE = "br0"
SUBNET = "10.213.0"
PREFIX_LEN = 24
GATEWAY = SUBNET + ".1"
FIRST_HOST = 11
MAX_HOSTS = 200
QEMU_MEMORY = os.environ.get("AMSB_QEMU_MEMORY", "1024")
QEMU_CPU = os.environ.get("AMSB_QEMU_CPU", "max")
KINDS = ("ns", "booted", "mixed", "last", "auto")
SSH_READY_TIMEOUT = {"nspawn": 180, "qemu": 600}
RELEASE_DIR = "/usr/share/microshift/release"
# Test bed only, nspawn hosts only. This machine mounts the legacy (v1) cgroup hierarchy, and the
# systemd of an nspawn container on it is never told that a cgroup became empty (the release agent
# works on the host only). So at every shutdown it waits out the stop timeout of the SSH session
# scope an Ansible ControlPersist connection leaves open (90 s) and of the root user manager
# (user@0.service, 120 s) although their processes are gone: a reboot took 100-125 s instead of
# about 6 s. Real hosts (cgroup v2, or v1 without a container) are told at once; these timeouts
# only shorten that wait.
NSPAWN_STOP_FILES = {
    "/etc/systemd/system.conf.d/amsb-nspawn-stop.conf": (
        b"# Test bed (nspawn on a cgroup v1 machine): empty scopes are never reported; do not wait 90 s for them.\n"
        b"[Manager]\nDefaultTimeoutStopSec=5s\n", 0o644),
    "/etc/systemd/system/user@.service.d/amsb-nspawn-stop.conf": (
        b"# Test bed (nspawn on a cgroup v1 machine): see /etc/systemd/system.conf.d/amsb-nspawn-stop.conf.\n"
        b"[Service]\nTimeoutStopSec=5s\n", 0o644),
}


class BootedError(Exception):
    """Booted hosts cannot be raised."""


def resolve_kind(host_kind, qemu_hosts=0, cache_dir=rootfs.DEFAULT_CACHE_DIR):
    """``(kind, reason)``: ``auto`` becomes ``booted`` when this machine can raise booted hosts, else ``ns``."""
    if host_kind != "auto":
        return host_kind, ""
    ok, reason = rootfs.support(need_qemu=bool(qemu_hosts), cache_dir=cache_dir)
    return ("booted", "") if ok else ("ns", reason)


def plan(names, host_kind="ns", qemu_hosts=0):
    """``{host: "ns" | "nspawn" | "qemu"}``: every host booted, none, the first half (``mixed``) or the last one (``last``).

    The last ``qemu_hosts`` of the booted hosts are QEMU guests, the others nspawn machines.
    """
    if host_kind not in KINDS or host_kind == "auto":
        raise BootedError("host kind %r is not one of %s" % (host_kind, ", ".join(KINDS)))
    names = list(names)
    if host_kind == "ns":
        booted = []
    elif host_kind == "booted":
        booted = names
    elif host_kind == "last":
        booted = names[-1:]
    else:
        booted = names[:max(1, len(names) // 2)] if names else []
    qemu_hosts = int(qemu_hosts or 0)
    if qemu_hosts < 0 or qemu_hosts > len(booted):
        raise BootedError("%d QEMU host(s) asked for, but only %d host(s) are booted (--host-kind booted or mixed)"
                          % (qemu_hosts, len(booted)))
    if len(booted) > MAX_HOSTS:
        raise BootedError("at most %d booted hosts (asked for %d)" % (MAX_HOSTS, len(booted)))
    kinds = {name: "ns" for name in names}
    for index, name in enumerate(booted):
        kinds[name] = "qemu" if index >= len(booted) - qemu_hosts else "nspawn"
    return kinds


def address(index):
    """The address of the booted host number ``index`` (1-based) on the air-gapped bridge."""
    return "%s.%d" % (SUBNET, FIRST_HOST + index - 1)


def ssh_options(state, for_ansible=False):
    """The ssh options that reach a booted host of the sandbox ``state`` (list of ``-o`` args)."""
    b = state["booted"]
    proxy = "nsenter --net=%s socat STDIO TCP:%%h:%%p" % ns.netns_path(b["gap_netns"])
    opts = ["-o", "ProxyCommand=%s" % proxy, "-o", "UserKnownHostsFile=%s" % b["known_hosts"], "-o", "StrictHostKeyChecking=yes",
            "-o", "IdentitiesOnly=yes", "-o", "ConnectTimeout=15", "-o", "ServerAliveInterval=10"]
    if not for_ansible:
        opts = ["-i", b["ssh_key"], "-o", "BatchMode=yes", "-o", "LogLevel=ERROR"] + opts
    return opts


def ssh_argv(state, node, argv=None):
    """``ssh`` argv that runs ``argv`` (a list, quoted for the remote shell) on a booted host."""
    info = state["nodes"][node]
    cmd = ["ssh"] + ssh_options(state) + ["root@" + info["address"]]
    if argv:
        cmd += ["--", shlex.join(argv)]
    return cmd


def inventory_vars(state, node):
    """The inventory variables of a booted host: real SSH, key auth, pinned host key."""
    info = state["nodes"][node]
    return {
        "ansible_connection": "ansible.builtin.ssh",
        "ansible_host": info["address"],
        "ansible_user": "root",
        "ansible_ssh_private_key_file": state["booted"]["ssh_key"],
        "ansible_ssh_common_args": " ".join(shlex.quote(o) if " " in o else o for o in ssh_options(state, for_ansible=True)),
        "ansible_python_interpreter": "/usr/bin/python3",
        # As users run SSH (a master connection kept open, pipelining), with the control sockets in
        # this sandbox: the hosts' addresses repeat from one sandbox to the next.
        "ansible_ssh_args": "-C -o ControlMaster=auto -o ControlPersist=60s",
        "ansible_control_path_dir": os.path.join(os.path.dirname(state["booted"]["ssh_key"]), "cp"),
        "ansible_pipelining": True,
        # A new master connection can fail once on a loaded machine: try again, as a site would.
        "ansible_ssh_retries": 3,
        "sandbox_site": "gap",
        "sandbox_host_kind": info["kind"],
    }


def _copy_dir_attrs(lower, path, upper_root):
    """Create ``path`` (under ``upper_root``) and its parents with the modes and owners they have in ``lower``."""
    rel = os.path.relpath(path, upper_root)
    current = upper_root
    for part in rel.split(os.sep):
        current = os.path.join(current, part)
        if os.path.isdir(current):
            continue
        os.mkdir(current)
        ref = os.path.join(lower, os.path.relpath(current, upper_root))
        if os.path.isdir(ref):
            st = os.stat(ref)
            os.chmod(current, stat.S_IMODE(st.st_mode))
            os.chown(current, st.st_uid, st.st_gid)
        else:
            os.chmod(current, 0o755)


def write_seed(root, lower, files):
    """Write ``files`` (``{path: (bytes, mode)}``) under ``root``; new directories copy their modes from ``lower``."""
    os.makedirs(root, exist_ok=True)
    for path, (data, mode) in files.items():
        dest = os.path.join(root, path.lstrip("/"))
        _copy_dir_attrs(lower, os.path.dirname(dest), root)
        with open(dest, "wb") as f:
            f.write(data)
        os.chmod(dest, mode)


class BootedHosts:
    """The booted hosts of one sandbox: made by ``create()``, started by ``start()``."""

    def __init__(self, sandbox, state, kinds, ostree_hosts=(), cache_dir=rootfs.DEFAULT_CACHE_DIR, log=None):
        self.sb = sandbox
        self.state = state
        self.kinds = {h: k for h, k in kinds.items() if k != "ns"}
        self.ostree_hosts = set(ostree_hosts or ())
        unknown = self.ostree_hosts - set(self.kinds)
        if unknown:
            raise BootedError("the rpm-ostree marker can only go on booted hosts, not on %s" % ", ".join(sorted(unknown)))
        self.cache_dir = cache_dir
        self.log = log or (lambda msg: None)
        self.dir = sandbox._path("hosts")  # pylint: disable=protected-access

    def create(self):
        """Build (or reuse) the root file system, the network, and each host's layers and seed."""
        t0 = time.monotonic()
        entry = rootfs.ensure_rootfs(self.cache_dir, self.log)
        timings = {"rootfs": round(time.monotonic() - t0, 1)}
        image = None
        if "qemu" in self.kinds.values():
            image = rootfs.ensure_disk_image(entry, self.log)
        timings["disk_image"] = round(time.monotonic() - t0 - timings["rootfs"], 1)
        os.makedirs(self.dir, exist_ok=True)
        adir = self.sb._path("ansible")  # pylint: disable=protected-access
        os.makedirs(adir, exist_ok=True)
        key = os.path.join(adir, "id_ed25519")
        if not os.path.exists(key):
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "amsb-" + self.state["id"], "-f", key], check=True)
        gap = self.sb.netns["gap"]
        self.state["booted"] = {
            "rootfs": {k: entry[k] for k in ("dir", "tree", "hash", "seconds", "bytes", "kernel_version")},
            "rootfs_built_now": entry["built_now"], "disk_image": image, "gap_netns": gap, "bridge": BRIDGE,
            "gateway": GATEWAY, "subnet": "%s.0/%d" % (SUBNET, PREFIX_LEN), "ssh_key": key,
            "known_hosts": os.path.join(adir, "known_hosts"), "events": os.path.join(self.dir, "events.jsonl"),
            "supervisor": None, "timings": timings, "ostree_hosts": sorted(self.ostree_hosts),
        }
        ns.run(["ip", "-n", gap, "link", "add", BRIDGE, "type", "bridge"])
        ns.run(["ip", "-n", gap, "addr", "add", "%s/%d" % (GATEWAY, PREFIX_LEN), "dev", BRIDGE])
        ns.run(["ip", "-n", gap, "link", "set", BRIDGE, "up"])
        known = []
        configs = []
        for index, host in enumerate(self.state["hosts"], start=1):
            kind = self.kinds.get(host)
            if not kind:
                continue
            info, host_key_pub, config = self._make_host(host, index, kind, entry, image, key + ".pub")
            self.state["nodes"][host] = info
            known.append("%s %s" % (info["address"], host_key_pub))
            configs.append(config)
        with open(self.state["booted"]["known_hosts"], "w", encoding="utf-8") as f:
            f.write("\n".join(known) + "\n")
        hostd_config = {"events": self.state["booted"]["events"], "hosts": configs}
        with open(os.path.join(self.dir, "hostd.json"), "w", encoding="utf-8") as f:
            json.dump(hostd_config, f, indent=2)

    def _seed_files(self, host, index, release_dir, authorized_key, host_key):
        addr = address(index)
        files = {
            "/etc/hostname": (("%s\n" % host).encode(), 0o644),
            "/etc/hosts": (("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n127.0.1.1\t%s\n%s"
                            % (host, "%s\t%s\n" % (GATEWAY, self.state["mirror"]["host"]) if self.state["booted_mirror"] else "")).encode(),
                           0o644),
            # No resolver: names not in /etc/hosts fail at once.
            "/etc/resolv.conf": (b"nameserver 127.0.0.1\noptions timeout:1 attempts:1\n", 0o644),
            "/etc/systemd/network/10-amsb.network": (("[Match]\nName=eth0\n\n[Network]\nAddress=%s/%d\nLinkLocalAddressing=no\n"
                                                      "IPv6AcceptRA=no\n" % (addr, PREFIX_LEN)).encode(), 0o644),
            "/root/.ssh/authorized_keys": (authorized_key, 0o600),
            "/etc/ssh/ssh_host_ed25519_key": (host_key[0], 0o600),
            "/etc/ssh/ssh_host_ed25519_key.pub": (host_key[1], 0o644),
        }
        for fname in sorted(os.listdir(release_dir)):
            with open(os.path.join(release_dir, fname), "rb") as f:
                files["%s/%s" % (RELEASE_DIR, fname)] = (f.read(), 0o644)
        if host in self.ostree_hosts:
            # /run is a tmpfs: the marker an rpm-ostree or bootc system has is made at every boot.
            files["/etc/tmpfiles.d/amsb-ostree-booted.conf"] = (
                b"# Test bed: this host carries the rpm-ostree/bootc marker (it is a Debian system all the same).\n"
                b"f /run/ostree-booted 0644 root root -\n", 0o644)
        return files

    def _make_host(self, host, index, kind, entry, image, pubkey_path):
        hdir = os.path.join(self.dir, host)
        os.makedirs(hdir, exist_ok=True)
        tmpkey = os.path.join(hdir, "ssh_host_ed25519_key")
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "root@" + host, "-f", tmpkey], check=True)
        with open(tmpkey, "rb") as f:
            private = f.read()
        with open(tmpkey + ".pub", "rb") as f:
            public = f.read()
        os.unlink(tmpkey)
        os.unlink(tmpkey + ".pub")
        with open(pubkey_path, "rb") as f:
            authorized = f.read()
        files = self._seed_files(host, index, self.state["release"]["dir"], authorized, (private, public))
        machine_id = uuid.UUID(bytes=secrets.token_bytes(16), version=4)
        console = os.path.join(self.sb._path("logs"), "%s.console.log" % host)  # pylint: disable=protected-access
        info = {"name": host, "site": "gap", "kind": kind, "address": address(index), "index": index, "dir": hdir,
                "machine_id": machine_id.hex, "console": console, "ostree": host in self.ostree_hosts}
        if kind == "nspawn":
            files.update(NSPAWN_STOP_FILES)
            upper, work = os.path.join(hdir, "upper"), os.path.join(hdir, "work")
            os.makedirs(upper, exist_ok=True)
            os.makedirs(work, exist_ok=True)
            write_seed(upper, entry["tree"], files)
            merged = os.path.join(self.sb.nsdir, "roots", host)
            os.makedirs(merged, exist_ok=True)
            ns.run(["mount", "-t", "overlay", "amsb-" + host, "-o",
                    "lowerdir=%s,upperdir=%s,workdir=%s" % (entry["tree"], upper, work), merged])
            netns = "%s-h%d" % (self.sb.sid, index)
            ns.netns_add(netns)
            self.state["created"]["netns"].append(netns)
            gap = self.sb.netns["gap"]
            ns.run(["ip", "-n", gap, "link", "add", "vh%d" % index, "type", "veth", "peer", "name", "eth0", "netns", netns])
            ns.run(["ip", "-n", gap, "link", "set", "vh%d" % index, "master", BRIDGE, "up"])
            info.update({"root": merged, "upper": upper, "netns": netns, "net": ns.netns_path(netns)})
            # The machine name carries the sandbox id: nspawn keeps per-machine state under
            # /run/systemd/nspawn/propagate/<machine>, which two test beds' "microshift-2" would share
            # (seen: a host of one test bed did not come back from a reboot while another test bed ran
            # a host of the same name).
            argv = ["systemd-nspawn", "--quiet", "--boot", "--directory=" + merged, "--machine=%s-%s" % (self.sb.sid, host),
                    "--hostname=" + host,
                    "--uuid=" + str(machine_id), "--register=no", "--keep-unit", "--network-namespace-path=" + ns.netns_path(netns),
                    # nspawn grants it with --private-network only: networkd and the loopback need it.
                    "--capability=CAP_NET_ADMIN", "--link-journal=no", "--resolv-conf=off", "--timezone=off", "--console=read-only"]
            reboot_codes = [133]
        else:
            seed_root = os.path.join(hdir, "seed")
            write_seed(os.path.join(seed_root, "root"), entry["tree"], files)
            seed_img = os.path.join(hdir, "seed.img")
            subprocess.run(["truncate", "-s", "16M", seed_img], check=True)
            ns.run(["mkfs.ext4", "-q", "-F", "-L", "amsb-seed", "-d", seed_root, seed_img])
            shutil.rmtree(seed_root)
            disk = os.path.join(hdir, "disk.qcow2")
            ns.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", image, "-F", "raw", disk])
            tap = "vt%d" % index
            gap = self.sb.netns["gap"]
            ns.run(["ip", "-n", gap, "tuntap", "add", "dev", tap, "mode", "tap"])
            ns.run(["ip", "-n", gap, "link", "set", tap, "master", BRIDGE, "up"])
            mac = "52:54:00:21:%02x:%02x" % (index // 256, index % 256)
            # quiet: an emulated serial console is slow, yet "reboot: Restarting system" still shows.
            cmdline = ("root=/dev/vda rw console=ttyS0 panic=-1 net.ifnames=0 quiet systemd.show_status=error"
                       " systemd.hostname=%s systemd.machine_id=%s"
                       % (host, machine_id.hex))
            argv = ns.enter_argv(net=ns.netns_path(gap)) + [
                "qemu-system-x86_64", "-name", host, "-accel", "tcg", "-cpu", QEMU_CPU, "-m", QEMU_MEMORY, "-smp", "1",
                "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
                "-kernel", entry["kernel"], "-initrd", entry["initrd"], "-append", cmdline,
                "-drive", "file=%s,if=virtio,format=qcow2,cache=unsafe" % disk,
                "-drive", "file=%s,if=virtio,format=raw,readonly=on" % seed_img,
                "-netdev", "tap,id=n0,ifname=%s,script=no,downscript=no" % tap,
                "-device", "virtio-net-pci,netdev=n0,mac=%s,romfile=" % mac,
                "-device", "virtio-rng-pci", "-serial", "stdio"]
            info.update({"disk": disk, "seed": seed_img, "tap": tap})
            reboot_codes = [0]
        config = {"name": host, "kind": kind, "argv": argv, "console": console, "reboot_codes": reboot_codes}
        if kind == "nspawn":
            config["netns"] = info["net"]
        if kind == "qemu":
            config["reboot_marker"] = "reboot: Restarting system"
        return info, public.decode().strip().split(" ", 2)[0] + " " + public.decode().strip().split(" ", 2)[1], config

    def start(self):
        """Start the supervisor, which boots every host."""
        env = dict(os.environ)
        env[ns.ENV_MARK] = self.sb.sid
        log = open(os.path.join(self.sb._path("logs"), "hostd.log"), "ab")  # pylint: disable=consider-using-with,protected-access
        proc = subprocess.Popen([sys.executable, os.path.join(HERE, "hostd.py"), "--config", os.path.join(self.dir, "hostd.json")],
                                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=env)
        log.close()
        self.state["booted"]["supervisor"] = proc.pid
        self.state["processes"]["hostd"] = proc.pid
        self.state["booted"]["started"] = time.time()

    def wait_ready(self):
        """Wait until every booted host answers SSH; record each one's time from start to SSH."""
        started = self.state["booted"]["started"]
        ready = {}
        errors = {}

        def wait(host):
            info = self.state["nodes"][host]
            deadline = time.monotonic() + SSH_READY_TIMEOUT[info["kind"]]
            while time.monotonic() < deadline:
                if not ns.alive(self.state["booted"]["supervisor"]):
                    errors[host] = "the host supervisor died (see %s)" % os.path.join(self.sb._path("logs"), "hostd.log")
                    return
                proc = subprocess.run(ssh_argv(self.state, host, ["true"]), capture_output=True, text=True, check=False,
                                      stdin=subprocess.DEVNULL, timeout=60)
                if proc.returncode == 0:
                    ready[host] = round(time.time() - started, 1)
                    return
                time.sleep(0.5 if info["kind"] == "nspawn" else 2)
            errors[host] = "no SSH after %ds (console log %s)" % (SSH_READY_TIMEOUT[info["kind"]], info["console"])

        threads = [threading.Thread(target=wait, args=(h,)) for h in self.kinds]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if errors:
            raise BootedError("booted hosts did not come up: %s" % "; ".join("%s: %s" % kv for kv in sorted(errors.items())))
        self.state["booted"]["timings"]["boot_to_ssh"] = ready
        return ready


def stop_supervisor(state, timeout=30.0):
    """Ask the supervisor to power every host off and wait for it (bounded); True when it is gone."""
    pid = (state.get("booted") or {}).get("supervisor")
    if not pid or not ns.alive(pid):
        return True
    try:
        os.kill(pid, 15)
    except ProcessLookupError:
        return True
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not ns.alive(pid):
            return True
        time.sleep(0.1)
    return False


def events(state):
    """The supervisor's records (list of dicts: host, event start/exit, pid, rc, time)."""
    path = (state.get("booted") or {}).get("events")
    if not path or not os.path.exists(path):
        return []
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]
