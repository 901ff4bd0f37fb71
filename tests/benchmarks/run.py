# Copyright: airgap.microshift contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Mirroring benchmark: the collection against the manual procedure and a parallel baseline.

Raises the test bed (tests/sandbox) with its WAN proxy between the connected host and the
internet registries, then, in one run and on the same release:

* ``manual``   baseline (a): the documented procedure's sequential loops (baselines/manual_*.sh);
* ``parallel`` baseline (b): the same copies run by ``xargs -P`` (baselines/parallel_*.sh);
* ``ours``     ``airgap.microshift.image_download`` / ``image_upload`` through ansible-playbook.

Downloads run in the connected host, uploads in the air-gapped bastion. A second proxy of the
test bed's kind (no cap unless --mirror-bandwidth) sits between the bastion and the site mirror
to count the bytes each upload sends. Figures: wall clocks, WAN proxy byte counters, ``du`` of
each result, blob uploads from the mirror registry's access log, the peak memory of each
command's process tree (sampled from /proc, and the largest single process from wait4) and the
mirror registry's VmHWM. Prints a table with PASS/MISS against the targets and writes JSON.

    .venv/bin/python tests/benchmarks/run.py --size tiny          # smoke test, < 1 minute
    .venv/bin/python tests/benchmarks/run.py --size bench --chart docs/benchmark-chart.png

Traffic stays inside the test bed's network namespaces (loopback addresses only).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from urllib.parse import parse_qs, unquote

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, ROOT)

from tests.sandbox import Sandbox  # noqa: E402  pylint: disable=wrong-import-position
from tests.sandbox import ns as sbns  # noqa: E402  pylint: disable=wrong-import-position
from tests.sandbox import proxy as wanproxy  # noqa: E402  pylint: disable=wrong-import-position

MODES = ("manual", "parallel", "ours")
PARTS = ("download", "upload", "noop", "bundle")
MODE_LABELS = {"manual": "(a) manual, sequential", "parallel": "(b) xargs -P", "ours": "(c) airgap.microshift"}
MIRROR_PROXY_ADDR = "127.0.0.11"
BLOB_INFO_CACHES = ("/var/lib/containers/cache/blob-info-cache-v1.boltdb",
                    "/root/.local/share/containers/cache/blob-info-cache-v1.boltdb")
TARGETS = {
    "download_vs_floor": 1.15,     # ours' download wall time <= 1.15 x (unique bytes / bandwidth)
    "speedup_vs_manual": 3.0,      # >= 3 x faster than (a)
    "speedup_vs_parallel": 2.0,    # >= 2 x faster than (b)
    "fetched_vs_unique": 1.02,     # bytes from the registries <= 1.02 x unique bytes
    "store_vs_unique": 1.02,       # store on disk <= 1.02 x unique bytes
    "noop_seconds": 5.0,           # no-op rerun, Ansible included
    "uploads_per_blob": 1,         # each blob uploaded at most once per registry
    "upload_vs_floor": 1.15,       # upload bytes (and time, with a capped mirror link) <= 1.15 x floor
}
# Per size: (bandwidth, latency, refs limit, timeout per phase in seconds). A tiny run keeps the WAN
# shape but a slice of the release, so that the whole harness runs in well under a minute.
SIZE_DEFAULTS = {
    "tiny": ("200mbit", "20ms", 5, 300),
    "default": ("200mbit", "20ms", 0, 1800),
    "bench": ("200mbit", "20ms", 0, 3600),
}


def log(msg):
    sys.stderr.write("[bench %s] %s\n" % (time.strftime("%H:%M:%S"), msg))
    sys.stderr.flush()


# -- measurement helpers -----------------------------------------------------------------------

class TreeSampler(threading.Thread):
    """Samples the summed RSS of a process and all its descendants (peak of the sum, KiB)."""

    def __init__(self, pid, interval=0.2):
        super().__init__(daemon=True)
        self.pid = pid
        self.interval = interval
        self.peak_kib = 0
        self.peak_procs = 0
        self._halt = threading.Event()

    @staticmethod
    def _children_map():
        kids = {}
        for name in os.listdir("/proc"):
            if not name.isdigit():
                continue
            try:
                with open("/proc/%s/stat" % name, "rb") as f:
                    stat = f.read()
            except OSError:
                continue
            # The command name may hold spaces or parentheses: the ppid follows the last ')'.
            ppid = int(stat[stat.rindex(b")") + 2:].split()[1])
            kids.setdefault(ppid, []).append(int(name))
        return kids

    @staticmethod
    def _rss_kib(pid):
        try:
            with open("/proc/%d/status" % pid, encoding="ascii", errors="replace") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        return int(line.split()[1])
        except OSError:
            pass
        return 0

    def sample(self):
        kids = self._children_map()
        todo, seen = [self.pid], []
        while todo:
            pid = todo.pop()
            seen.append(pid)
            todo.extend(kids.get(pid, ()))
        total = sum(self._rss_kib(p) for p in seen)
        if total > self.peak_kib:
            self.peak_kib = total
        self.peak_procs = max(self.peak_procs, len(seen))

    def run(self):
        while not self._halt.is_set():
            self.sample()
            self._halt.wait(self.interval)

    def stop(self):
        self._halt.set()
        self.join()


class CounterTimeline(threading.Thread):
    """Samples a byte counter once a second: ``[[seconds since start, bytes], ...]``."""

    def __init__(self, read, interval=1.0):
        super().__init__(daemon=True)
        self.read = read
        self.interval = interval
        self.points = []
        self._halt = threading.Event()
        self._t0 = time.monotonic()

    def run(self):
        while not self._halt.is_set():
            try:
                self.points.append([round(time.monotonic() - self._t0, 2), self.read()])
            except (OSError, ValueError, KeyError):
                pass
            self._halt.wait(self.interval)

    def stop(self):
        self._halt.set()
        self.join()
        return self.points


