# Copyright: airgap.microshift contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Draw the chart of a benchmark run (a results JSON written by run.py) as a PNG.

    .venv/bin/python tests/benchmarks/chart.py tests/benchmarks/results/latest-bench.json docs/benchmark-chart.png

Left: download and upload wall times per mode, with the download floor (unique bytes / WAN
bandwidth). Right: bytes fetched from the registries, store size on disk and bytes sent to the
mirror, each relative to the unique bytes of the release (1.0 is the floor). With a fleet run
(bench_fleet.py's results JSON, ``--fleet``, repeatable: runs with other role variables side by side),
a third panel: configure_hosts' wall time and the control node's CPU seconds per host against the
number of booted hosts.

    .venv/bin/python tests/benchmarks/chart.py tests/benchmarks/results/latest-bench.json docs/benchmark-chart.png \
        --fleet tests/benchmarks/results/latest-fleet.json
"""

from __future__ import annotations

import json
import sys

MODES = (("manual", "(a) manual\nsequential"), ("parallel", "(b) xargs -P 8"), ("ours", "(c) airgap.microshift"))
COLORS = {"manual": "#9e9e9e", "parallel": "#607d8b", "ours": "#1e88e5"}


def fleet_label(fleet):
    """The role variables a fleet run changed (bench_fleet.py -e), or the role's defaults."""
    extra = fleet.get("parameters", {}).get("extra_vars") or []
    return ", ".join(extra) if extra else "role defaults"


def draw_fleet(ax, fleets):
    """configure_hosts over 5, 20, 50 booted hosts: wall time (bars) and control-node CPU s per host (lines),
    one group of bars per fleet size and one bar per fleet run (each run with its own role variables)."""
    sizes = sorted({c["hosts"] for fleet in fleets for c in fleet["results"]["curve"]})
    width = 0.8 / len(fleets)
    shades = ["#1e88e5", "#43a047", "#8e24aa", "#6d4c41"]
    ax2 = ax.twinx()
    top_wall, top_cpu = 100, 0
    for i, fleet in enumerate(fleets):
        curve = {c["hosts"]: c for c in fleet["results"]["curve"]}
        xs = [sizes.index(h) + (i - (len(fleets) - 1) / 2) * width for h in sorted(curve)]
        walls = [curve[h]["wall_s"] for h in sorted(curve)]
        rects = ax.bar(xs, walls, width * 0.95, color=shades[i % len(shades)], label="wall time (s): %s" % fleet_label(fleet))
        for rect, h in zip(rects, sorted(curve)):
            ax.annotate("%.0f s" % curve[h]["wall_s"], (rect.get_x() + rect.get_width() / 2, rect.get_height()),
                        ha="center", va="bottom", fontsize=7)
        cpus = [curve[h]["control_cpu_s_per_host"] for h in sorted(curve)]
        ax2.plot(xs, cpus, "o-", color=shades[i % len(shades)], alpha=0.6,
                 label="control node CPU s per host: %s" % fleet_label(fleet))
        top_wall, top_cpu = max([top_wall] + walls), max([top_cpu] + cpus)
    ax.axhline(100, color="#e53935", linestyle="--", linewidth=1, label="target for 50 hosts: 100 s")
    ax.set_xticks(list(range(len(sizes))))
    ax.set_xticklabels(["%d hosts" % h for h in sizes])
    ax.set_ylabel("configure_hosts wall time (s)")
    ax.set_ylim(0, top_wall * 1.45)
    ax2.set_ylabel("control node CPU s per host")
    ax2.set_ylim(0, top_cpu * 2.2)
    ax.set_title("Fleet: booted hosts over SSH, forks = hosts", fontsize=10)
    lines, labels = ax.get_legend_handles_labels()
    lines2, labels2 = ax2.get_legend_handles_labels()
    ax.legend(lines + lines2, labels + labels2, fontsize=7, loc="upper left")


def draw(report, path, fleet=None):
    """Draw the chart; *fleet* is one fleet run (bench_fleet.py's results) or a list of them."""
    import matplotlib  # pylint: disable=import-outside-toplevel
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
    import matplotlib.ticker  # pylint: disable=import-outside-toplevel,unused-import

    res = report["results"]
    params = report["parameters"]
    modes = [(m, label) for m, label in MODES if res.get(m, {}).get("download")]
    fleets = [f for f in (fleet if isinstance(fleet, list) else [fleet]) if f and f.get("results", {}).get("curve")]
    if fleets:
        fig, (ax_t, ax_b, ax_f) = plt.subplots(1, 3, figsize=(19, 5.2))
        draw_fleet(ax_f, fleets)
    else:
        fig, (ax_t, ax_b) = plt.subplots(1, 2, figsize=(13, 5.2))

    # Wall times.
    x = range(len(modes))
    width = 0.38
    dl = [res[m]["download"]["wall_s"] for m, unused_label in modes]
    ul = [res[m].get("upload", {}).get("wall_s", 0) for m, unused_label in modes]
    bars = ax_t.bar([i - width / 2 for i in x], dl, width, label="download (through the WAN proxy)",
                    color=[COLORS[m] for m, unused_label in modes])
    ax_t.bar([i + width / 2 for i in x], ul, width, label="upload (bastion -> site mirror)", color=[COLORS[m] for m, unused_label in modes],
             alpha=0.45, hatch="//")
    for rect, value in zip(bars, dl):
        ax_t.annotate("%.0f s" % value, (rect.get_x() + rect.get_width() / 2, rect.get_height()), ha="center", va="bottom", fontsize=9)
    for i, value in enumerate(ul):
        if value:
            ax_t.annotate("%.0f s" % value, (i + width / 2, value), ha="center", va="bottom", fontsize=8, color="#555555")
    if params.get("download_floor_s"):
        ax_t.axhline(params["download_floor_s"], color="#e53935", linestyle="--", linewidth=1,
                     label="download floor %.0f s (unique bytes / %s)" % (params["download_floor_s"], params["bandwidth"]))
    noop = res.get("ours", {}).get("noop")
    if noop:
        ax_t.text(0.02, 0.97, "(c) no-op rerun, Ansible included: %.1f s" % noop["wall_s"], transform=ax_t.transAxes, ha="left",
                  va="top", fontsize=9, color=COLORS["ours"])
    ax_t.set_xticks(list(x))
    ax_t.set_xticklabels([label for unused_mode, label in modes])
    ax_t.set_ylabel("wall time (s)")
    ax_t.set_title("Time, %s release (%d refs), WAN %s +%s" % (params["size"], params["refs"], params["bandwidth"], params["latency"]),
                   fontsize=10)
    ax_t.set_ylim(0, max(dl + ul) * 1.25)
    ax_t.legend(fontsize=8, loc="upper right")

    # Bytes relative to the unique bytes.
    series = (("fetched from the registries", lambda r: r["download"].get("fetched_vs_unique")),
              ("store on disk (du)", lambda r: r["download"].get("store_disk_vs_unique")),
              ("sent to the mirror", lambda r: r.get("upload", {}).get("sent_vs_unique")))
    width = 0.26
    for k, (name, get) in enumerate(series):
        values = [get(res[m]) or 0 for m, unused_label in modes]
        pos = [i + (k - 1) * width for i in x]
        rects = ax_b.bar(pos, values, width, label=name, color=["#43a047", "#fb8c00", "#8e24aa"][k])
        for rect, value in zip(rects, values):
            ax_b.annotate("%.2f" % value, (rect.get_x() + rect.get_width() / 2, rect.get_height()), ha="center", va="bottom", fontsize=7)
    ax_b.axhline(1.0, color="#e53935", linestyle="--", linewidth=1)
    ax_b.set_yscale("log")
    ax_b.yaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _p: "%g" % v))
    ax_b.yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    top = max([get(res[m]) or 1 for _n, get in series for m, unused_label in modes] + [1])
    ax_b.set_ylim(0.5, top * 2.5)
    ax_b.set_xticks(list(x))
    ax_b.set_xticklabels([label for unused_mode, label in modes])
    ax_b.set_ylabel("x unique bytes (%.1f MB; log scale)" % (params["unique_bytes"] / 1e6))
    ax_b.set_title("Bytes, relative to the release's unique bytes (1.0 = floor)", fontsize=10)
    ax_b.legend(fontsize=8, loc="upper right")
    machine = report.get("machine", {})
    fig.text(0.01, 0.01, "%s, %s CPUs, %s GiB; skopeo %s; run %s" % (
        machine.get("cpu", "?"), machine.get("cpus", "?"), machine.get("mem_gib", "?"),
        (machine.get("skopeo") or "?").replace("skopeo version ", ""), report.get("started", "?")), fontsize=7, color="#555555")
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    fleets = []
    while len(argv) >= 4 and argv[-2] == "--fleet":
        with open(argv[-1], encoding="utf-8") as f:
            fleets.insert(0, json.load(f))
        argv = argv[:-2]
    if len(argv) != 2:
        sys.exit("usage: chart.py RESULTS.json OUT.png [--fleet FLEET.json ...]")
    with open(argv[0], encoding="utf-8") as f:
        draw(json.load(f), argv[1], fleets)
    return 0


if __name__ == "__main__":
    sys.exit(main())
