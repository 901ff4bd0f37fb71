# Copyright: airgap.microshift contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Reliability tests on the test bed: faults, crashes, full disks, bad input and secrets.

Every test drives the collection the way a user does: ``ansible-playbook`` (as
``python -m ansible.cli.playbook``) against the sandbox's inventory, with the json stdout
callback, so each test reads the module results as Ansible reported them.

One tiny sandbox (one MicroShift host) with a WAN proxy in terminate mode serves the whole
session; a second proxy (``site_proxy``) sits between the bastion and the site mirror when a
test needs faults or a slow link on the air-gapped side.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import time

import pytest
import yaml

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
if REPO_ROOT not in sys.path:
    sys.path.insert(0, REPO_ROOT)

from tests.sandbox import Sandbox  # noqa: E402  pylint: disable=wrong-import-position
from tests.sandbox import ns as sandbox_ns  # noqa: E402  pylint: disable=wrong-import-position
from tests.sandbox import proxy as wanproxy  # noqa: E402  pylint: disable=wrong-import-position

COLLECTIONS = os.path.join(REPO_ROOT, ".build", "collections")
if COLLECTIONS not in sys.path:
    sys.path.insert(0, COLLECTIONS)
COMPONENTS = ["core", "olm", "multus", "gateway-api", "cert-manager", "sriov", "metrics-server", "node-exporter", "kube-state-metrics"]
HEX64 = re.compile(r"^[0-9a-f]{64}$")
SITE_PROXY_ADDR = "127.0.0.11"

# Figures the tests record for the report (tests/output/reliability-figures.json).
FIGURES = {}


def record(key, value):
    FIGURES[key] = value


def pytest_sessionfinish(session, exitstatus):  # pylint: disable=unused-argument
    if not FIGURES:
        return
    out = os.path.join(REPO_ROOT, "tests", "output")
    os.makedirs(out, exist_ok=True)
    path = os.path.join(out, "reliability-figures.json")
    previous = {}
    if os.path.exists(path):
        try:
            with open(path, encoding="utf-8") as handle:
                previous = json.load(handle)
        except (OSError, ValueError):
            previous = {}
    previous.update(FIGURES)
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(previous, handle, indent=2, sort_keys=True)


# -- signing keys ----------------------------------------------------------------------------------


