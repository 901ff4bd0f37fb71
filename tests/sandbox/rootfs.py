# Copyright: airgap.microshift contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The root file system of the booted test hosts: Debian 13 (trixie), built once and cached.

``ensure_rootfs()`` builds it with ``mmdebstrap`` from Debian's packages, using the archive the
machine's own apt sources name (read at run time: no archive host is written anywhere), and keeps
it under ``/var/tmp/airgap-microshift-rootfs-cache/<recipe hash>/`` (``AMSB_ROOTFS_CACHE``), outside
any checkout, so a clean clone and CI reuse it. The hash covers everything that shapes the tree:
suite, packages, hooks, the files of ``hostfiles/`` and the builder's version. Builders of one
recipe are serialized by a lock; a tree is built under a temporary name and renamed into place
with its ``complete`` marker, so a half-built tree is never used.

The same tree serves both kinds of booted host: systemd-nspawn machines use it read-only as the
lower layer of a per-host overlay, and QEMU guests boot its kernel and initrd on an ext4 image made
from it (``ensure_disk_image()``, cached beside it) under a per-guest copy-on-write layer.
"""

from __future__ import annotations

import fcntl
import glob
import hashlib
import json
import os
import re
import shutil
import subprocess
import time

ROOTFS_VERSION = 1
SUITE = "trixie"
DEFAULT_CACHE_DIR = os.environ.get("AMSB_ROOTFS_CACHE", "/var/tmp/airgap-microshift-rootfs-cache")
HOSTFILES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "hostfiles")
DISK_SIZE = "3G"

# systemd as PID 1 with the pieces `shutdown -r` and logins need, sshd, Python for Ansible (with
# cryptography, which the collection's signature checks use on the host, as python3-cryptography
# does on RHEL), the containers tools whose own pulls enforce the host's configuration and its
# signature policy (podman 5 needs netavark to start), and a kernel with an initrd for the QEMU guests.
PACKAGES = (
    "systemd-sysv", "dbus", "libpam-systemd", "udev", "openssh-server", "openssh-sftp-server", "python3", "python3-cryptography",
    "ca-certificates", "iproute2", "sudo", "skopeo", "podman", "netavark", "linux-image-amd64", "initramfs-tools",
)
# Paths dpkg never writes: documentation, and kernel modules no guest of the test bed loads.
EXCLUDES = (
    "/usr/share/doc/*", "/usr/share/man/*", "/usr/share/locale/*", "/usr/share/info/*",
    "/usr/lib/modules/*/kernel/drivers/gpu/*", "/usr/lib/modules/*/kernel/drivers/media/*",
    "/usr/lib/modules/*/kernel/drivers/net/wireless/*", "/usr/lib/modules/*/kernel/drivers/net/ethernet/*",
    "/usr/lib/modules/*/kernel/drivers/infiniband/*", "/usr/lib/modules/*/kernel/drivers/staging/*",
    "/usr/lib/modules/*/kernel/sound/*", "/usr/lib/modules/*/kernel/drivers/bluetooth/*",
)
INCLUDES = ("/usr/share/locale/locale.alias",)
# The initrd of a QEMU guest loads only what it needs to mount its root (set before the kernel is
# installed, so the initrd is built once).
INITRD_MODULES = ("virtio_pci", "virtio_blk", "virtio_net", "ext4", "crc32c_generic")
SETUP_HOOKS = (
    'mkdir -p "$1/etc/initramfs-tools/conf.d" "$1/usr/share/initramfs-tools/modules.d"',
    'echo MODULES=list > "$1/etc/initramfs-tools/conf.d/amsb.conf"',
    'printf "%s\\n" ' + " ".join(INITRD_MODULES) + ' > "$1/usr/share/initramfs-tools/modules.d/amsb"',
)
# {files} is the hostfiles directory (not part of the hash: its files' content is).
CUSTOMIZE_HOOKS = (
    # No archive host in the tree: the hosts are air-gapped and never run apt.
    'rm -f "$1/etc/apt/sources.list" "$1"/etc/apt/sources.list.d/*',
    # Empty: every host gets its own id at boot (nspawn --uuid, QEMU systemd.machine_id=), no first-boot presets.
    'truncate -s 0 "$1/etc/machine-id"',
    'rm -f "$1"/etc/ssh/ssh_host_*',
    'printf "" > "$1/etc/fstab"',
    'mkdir -p "$1/var/log/journal" "$1/usr/libexec" "$1/etc/systemd/journald.conf.d" "$1/usr/lib/systemd/system-preset"',
    'install -m 0644 {files}/microshift.service "$1/usr/lib/systemd/system/microshift.service"',
    'install -m 0755 {files}/microshift-standin "$1/usr/libexec/microshift-standin"',
    'install -m 0644 {files}/microshift.preset "$1/usr/lib/systemd/system-preset/10-microshift-standin.preset"',
    'install -m 0644 {files}/amsb-seed.service "$1/etc/systemd/system/amsb-seed.service"',
    'install -m 0644 {files}/sshd.conf "$1/etc/ssh/sshd_config.d/amsb.conf"',
    'install -m 0644 {files}/storage.conf "$1/etc/containers/storage.conf"',
    'install -m 0644 {files}/journald.conf "$1/etc/systemd/journald.conf.d/amsb.conf"',
    'chroot "$1" systemctl enable systemd-networkd.service amsb-seed.service',
    'chroot "$1" systemctl mask apt-daily.timer apt-daily-upgrade.timer e2scrub_reap.service e2scrub_all.timer'
    ' fstrim.timer getty.target systemd-networkd-wait-online.service dpkg-db-backup.timer netavark-dhcp-proxy.socket'
    ' systemd-binfmt.service proc-sys-fs-binfmt_misc.automount',
    'passwd --root "$1" -l root',
)


class RootfsError(Exception):
    """The root file system of the booted hosts cannot be built."""


def _files_digest():
    digest = hashlib.sha256()
    for name in sorted(os.listdir(HOSTFILES)):
        with open(os.path.join(HOSTFILES, name), "rb") as f:
            digest.update(name.encode() + b"\0" + hashlib.sha256(f.read()).hexdigest().encode() + b"\0")
        digest.update(oct(os.stat(os.path.join(HOSTFILES, name)).st_mode & 0o777).encode())
    return digest.hexdigest()


def recipe():
    """Everything that shapes the tree (its hash names the cache entry)."""
    return {
        "version": ROOTFS_VERSION, "suite": SUITE, "variant": "minbase", "packages": list(PACKAGES),
        "excludes": list(EXCLUDES), "includes": list(INCLUDES), "setup_hooks": list(SETUP_HOOKS),
        "customize_hooks": list(CUSTOMIZE_HOOKS), "files": _files_digest(),
    }


def recipe_hash():
    return hashlib.sha256(json.dumps(recipe(), sort_keys=True).encode()).hexdigest()[:16]


def _codename():
    with open("/etc/os-release", encoding="utf-8") as f:
        for line in f:
            if line.startswith("VERSION_CODENAME="):
                return line.split("=", 1)[1].strip().strip('"')
    return ""


def machine_mirrors(sources_dir="/etc/apt", codename=None):
    """``[(uri, signed_by)]`` of the Debian archive the machine's apt sources name for its release.

    Read from the deb822 ``*.sources`` files and the one-line ``sources.list`` files, at run time,
    so the archive the machine is allowed to reach is the one used, and no host name is written.
    """
    codename = codename or _codename()
    found = []
    paths = sorted(glob.glob(os.path.join(sources_dir, "sources.list.d", "*.sources")))
    for path in paths:
        with open(path, encoding="utf-8") as f:
            for stanza in re.split(r"\n\s*\n", f.read()):
                fields = {}
                for line in stanza.splitlines():
                    if line.startswith("#") or ":" not in line:
                        continue
                    key, value = line.split(":", 1)
                    fields[key.strip().lower()] = value.strip()
                if fields.get("enabled", "yes").lower() == "no" or "deb" not in fields.get("types", "").split():
                    continue
                if codename in fields.get("suites", "").split():
                    for uri in fields.get("uris", "").split():
                        found.append((uri, fields.get("signed-by", "")))
    lists = [os.path.join(sources_dir, "sources.list")] + sorted(glob.glob(os.path.join(sources_dir, "sources.list.d", "*.list")))
    for path in lists:
        if not os.path.exists(path):
            continue
        with open(path, encoding="utf-8") as f:
            for line in f:
                match = re.match(r"^\s*deb\s+(?:\[(?P<opts>[^\]]*)\]\s+)?(?P<uri>\S+)\s+(?P<suite>\S+)", line)
                if match and match.group("suite") == codename:
                    opts = dict(o.split("=", 1) for o in (match.group("opts") or "").split() if "=" in o)
                    found.append((match.group("uri"), opts.get("signed-by", "")))
    return found


def entry_dir(cache_dir=DEFAULT_CACHE_DIR):
    return os.path.join(cache_dir, recipe_hash())


def cached(cache_dir=DEFAULT_CACHE_DIR):
    """The cache entry of the current recipe when it is complete, else None."""
    path = entry_dir(cache_dir)
    return path if os.path.exists(os.path.join(path, "complete")) else None


def support(need_qemu=False, cache_dir=DEFAULT_CACHE_DIR):
    """``(True, "")`` when this machine can raise booted hosts, else ``(False, reason)``."""
    if os.geteuid() != 0:
        return False, "booted hosts need root"
    tools = ["systemd-nspawn", "nsenter", "ip", "ssh", "ssh-keygen", "socat"]
    if not cached(cache_dir):
        tools.append("mmdebstrap")
    if need_qemu:
        tools += ["qemu-system-x86_64", "qemu-img", "mkfs.ext4"]
    missing = [t for t in tools if not shutil.which(t)]
    if missing:
        return False, "missing commands: %s (bash tools/setup.sh installs them)" % ", ".join(missing)
    if not cached(cache_dir) and not machine_mirrors():
        return False, "the machine's apt sources name no Debian archive for %s to build the hosts' root file system from" % _codename()
    return True, ""


def _lock(cache_dir, name):
    os.makedirs(cache_dir, exist_ok=True)
    handle = open(os.path.join(cache_dir, name + ".lock"), "w", encoding="ascii")  # pylint: disable=consider-using-with
    fcntl.flock(handle, fcntl.LOCK_EX)
    return handle


def _du(path):
    proc = subprocess.run(["du", "-sb", path], capture_output=True, text=True, check=False)
    return int(proc.stdout.split()[0]) if proc.returncode == 0 and proc.stdout else 0


def ensure_rootfs(cache_dir=DEFAULT_CACHE_DIR, log=None):
    """The cache entry of the current recipe, built when missing: a dict (dir, tree, kernel, initrd, ...).

    ``built_now`` tells whether this call built it (``seconds`` is the build's time, whoever built it).
    """
    log = log or (lambda msg: None)
    key = recipe_hash()
    path = os.path.join(cache_dir, key)
    built = False
    with _lock(cache_dir, key):
        if not os.path.exists(os.path.join(path, "complete")):
            _build(cache_dir, key, path, log)
            built = True
        with open(os.path.join(path, "build.json"), encoding="utf-8") as f:
            info = json.load(f)
    info.update({"built_now": built, "dir": path, "tree": os.path.join(path, "rootfs"), "kernel": os.path.join(path, "vmlinuz"),
                 "initrd": os.path.join(path, "initrd.img"), "hash": key})
    return info


def _build(cache_dir, key, path, log):
    mirrors = machine_mirrors()
    if not mirrors:
        raise RootfsError("the machine's apt sources name no Debian archive for %s (looked in /etc/apt)" % _codename())
    if not shutil.which("mmdebstrap"):
        raise RootfsError("mmdebstrap is not installed (bash tools/setup.sh installs it)")
    for stale in glob.glob(os.path.join(cache_dir, key + ".partial-*")) + ([path] if os.path.exists(path) else []):
        shutil.rmtree(stale, ignore_errors=True)
    partial = os.path.join(cache_dir, "%s.partial-%d" % (key, os.getpid()))
    os.makedirs(partial)
    tree = os.path.join(partial, "rootfs")
    argv = ["mmdebstrap", "--mode=root", "--variant=minbase", "--format=directory",
            "--aptopt=Acquire::Check-Valid-Until \"false\"", "--aptopt=APT::Install-Recommends \"false\"",
            "--include=" + ",".join(PACKAGES)]
    argv += ["--dpkgopt=path-exclude=" + p for p in EXCLUDES] + ["--dpkgopt=path-include=" + p for p in INCLUDES]
    argv += ["--setup-hook=" + h for h in SETUP_HOOKS]
    argv += ["--customize-hook=" + h.replace("{files}", HOSTFILES) for h in CUSTOMIZE_HOOKS]
    argv += [SUITE, tree]
    # The machine's own archive, suite trixie: one-line entries built here, passed as arguments.
    argv += ["deb %s%s %s main" % ("[signed-by=%s] " % signed if signed else "", uri, SUITE) for uri, signed in mirrors[:1]]
    log("building the booted hosts' root file system (Debian %s, recipe %s) with mmdebstrap; this takes a few minutes once"
        % (SUITE, key))
    started = time.monotonic()
    with open(os.path.join(partial, "build.log"), "wb") as out:
        proc = subprocess.run(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, check=False)
    if proc.returncode != 0:
        with open(os.path.join(partial, "build.log"), encoding="utf-8", errors="replace") as f:
            tail = f.read()[-1500:]
        shutil.rmtree(partial, ignore_errors=True)
        raise RootfsError("mmdebstrap failed (rc=%d) building the booted hosts' root file system: %s" % (proc.returncode, tail.strip()))
    kernels = sorted(glob.glob(os.path.join(tree, "boot", "vmlinuz-*")))
    initrds = sorted(glob.glob(os.path.join(tree, "boot", "initrd.img-*")))
    if not kernels or not initrds:
        shutil.rmtree(partial, ignore_errors=True)
        raise RootfsError("the root file system has no kernel or initrd under /boot")
    shutil.copyfile(kernels[-1], os.path.join(partial, "vmlinuz"))
    shutil.copyfile(initrds[-1], os.path.join(partial, "initrd.img"))
    seconds = time.monotonic() - started
    info = {"recipe": recipe(), "seconds": round(seconds, 1), "bytes": _du(tree), "built": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "kernel_version": os.path.basename(kernels[-1])[len("vmlinuz-"):]}
    with open(os.path.join(partial, "build.json"), "w", encoding="utf-8") as f:
        json.dump(info, f, indent=2, sort_keys=True)
    os.rename(partial, path)
    with open(os.path.join(path, "complete"), "w", encoding="ascii") as f:
        f.write(key + "\n")
    log("root file system built in %.1fs (%.0f MB): %s" % (seconds, info["bytes"] / 1e6, path))


def ensure_disk_image(entry, log=None):
    """The raw ext4 image of the tree for QEMU guests (cached beside it, built once, read-only)."""
    log = log or (lambda msg: None)
    image = os.path.join(entry["dir"], "disk.raw")
    marker = image + ".complete"
    cache_dir, key = os.path.dirname(entry["dir"]), entry["hash"]
    with _lock(cache_dir, key):
        if not os.path.exists(marker):
            started = time.monotonic()
            partial = image + ".partial"
            for stale in (image, partial):
                if os.path.exists(stale):
                    os.unlink(stale)
            subprocess.run(["truncate", "-s", DISK_SIZE, partial], check=True)
            proc = subprocess.run(["mkfs.ext4", "-q", "-F", "-L", "amsb-root", "-d", entry["tree"], partial],
                                  capture_output=True, text=True, check=False)
            if proc.returncode != 0:
                os.unlink(partial)
                raise RootfsError("mkfs.ext4 could not make the QEMU disk image: %s" % proc.stderr.strip())
            os.chmod(partial, 0o444)
            os.rename(partial, image)
            with open(marker, "w", encoding="ascii") as f:
                f.write("%.1f\n" % (time.monotonic() - started))
            log("QEMU disk image made in %.1fs: %s" % (time.monotonic() - started, image))
    return image
