# Copyright: airgap.microshift contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Fleet benchmark: configure_hosts on 5, 20 and 50 booted hosts over real SSH, then a rolling reboot.

Raises the test bed (tests/sandbox) with booted systemd-nspawn hosts in the air-gapped site, fills
its mirror with the core images of the tiny release (untimed), then for each fleet size of the
curve puts the hosts back as they were (untimed) and times ``ansible-playbook
airgap.microshift.configure_hosts`` on the first N hosts, exactly as a site runs it: SSH with
ControlPersist and pipelining (the test bed's inventory), the SSH master connections closed before
each run so that every run pays for its logins, every host configured (CA, drop-in, pull secret),
verified through the mirror (every image by its original reference, through the host's own
configuration) and its MicroShift unit enabled; no reboot. Then all hosts again, with one more
registry mirrored (so every host changes) and ``airgap_serial`` batches that reboot each host
once its configuration is verified: the time of each batch.

Figures per fleet size: wall time, CPU seconds of the control node per host (ansible-playbook and
its workers, plus the SSH master connections and their proxy commands, which Ansible leaves
running), the CPU of the whole machine (the hosts run on the same two cores here), peak memory of
the control node's processes (summed RSS), requests and bytes served by the mirror per host (its
access log), and the load average before each run (the machine is shared).

    .venv/bin/python tests/benchmarks/bench_fleet.py                       # 5, 20, 50 hosts, reboot in batches of 10
    .venv/bin/python tests/benchmarks/bench_fleet.py --sizes 5 --reboot-batch 0   # a quick look
    .venv/bin/python tests/benchmarks/bench_fleet.py --sizes 50 --reboot-batch 0 -e host_config_verify_engine=skopeo

Writes tests/benchmarks/results/<timestamp>-fleet.json and latest-fleet.json, prints a table.
Traffic stays inside the test bed's network namespaces.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import signal
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, ROOT)
sys.path.insert(0, HERE)

from tests.sandbox import Sandbox  # noqa: E402  pylint: disable=wrong-import-position
from tests.sandbox.booted import events as booted_events  # noqa: E402  pylint: disable=wrong-import-position
from run import TreeSampler, machine_info  # noqa: E402  pylint: disable=wrong-import-position

ACCESS_RE = re.compile(r'^(\S+) \S+ \S+ \[[^\]]*\] "(\S+) (\S+) [^"]*" (\d{3}) (\d+|-)')
# Inotify instances systemd needs per booted host (the kernel's default of 128 per user ends near 25 hosts).
INOTIFY_PER_HOST = 24
RESET = ("rm -f /etc/containers/registries.conf.d/999-microshift-mirror.conf /etc/crio/openshift-pull-secret "
         "/usr/local/share/ca-certificates/microshift-mirror.crt && update-ca-certificates >/dev/null 2>&1; "
         "systemctl disable --quiet microshift.service; true")


def log(msg):
    sys.stderr.write("[fleet %s] %s\n" % (time.strftime("%H:%M:%S"), msg))
    sys.stderr.flush()


def loadavg():
    with open("/proc/loadavg", encoding="ascii") as f:
        return [float(x) for x in f.read().split()[:3]]


def machine_cpu_s():
    """Busy CPU seconds of the whole machine so far (every process, ours and the hosts')."""
    with open("/proc/stat", encoding="ascii") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    idle = fields[3] + fields[4]
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def ensure_inotify(hosts):
    path = "/proc/sys/fs/inotify/max_user_instances"
    with open(path, encoding="ascii") as f:
        current = int(f.read())
    wanted = 128 + INOTIFY_PER_HOST * hosts
    if current < wanted:
        with open(path, "w", encoding="ascii") as f:
            f.write(str(wanted))
        log("raised fs.inotify.max_user_instances from %d to %d (each booted host's systemd needs some)" % (current, wanted))


def proc_children():
    kids = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open("/proc/%s/stat" % name, "rb") as f:
                    stat = f.read()
            except OSError:
                continue
            kids.setdefault(int(stat[stat.rindex(b")") + 2:].split()[1]), []).append(int(name))
    return kids