def idle_seconds(points, rate):
    """Seconds of a timeline during which less than a tenth of ``rate`` (bytes/s) went through."""
    idle = 0.0
    for (t0, b0), (t1, b1) in zip(points, points[1:]):
        if t1 > t0 and (b1 - b0) / (t1 - t0) < rate / 10.0:
            idle += t1 - t0
    return round(idle, 1)


def run_measured(argv, log_path, env=None, timeout=3600, cwd=None):
    """Run argv (its own session), return wall time, exit code and memory figures.

    ``max_rss_kib`` is the largest single process of the tree (wait4 of the child, which counts
    every descendant it reaped); ``peak_tree_rss_kib`` the peak of the summed RSS, sampled.
    """
    with open(log_path, "ab") as logf:
        logf.write(("\n$ %s\n" % " ".join(argv)).encode())
        logf.flush()
        t0 = time.monotonic()
        proc = subprocess.Popen(argv, stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, cwd=cwd,
                                start_new_session=True)
        sampler = TreeSampler(proc.pid)
        sampler.start()
        expired = []
        timer = threading.Timer(timeout, lambda: (expired.append(True), _killpg(proc.pid)))
        timer.start()
        try:
            _pid, status, usage = os.wait4(proc.pid, 0)
        finally:
            timer.cancel()
            sampler.stop()
        wall = time.monotonic() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
    return {"wall_s": round(wall, 3), "rc": proc.returncode, "timed_out": bool(expired),
            "max_rss_kib": usage.ru_maxrss, "peak_tree_rss_kib": sampler.peak_kib, "peak_processes": sampler.peak_procs,
            "cpu_user_s": round(usage.ru_utime, 2), "cpu_sys_s": round(usage.ru_stime, 2)}


def _killpg(pid):
    try:
        os.killpg(pid, signal.SIGTERM)
    except OSError:
        pass


def du_bytes(path):
    """(apparent bytes, allocated bytes) of a tree; one du run each, so hard links count once."""
    if not os.path.exists(path):
        return 0, 0
    out = []
    for extra in (["--apparent-size"], []):
        res = subprocess.run(["du", "-s", "-B1"] + extra + [path], capture_output=True, text=True, check=True)
        out.append(int(res.stdout.split()[0]))
    return out[0], out[1]


def file_count(path):
    count = 0
    for _root, _dirs, files in os.walk(path):
        count += len(files)
    return count


def vm_hwm_kib(pid):
    try:
        with open("/proc/%d/status" % pid, encoding="ascii") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def reset_hwm(pid):
    """Reset a process's peak RSS to its current RSS (Linux >= 4.0: clear_refs 5)."""
    try:
        with open("/proc/%d/clear_refs" % pid, "w", encoding="ascii") as f:
            f.write("5")
        return True
    except OSError:
        return False


ACCESS_RE = re.compile(r'"(PUT|POST|PATCH) (/v2/(\S+?)/blobs/uploads/\S*) HTTP/[\d.]+" (\d{3}) ')
MANIFEST_RE = re.compile(r'"PUT /v2/(\S+?)/manifests/(\S+) HTTP/[\d.]+" (\d{3}) ')


def parse_mirror_log(path, offset, blob_sizes):
    """Blob uploads and mounts seen in the mirror registry's access log since ``offset``."""
    uploads, mounts, manifests = {}, 0, 0
    failed_mounts = 0
    with open(path, "rb") as f:
        f.seek(offset)
        text = f.read().decode("utf-8", errors="replace")
    for line in text.splitlines():
        m = ACCESS_RE.search(line)
        if m:
            method, uri, _repo, status = m.groups()
            query = parse_qs(uri.partition("?")[2])
            if method == "POST" and "mount" in query:
                if status == "201":
                    mounts += 1
                else:
                    failed_mounts += 1
                continue
            if method in ("PUT", "POST") and "digest" in query and status == "201":
                digest = unquote(query["digest"][0])
                uploads[digest] = uploads.get(digest, 0) + 1
            continue
        m = MANIFEST_RE.search(line)
        if m and m.group(3) == "201":
            manifests += 1
    known = [d for d in uploads if d in blob_sizes]
    return {
        "blob_uploads": sum(uploads.values()),
        "distinct_blobs_uploaded": len(uploads),
        "max_uploads_per_blob": max(uploads.values()) if uploads else 0,
        "blobs_uploaded_more_than_once": sum(1 for n in uploads.values() if n > 1),
        "blob_bytes_uploaded": sum(blob_sizes[d] * uploads[d] for d in known),
        "unknown_blob_digests": len(uploads) - len(known),
        "mounts": mounts,
        "mounts_refused": failed_mounts,
        "manifest_puts": manifests,
    }


def machine_info():
    info = {"kernel": platform.release(), "python": platform.python_version(), "cpus": os.cpu_count()}
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    info["cpu"] = line.split(":", 1)[1].strip()
                    break
        with open("/proc/meminfo", encoding="utf-8") as f:
            info["mem_gib"] = round(int(f.readline().split()[1]) / 1024 / 1024, 1)
    except OSError:
        pass
    try:
        with open("/etc/os-release", encoding="utf-8") as f:
            for line in f:
                if line.startswith("PRETTY_NAME="):
                    info["os"] = line.split("=", 1)[1].strip().strip('"')
    except OSError:
        pass
    for name, argv in (("skopeo", ["skopeo", "--version"]), ("docker_registry", ["docker-registry", "--version"]),
                       ("ansible_core", [os.path.join(os.path.dirname(sys.executable), "ansible-playbook"), "--version"])):
        try:
            out = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=30).stdout.strip()
            info[name] = out.splitlines()[0] if out else None
        except (OSError, subprocess.TimeoutExpired):
            info[name] = None
    return info


