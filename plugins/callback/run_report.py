# Copyright: airgap.microshift contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r"""
name: run_report
type: aggregate
short_description: Write a JSON and a Markdown report of every mirroring run
version_added: 0.1.0
description:
  - At the end of a playbook run, writes a JSON report and a Markdown report of what the
    C(airgap.microshift) modules did - images with digests and sizes, deduplication, bytes and
    time per phase (role), and what was skipped or failed and why.
  - Only a fixed set of result keys of this collection's modules is recorded; results of tasks
    with C(no_log) are never read, and keys that look like credentials are dropped.
  - A module of this collection started with C(async) is recorded through the C(async_status)
    task that collects its result.
  - Enable it with C(callbacks_enabled = airgap.microshift.run_report) in C(ansible.cfg) or the
    E(ANSIBLE_CALLBACKS_ENABLED) environment variable.
author:
  - airgap.microshift contributors (@airgap-microshift)
options:
  report_dir:
    description:
      - Directory the reports are written to. Each run writes C(<time>-<playbook>.json) and
        C(.md), and refreshes C(latest.json) and C(latest.md).
    type: path
    default: ./airgap-microshift-report
    env:
      - name: AIRGAP_MICROSHIFT_REPORT_DIR
    ini:
      - section: callback_airgap_microshift_run_report
        key: report_dir
"""

import datetime
import json
import os
import re
import tempfile
import time

from ansible.plugins.callback import CallbackBase

from ansible_collections.airgap.microshift.plugins.plugin_utils._report import (
    phase_seconds,
    render_markdown,
    sanitize,
)

_OUR_PREFIX = "airgap.microshift."
_RECORDED_KEYS = (
    "summary", "images", "mapping", "failures", "plan", "served", "failed_refs", "tag_refs",
    "releases", "volumes", "verified", "missing", "corrupt", "short", "bundle", "receipt",
    "store", "mirror", "dest", "path", "msg",
)


class CallbackModule(CallbackBase):
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "aggregate"
    CALLBACK_NAME = "airgap.microshift.run_report"
    CALLBACK_NEEDS_ENABLED = True

    def __init__(self, display=None):
        super().__init__(display=display)
        self._playbook = None
        self._started = None
        self._task_runs = []
        self._current_run = {}
        self._phases = {}
        self._results = []
        self._jobs = set()

    # -- collection ---------------------------------------------------------------------------------

    def v2_playbook_on_start(self, playbook):
        self._playbook = os.path.basename(getattr(playbook, "_file_name", "playbook"))
        self._started = time.time()

    def _start_task(self, task):
        # One run per start of a task: a task started again (the next batch of a serial play)
        # adds its own time; its results on every host end the same run.
        run = {"phase": self._phase_of(task), "started": time.time(), "ended": None}
        self._task_runs.append(run)
        self._current_run[task._uuid] = run

    def v2_playbook_on_task_start(self, task, is_conditional):
        self._start_task(task)

    def v2_playbook_on_handler_task_start(self, task):
        self._start_task(task)

    def _phase_of(self, task):
        role = getattr(task, "_role", None)
        if role is not None:
            return role.get_name()
        return "(playbook)"

    def _record(self, result, status):
        task = result._task
        phase = self._phase_of(task)
        now = time.time()
        run = self._current_run.get(task._uuid)
        if run is None:
            run = {"phase": phase, "started": now, "ended": None}
            self._task_runs.append(run)
            self._current_run[task._uuid] = run
        run["ended"] = now
        elapsed = max(0.0, now - run["started"])
        entry = self._phases.setdefault(phase, {
            "phase": phase, "tasks": 0, "ok": 0, "changed": 0, "failed": 0, "skipped": 0,
            "seconds": 0.0, "first": run["started"],
        })
        entry["tasks"] += 1
        entry[status] += 1
        if status == "ok" and result._result.get("changed"):
            entry["changed"] += 1

        action = getattr(task, "resolved_action", None) or task.action or ""
        ours = action.startswith(_OUR_PREFIX)
        job = result._result.get("ansible_job_id")
        if ours and job and not result._result.get("finished"):
            # a module of ours started with async: its result arrives through async_status
            self._jobs.add(job)
        elif job in self._jobs and action.rpartition(".")[2] == "async_status" and result._result.get("finished"):
            ours = True
        if not ours and status != "failed":
            return
        if task.no_log or result._result.get("_ansible_no_log"):
            data = {"msg": "(output hidden by no_log)"} if status == "failed" else {}
        elif ours:
            data = {key: result._result[key] for key in _RECORDED_KEYS if key in result._result}
        else:
            data = {"msg": result._result.get("msg")}
        self._results.append(sanitize({
            "host": result._host.get_name(),
            "task": task.get_name(),
            "phase": phase,
            "module": action,
            "status": status,
            "changed": bool(result._result.get("changed")),
            "seconds": round(elapsed, 3),
            "result": data,
        }))

    def v2_runner_on_ok(self, result):
        self._record(result, "ok")

    def v2_runner_on_failed(self, result, ignore_errors=False):
        self._record(result, "failed")

    def v2_runner_on_skipped(self, result):
        self._record(result, "skipped")

    def v2_runner_on_unreachable(self, result):
        self._record(result, "failed")

    # -- output -------------------------------------------------------------------------------------

    def v2_playbook_on_stats(self, stats):
        finished = time.time()
        hosts = {}
        for host in sorted(stats.processed.keys()):
            hosts[host] = stats.summarize(host)
        seconds = phase_seconds(self._task_runs)
        phases = []
        for entry in sorted(self._phases.values(), key=lambda item: item["first"]):
            phase = {key: value for key, value in entry.items() if key != "first"}
            phase["seconds"] = seconds.get(entry["phase"], 0.0)
            phases.append(phase)
        report = {
            "format": 1,
            "playbook": self._playbook,
            "started": _iso(self._started or finished),
            "finished": _iso(finished),
            "seconds": round(finished - (self._started or finished), 3),
            "hosts": hosts,
            "phases": phases,
            "results": self._results,
        }
        try:
            paths = self._write(report)
        except OSError as exc:
            self._display.warning("airgap.microshift.run_report could not write the report: %s" % exc)
            return
        self._display.display("Run report: %s" % ", ".join(paths))

    def _write(self, report):
        directory = os.path.abspath(os.path.expanduser(self.get_option("report_dir")))
        os.makedirs(directory, mode=0o750, exist_ok=True)
        stamp = datetime.datetime.fromtimestamp(time.time(), datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        name = re.sub(r"[^A-Za-z0-9_.-]", "_", os.path.splitext(report["playbook"] or "playbook")[0])
        contents = {
            "json": json.dumps(report, indent=2, sort_keys=True) + "\n",
            "md": render_markdown(report),
        }
        written = []
        for ext, text in contents.items():
            for filename in ("%s-%s.%s" % (stamp, name, ext), "latest.%s" % ext):
                _atomic_write(os.path.join(directory, filename), text)
            written.append(os.path.join(directory, "%s-%s.%s" % (stamp, name, ext)))
        return written


def _iso(epoch):
    return datetime.datetime.fromtimestamp(epoch, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _atomic_write(path, text):
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".tmp-report-")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.chmod(tmp, 0o640)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