def proc_cpu_rss(pid):
    """(CPU seconds including reaped children, RSS KiB) of one process."""
    try:
        with open("/proc/%d/stat" % pid, "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
        with open("/proc/%d/status" % pid, encoding="ascii", errors="replace") as f:
            rss = next((int(line.split()[1]) for line in f if line.startswith("VmRSS:")), 0)
    except (OSError, StopIteration):
        return 0.0, 0
    ticks = sum(int(x) for x in fields[11:15])
    return ticks / os.sysconf("SC_CLK_TCK"), rss


def ssh_masters(control_dir):
    """PIDs of the SSH master connections whose control sockets are in control_dir, and their descendants."""
    masters = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open("/proc/%s/cmdline" % name, "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if cmd.startswith("ssh: " + control_dir):
            masters.append(int(name))
    kids = proc_children()
    found, todo = [], list(masters)
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(kids.get(pid, []))
    return found


def close_masters(control_dir):
    for pid in ssh_masters(control_dir):
        try:
            os.kill(pid, signal.SIGTERM)
        except OSError:
            pass
    deadline = time.monotonic() + 10
    while ssh_masters(control_dir) and time.monotonic() < deadline:
        time.sleep(0.1)


class FleetSampler(TreeSampler):
    """Summed RSS of ansible-playbook's tree plus the SSH masters it started (which leave its tree)."""

    def __init__(self, pid, control_dir, interval=0.2):
        super().__init__(pid, interval)
        self.control_dir = control_dir

    def sample(self):
        kids = self._children_map()
        seen, todo = set(), [self.pid] + ssh_masters(self.control_dir)
        while todo:
            pid = todo.pop()
            if pid in seen:
                continue
            seen.add(pid)
            todo.extend(kids.get(pid, []))
        total = sum(self._rss_kib(pid) for pid in seen)
        self.peak_kib = max(self.peak_kib, total)
        self.peak_procs = max(self.peak_procs, len(seen))


def mirror_log_size(path):
    return os.path.getsize(path)


def mirror_requests(path, offset, clients):
    """Requests and response bytes the mirror served to the hosts' addresses since ``offset``."""
    requests = bytes_out = 0
    per_status = {}
    with open(path, "rb") as f:
        f.seek(offset)
        text = f.read().decode("utf-8", errors="replace")
    for line in text.splitlines():
        m = ACCESS_RE.match(line)
        if not m or m.group(1) not in clients:
            continue
        requests += 1
        per_status[m.group(4)] = per_status.get(m.group(4), 0) + 1
        if m.group(5) != "-":
            bytes_out += int(m.group(5))
    return {"requests": requests, "bytes": bytes_out, "per_status": per_status}


def summarize_json(path):
    """Per-host stats and per-play (per-batch) durations from the ansible.posix.json callback's output."""
    with open(path, encoding="utf-8", errors="replace") as f:
        text = f.read()
    start = text.find("{\n")
    try:
        data = json.loads(text[start:]) if start >= 0 else {}
    except ValueError:
        return {"stats": {}, "plays": [], "tasks_per_host": None}
    plays = []
    tasks = {}
    for play in data.get("plays", []):
        dur = play["play"].get("duration", {})
        hosts = set()
        for task in play.get("tasks", []):
            for host in task.get("hosts", {}):
                hosts.add(host)
                tasks[host] = tasks.get(host, 0) + 1
        plays.append({"name": play["play"]["name"], "start": dur.get("start"), "end": dur.get("end"), "hosts": sorted(hosts),
                      "seconds": _seconds(dur.get("start"), dur.get("end"))})
    counts = sorted(tasks.values())
    return {"stats": data.get("stats", {}), "plays": plays,
            "tasks_per_host": counts[len(counts) // 2] if counts else None}


def _seconds(start, end):
    if not start or not end:
        return None
    fmt = "%Y-%m-%dT%H:%M:%S.%fZ"
    return round((datetime.datetime.strptime(end, fmt) - datetime.datetime.strptime(start, fmt)).total_seconds(), 2)


class Fleet:
    def __init__(self, sb, args, work):
        self.sb = sb
        self.state = sb.state
        self.args = args
        self.work = work
        self.inventory = os.path.join(sb.state_dir, "ansible", "inventory.yml")
        self.cfg = os.path.join(sb.state_dir, "ansible", "ansible.cfg")
        self.control_dir = os.path.join(sb.state_dir, "ansible", "cp")
        self.mirror_log = self.state["mirror"]["log"]
        self.images_file = os.path.join(work, "images.json")
        self.bin = os.path.dirname(sys.executable)

    def env(self, json_out=False):
        env = dict(os.environ)
        env.update({"ANSIBLE_CONFIG": self.cfg, "ANSIBLE_COLLECTIONS_PATH": os.path.join(ROOT, ".build", "collections"),
                    "ANSIBLE_NOCOLOR": "1", "PATH": self.bin + os.pathsep + env.get("PATH", "")})
        if json_out:
            env["ANSIBLE_STDOUT_CALLBACK"] = "ansible.posix.json"
        return env

    def run(self, argv, name, timeout=3600):
        out = os.path.join(self.work, name + ".log")
        with open(out, "ab") as f:
            proc = subprocess.run(argv, stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=self.env(),
                                  timeout=timeout, check=False)
        if proc.returncode != 0:
            raise RuntimeError("%s failed (rc %d): see %s" % (name, proc.returncode, out))

    def prepare(self):
        log("filling the mirror with the release's core images (untimed)")
        self.run([os.path.join(self.bin, "ansible-playbook"), "-i", self.inventory, os.path.join(HERE, "playbooks", "fleet_prepare.yml"),
                  "-e", "fleet_images_file=" + self.images_file,
                  "-e", "fleet_store=" + os.path.join(self.state["transfer_dir"], "store")], "prepare")
        with open(self.images_file, encoding="utf-8") as f:
            self.images = json.load(f)
        m = self.state["mirror"]
        # The password goes in a vars file, never on a command line.
        self.vars_file = os.path.join(self.work, "role-vars.json")
        fd = os.open(self.vars_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump({"host_config_mirror": m["hostport"], "host_config_mirror_ca": m["ca"], "host_config_mirror_username": m["user"],
                       "host_config_mirror_password": m["password"], "host_config_images": self.images,
                       "host_config_reboot_timeout": 900}, f)

    def reset(self, hosts):
        log("putting %d hosts back as they were before any run (untimed)" % hosts)
        self.run([os.path.join(self.bin, "ansible"), "-i", self.inventory, "microshift[0:%d]" % (hosts - 1), "-f", "10",
                  "-m", "ansible.builtin.shell", "-a", RESET], "reset-%d" % hosts)

    def configure(self, hosts, name, extra=()):
        close_masters(self.control_dir)
        time.sleep(1)
        load = loadavg()
        offset = mirror_log_size(self.mirror_log)
        clients = {self.state["nodes"][h]["address"] for h in self.state["booted_hosts"][:hosts]}
        out = os.path.join(self.work, name + ".json")
        argv = [os.path.join(self.bin, "ansible-playbook"), "-i", self.inventory, "-f", str(self.args.forks or hosts),
                "--limit", "microshift[0:%d]" % (hosts - 1), "airgap.microshift.configure_hosts",
                "-e", "@" + self.vars_file] + [arg for value in self.args.extra_vars for arg in ("-e", value)] + list(extra)
        log("%s: %d hosts, forks %d, load average %s" % (name, hosts, self.args.forks or hosts, " ".join("%.2f" % x for x in load)))
        cpu0 = machine_cpu_s()
        with open(out, "wb") as f:
            t0 = time.monotonic()
            proc = subprocess.Popen(argv, stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=self.env(json_out=True),
                                    start_new_session=True)
            sampler = FleetSampler(proc.pid, self.control_dir)
            sampler.start()
            _pid, status, usage = os.wait4(proc.pid, 0)
            wall = time.monotonic() - t0
            sampler.stop()
        machine = machine_cpu_s() - cpu0
        masters = ssh_masters(self.control_dir)
        master_cpu = sum(proc_cpu_rss(pid)[0] for pid in masters)
        close_masters(self.control_dir)
        time.sleep(0.5)  # the registry writes its access log line after the response
        ansible_cpu = usage.ru_utime + usage.ru_stime
        summary = summarize_json(out)
        stats = summary["stats"]
        failed = sorted(h for h, s in stats.items() if s.get("failures") or s.get("unreachable"))
        served = mirror_requests(self.mirror_log, offset, clients)
        fig = {
            "hosts": hosts, "forks": self.args.forks or hosts, "rc": os.waitstatus_to_exitcode(status), "wall_s": round(wall, 2),
            "wall_s_per_host": round(wall / hosts, 3), "load_before": load, "load_after": loadavg(),
            "control_cpu_s": round(ansible_cpu + master_cpu, 2), "ansible_cpu_s": round(ansible_cpu, 2),
            "ssh_master_cpu_s": round(master_cpu, 2), "ssh_masters": len(masters),
            "control_cpu_s_per_host": round((ansible_cpu + master_cpu) / hosts, 3),
            "machine_cpu_s": round(machine, 1), "machine_cpu_s_per_host": round(machine / hosts, 3),
            "peak_rss_mib": round(sampler.peak_kib / 1024, 1), "peak_processes": sampler.peak_procs,
            "largest_process_rss_mib": round(usage.ru_maxrss / 1024, 1),
            "mirror_requests": served["requests"], "mirror_bytes": served["bytes"], "mirror_status": served["per_status"],
            "mirror_requests_per_host": round(served["requests"] / hosts, 1), "mirror_bytes_per_host": round(served["bytes"] / hosts),
            "tasks_per_host": summary["tasks_per_host"], "failed_hosts": failed,
            "changed_hosts": sum(1 for s in stats.values() if s.get("changed")), "plays": summary["plays"],
        }
        log("%s: %.1f s wall (%.2f s/host), control node %.2f CPU s/host, machine %.2f CPU s/host, peak %.0f MiB, "
            "mirror %.1f requests and %.0f bytes per host, rc %d" % (
                name, wall, fig["wall_s_per_host"], fig["control_cpu_s_per_host"], fig["machine_cpu_s_per_host"],
                fig["peak_rss_mib"], fig["mirror_requests_per_host"], fig["mirror_bytes_per_host"], fig["rc"]))
        return fig


def table(report):
    rows = [("hosts", "forks", "wall s", "s/host", "ctl CPU s/host", "machine CPU s/host", "peak MiB", "mirror req/host",
             "mirror B/host", "tasks/host", "load before", "rc")]
    for fig in report["results"]["curve"]:
        rows.append((fig["hosts"], fig["forks"], "%.1f" % fig["wall_s"], "%.2f" % fig["wall_s_per_host"],
                     "%.2f" % fig["control_cpu_s_per_host"], "%.2f" % fig["machine_cpu_s_per_host"], "%.0f" % fig["peak_rss_mib"],
                     "%.1f" % fig["mirror_requests_per_host"], "%d" % fig["mirror_bytes_per_host"], fig["tasks_per_host"],
                     "%.2f" % fig["load_before"][0], fig["rc"]))
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(str(c).rjust(w) for c, w in zip(r, widths)) for r in rows]
    reboot = report["results"].get("reboot")
    if reboot:
        lines.append("")
        lines.append("rolling reboot, %d hosts in batches of %d: %.1f s wall, rc %d, load before %.2f" % (
            reboot["hosts"], reboot["batch"], reboot["wall_s"], reboot["rc"], reboot["load_before"][0]))
        if "reboots_per_host" in reboot:
            counts = reboot["reboots_per_host"]
            lines.append("  reboots per host (the supervisor's records): %s" % ", ".join(
                "%d: %d hosts" % (n, list(counts.values()).count(n)) for n in sorted(set(counts.values()))))
        for i, play in enumerate(reboot["plays"], start=1):
            lines.append("  batch %d (%s): %s s" % (i, ", ".join(play["hosts"][:1] + ["..."] + play["hosts"][-1:]) if len(play["hosts"]) > 2
                                                    else ", ".join(play["hosts"]), play["seconds"]))
    return "\n".join(lines)


def reboots_per_host(events, hosts, since):
    """How many times each of the first ``hosts`` hosts rebooted after ``since`` (epoch seconds), from
    the supervisor's records: a host that asked for a reboot exits with 133 (nspawn), once per reboot."""
    counts = {"microshift-%d" % i: 0 for i in range(1, hosts + 1)}
    for event in events:
        if event["event"] == "exit" and event.get("rc") == 133 and event["time"] >= since and event["host"] in counts:
            counts[event["host"]] += 1
    return counts


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="5,20,50", help="fleet sizes of the curve, ascending (default %(default)s)")
    p.add_argument("--forks", type=int, default=0, help="ansible forks (default: the number of hosts of each run)")
    p.add_argument("--reboot-batch", type=int, default=10, help="airgap_serial of the rolling reboot of every host; 0: none (default %(default)s)")
    p.add_argument("--state-dir", default="/tmp/amsb-fleet", help="test bed state dir (default %(default)s)")
    p.add_argument("--out", default=os.path.join(HERE, "results"), help="results directory (default tests/benchmarks/results)")
    p.add_argument("-e", "--extra-vars", action="append", default=[],
                   help="extra variables for every configure_hosts run, as ansible-playbook takes them (repeatable), "
                        "e.g. host_config_verify_engine=skopeo")
    p.add_argument("--chart", help="also redraw the benchmark chart here (with results/latest-bench.json)")
    args = p.parse_args(argv)
    args.size_list = sorted(int(x) for x in args.sizes.split(",") if x)
    return args


def main(argv=None):
    args = parse_args(argv)
    if os.geteuid() != 0:
        sys.exit("bench_fleet.py needs root (the test bed uses network and mount namespaces)")
    started = datetime.datetime.now(datetime.timezone.utc)
    stamp = started.strftime("%Y%m%dT%H%M%SZ")
    work = os.path.join(os.path.realpath(args.state_dir) + "-work", stamp)
    os.makedirs(work, exist_ok=True)
    os.makedirs(args.out, exist_ok=True)
    hosts = max(args.size_list)
    ensure_inotify(hosts)
    report = {"started": started.isoformat(timespec="seconds"), "machine": machine_info(), "results": {"curve": []},
              "parameters": {"sizes": args.size_list, "forks": args.forks or "hosts", "reboot_batch": args.reboot_batch,
                             "extra_vars": args.extra_vars,
                             "host_kind": "nspawn", "release": "tiny 5.0, core images for x86_64"}}
    t0 = time.monotonic()
    sb = Sandbox(args.state_dir, size="tiny", hosts=hosts, host_kind="booted", log=log)
    rc = 0
    try:
        state = sb.up()
        report["parameters"]["boot_to_ssh_s"] = max(state["booted"]["timings"]["boot_to_ssh"].values())
        fleet = Fleet(sb, args, work)
        fleet.prepare()
        report["parameters"]["images"] = len(fleet.images)
        for size in args.size_list:
            fleet.reset(hosts)
            fig = fleet.configure(size, "configure-%d" % size)
            report["results"]["curve"].append(fig)
            rc = rc or (fig["rc"] != 0)
        if args.reboot_batch:
            # One more registry mirrored: every host's drop-in changes, so every host is rebooted.
            reboot_started = time.time()
            fig = fleet.configure(hosts, "reboot", ["-e", "airgap_serial=%d" % args.reboot_batch, "-e", "host_config_reboot=true",
                                                    "-e", json.dumps({"host_config_registries": ["quay.io", "registry.redhat.io",
                                                                                                  "registry.access.redhat.com", "ghcr.io"]})])
            fig["batch"] = args.reboot_batch
            fig["reboots_per_host"] = reboots_per_host(booted_events(sb.state), hosts, reboot_started)
            report["results"]["reboot"] = fig
            rc = rc or (fig["rc"] != 0)
    finally:
        sb.down(keep_logs=True)
        report["duration_s"] = round(time.monotonic() - t0, 1)
        path = os.path.join(args.out, "%s-fleet.json" % stamp)
        for p in (path, os.path.join(args.out, "latest-fleet.json")):
            with open(p, "w", encoding="utf-8") as f:
                json.dump(report, f, indent=2, sort_keys=True)
                f.write("\n")
        text = table(report)
        print(text)
        with open(os.path.join(work, "table.txt"), "w", encoding="utf-8") as f:
            f.write(text + "\n")
        log("results: %s; logs: %s; total %.0f s" % (path, work, report["duration_s"]))
    if args.chart:
        try:
            import chart  # pylint: disable=import-outside-toplevel
            with open(os.path.join(args.out, "latest-bench.json"), encoding="utf-8") as f:
                chart.draw(json.load(f), args.chart, fleet=report)
            log("chart: %s" % args.chart)
        except ImportError as exc:
            log("no chart: %s (pip install -r tests/benchmarks/requirements.txt)" % exc)
    return 2 if rc else 0


if __name__ == "__main__":
    sys.exit(main())