# -- the release ---------------------------------------------------------------------------------

def release_plan(state, limit):
    """The refs to mirror (sorted, the first ``limit`` when > 0) and their unique/logical bytes."""
    rel = state["release"]
    with open(rel["meta"], encoding="utf-8") as f:
        meta = json.load(f)
    blob_dir = os.path.join(os.path.dirname(rel["dir"]), "blobs")
    refs = sorted({r for refs in rel["files"].values() for r in refs})
    if limit:
        refs = refs[:limit]
    by_ref = {}
    for img in meta["images"]:
        for ref in img["synthetic_refs"] + img["tags"]:
            by_ref[ref] = img
    sizes = {}

    def size_of(digest):
        if digest not in sizes:
            sizes[digest] = os.stat(os.path.join(blob_dir, digest.split(":", 1)[1])).st_size
        return sizes[digest]

    unique, logical, images = set(), 0, set()
    for ref in refs:
        img = by_ref[ref]
        digests = set(meta["image_blobs"][img["id"]]) | {img["index"]} | set(img["manifests"].values())
        logical += sum(size_of(d) for d in digests)
        unique |= digests
        images.add(img["id"])
    # Every blob of the release, for the sizes of the blobs the mirror log names.
    for name in os.listdir(blob_dir):
        if re.match(r"^[0-9a-f]{64}$", name):
            size_of("sha256:" + name)
    return {"refs": refs, "images": len(images), "unique_bytes": sum(size_of(d) for d in unique), "unique_blobs": len(unique),
            "logical_bytes": logical, "blob_sizes": sizes}


def warm_page_cache(state):
    """Read the registries' storage once, so the first mode does not pay for cold disk reads."""
    total = 0
    for reg in state["registries"].values():
        for root, _dirs, files in os.walk(reg["storage"]):
            for name in files:
                with open(os.path.join(root, name), "rb") as f:
                    while True:
                        chunk = f.read(1 << 20)
                        if not chunk:
                            break
                        total += len(chunk)
    return total


# -- the benchmark -------------------------------------------------------------------------------

