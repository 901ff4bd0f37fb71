# Copyright: airgap.microshift contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""Run reports: keep secrets out, time the phases, and render a report as Markdown.

Plain functions used by the ``airgap.microshift.run_report`` callback (on the control node only)
and by unit tests.
"""

from __future__ import annotations

import re

# Keys whose values may be credentials. ``authfile`` and ``*_file`` paths are not secrets.
_SECRET_KEY = re.compile(r"(pass(word|wd)?|token|secret|credential|^auths?$|^auth_|_auth$|private_key)", re.IGNORECASE)
_SECRET_VALUE = re.compile(r"(?i)(\"auth\"\s*:\s*\"[^\"]+\"|bearer\s+[a-z0-9._-]+|basic\s+[a-z0-9+/=]{8,})")
HIDDEN = "********"


def sanitize(value):
    """A copy of ``value`` with credential-like keys removed and credential-like strings masked."""
    if isinstance(value, dict):
        clean = {}
        for key, item in value.items():
            if isinstance(key, str) and _SECRET_KEY.search(key):
                continue
            clean[key] = sanitize(item)
        return clean
    if isinstance(value, (list, tuple)):
        return [sanitize(item) for item in value]
    if isinstance(value, str):
        return _SECRET_VALUE.sub(HIDDEN, value)
    return value


def phase_seconds(runs):
    """Seconds per phase: the sum of the phase's own task runs.

    ``runs`` holds one dict per start of a task (``phase``, ``started``, ``ended``: the time of its
    last result on any host, ``None`` when it has none). A role that runs at the start and again at
    the end of a play is timed by its own tasks, not by the span between its first and last task.
    """
    seconds = {}
    for run in runs:
        if run.get("ended") is None:
            continue
        spent = max(0.0, run["ended"] - run["started"])
        seconds[run["phase"]] = seconds.get(run["phase"], 0.0) + spent
    return {phase: round(value, 3) for phase, value in seconds.items()}


def human_bytes(value):
    """``1536`` -> ``1.5 KiB``; non-numbers are returned as they are."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return value
    size = float(value)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(size) < 1024 or unit == "TiB":
            return ("%d %s" % (size, unit)) if unit == "B" else ("%.1f %s" % (size, unit))
        size /= 1024.0
    return value  # pragma: no cover


def _cell(value, limit=160):
    text = "" if value is None else str(value)
    text = text.replace("|", "\\|").replace("\n", " ")
    if len(text) > limit:
        text = text[:limit - 1] + "\u2026"
    return text


def _format_summary_value(key, value):
    if "bytes" in key and "per_second" not in key and "/s" not in key:
        return "%s (%s)" % (human_bytes(value), value) if isinstance(value, (int, float)) else value
    if ("throughput" in key or "per_second" in key) and isinstance(value, (int, float)):
        return "%s/s" % human_bytes(value)
    if isinstance(value, float):
        return "%.3f" % value if abs(value) < 1000 else "%.0f" % value
    return value


def _table(headers, rows):
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for dummy in headers) + "|"]
    for row in rows:
        lines.append("| " + " | ".join(_cell(item) for item in row) + " |")
    return lines


def render_markdown(report):
    """Render a run report (the callback's JSON document) as Markdown."""
    out = ["# airgap.microshift run report", ""]
    out.append("- playbook: `%s`" % report.get("playbook"))
    out.append("- started: %s, finished: %s (%.1f s)" % (report.get("started"), report.get("finished"), report.get("seconds") or 0))
    out.append("")

    hosts = report.get("hosts") or {}
    if hosts:
        out += ["## Hosts", ""]
        out += _table(
            ["host", "ok", "changed", "failed", "unreachable", "skipped"],
            [[host, s.get("ok"), s.get("changed"), s.get("failures"), s.get("unreachable"), s.get("skipped")]
             for host, s in sorted(hosts.items())],
        )
        out.append("")

    phases = report.get("phases") or []
    if phases:
        out += ["## Phases", ""]
        out += _table(
            ["phase", "tasks", "changed", "failed", "skipped", "seconds"],
            [[p.get("phase"), p.get("tasks"), p.get("changed"), p.get("failed"), p.get("skipped"), p.get("seconds")] for p in phases],
        )
        out.append("")

    failed = [r for r in report.get("results") or [] if r.get("status") == "failed"]
    if failed:
        out += ["## Failures", ""]
        for item in failed:
            out.append("- **%s** on `%s` (%s): %s" % (item.get("task"), item.get("host"), item.get("phase"),
                                                      _cell((item.get("result") or {}).get("msg"), 1000)))
        out.append("")

    for item in report.get("results") or []:
        result = item.get("result") or {}
        sections = []
        summary = result.get("summary")
        if isinstance(summary, dict) and summary:
            sections += ["", "| figure | value |", "|---|---|"]
            for key in sorted(summary):
                if isinstance(summary[key], (dict, list)):
                    continue
                sections.append("| %s | %s |" % (_cell(key), _cell(_format_summary_value(key, summary[key]))))
        images = result.get("images")
        if isinstance(images, list) and images and isinstance(images[0], str):
            releases = result.get("releases") or {}
            sections += ["", "%d images listed%s." % (
                len(images), (" from " + ", ".join("%s %s" % (k, v) for k, v in sorted(releases.items()))) if releases else "")]
            tag_refs = result.get("tag_refs") or []
            if tag_refs:
                sections.append("By tag (a digest-only mirror cannot serve them): %s" % ", ".join("`%s`" % ref for ref in tag_refs))
        if isinstance(images, list) and images and isinstance(images[0], dict):
            sections += ["", "Images:", ""]
            sections += _table(
                ["ref", "digest", "size", "status", "detail"],
                [[i.get("ref"), i.get("digest"), human_bytes(i.get("size")), i.get("status"), i.get("error") or ""] for i in images],
            )
        mapping = result.get("mapping")
        if isinstance(mapping, list) and mapping and isinstance(mapping[0], dict):
            sections += ["", "Mirror mapping:", ""]
            sections += _table(
                ["source", "mirror", "tag", "status"],
                [[m.get("source"), m.get("mirror"), m.get("tag") or "", m.get("status")] for m in mapping],
            )
        failures = result.get("failures")
        if isinstance(failures, list) and failures:
            sections += ["", "Failed:", ""]
            for failure in failures:
                if isinstance(failure, dict):
                    sections.append("- `%s`: %s" % (failure.get("ref") or failure.get("source"), _cell(failure.get("error") or failure.get("msg"), 1000)))
                else:
                    sections.append("- %s" % _cell(failure, 1000))
        if sections:
            out.append("## %s: %s on `%s`" % (item.get("phase"), item.get("task"), item.get("host")))
            out += sections
            out.append("")
    return "\n".join(out).rstrip("\n") + "\n"