def make_transfer_keys(directory):
    """The test bed's transfer signing key pair (as airgap.microshift.signing_key writes one), in ``directory``."""
    from ansible_collections.airgap.microshift.plugins.module_utils import _signing  # pylint: disable=import-outside-toplevel
    os.makedirs(directory, mode=0o700, exist_ok=True)
    key = _signing.generate_private_key()
    private = os.path.join(directory, "transfer-signing.key")
    fd = os.open(private, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(_signing.private_key_pem(key))
    with open(private + ".pub", "wb") as handle:
        handle.write(_signing.public_key_pem(key))
    return {"private": private, "public": private + ".pub", "key": key, "fingerprint": _signing.fingerprint(key.public_key())}


# -- results -------------------------------------------------------------------------------------


class PlaybookResult:
    """One ansible-playbook run: rc, text output and the json callback's document."""

    def __init__(self, rc, stdout, stderr, argv):
        self.rc = rc
        self.stdout = stdout
        self.stderr = stderr
        self.argv = argv
        self.doc = None
        start = stdout.find("{")
        if start >= 0:
            try:
                self.doc = json.loads(stdout[start:])
            except ValueError:
                self.doc = None

    def results(self, host=None):
        """``[(task name, host, result)]`` in order."""
        out = []
        for play in (self.doc or {}).get("plays", []):
            for task in play.get("tasks", []):
                for name, result in task.get("hosts", {}).items():
                    if host is None or name == host:
                        out.append((task["task"]["name"], name, result))
        return out

    def task(self, name, host=None):
        """The last result of the task called ``name`` (a substring)."""
        found = [r for t, h, r in self.results(host) if name in t]
        assert found, "no task named %r in %s" % (name, [t for t, h, r in self.results(host)])
        return found[-1]

    def failure(self):
        """The first failed result that stopped the play, or None."""
        for dummy, dummy_host, result in self.results():
            if result.get("failed") and not result.get("ignore_errors"):
                return result
        return None

    def messages(self):
        return [r.get("msg") for t, h, r in self.results() if r.get("failed")]

    def __repr__(self):
        return "PlaybookResult(rc=%s, failure=%r, stderr=%r)" % (self.rc, self.failure() and self.failure().get("msg"), self.stderr[-2000:])


# -- the test bed ------------------------------------------------------------------------------


# The environment entry every playbook run of the bed carries (set by Bed): it finds their jobs.
RUN_MARK = None


class Bed:
    """The sandbox plus the helpers the reliability tests share."""

    def __init__(self, sb, work):
        global RUN_MARK  # pylint: disable=global-statement
        RUN_MARK = ("ANSIBLE_LOCAL_TEMP=%s" % os.path.join(work, "ansible-local")).encode()
        self.sb = sb
        self.state = sb.state
        self.work = work
        self.release_dir = self.state["release"]["dir"]
        self.mirror = self.state["mirror"]
        self.site_proxy_proc = None
        self.site_proxy_dir = None
        self.hosts_files = {}
        self.keys = make_transfer_keys(os.path.join(work, "keys"))

    def sign(self, args):
        """``args`` of an image_bundle task with the test bed's signing key (pack) or trusted key (verify, unpack)."""
        args = dict(args)
        if args.get("state") == "pack":
            args.setdefault("signing_key", self.keys["private"])
        elif args.get("state") in ("verify", "unpack"):
            args.setdefault("trusted_keys", [self.keys["public"]])
        return args

    # playbooks ----------------------------------------------------------------------------

    def env(self, extra=None, callback="json"):
        env = dict(os.environ)
        for key in list(env):
            if key.startswith("ANSIBLE_") or key == "AIRGAP_MICROSHIFT_REPORT_DIR":
                del env[key]
        env.update({
            "ANSIBLE_CONFIG": self.state["ansible"]["config"],
            "ANSIBLE_COLLECTIONS_PATH": COLLECTIONS,
            "ANSIBLE_NOCOLOR": "1",
            "ANSIBLE_FORCE_COLOR": "0",
            "ANSIBLE_RETRY_FILES_ENABLED": "0",
            "ANSIBLE_DEPRECATION_WARNINGS": "0",
            "ANSIBLE_LOCAL_TEMP": os.path.join(self.work, "ansible-local"),
            "PATH": os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "/usr/bin:/bin"),
        })
        if callback:
            env["ANSIBLE_STDOUT_CALLBACK"] = callback
        env.update(extra or {})
        return env

    def write_playbook(self, plays, extra_vars=None):
        directory = tempfile.mkdtemp(prefix="pb-", dir=self.work)
        path = os.path.join(directory, "playbook.yml")
        with open(path, "w", encoding="utf-8") as handle:
            yaml.safe_dump(plays, handle, sort_keys=False)
        argv = [sys.executable, "-m", "ansible.cli.playbook", path]
        if extra_vars:
            # Variables may hold passwords: a 0600 file, never the command line.
            vars_path = os.path.join(directory, "vars.json")
            fd = os.open(vars_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as handle:
                json.dump(extra_vars, handle)
            argv += ["-e", "@" + vars_path]
        return directory, argv

    def playbook(self, plays, extra_vars=None, env=None, args=(), timeout=900, callback="json"):
        """Run a playbook (a list of plays); returns a :class:`PlaybookResult`."""
        dummy, argv = self.write_playbook(plays, extra_vars)
        argv += list(args)
        proc = subprocess.run(argv, capture_output=True, text=True, env=self.env(env, callback), timeout=timeout, cwd=self.work, check=False)
        return PlaybookResult(proc.returncode, proc.stdout, proc.stderr, argv)

    def start_playbook(self, plays, extra_vars=None, env=None):
        """Start a playbook in its own process group (for kill -9); returns the Popen."""
        directory, argv = self.write_playbook(plays, extra_vars)
        out = open(os.path.join(directory, "stdout"), "wb")  # pylint: disable=consider-using-with
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=self.env(env), cwd=self.work, start_new_session=True)
        out.close()
        return proc

    def task_play(self, tasks, hosts="connected"):
        return [{"name": "Reliability test", "hosts": hosts, "gather_facts": False, "tasks": tasks}]

    def module(self, name, args, hosts="connected", env=None, extra_vars=None, task_extra=None):
        """One task calling ``airgap.microshift.<name>``; returns (PlaybookResult, module result)."""
        task = {"name": "Run %s" % name, "airgap.microshift." + name: args}
        task.update(task_extra or {})
        result = self.playbook(self.task_play([task], hosts), extra_vars=extra_vars, env=env)
        return result, result.task("Run %s" % name)

    # the release ---------------------------------------------------------------------------

    def digest_refs(self, arch="x86_64", components=None):
        """The digest refs of the release files for ``arch`` and ``components`` (default: COMPONENTS)."""
        refs = []
        for component in components or COMPONENTS:
            name = "release-%s.json" % arch if component == "core" else "release-%s-%s.json" % (component, arch)
            path = os.path.join(self.release_dir, name)
            if not os.path.exists(path):
                continue
            with open(path, encoding="utf-8") as handle:
                refs.extend(v for v in json.load(handle)["images"].values() if "@sha256:" in v)
        return sorted(set(refs))

    def download_play(self, store, extra=None):
        """image_list + download roles on the connected host, as connected_site.yml runs them."""
        role_vars = {
            "image_list_path": [self.release_dir], "image_list_arch": ["x86_64"], "image_list_components": COMPONENTS,
            "download_store": store, "download_authfile": self.state["pull_secret"], "download_verify": True,
            "download_free_space_margin": 0, "download_parallel": 4, "download_retry_delay": 0.5,
        }
        role_vars.update(extra or {})
        return [{"name": "Download", "hosts": "connected", "gather_facts": False, "vars": role_vars, "tasks": [
            {"name": "List the images", "ansible.builtin.include_role": {"name": "airgap.microshift.image_list"}},
            {"name": "Download the images", "ansible.builtin.include_role": {"name": "airgap.microshift.download"}},
        ]}]

    # the WAN proxy -------------------------------------------------------------------------

    def wan(self, **settings):
        return self.sb.wan_set(**settings)

    def wan_calm(self):
        self.sb.wan_set(bandwidth=0, latency=0, faults="reset=0,http429=0,http503=0")

    def wan_reset(self):
        self.sb.wan_control({"cmd": "reset_counters"})

    def wan_total(self):
        return self.sb.wan_counters()["total"]

    # registries ----------------------------------------------------------------------------

    def stop_registry(self, name):
        pid = self.state["processes"]["registry-" + name]
        sandbox_ns.kill_processes([pid])

    def start_registry(self, name):
        reg = self.state["registries"][name]
        self.sb._spawn(self.state, "registry-" + name, self.sb.netns["internet"],  # pylint: disable=protected-access
                       ["docker-registry", "serve", reg["config"]])
        self.wait_listening("internet", reg["address"], 443)

    def wait_listening(self, node, addr, port, timeout=20):
        code = ("import socket,sys,time\nend=time.time()+%d\nwhile True:\n"
                "    try:\n        socket.create_connection((%r,%d),0.5).close();break\n"
                "    except OSError:\n        assert time.time()<end, 'not listening'\n        time.sleep(0.05)\n") % (timeout, addr, port)
        self.sb.run(node, [sys.executable, "-c", code])

    # the air-gapped side -------------------------------------------------------------------

    def node_file(self, node, path):
        """The path of ``path`` inside ``node`` as seen from the machine (its overlay upper dir)."""
        info = self.state["nodes"][node]
        for top, upper in info["uppers"].items():
            if path.startswith(top + "/"):
                return os.path.join(upper, path[len(top) + 1:])
        return path

    def set_hosts_entry(self, node, name, addr):
        """Map ``name`` to ``addr`` in the node's /etc/hosts (restored by restore_hosts)."""
        path = self.node_file(node, "/etc/hosts")
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
        self.hosts_files.setdefault(node, text)
        lines = [line for line in text.splitlines() if not line.endswith("\t" + name)]
        lines.append("%s\t%s" % (addr, name))
        self.sb.run(node, ["sh", "-c", "cat > /etc/hosts"], input="\n".join(lines) + "\n")

    def restore_hosts(self):
        for node, text in self.hosts_files.items():
            self.sb.run(node, ["sh", "-c", "cat > /etc/hosts"], input=text)
        self.hosts_files = {}

    def node_snapshot(self, node, limit=1 << 20):
        """What ``node`` has written so far (its overlay upper dirs): ``{path: (kind, mode, content)}``.

        A test that configures a node for real takes one before and calls node_restore after, so the
        tests that follow find the node as the test bed made it (no CA trusted, no drop-in).
        """
        snap = {}
        for top, upper in self.state["nodes"][node]["uppers"].items():
            for base, dirs, files in os.walk(upper):
                for name in dirs + files:
                    path = os.path.join(base, name)
                    st = os.lstat(path)
                    inside = top + "/" + os.path.relpath(path, upper)
                    if stat.S_ISREG(st.st_mode):
                        content = None
                        if st.st_size <= limit:
                            with open(path, "rb") as handle:
                                content = handle.read()
                        snap[inside] = ("file", stat.S_IMODE(st.st_mode), content, st.st_size, st.st_mtime_ns)
                    elif stat.S_ISLNK(st.st_mode):
                        snap[inside] = ("link", 0, os.readlink(path), 0, 0)
                    else:
                        snap[inside] = ("dir" if stat.S_ISDIR(st.st_mode) else "other", stat.S_IMODE(st.st_mode), None, 0, 0)
        return snap

    def node_restore(self, node, before):
        """Undo, inside ``node``, what it wrote since ``before`` (a node_snapshot).

        A path it added goes, or gets the machine's version back when the node's overlay hid or changed
        one of the machine's (its lower layer); a file it changed gets its content back. Fails naming a
        path it cannot restore (a large file that changed, a removed one).
        """
        after = self.node_snapshot(node, limit=0)
        remove, rewrite, lost = [], [], []
        for path in sorted(p for p in after if p not in before):
            if any(path.startswith(q + "/") for q in remove):
                continue
            if os.path.isdir(path) and not os.path.islink(path):
                if after[path][0] != "dir":
                    lost.append(path)
                continue  # the machine's directory, copied up: its children are looked at one by one
            if os.path.islink(path):
                rewrite.append([path, None, os.readlink(path)])
            elif os.path.isfile(path):
                with open(path, "rb") as handle:
                    rewrite.append([path, base64.b64encode(handle.read()).decode(), stat.S_IMODE(os.stat(path).st_mode)])
            else:
                remove.append(path)
        for path, entry in before.items():
            now = after.get(path)
            if entry[0] == "file":
                if now is None or now[0] != "file" or now[3:] != entry[3:] or now[1] != entry[1]:
                    if entry[2] is None:
                        lost.append(path)
                    else:
                        rewrite.append([path, base64.b64encode(entry[2]).decode(), entry[1]])
            elif entry[0] == "link" and (now is None or now[:3] != entry[:3]):
                rewrite.append([path, None, entry[2]])
            elif now is None:
                lost.append(path)
        assert not lost, "%s: cannot restore %s" % (node, lost)
        code = (
            "import base64, json, os, shutil, sys\n"
            "plan = json.load(sys.stdin)\n"
            "for p in plan['remove']:\n"
            "    if os.path.isdir(p) and not os.path.islink(p):\n"
            "        shutil.rmtree(p)\n"
            "    elif os.path.lexists(p):\n"
            "        os.unlink(p)\n"
            "for p, data, mode in plan['rewrite']:\n"
            "    if os.path.lexists(p) and (data is None or os.path.islink(p)):\n"
            "        os.unlink(p)\n"
            "    if data is None:\n"
            "        os.symlink(mode, p)\n"
            "        continue\n"
            "    with open(p, 'wb') as f:\n"
            "        f.write(base64.b64decode(data))\n"
            "    os.chmod(p, mode)\n")
        self.sb.run(node, [sys.executable, "-c", code], input=json.dumps({"remove": remove, "rewrite": rewrite}))

    def start_site_proxy(self, settings=None):
        """A WAN proxy between the bastion and the mirror (terminate mode, site CA)."""
        self.stop_site_proxy()
        directory = tempfile.mkdtemp(prefix="site-proxy-", dir=self.work)
        config = {
            "listeners": [{"name": "mirror", "listen": [SITE_PROXY_ADDR, self.mirror["port"]],
                           "upstream": [self.mirror["address"], self.mirror["port"]], "server_name": self.mirror["host"],
                           "cert": self.mirror["cert"], "key": self.mirror["key"], "ca": self.state["site_ca"]}],
            "mode": "terminate", "settings": settings or {}, "seed": 11,
            "control_socket": os.path.join(directory, "control.sock"), "counters_file": os.path.join(directory, "counters.json"),
            "settings_file": os.path.join(directory, "settings.json"), "ready_file": os.path.join(directory, "ready"),
        }
        with open(os.path.join(directory, "proxy.json"), "w", encoding="utf-8") as handle:
            json.dump(config, handle)
        env = dict(os.environ)
        env[sandbox_ns.ENV_MARK] = self.sb.sid
        log = open(os.path.join(directory, "proxy.log"), "ab")  # pylint: disable=consider-using-with
        argv = sandbox_ns.enter_argv(net=self.state["namespaces"]["gap"]["path"]) + [
            sys.executable, os.path.join(REPO_ROOT, "tests", "sandbox", "proxy.py"), "--config", os.path.join(directory, "proxy.json")]
        self.site_proxy_proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                                start_new_session=True)
        log.close()
        self.site_proxy_dir = directory
        deadline = time.monotonic() + 15
        while not os.path.exists(config["ready_file"]):
            assert time.monotonic() < deadline, "the site proxy did not start"
            assert self.site_proxy_proc.poll() is None, "the site proxy exited"
            time.sleep(0.05)
        self.set_hosts_entry("airgap-bastion", self.mirror["host"], SITE_PROXY_ADDR)

    def site_proxy(self, request):
        return wanproxy.control(os.path.join(self.site_proxy_dir, "control.sock"), request)

    def stop_site_proxy(self):
        self.restore_hosts()
        if self.site_proxy_proc is not None:
            if self.site_proxy_proc.poll() is None:
                self.site_proxy_proc.terminate()
                try:
                    self.site_proxy_proc.wait(10)
                except subprocess.TimeoutExpired:
                    self.site_proxy_proc.kill()
                    self.site_proxy_proc.wait(10)
            self.site_proxy_proc = None

    def mirror_tags(self, repository):
        """Tags of a repository on the mirror (from the bastion)."""
        proc = self.sb.run("airgap-bastion", ["skopeo", "list-tags", "--authfile", self.mirror["auth_file"],
                                              "docker://%s/%s" % (self.mirror["hostport"], repository)], check=False)
        if proc.returncode != 0:
            return []
        return json.loads(proc.stdout)["Tags"]

    def mirror_digest(self, ref):
        """sha256 of the manifest the mirror serves for ``ref`` (host:port/repo@digest)."""
        proc = self.sb.run("airgap-bastion", ["skopeo", "inspect", "--raw", "--authfile", self.mirror["auth_file"], "docker://" + ref],
                           text=False)
        return "sha256:" + hashlib.sha256(proc.stdout).hexdigest()