class Bench:
    def __init__(self, sb, args, plan, work):
        self.sb = sb
        self.args = args
        self.plan = plan
        self.work = work
        self.state = sb.state
        self.results = {}
        self.mirror_proxy = None
        self.bw = wanproxy.parse_bandwidth(args.bandwidth)
        # Each upload runs once per mirror link setting: the first one is the upload of record.
        self.mirror_bws = [wanproxy.parse_bandwidth(bw) for bw in args.mirror_bandwidths]
        self.mirror_bw = self.mirror_bws[0]
        self.refs_file = os.path.join(work, "refs.txt")
        with open(self.refs_file, "w", encoding="utf-8") as f:
            f.write("\n".join(plan["refs"]) + "\n")
        self.env = dict(os.environ)
        self.env[sbns.ENV_MARK] = self.state["id"]
        self.transfer = self.state["transfer_dir"]
        self.log_path = os.path.join(work, "commands.log")

    # mirror proxy ------------------------------------------------------------------------------
    def start_mirror_proxy(self):
        """A byte-counting proxy in the gap netns, and the bastion's /etc/hosts pointed at it."""
        m = self.state["mirror"]
        pdir = os.path.join(self.work, "mirror-proxy")
        os.makedirs(pdir, exist_ok=True)
        config = {"listeners": [{"name": "mirror", "listen": [MIRROR_PROXY_ADDR, m["port"]], "upstream": [m["address"], m["port"]]}],
                  "mode": "passthrough", "settings": {"bandwidth": self.mirror_bw, "latency": 0},
                  "control_socket": os.path.join(pdir, "control.sock"), "counters_file": os.path.join(pdir, "counters.json"),
                  "settings_file": os.path.join(pdir, "settings.json"), "ready_file": os.path.join(pdir, "ready")}
        cfg_path = os.path.join(pdir, "proxy.json")
        with open(cfg_path, "w", encoding="utf-8") as f:
            json.dump(config, f)
        argv = sbns.enter_argv(net=self.state["namespaces"]["gap"]["path"]) + [
            sys.executable, os.path.join(ROOT, "tests", "sandbox", "proxy.py"), "--config", cfg_path]
        logf = open(os.path.join(pdir, "proxy.log"), "ab")  # pylint: disable=consider-using-with
        self.mirror_proxy = subprocess.Popen(argv, stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                             env=self.env, start_new_session=True)
        logf.close()
        deadline = time.monotonic() + 15
        while not os.path.exists(config["ready_file"]):
            if self.mirror_proxy.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the mirror proxy did not start (see %s)" % os.path.join(pdir, "proxy.log"))
            time.sleep(0.05)
        self.mirror_control = config["control_socket"]
        self.sb.run("airgap-bastion", ["sh", "-c", "sed -i 's/^%s\\([[:space:]]\\)/%s\\1/' /etc/hosts" % (
            re.escape(m["address"]), MIRROR_PROXY_ADDR)])
        hosts = self.sb.run("airgap-bastion", ["cat", "/etc/hosts"]).stdout
        if "%s\t%s" % (MIRROR_PROXY_ADDR, m["host"]) not in hosts:
            raise RuntimeError("could not point the bastion's /etc/hosts at the mirror proxy:\n" + hosts)

    def stop_mirror_proxy(self):
        if self.mirror_proxy is not None and self.mirror_proxy.poll() is None:
            self.mirror_proxy.terminate()
            try:
                self.mirror_proxy.wait(10)
            except subprocess.TimeoutExpired:
                self.mirror_proxy.kill()
                self.mirror_proxy.wait()

    # helpers -----------------------------------------------------------------------------------
    def clear_blob_info_caches(self):
        # containers/image remembers where it saw each blob and mounts from there: each mode starts cold.
        for node in ("connected", "airgap-bastion"):
            self.sb.run(node, ["rm", "-f"] + list(BLOB_INFO_CACHES))

    def wan_total(self):
        counters = self.sb.wan_counters()
        down = sum(c["bytes_down"] for c in counters["listeners"].values())
        up = sum(c["bytes_up"] for c in counters["listeners"].values())
        return {"bytes_down": down, "bytes_up": up, "connections": sum(c["connections"] for c in counters["listeners"].values()),
                "per_registry": {k: c["bytes_down"] for k, c in counters["listeners"].items()}}

    def mirror_total(self):
        c = wanproxy.control(self.mirror_control, {"cmd": "get"})["listeners"]["mirror"]
        return {"bytes_up": c["bytes_up"], "bytes_down": c["bytes_down"], "connections": c["connections"]}

    def node_cmd(self, node, argv):
        return self.sb.exec_argv(node, argv)

    def ansible_env(self):
        env = dict(self.env)
        env.update(self.state["ansible"]["env"])
        env["ANSIBLE_COLLECTIONS_PATH"] = os.path.join(ROOT, ".build", "collections")
        env["ANSIBLE_STDOUT_CALLBACK"] = "ansible.posix.json"
        env["ANSIBLE_NOCOLOR"] = "1"
        env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
        return env

    def ansible(self, playbook, extra, name):
        vars_file = os.path.join(self.work, "vars-%s.json" % name)
        with open(vars_file, "w", encoding="utf-8") as f:
            json.dump(extra, f)
        out = os.path.join(self.work, "ansible-%s.json" % name)
        argv = [os.path.join(os.path.dirname(sys.executable), "ansible-playbook"), os.path.join(HERE, "playbooks", playbook),
                "-e", "@" + vars_file]
        if os.path.exists(out):
            os.unlink(out)
        fig = run_measured(argv, out, env=self.ansible_env(), timeout=self.args.timeout)
        fig["ansible"] = summarize_ansible(out)
        return fig

    def ours_vars(self, namespace="bench-ours", signatures=True):
        return {"bench_images": self.plan["refs"], "bench_store": os.path.join(self.transfer, "ours", "store"),
                "bench_parallel": self.args.jobs, "bench_namespace": namespace, "bench_signatures": signatures}

    # phases ------------------------------------------------------------------------------------
    def download(self, mode, signatures=True):
        dest = os.path.join(self.transfer, mode)
        shutil.rmtree(dest, ignore_errors=True)
        os.makedirs(dest)
        self.clear_blob_info_caches()
        self.sb.wan_control({"cmd": "reset_counters"})
        regs = {n: self.state["processes"]["registry-" + n] for n in self.state["registries"]}
        for pid in regs.values():
            reset_hwm(pid)
        log("%s: download of %d refs" % (mode, len(self.plan["refs"])))
        pull = self.state["pull_secret"]
        timeline = CounterTimeline(lambda: self.wan_total()["bytes_down"])
        timeline.start()
        if mode == "manual":
            fig = run_measured(self.node_cmd("connected", ["sh", os.path.join(HERE, "baselines", "manual_download.sh"),
                                                           self.refs_file, dest, pull]), self.log_path, self.env, self.args.timeout)
            result_dir = dest
        elif mode == "parallel":
            fig = run_measured(self.node_cmd("connected", ["sh", os.path.join(HERE, "baselines", "parallel_download.sh"),
                                                           self.refs_file, dest, pull, str(self.args.jobs)]),
                               self.log_path, self.env, self.args.timeout)
            result_dir = dest
        else:
            fig = self.ansible("download.yml", self.ours_vars(signatures=signatures), "download" if signatures else "download-nosig")
            result_dir = os.path.join(dest, "store")
        fig["timeline"] = timeline.stop()
        fig["idle_s"] = idle_seconds(fig["timeline"], self.bw) if self.bw else None
        subprocess.run(["sync"], check=False)
        fig["wan"] = self.wan_total()
        fig["internet_registry_vmhwm_kib"] = max(filter(None, (vm_hwm_kib(p) for p in regs.values())), default=None)
        fig["store_apparent_bytes"], fig["store_disk_bytes"] = du_bytes(result_dir)
        fig["store_files"] = file_count(result_dir)
        fig["result_dir"] = result_dir
        self._ratios_download(fig)
        log("%s: download %.1fs rc=%s fetched %.1f MB store %.1f MB" % (
            mode, fig["wall_s"], fig["rc"], fig["wan"]["bytes_down"] / 1e6, fig["store_disk_bytes"] / 1e6))
        return fig

    def _ratios_download(self, fig):
        unique = self.plan["unique_bytes"]
        fig["floor_s"] = round(unique / self.bw, 3) if self.bw else None
        fig["vs_floor"] = round(fig["wall_s"] / fig["floor_s"], 3) if fig["floor_s"] else None
        fig["fetched_vs_unique"] = round(fig["wan"]["bytes_down"] / unique, 4)
        fig["store_apparent_vs_unique"] = round(fig["store_apparent_bytes"] / unique, 4)
        fig["store_disk_vs_unique"] = round(fig["store_disk_bytes"] / unique, 4)

    def set_mirror_bandwidth(self, bandwidth):
        wanproxy.control(self.mirror_control, {"cmd": "set", "settings": {"bandwidth": bandwidth}})
        self.mirror_bw = bandwidth

    def upload(self, mode, source, suffix=""):
        self.clear_blob_info_caches()
        wanproxy.control(self.mirror_control, {"cmd": "reset_counters"})
        reg_pid = self.state["processes"]["registry-mirror"]
        reset_hwm(reg_pid)
        log_path = self.state["mirror"]["log"]
        offset = os.path.getsize(log_path)
        namespace = "bench-" + mode + suffix
        target = "%s/%s" % (self.state["mirror"]["hostport"], namespace)
        auth = self.state["mirror"]["auth_file"]
        log("%s: upload to %s" % (mode, target))
        timeline = CounterTimeline(lambda: self.mirror_total()["bytes_up"])
        timeline.start()
        if mode == "manual":
            fig = run_measured(self.node_cmd("airgap-bastion", ["sh", os.path.join(HERE, "baselines", "manual_upload.sh"),
                                                                source, target, auth]), self.log_path, self.env, self.args.timeout)
        elif mode == "parallel":
            fig = run_measured(self.node_cmd("airgap-bastion", ["sh", os.path.join(HERE, "baselines", "parallel_upload.sh"),
                                                                source, target, auth, str(self.args.jobs)]),
                               self.log_path, self.env, self.args.timeout)
        else:
            fig = self.ansible("upload.yml", self.ours_vars(namespace), "upload" + suffix)
        fig["timeline"] = timeline.stop()
        time.sleep(0.3)  # the registry writes its access log line after the response
        fig["mirror"] = self.mirror_total()
        fig["registry_log"] = parse_mirror_log(log_path, offset, self.plan["blob_sizes"])
        fig["mirror_registry_vmhwm_kib"] = vm_hwm_kib(reg_pid)
        unique = self.plan["unique_bytes"]
        fig["sent_vs_unique"] = round(fig["mirror"]["bytes_up"] / unique, 4)
        fig["blob_bytes_vs_unique"] = round(fig["registry_log"]["blob_bytes_uploaded"] / unique, 4)
        fig["mirror_bandwidth_bytes_per_s"] = self.mirror_bw
        fig["floor_s"] = round(unique / self.mirror_bw, 3) if self.mirror_bw else None
        fig["vs_floor"] = round(fig["wall_s"] / fig["floor_s"], 3) if fig["floor_s"] else None
        log("%s: upload %.1fs rc=%s sent %.1f MB, %d blob uploads (max %d per blob), %d mounts" % (
            mode, fig["wall_s"], fig["rc"], fig["mirror"]["bytes_up"] / 1e6, fig["registry_log"]["blob_uploads"],
            fig["registry_log"]["max_uploads_per_blob"], fig["registry_log"]["mounts"]))
        return fig

    def noop(self):
        self.sb.wan_control({"cmd": "reset_counters"})
        wanproxy.control(self.mirror_control, {"cmd": "reset_counters"})
        log("ours: no-op rerun (download + upload, one ansible-playbook)")
        fig = self.ansible("mirror.yml", self.ours_vars(), "noop")
        fig["wan"] = self.wan_total()
        fig["mirror"] = self.mirror_total()
        log("ours: no-op rerun %.2fs rc=%s changed=%s" % (fig["wall_s"], fig["rc"], fig["ansible"].get("changed")))
        return fig

    def bundle(self):
        script = os.path.join(HERE, "bench_bundle.py")
        if not os.path.exists(script):
            return {"skipped": "tests/benchmarks/bench_bundle.py does not exist"}
        out = os.path.join(self.work, "bench_bundle.json")
        size_mib = max(1, int(self.plan["unique_bytes"] / 1048576))
        env = dict(self.env)
        env["PYTHONPATH"] = os.path.join(ROOT, ".build", "collections") + os.pathsep + env.get("PYTHONPATH", "")
        log("bundle: tests/benchmarks/bench_bundle.py --size-mib %d" % size_mib)
        os.makedirs(os.path.join(self.work, "bundle"), exist_ok=True)
        argv = [sys.executable, script, "--size-mib", str(size_mib), "--json", out, "--work", os.path.join(self.work, "bundle")]
        fig = run_measured(argv, self.log_path, env, self.args.timeout)
        shutil.rmtree(os.path.join(self.work, "bundle"), ignore_errors=True)
        if fig["rc"] == 0 and os.path.exists(out):
            with open(out, encoding="utf-8") as f:
                fig["figures"] = json.load(f)
        return fig

    def run(self, parts, modes):
        need_download = bool({"download", "upload"} & parts) or "noop" in parts
        for mode in modes:
            res = self.results.setdefault(mode, {})
            if need_download and mode == "ours" and self.args.signatures_cost:
                # the same download without the signatures first, into a store of its own: the cost of
                # the signatures is the difference (the store is removed, the real download follows)
                res["download@nosig"] = self.download(mode, signatures=False)
                subprocess.run(["sync"], check=False)
            if need_download and (mode == "ours" or {"download", "upload"} & parts):
                res["download"] = self.download(mode)
                if res["download"]["rc"] != 0:
                    log("%s: download failed (rc=%s), see %s" % (mode, res["download"]["rc"], self.work))
                    continue
            if "upload" in parts or (mode == "ours" and "noop" in parts):
                for index, bandwidth in enumerate(self.mirror_bws):
                    self.set_mirror_bandwidth(bandwidth)
                    key = "upload" if index == 0 else upload_key(bandwidth)
                    suffix = "" if index == 0 else "-" + key.split("@", 1)[1]
                    res[key] = self.upload(mode, res["download"]["result_dir"], suffix)
                    subprocess.run(["sync"], check=False)
                self.set_mirror_bandwidth(self.mirror_bws[0])
            if mode != "ours":
                # The dir: trees are many times the release: drop them before the next mode.
                shutil.rmtree(os.path.join(self.transfer, mode), ignore_errors=True)
        ours = self.results.get("ours", {})
        if "noop" in parts and ours.get("download", {}).get("rc") == 0 and ours.get("upload", {}).get("rc") == 0:
            ours["noop"] = self.noop()
        if "bundle" in parts:
            self.results["bundle"] = self.bundle()
        return self.results


