# Copyright: airgap.microshift contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The booted hosts' supervisor with real child processes standing in for machines: a reboot soon
after the start is honoured, a reboot loop is not, and any other exit leaves the machine down."""

from __future__ import annotations

import json
import sys
import time

from tests.sandbox import hostd


def _run(tmp_path, script):
    events = tmp_path / "events.jsonl"
    config = {"events": str(events), "hosts": [
        {"name": "m1", "argv": [sys.executable, "-c", script, str(tmp_path / "runs")], "console": str(tmp_path / "m1.log"),
         "reboot_codes": [133]}]}
    hostd.Supervisor(config).run()
    return [json.loads(line) for line in events.read_text().splitlines()]


# Each run appends a line to the file named by argv[1]; the machine asks for a reboot (133) on its
# first two runs, then powers off (0).
TWO_QUICK_REBOOTS = (
    "import sys\n"
    "with open(sys.argv[1], 'a') as f: f.write('run\\n')\n"
    "runs = len(open(sys.argv[1]).read().splitlines())\n"
    "sys.exit(133 if runs <= 2 else 0)\n")


def test_quick_reboots_are_honoured_and_a_power_off_stays_down(tmp_path):
    events = _run(tmp_path, TWO_QUICK_REBOOTS)
    assert [(e["event"], e.get("rc")) for e in events if e["host"] == "m1"] == [
        ("start", None), ("exit", 133), ("start", None), ("exit", 133), ("start", None), ("exit", 0)]
    assert events[-1]["event"] == "supervisor-exit"


def test_a_reboot_loop_is_left_down(tmp_path):
    events = _run(tmp_path, "import sys\nopen(sys.argv[1], 'a').write('run\\n')\nsys.exit(133)\n")
    assert [e["event"] for e in events if e["host"] == "m1"].count("start") == hostd.MAX_QUICK
    assert [e["event"] for e in events if e["host"] == "m1"][-1] == "reboot-loop"
    assert len((tmp_path / "runs").read_text().splitlines()) == hostd.MAX_QUICK


# Every machine sleeps until the same instant (argv[2], epoch seconds), asks for a reboot, and powers
# off on its second run.
SIMULTANEOUS_REBOOT = (
    "import os, sys, time\n"
    "first = not os.path.exists(sys.argv[1])\n"
    "open(sys.argv[1], 'a').write('run\\n')\n"
    "if first:\n"
    "    time.sleep(max(0.0, float(sys.argv[2]) - time.time()))\n"
    "sys.exit(133 if first else 0)\n")


def test_machines_that_reboot_at_the_same_moment_all_come_back(tmp_path):
    at = str(time.time() + 4.0)  # past MIN_RUN: each is one ordinary reboot
    events = tmp_path / "events.jsonl"
    hosts = [{"name": "m%d" % i, "argv": [sys.executable, "-c", SIMULTANEOUS_REBOOT, str(tmp_path / ("runs-%d" % i)), at],
              "console": str(tmp_path / ("m%d.log" % i)), "reboot_codes": [133]} for i in range(12)]
    hostd.Supervisor({"events": str(events), "hosts": hosts}).run()
    records = [json.loads(line) for line in events.read_text().splitlines()]
    for host in hosts:
        mine = [(e["event"], e.get("rc")) for e in records if e["host"] == host["name"]]
        assert mine == [("start", None), ("exit", 133), ("start", None), ("exit", 0)], (host["name"], mine)