# -- stores --------------------------------------------------------------------------------------


def scan_blobs(store):
    """Every file under blobs/sha256: ``{"valid": {hex: size}, "bad": [names], "temp": [names]}``.

    A file whose name is a digest must hash to it; anything else is a temporary file.
    """
    out = {"valid": {}, "bad": [], "temp": []}
    directory = os.path.join(store, "blobs", "sha256")
    if not os.path.isdir(directory):
        return out
    for name in sorted(os.listdir(directory)):
        path = os.path.join(directory, name)
        if not HEX64.match(name):
            out["temp"].append(name)
            continue
        digest = hashlib.sha256()
        with open(path, "rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
        if digest.hexdigest() == name:
            out["valid"][name] = os.path.getsize(path)
        else:
            out["bad"].append(name)
    return out


def verify_store(store):
    """A store verify: every blob hashes to its name; store.json is consistent with the files.

    Returns the list of problems (empty when the store is valid) and the parsed index.
    """
    problems = []
    scan = scan_blobs(store)
    problems += ["blob %s does not hash to its name" % name for name in scan["bad"]]
    index_path = os.path.join(store, "store.json")
    if not os.path.exists(index_path):
        return problems, None
    with open(index_path, encoding="utf-8") as handle:
        index = json.load(handle)
    for digest, size in index.get("blobs", {}).items():
        hexd = digest.split(":", 1)[1]
        if scan["valid"].get(hexd) != size:
            problems.append("store.json lists blob %s (%d bytes) which is missing or of another size" % (digest, size))
    for ref, entry in index.get("images", {}).items():
        needed = [(entry["digest"], entry["manifest_size"])]
        for manifest in entry.get("manifests", []):
            needed.append((manifest["digest"], manifest["size"]))
            needed += [(blob["digest"], blob["size"]) for blob in manifest.get("blobs", [])]
        for digest, size in needed:
            if scan["valid"].get(digest.split(":", 1)[1]) != size:
                problems.append("%s: blob %s missing or of another size" % (ref, digest))
        layout_index = os.path.join(store, entry["layout"], "index.json")
        try:
            with open(layout_index, encoding="utf-8") as handle:
                names = [m["digest"] for m in json.load(handle)["manifests"]]
        except (OSError, ValueError, KeyError):
            names = []
        if entry["digest"] not in names:
            problems.append("%s: %s does not name %s" % (ref, layout_index, entry["digest"]))
        if "@" in ref and ref.split("@", 1)[1] != entry["digest"]:
            problems.append("%s is recorded with digest %s" % (ref, entry["digest"]))
    return problems, index


def tree_state(path):
    """``{relpath: sha256}`` of every file under ``path`` (or of the file), to prove nothing changed."""
    out = {}
    if os.path.isfile(path):
        with open(path, "rb") as handle:
            return {".": hashlib.sha256(handle.read()).hexdigest()}
    for root, dummy, files in os.walk(path):
        for name in files:
            full = os.path.join(root, name)
            with open(full, "rb") as handle:
                out[os.path.relpath(full, path)] = hashlib.sha256(handle.read()).hexdigest()
    return out


def _children():
    """``{ppid: [pid]}`` of every process."""
    out = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % entry, encoding="utf-8", errors="replace") as handle:
                fields = handle.read().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        out.setdefault(int(fields[1]), []).append(int(entry))
    return out