def signatures_cost(results):
    """What the signatures add to ours' download: wall seconds, bytes from the registries, the store, and the
    module's own count (manifests signed, attachment bytes), from a run with ``--signatures-cost``; or None."""
    ours = results.get("ours", {})
    with_sig, without = ours.get("download", {}), ours.get("download@nosig", {})
    if with_sig.get("rc") != 0 or without.get("rc") != 0:
        return None
    counted = {}
    for res in with_sig.get("ansible", {}).get("results", {}).values():
        if isinstance(res.get("summary"), dict) and isinstance(res["summary"].get("signatures"), dict):
            counted = res["summary"]["signatures"]
    extra_s = round(with_sig["wall_s"] - without["wall_s"], 3)
    return {
        "wall_s_without": without["wall_s"], "wall_s_with": with_sig["wall_s"], "extra_s": extra_s,
        "extra_share": round(extra_s / without["wall_s"], 4) if without["wall_s"] else None,
        "wan_bytes_without": without["wan"]["bytes_down"], "wan_bytes_with": with_sig["wan"]["bytes_down"],
        "extra_wan_bytes": with_sig["wan"]["bytes_down"] - without["wan"]["bytes_down"],
        "store_bytes_without": without["store_apparent_bytes"], "store_bytes_with": with_sig["store_apparent_bytes"],
        "module": counted,
    }


