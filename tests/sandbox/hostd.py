# Copyright: airgap.microshift contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The supervisor of a test bed's booted hosts: one small process for all of them.

``python hostd.py --config <state>/hosts/hostd.json`` starts every host's machine (a
``systemd-nspawn --boot`` or a ``qemu-system-x86_64``), waits for any of them to exit, and starts
it again when it asked for a reboot: systemd-nspawn exits with 133 when the container reboots;
QEMU runs with ``-no-reboot -no-shutdown``, so it exits (0) only when the guest reboots. Any other
exit leaves that host down, and so does a reboot loop (MAX_QUICK reboots in a row, each sooner than
MIN_RUN after its start). QEMU's ``-no-reboot`` makes it exit on a reboot and on a power-off
alike (with ``-no-shutdown`` a reboot would pause it), so a QEMU exit is a reboot when the guest's
kernel said so last on its console (``reboot: Restarting system``). Every start and exit is appended to ``events.jsonl`` (host, pid, rc,
time). SIGTERM stops every machine at once: the init of each nspawn container is killed (the
whole container goes with it, then nspawn exits; a killed nspawn would leave its container
running), QEMU gets SIGTERM; what is left after a bounded wait is killed, and the supervisor exits.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time

STOP_GRACE = 15.0
# A machine that asks for a reboot sooner than this after its start, MAX_QUICK times in a row, is in a
# reboot loop: it is left down. A single quick reboot is honoured (a host that boots in under two
# seconds can be told to reboot by its first SSH session).
MIN_RUN = 3.0
MAX_QUICK = 3


class _Wake(Exception):
    """Raised by the SIGTERM handler to leave a blocking wait."""


class Supervisor:
    def __init__(self, config):
        self.config = config
        self.hosts = {h["name"]: h for h in config["hosts"]}
        self.procs = {}  # pid -> (name, started, Popen)
        self.quick = {}  # name -> reboots in a row that came sooner than MIN_RUN after the start
        self.stopping = False
        self.waiting = False
        self.events = config["events"]

    def record(self, **event):
        event["time"] = time.time()
        with open(self.events, "a", encoding="utf-8") as f:
            f.write(json.dumps(event, sort_keys=True) + "\n")

    def start(self, name):
        host = self.hosts[name]
        console = open(host["console"], "ab")  # pylint: disable=consider-using-with
        proc = subprocess.Popen(host["argv"], stdin=subprocess.DEVNULL, stdout=console, stderr=subprocess.STDOUT, close_fds=True)
        console.close()
        # The Popen object is kept until its exit is reaped here: a Popen dropped while its child runs is
        # polled (waitpid) by the next Popen, which would reap a machine's exit that this loop then
        # never sees (seen: one host of a batch of ten rebooting at once was never started again).
        self.procs[proc.pid] = (name, time.monotonic(), proc)
        self.record(host=name, event="start", pid=proc.pid)

    def on_exit(self, pid, status):
        name, started, proc = self.procs.pop(pid)
        rc = os.waitstatus_to_exitcode(status)
        proc.returncode = rc  # reaped: nothing left for subprocess to wait for
        self.record(host=name, event="exit", pid=pid, rc=rc)
        if self.stopping:
            return
        host = self.hosts[name]
        if rc in host["reboot_codes"] and (not host.get("reboot_marker") or self._console_says(host)):
            self.quick[name] = self.quick.get(name, 0) + 1 if time.monotonic() - started < MIN_RUN else 0
            if self.quick[name] < MAX_QUICK:
                self.start(name)
            else:
                self.record(host=name, event="reboot-loop", pid=pid, rc=rc)

    @staticmethod
    def _console_says(host):
        try:
            with open(host["console"], "rb") as f:
                f.seek(max(0, os.path.getsize(host["console"]) - 4096))
                return host["reboot_marker"].encode() in f.read()
        except OSError:
            return False

    @staticmethod
    def _container_inits(netns):
        """PIDs of the processes in network namespace ``netns`` that are PID 1 of their PID namespace."""
        try:
            inode = os.stat(netns).st_ino
        except OSError:
            return []
        found = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                if os.stat("/proc/%s/ns/net" % entry).st_ino != inode:
                    continue
                with open("/proc/%s/status" % entry, encoding="ascii", errors="replace") as f:
                    nspid = [line.split()[1:] for line in f if line.startswith("NSpid:")]
            except OSError:
                continue
            if nspid and len(nspid[0]) > 1 and nspid[0][-1] == "1":
                found.append(int(entry))
        return found

    def stop(self, *_args):
        if self.stopping:
            return
        self.stopping = True
        for pid, (name, _started, _proc) in list(self.procs.items()):
            host = self.hosts[name]
            for init in self._container_inits(host["netns"]) if host.get("netns") else []:
                try:
                    os.kill(init, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        if self.waiting:
            raise _Wake()

    def run(self):
        signal.signal(signal.SIGTERM, self.stop)
        signal.signal(signal.SIGINT, self.stop)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        for name in self.hosts:
            self.start(name)
        deadline = None
        while self.procs:
            if self.stopping and deadline is None:
                deadline = time.monotonic() + STOP_GRACE
            try:
                if deadline is not None:
                    pid, status = os.waitpid(-1, os.WNOHANG)
                    if pid == 0:
                        if time.monotonic() > deadline:
                            for left in list(self.procs):
                                try:
                                    os.kill(left, signal.SIGKILL)
                                except ProcessLookupError:
                                    pass
                            deadline = time.monotonic() + STOP_GRACE
                        time.sleep(0.1)
                        continue
                else:
                    self.waiting = True
                    try:
                        pid, status = os.waitpid(-1, 0)
                    finally:
                        self.waiting = False
            except ChildProcessError:
                break
            except _Wake:
                continue
            if pid in self.procs:
                self.on_exit(pid, status)
        self.record(host="*", event="supervisor-exit", pid=os.getpid(), rc=0)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", required=True)
    args = parser.parse_args(argv)
    with open(args.config, encoding="utf-8") as f:
        config = json.load(f)
    Supervisor(config).run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