def descendants(pid):
    """``pid`` and every process below it (whatever its session: Ansible's workers call setsid)."""
    children = _children()
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo.extend(children.get(current, []))
    return found


def detached_jobs():
    """Pids of the test bed's runs that left the controller's process tree: ``async`` jobs (the
    download role runs its module in the background), found by the mark in their environment."""
    if RUN_MARK is None:
        return []
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open("/proc/%s/environ" % entry, "rb") as handle:
                if RUN_MARK in handle.read().split(b"\0"):
                    found.append(int(entry))
        except OSError:
            continue
    return found


def kill_group(proc):
    """A crash of the whole run: freeze, then SIGKILL ``proc``, its process group, every descendant
    and every background job the run started.

    Killing the process group alone is not enough: Ansible's worker processes start their own
    session, so the module (and skopeo under it) would go on running after the controller died;
    an ``async`` job is not even below the controller any more.
    """
    pids = set()
    for dummy in range(3):
        for pid in descendants(proc.pid) + [p for job in detached_jobs() for p in descendants(job)]:
            if pid not in pids:
                pids.add(pid)
                try:
                    os.kill(pid, signal.SIGSTOP)
                except ProcessLookupError:
                    pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait(30)


def processes_with(text):
    """Pids whose command line contains ``text``."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open("/proc/%s/cmdline" % entry, "rb") as handle:
                if text.encode() in handle.read():
                    pids.append(int(entry))
        except OSError:
            continue
    return pids


def wait_gone(text, timeout=20):
    """Wait until no process names ``text`` (bounded); returns the pids still there."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pids = processes_with(text)
        if not pids:
            return []
        time.sleep(0.1)
    return processes_with(text)