def upload_key(bandwidth):
    """``upload@<bits per second>`` (``upload@uncapped``): the result key of an extra upload."""
    return "upload@%s" % ("%dmbit" % (bandwidth * 8 // 1000000) if bandwidth else "uncapped")


def summarize_ansible(path):
    """changed/failed counts and the module results from an ansible.posix.json callback output."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
        data = json.loads(text[text.index("{"):])
    except (OSError, ValueError) as exc:
        return {"error": "no JSON output from ansible-playbook (%s), see %s" % (exc, path)}
    stats = data.get("stats", {})
    out = {"changed": sum(s.get("changed", 0) for s in stats.values()), "failed": sum(s.get("failures", 0) for s in stats.values()),
           "unreachable": sum(s.get("unreachable", 0) for s in stats.values()), "results": {}}
    for play in data.get("plays", []):
        for task in play.get("tasks", []):
            for host, res in task.get("hosts", {}).items():
                keep = {k: res.get(k) for k in ("changed", "failed", "msg", "summary", "failures") if k in res}
                if res.get("plan"):
                    keep["plan"] = {k: v for k, v in res["plan"].items() if not isinstance(v, list)}
                dur = task.get("task", {}).get("duration") or {}
                if dur.get("start") and dur.get("end"):
                    keep["task_s"] = round(_iso_seconds(dur["end"]) - _iso_seconds(dur["start"]), 3)
                out["results"]["%s/%s" % (host, task.get("task", {}).get("name"))] = keep
    return out


def _iso_seconds(text):
    return datetime.datetime.strptime(text.rstrip("Z"), "%Y-%m-%dT%H:%M:%S.%f").timestamp()


# -- report --------------------------------------------------------------------------------------

def verdicts(results):
    """Each target: value, threshold, PASS/MISS (or n/a when not measured)."""
    ours = results.get("ours", {})
    dl = ours.get("download", {})
    up = ours.get("upload", {})
    out = []

    def add(key, label, value, op, limit):
        if value is None:
            out.append({"target": key, "label": label, "value": None, "limit": limit, "verdict": "n/a"})
            return
        ok = value <= limit if op == "<=" else value >= limit
        out.append({"target": key, "label": label, "value": value, "op": op, "limit": limit, "verdict": "PASS" if ok else "MISS"})

    ok_dl = dl.get("rc") == 0
    add("download_vs_floor", "download time / floor (unique bytes / bandwidth)", dl.get("vs_floor") if ok_dl else None, "<=",
        TARGETS["download_vs_floor"])
    for base, key in (("manual", "speedup_vs_manual"), ("parallel", "speedup_vs_parallel")):
        b = results.get(base, {}).get("download", {})
        value = round(b["wall_s"] / dl["wall_s"], 2) if ok_dl and b.get("rc") == 0 else None
        add(key, "download speed-up vs %s" % MODE_LABELS[base], value, ">=", TARGETS[key])
    add("fetched_vs_unique", "bytes fetched from the registries / unique bytes", dl.get("fetched_vs_unique") if ok_dl else None,
        "<=", TARGETS["fetched_vs_unique"])
    add("store_vs_unique", "store on disk (du, allocated) / unique bytes", dl.get("store_disk_vs_unique") if ok_dl else None,
        "<=", TARGETS["store_vs_unique"])
    noop = ours.get("noop", {})
    noop_ok = noop.get("rc") == 0 and noop.get("ansible", {}).get("changed") == 0
    add("noop_seconds", "no-op rerun, end to end with Ansible (s)", noop.get("wall_s") if noop_ok else None, "<=",
        TARGETS["noop_seconds"])
    ok_up = up.get("rc") == 0
    add("uploads_per_blob", "uploads of the same blob to the mirror (max)",
        up.get("registry_log", {}).get("max_uploads_per_blob") if ok_up else None, "<=", TARGETS["uploads_per_blob"])
    add("upload_vs_floor", "bytes sent to the mirror / unique bytes", up.get("sent_vs_unique") if ok_up else None, "<=",
        TARGETS["upload_vs_floor"])
    if up.get("floor_s"):
        add("upload_time_vs_floor", "upload time / floor (unique bytes / mirror link)", up.get("vs_floor") if ok_up else None, "<=",
            TARGETS["upload_vs_floor"])
    return out


def _mb(n):
    return "-" if n is None else "%.1f" % (n / 1e6)


def _x(n):
    return "-" if n is None else "%.2fx" % n


def _s(n):
    return "-" if n is None else "%.1f" % n


def _mib(kib):
    return "-" if kib is None else "%.0f" % (kib / 1024)


def table(report):
    res = report["results"]
    lines = []
    p = report["parameters"]
    lines.append("release %s %s: %d refs, %d images, unique %s MB, logical %s MB; WAN %s, +%s; floor %ss" % (
        p["version"], p["size"], p["refs"], p["images"], _mb(p["unique_bytes"]), _mb(p["logical_bytes"]), p["bandwidth"], p["latency"],
        _s(p["download_floor_s"])))
    head = ("mode", "dl s", "x floor", "fetched MB", "x uniq", "store MB", "x uniq", "ul s", "sent MB", "x uniq", "max/blob",
            "ctl MiB", "reg MiB")
    rows = [head]
    for mode in MODES:
        r = res.get(mode)
        if not r:
            continue
        d, u = r.get("download", {}), r.get("upload", {})
        dl_ok, ul_ok = d.get("rc") == 0, u.get("rc") == 0
        peak = max([x.get("peak_tree_rss_kib") or 0 for x in (d, u)] or [0]) or None
        rows.append((
            MODE_LABELS[mode],
            _s(d.get("wall_s")) + ("" if dl_ok or not d else " FAIL"),
            _x(d.get("vs_floor")), _mb(d.get("wan", {}).get("bytes_down")), _x(d.get("fetched_vs_unique")),
            _mb(d.get("store_disk_bytes")), _x(d.get("store_disk_vs_unique")),
            _s(u.get("wall_s")) + ("" if ul_ok or not u else " FAIL"),
            _mb(u.get("mirror", {}).get("bytes_up")), _x(u.get("sent_vs_unique")),
            str(u.get("registry_log", {}).get("max_uploads_per_blob", "-")),
            _mib(peak), _mib(u.get("mirror_registry_vmhwm_kib")),
        ))
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(head))]
    for i, row in enumerate(rows):
        lines.append("  ".join(str(c).ljust(widths[j]) if j == 0 else str(c).rjust(widths[j]) for j, c in enumerate(row)))
        if i == 0:
            lines.append("  ".join("-" * w for w in widths))
    extra = [(mode, key, res[mode][key]) for mode in MODES for key in sorted(res.get(mode, {})) if key.startswith("upload@")]
    if extra:
        lines.append("")
        lines.append("uploads with another mirror link (the table above: mirror link %s):" % p["mirror_bandwidth"].split(",")[0])
        for mode, key, u in extra:
            lines.append("  %-22s %-16s %s s%s, sent %s MB (%s unique), max %s upload(s) per blob%s" % (
                MODE_LABELS[mode], key[len("upload@"):], _s(u.get("wall_s")), "" if u.get("rc") == 0 else " FAIL",
                _mb(u.get("mirror", {}).get("bytes_up")), _x(u.get("sent_vs_unique")),
                u.get("registry_log", {}).get("max_uploads_per_blob", "-"),
                ", %s the floor" % _x(u.get("vs_floor")) if u.get("vs_floor") else ""))
    noop = res.get("ours", {}).get("noop")
    if noop:
        lines.append("no-op rerun (ours, download + upload, ansible-playbook end to end): %.2fs, changed=%s, %d bytes from the registries"
                     % (noop["wall_s"], noop.get("ansible", {}).get("changed"), noop.get("wan", {}).get("bytes_down", 0)))
    bundle = res.get("bundle")
    if bundle and bundle.get("skipped"):
        lines.append("bundle: skipped (%s)" % bundle["skipped"])
    elif bundle:
        lines.append("bundle (tests/benchmarks/bench_bundle.py): rc=%s, %.1fs, see results JSON" % (bundle.get("rc"), bundle.get("wall_s", 0)))
    lines.append("")
    lines.append("targets:" + ("  (tiny: fixed costs dominate, the targets are meant for bench)" if p["size"] == "tiny" else ""))
    for v in report["targets"]:
        value = "-" if v["value"] is None else ("%g" % v["value"])
        lines.append("  %-4s  %-58s %10s  (%s %g)" % (v["verdict"], v["label"], value, v.get("op", ""), v["limit"]))
    lines.append("ctl MiB: peak summed RSS of the command's process tree on the control node (sampled 5/s); "
                 "reg MiB: VmHWM of the mirror registry during the upload")
    return "\n".join(lines)


# -- main ----------------------------------------------------------------------------------------

def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=sorted(SIZE_DEFAULTS), default="bench", help="synthetic release size (default: bench)")
    parser.add_argument("--version", default="5.0", help="release shape (default: 5.0, 57 refs)")
    parser.add_argument("--bandwidth", help="WAN bandwidth, e.g. 200mbit (default per size: 200mbit)")
    parser.add_argument("--latency", help="WAN added round-trip time, e.g. 20ms (default: 20ms)")
    parser.add_argument("--mirror-bandwidth", default="0",
                        help="cap of the bastion -> mirror link; a comma list uploads once per value, the first being "
                             "the upload of record (default 0: no cap, counted only)")
    parser.add_argument("--only", default="download,upload,noop,bundle",
                        help="comma list of parts: download, upload, noop, bundle (default: all)")
    parser.add_argument("--modes", default=",".join(MODES), help="comma list of: manual, parallel, ours (default: all)")
    parser.add_argument("--limit", type=int, help="mirror only the first N refs (default: all; tiny: 5)")
    parser.add_argument("--jobs", type=int, default=8, help="parallel copies for (b) xargs -P and for ours (default 8)")
    parser.add_argument("--timeout", type=int, help="seconds allowed per phase (default per size)")
    parser.add_argument("--state-dir", default="/tmp/amsb-bench", help="test bed state dir (default /tmp/amsb-bench)")
    parser.add_argument("--out", default=os.path.join(HERE, "results"), help="directory for the results JSON (default tests/benchmarks/results)")
    parser.add_argument("--chart", help="also draw the chart (PNG) of this run here (needs matplotlib)")
    parser.add_argument("--signatures-cost", action="store_true",
                        help="also run ours' download without signatures (download_signatures: false) first, to give their cost")
    parser.add_argument("--strict", action="store_true", help="exit 1 when a target is missed (default: exit 0 when every command succeeded)")
    args = parser.parse_args(argv)
    bw, lat, limit, timeout = SIZE_DEFAULTS[args.size]
    args.bandwidth = args.bandwidth or bw
    args.latency = args.latency or lat
    args.limit = limit if args.limit is None else args.limit
    args.timeout = args.timeout or timeout
    args.parts = {p.strip() for p in args.only.split(",") if p.strip()}
    args.mirror_bandwidths = [bw.strip() for bw in args.mirror_bandwidth.split(",") if bw.strip()] or ["0"]
    args.mode_list = [m.strip() for m in args.modes.split(",") if m.strip()]
    bad = (args.parts - set(PARTS)) or (set(args.mode_list) - set(MODES))
    if bad:
        parser.error("unknown part or mode: %s" % ", ".join(sorted(bad)))
    return args


def main(argv=None):
    args = parse_args(argv)
    if os.geteuid() != 0:
        sys.exit("run.py needs root (the test bed uses network and mount namespaces)")
    started = datetime.datetime.now(datetime.timezone.utc)
    stamp = started.strftime("%Y%m%dT%H%M%SZ")
    os.makedirs(args.out, exist_ok=True)
    work = os.path.join(os.path.realpath(args.state_dir) + "-work", stamp)
    os.makedirs(work, exist_ok=True)
    log("work dir %s" % work)
    t0 = time.monotonic()
    report = {"started": started.isoformat(timespec="seconds"), "machine": machine_info(), "targets": [], "results": {}}
    sb = Sandbox(args.state_dir, size=args.size, hosts=1, version=args.version,
                 wan={"bandwidth": args.bandwidth, "latency": args.latency}, log=log)
    bench = None
    try:
        sb.up()
        plan = release_plan(sb.state, args.limit)
        report["parameters"] = {
            "size": args.size, "version": args.version, "bandwidth": args.bandwidth, "latency": args.latency,
            "bandwidth_bytes_per_s": wanproxy.parse_bandwidth(args.bandwidth), "mirror_bandwidth": args.mirror_bandwidth,
            "jobs": args.jobs, "refs": len(plan["refs"]), "images": plan["images"], "unique_bytes": plan["unique_bytes"],
            "unique_blobs": plan["unique_blobs"], "logical_bytes": plan["logical_bytes"], "parts": sorted(args.parts),
            "modes": args.mode_list, "limit": args.limit,
            "download_floor_s": round(plan["unique_bytes"] / wanproxy.parse_bandwidth(args.bandwidth), 3)
            if wanproxy.parse_bandwidth(args.bandwidth) else None,
        }
        log("release: %d refs, unique %.1f MB, logical %.1f MB" % (len(plan["refs"]), plan["unique_bytes"] / 1e6, plan["logical_bytes"] / 1e6))
        log("warmed the page cache with %.1f MB of registry storage" % (warm_page_cache(sb.state) / 1e6))
        bench = Bench(sb, args, plan, work)
        bench.start_mirror_proxy()
        report["results"] = bench.run(args.parts, args.mode_list)
    finally:
        if bench is not None:
            report["results"] = bench.results
            bench.stop_mirror_proxy()
        sb.down()
        report["duration_s"] = round(time.monotonic() - t0, 1)
        report["targets"] = verdicts(report["results"])
        cost = signatures_cost(report["results"])
        if cost:
            report["signatures_cost"] = cost
            log("signatures: download %.1f s without, %.1f s with (%+.1f s, %+.2f%%); %+d bytes from the registries; module: %s" % (
                cost["wall_s_without"], cost["wall_s_with"], cost["extra_s"], 100 * (cost["extra_share"] or 0),
                cost["extra_wan_bytes"], json.dumps(cost["module"], sort_keys=True)))
        if "parameters" in report:
            write_report(report, args, stamp, work)
    if not phases_ok(report["results"], args):
        return 2
    return 1 if args.strict and any(v["verdict"] == "MISS" for v in report["targets"]) else 0


def phases_ok(results, args):
    """Every phase that ran exited 0, and every mode asked for ran."""
    for mode in args.mode_list:
        phases = results.get(mode, {})
        if not phases or any(isinstance(p, dict) and p.get("rc") not in (0, None) for p in phases.values()):
            return False
    return True


def write_report(report, args, stamp, work):
    path = os.path.join(args.out, "%s-%s.json" % (stamp, args.size))
    for p in (path, os.path.join(args.out, "latest-%s.json" % args.size)):
        with open(p, "w", encoding="utf-8") as f:
            json.dump(report, f, indent=2, sort_keys=True)
            f.write("\n")
    text = table(report)
    print(text)
    with open(os.path.join(work, "table.txt"), "w", encoding="utf-8") as f:
        f.write(text + "\n")
    log("results: %s (and latest-%s.json); logs: %s; total %.0fs" % (path, args.size, work, report["duration_s"]))
    if args.chart:
        try:
            sys.path.insert(0, HERE)
            import chart  # pylint: disable=import-outside-toplevel
            chart.draw(report, args.chart)
            log("chart: %s" % args.chart)
        except ImportError as exc:
            log("no chart: %s (pip install -r tests/benchmarks/requirements.txt)" % exc)


if __name__ == "__main__":
    sys.exit(main())
