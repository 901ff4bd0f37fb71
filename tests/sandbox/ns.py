# Copyright: airgap.microshift contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Network namespaces, persistent mount namespaces and the sweep that removes them.

Everything the test bed creates carries the prefix ``amsb-``: network namespaces are named
``amsb-<id>-<site>``, namespace files live in a private bind mount ``<state>/amsb-ns-<id>``, and
every process it starts has ``AMSB_SANDBOX_ID=amsb-<id>`` in its environment. ``sweep()`` finds
leftovers by those marks (and by the network namespace a process sits in) after a crash.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time

PREFIX = "amsb-"
ENV_MARK = "AMSB_SANDBOX_ID"
NETNS_DIR = "/run/netns"


class NsError(Exception):
    """A namespace operation failed."""


def run(cmd, check=True, **kwargs):
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False, **kwargs)
    if check and proc.returncode != 0:
        raise NsError("%s failed (rc=%d): %s" % (" ".join(cmd), proc.returncode, proc.stderr.strip()))
    return proc


def netns_path(name):
    return os.path.join(NETNS_DIR, name)


def netns_list():
    proc = run(["ip", "netns", "list"], check=False)
    return [line.split()[0] for line in proc.stdout.splitlines() if line.strip()]


def netns_add(name):
    run(["ip", "netns", "add", name])
    run(["ip", "-n", name, "link", "set", "lo", "up"])


def netns_del(name):
    run(["ip", "netns", "del", name], check=False)


def mountinfo():
    """Mount points of the calling process's mount namespace, in mount order."""
    points = []
    with open("/proc/self/mountinfo", encoding="utf-8") as f:
        for line in f:
            fields = line.split()
            points.append(fields[4].replace("\\040", " "))
    return points


def make_private_dir(path):
    """Bind-mount ``path`` on itself and make it private: namespace files may live there."""
    os.makedirs(path, exist_ok=True)
    run(["mount", "--bind", path, path])
    run(["mount", "--make-private", path])


def create_mount_ns(mnt_file, uts_file, script):
    """Create a persistent mount (and UTS) namespace, run ``script`` (sh) inside it, and return."""
    for p in (mnt_file, uts_file):
        with open(p, "w", encoding="ascii"):
            pass
    run(["unshare", "--mount=" + mnt_file, "--uts=" + uts_file, "--propagation", "private", "/bin/sh", "-e", script])


def enter_argv(net=None, mnt=None, uts=None):
    """The ``nsenter`` prefix that runs a command inside the given namespaces."""
    argv = ["nsenter"]
    if net:
        argv.append("--net=" + net)
    if mnt:
        argv.append("--mount=" + mnt)
    if uts:
        argv.append("--uts=" + uts)
    return argv


def _proc_env(pid):
    try:
        with open("/proc/%d/environ" % pid, "rb") as f:
            return f.read().split(b"\0")
    except OSError:
        return []


def _ns_inode(path):
    try:
        return os.stat(path).st_ino
    except OSError:
        return None


def find_processes(sid=None, netns_paths=()):
    """PIDs started by the test bed (``sid``, or any ``amsb-`` id) or living in ``netns_paths``."""
    me = os.getpid()
    wanted = ("%s=%s" % (ENV_MARK, sid)).encode() if sid else ("%s=%s" % (ENV_MARK, PREFIX)).encode()
    inodes = {i for i in (_ns_inode(p) for p in netns_paths) if i}
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        pid = int(entry)
        if pid in (me, os.getppid()):
            continue
        hit = any(e == wanted or (not sid and e.startswith(wanted)) for e in _proc_env(pid))
        if not hit and inodes:
            hit = _ns_inode("/proc/%d/ns/net" % pid) in inodes
        if hit:
            found.append(pid)
    return found


def kill_processes(pids, timeout=5.0):
    """SIGTERM each pid, then SIGKILL the ones still there after ``timeout`` seconds."""
    for pid in pids:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + timeout
    alive = list(pids)
    while alive and time.monotonic() < deadline:
        alive = [p for p in alive if _alive(p)]
        if alive:
            time.sleep(0.05)
    for pid in alive:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return pids


def alive(pid):
    """Whether process ``pid`` runs (a zombie child is reaped and counts as gone)."""
    return _alive(pid)


def _alive(pid):
    try:
        with open("/proc/%d/stat" % pid, encoding="ascii") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
        if state == "Z":
            try:
                os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                pass
            return False
        return True
    except OSError:
        return False


def sweep(sid=None, log=None):
    """Remove the processes, mounts and network namespaces of sandbox ``sid`` (or of every sandbox).

    Returns a dict of what was removed. Safe to call when nothing is left.
    """
    prefix = sid if sid else PREFIX
    nets = [n for n in netns_list() if n.startswith(prefix + "-" if sid else prefix)]
    removed = {"processes": [], "mounts": [], "netns": []}
    removed["processes"] = kill_processes(find_processes(sid, [netns_path(n) for n in nets]))
    marker = "/amsb-ns-" + (sid[len(PREFIX):] if sid else "")
    points = [p for p in mountinfo() if marker in p]
    # Namespace files first (deepest paths), then the private directories holding them.
    for point in sorted(set(points), key=lambda p: (-p.count("/"), p)):
        proc = run(["umount", point], check=False)
        if proc.returncode != 0:
            run(["umount", "-l", point], check=False)
        removed["mounts"].append(point)
    for name in nets:
        netns_del(name)
        removed["netns"].append(name)
    if log:
        log("sweep %s: %d processes, %d mounts, %d netns" % (prefix, len(removed["processes"]), len(removed["mounts"]), len(removed["netns"])))
    return removed


def leftovers(sid=None):
    """What of sandbox ``sid`` (or any sandbox) still exists: processes, mounts, netns."""
    prefix = sid if sid else PREFIX
    nets = [n for n in netns_list() if n.startswith(prefix)]
    marker = "/amsb-ns-" + (sid[len(PREFIX):] if sid else "")
    return {
        "processes": find_processes(sid, [netns_path(n) for n in nets]),
        "mounts": [p for p in mountinfo() if marker in p],
        "netns": nets,
    }