class CmdlineSampler(threading.Thread):
    """Samples every process's command line every ``interval`` seconds while running."""

    def __init__(self, interval=0.05):
        super().__init__(daemon=True)
        self.interval = interval
        self.samples = {}
        self.netns = {}  # command line -> inode of its network namespace
        self.rounds = 0
        self.halt = threading.Event()

    def run(self):
        while not self.halt.is_set():
            for entry in os.listdir("/proc"):
                if not entry.isdigit():
                    continue
                try:
                    with open("/proc/%s/cmdline" % entry, "rb") as handle:
                        raw = handle.read()
                except OSError:
                    continue
                if raw:
                    self.samples.setdefault(raw, entry)
                    if raw not in self.netns:
                        try:
                            self.netns[raw] = os.stat("/proc/%s/ns/net" % entry).st_ino
                        except OSError:
                            self.netns[raw] = None
            self.rounds += 1
            self.halt.wait(self.interval)

    def stop(self):
        self.halt.set()
        self.join(10)

    def argvs(self, netns_inodes=None):
        """Sampled command lines; only those run in these network namespaces when given."""
        return [raw.split(b"\0") for raw in self.samples if netns_inodes is None or self.netns.get(raw) in netns_inodes]


# -- fixtures --------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def bed(tmp_path_factory):
    if os.geteuid() != 0:
        pytest.skip("the test bed needs root (network and mount namespaces)")
    root = str(tmp_path_factory.mktemp("reliability"))
    work = os.path.join(root, "work")
    os.makedirs(work)
    sb = Sandbox(os.path.join(root, "sandbox"), size="tiny", hosts=1, wan={"mode": "terminate", "seed": 7})
    sb.up()
    the_bed = Bed(sb, work)
    try:
        yield the_bed
    finally:
        try:
            the_bed.stop_site_proxy()
        finally:
            sb.down()
            shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def calm(bed):
    """The WAN proxy without faults before and after the test; the bastion's name resolution restored."""
    bed.wan_calm()
    yield bed
    bed.wan_calm()
    bed.stop_site_proxy()


@pytest.fixture(scope="session")
def reference_store(bed):
    """A complete store of the test image set, downloaded once without faults (read-only for tests)."""
    bed.wan_calm()
    store = os.path.join(bed.work, "reference-store")
    bed.wan_reset()
    result = bed.playbook(bed.download_play(store))
    assert result.rc == 0, result
    wire = bed.wan_total()["bytes_down"]
    problems, index = verify_store(store)
    assert not problems, problems
    unique = sum(index["blobs"].values())
    # What a clean download costs beyond the unique blob bytes: HTTP headers, token requests and
    # manifests read twice (once by the plan, once by the copy).
    return {"store": store, "index": index, "refs": sorted(index["images"]), "unique_bytes": unique,
            "wire_bytes": wire, "overhead_bytes": max(0, wire - unique)}
