# Copyright: airgap.microshift contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""Registry-less sites: loading a release into MicroShift hosts' container storage, on the test bed.

1. Raises the test bed (``--size``, ``--hosts``), downloads every image of the release for both
   architectures on the connected host into a store on the transfer disk (the air-gapped side sees it),
   and packs that store into a signed transfer set next to it (a fresh key; pack time not counted).
2. Measures the sequential write rate of the disk the hosts' storage lives on (``dd`` with fdatasync),
   and how long ``gzip -dc`` takes to unpack the host's unique layers on one core.
3. One host, for every ``--drivers`` and ``--sources`` pair: ``airgap.microshift.image_load`` through
   ``ansible-playbook`` (Ansible's start-up included) from the store (read in place), from the set on
   the host's disk (signature checked, blobs hashed in place and hard-linked into a staging store) or
   from the same set through a read-only bind mount, as a medium plugged into the host (blobs copied
   into the staging store) into an empty storage on that disk, then
   ``sync`` (the storage does not fsync its layers; the floor's ``dd`` does), then again (no-op).
   The storage's graphroot is a directory of the machine's ext4 disk, not an overlayfs, seen from the
   host's own mount namespace; which driver the storage really used is read back from the graphroot
   (``overlay-layers`` or ``vfs-layers``), and its filesystem type with ``stat -f``.
   Floors: the unique bytes of the host's images (its architecture, as carried) / the disk's write
   rate (target <= 1.5x), and the bytes the storage holds afterwards (``du``) / that rate. The CPU
   time of the run (every process the playbook waited for) is reported next to the wall time.
   ``--repeat`` runs each pair that many times, interleaved, and reports the median and the fastest.
4. A site: the bastion (the store's side) pushes to each of ``--hosts`` hosts, in parallel, exactly the
   blobs that host lacks (the plan of ``image_load`` in check mode against the store's index, then
   ``rsync --files-from``, capped at ``--link`` per host), then each host loads (the first driver of
   ``--drivers``). Bytes sent per host (rsync's own count: data and protocol) against that host's
   missing unique bytes: target <= 1.02x. The first host already holds the release of step 3, with
   ``--changed`` images of it removed, so that what it lacks differs from the others'.

    .venv/bin/python tests/benchmarks/bench_load.py --size bench --hosts 3 --json tests/benchmarks/results/...json
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, ROOT)

from tests.sandbox import Sandbox  # noqa: E402  pylint: disable=wrong-import-position

sys.path.insert(0, os.path.join(ROOT, ".build", "collections"))
from ansible_collections.airgap.microshift.plugins.module_utils._bundle import pack  # noqa: E402  pylint: disable=wrong-import-position
from ansible_collections.airgap.microshift.plugins.module_utils._signing import (  # noqa: E402  pylint: disable=wrong-import-position
    generate_private_key,
    public_key_pem,
)

ENV = dict(os.environ, PATH=os.path.join(ROOT, ".venv", "bin") + os.pathsep + os.environ.get("PATH", ""),
           ANSIBLE_COLLECTIONS_PATH=os.path.join(ROOT, ".build", "collections"), ANSIBLE_FORCE_COLOR="0",
           ANSIBLE_STDOUT_CALLBACK="json", ANSIBLE_LOAD_CALLBACK_PLUGINS="1")


def sh(argv, **kwargs):
    kwargs.setdefault("check", True)
    kwargs.setdefault("capture_output", True)
    kwargs.setdefault("text", True)
    return subprocess.run(argv, **kwargs)  # pylint: disable=subprocess-run-check


def ansible_module(sb, host, module, args, check=False, wait=True, perf=None):
    """Run one module on one test bed node through ``ansible-playbook`` (a one-task play in a file, so a
    large argument such as a store index never meets the command line's limits); (wall seconds, result).
    With ``perf`` (a file name), the run is recorded by ``perf record`` into that file."""
    play = [{"name": "bench", "hosts": host, "gather_facts": False, "check_mode": check,
             "tasks": [{"name": module, module: args}]}]
    fd, path = tempfile.mkstemp(prefix="bench-load-", suffix=".yml")
    with os.fdopen(fd, "w") as handle:
        json.dump(play, handle)
    env = dict(ENV, ANSIBLE_CONFIG=sb.state["ansible"]["config"])
    started = time.monotonic()
    argv = ["ansible-playbook", path]
    if perf:
        argv = ["perf", "record", "-q", "-F", "499", "-g", "-o", perf, "--"] + argv
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def finish():
        out, err = proc.communicate()
        wall = time.monotonic() - started
        os.unlink(path)
        try:
            result = json.loads(out)["plays"][0]["tasks"][0]["hosts"][host]
        except (ValueError, KeyError, IndexError):
            raise SystemExit("%s on %s: %s %s" % (module, host, out[-2000:], err[-2000:]))
        if result.get("failed"):
            raise SystemExit("%s on %s failed: %s" % (module, host, result.get("msg")))
        return wall, result
    return finish() if wait else finish


def write_rate(directory, size_mib):
    """Sequential write rate (bytes/s) of the disk under ``directory``: dd of ``size_mib`` MiB with fdatasync."""
    path = os.path.join(directory, "dd-probe")
    try:
        proc = sh(["dd", "if=/dev/zero", "of=" + path, "bs=8M", "count=%d" % (size_mib // 8), "conv=fdatasync"])
        match = re.search(r"(\d+) bytes .* copied, ([0-9.]+) s", proc.stderr)
        return int(match.group(1)) / float(match.group(2))
    finally:
        if os.path.exists(path):
            os.unlink(path)


def gunzip_seconds(store, index, refs):
    """Seconds ``gzip -dc`` takes to unpack, one after the other, the unique layers of ``refs`` (amd64): what the
    storage must at least do on one core, whatever the disk."""
    layers = {}
    for ref in refs:
        for manifest in index["images"][ref]["manifests"]:
            if manifest.get("platform") == "linux/amd64":
                layers.update((blob["digest"], blob["size"]) for blob in manifest["blobs"][1:])
    paths = [os.path.join(store, "blobs", "sha256", digest.split(":", 1)[1]) for digest in sorted(layers)]
    started = time.monotonic()
    for path in paths:
        with open(path, "rb") as source, open(os.devnull, "wb") as sink:
            subprocess.run(["gzip", "-dc"], stdin=source, stdout=sink, check=True)
    return time.monotonic() - started


def nsrsh(sb, work):
    """An rsync remote shell that enters a test bed node instead of SSH-ing into it (bytes go through a pipe)."""
    path = os.path.join(work, "nsrsh")
    lines = ["#!/bin/sh", "host=$1; shift", "case $host in"]
    for node in sb.state["hosts"]:
        argv = " ".join(sb.exec_argv(node, []))
        lines.append("  %s) exec %s /bin/sh -c \"$*\" ;;" % (node, argv))
    lines += ["esac", "exit 255", ""]
    with open(path, "w", encoding="utf-8") as handle:
        handle.write("\n".join(lines))
    os.chmod(path, 0o755)
    return path


def children_cpu():
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def timed_sync():
    started = time.monotonic()
    sh(["sync"])
    return time.monotonic() - started


def driver_used(graphroot):
    """The driver the storage really used: the one whose ``<driver>-layers`` directory the graphroot holds."""
    found = [name[:-len("-layers")] for name in sorted(os.listdir(graphroot)) if name.endswith("-layers")]
    return ",".join(found) or None


def one_host(sb, node, disk, base, source, driver, rate, label, perf=None):
    """Load the host's images into an empty storage of ``driver`` from ``source`` (kwargs of image_load); the figures."""
    root = os.path.join(disk, "%s-%s" % (node, label))
    storage = {"graphroot": os.path.join(root, "storage"), "runroot": "/run/bench-storage-%s" % label, "driver": driver}
    args = dict(base, **storage)
    args.update(source)
    if "trusted_keys" in source:
        args["staging"] = os.path.join(root, "staging")
    os.makedirs(root)
    sh(["sync"])
    cpu0 = children_cpu()
    wall, loaded = ansible_module(sb, node, "airgap.microshift.image_load", args, perf=perf)
    cpu = children_cpu() - cpu0
    sync_s = timed_sync()
    floor = loaded["unique_bytes"] / rate
    du = int(sh(["du", "-s", "-B1", storage["graphroot"]]).stdout.split()[0])
    figures = {
        "driver": driver,
        "driver_used": driver_used(storage["graphroot"]),
        "graphroot_fs": sh(sb.exec_argv(node, ["stat", "-f", "-c", "%T", storage["graphroot"]])).stdout.strip(),
        "source": loaded["source"]["kind"],
        "images": len(loaded["loaded"]),
        "unique_bytes": loaded["unique_bytes"],
        "bytes_read": loaded["bytes"],
        "bytes_staged": loaded.get("bytes_staged"),
        "bytes_linked": loaded.get("bytes_linked"),
        "wall_s": round(wall, 2),
        "sync_s": round(sync_s, 2),
        "cpu_s": round(cpu, 2),
        "module_s": loaded["seconds"],
        "timings": loaded.get("timings"),
        "floor_s": round(floor, 2),
        "ratio": round(wall / floor, 2),
        "ratio_with_sync": round((wall + sync_s) / floor, 2),
        "storage_bytes_estimate": loaded["storage_bytes"],
        "storage_du": du,
        "storage_floor_s": round(du / rate, 2),
        "ratio_to_storage_floor": round((wall + sync_s) / (du / rate), 2),
    }
    wall2, again = ansible_module(sb, node, "airgap.microshift.image_load", args)
    figures["noop_wall_s"] = round(wall2, 2)
    figures["noop_changed"] = again["changed"]
    shutil.rmtree(root, ignore_errors=True)
    return figures


def summarize(values):
    """The run of median wall time, with every run's wall time, CPU time and load average, and the fastest."""
    ordered = sorted(values, key=lambda v: v["wall_s"])
    median = dict(ordered[(len(ordered) - 1) // 2])
    median["runs"] = [{"wall_s": v["wall_s"], "sync_s": v["sync_s"], "cpu_s": v["cpu_s"], "loadavg": v["loadavg"],
                       "timings": v["timings"]} for v in values]
    median["min_wall_s"] = ordered[0]["wall_s"]
    median["min_ratio"] = ordered[0]["ratio"]
    median["min_ratio_with_sync"] = ordered[0]["ratio_with_sync"]
    return median


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", maxsplit=1)[0])
    parser.add_argument("--size", default="bench")
    parser.add_argument("--hosts", type=int, default=3)
    parser.add_argument("--drivers", default="overlay,vfs", help="storage drivers of the one-host loads, comma separated")
    parser.add_argument("--sources", default="store,set", help="what the one-host loads read, comma separated: store (read in place), set (the signed set on "
                        "the host's disk: blobs hard-linked into the staging store), medium (the same set through a "
                        "read-only bind mount: blobs copied)")
    parser.add_argument("--parallel", type=int, default=2)
    parser.add_argument("--link", default="25000", help="rsync --bwlimit per host, KiB/s (25000 ~ 200 Mbit/s); 0: none")
    parser.add_argument("--changed", type=int, default=3, help="images removed from the first host before the site load")
    parser.add_argument("--dd-mib", type=int, default=1024)
    parser.add_argument("--repeat", type=int, default=1, help="one-host loads of each driver and source, interleaved")
    parser.add_argument("--no-site", action="store_true", help="only the one-host loads")
    parser.add_argument("--collections", default=None,
                        help="ANSIBLE_COLLECTIONS_PATH of the collection to measure (default: this checkout's .build/collections)")
    parser.add_argument("--perf", default=None,
                        help="record the first one-host load with perf record into this file (read it with go_profile.py)")
    parser.add_argument("--state-dir", default="/tmp/airgap-microshift-bench-load")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    if args.collections:
        ENV["ANSIBLE_COLLECTIONS_PATH"] = os.path.abspath(args.collections)
    drivers = [d for d in args.drivers.split(",") if d]
    sources = [s for s in args.sources.split(",") if s]

    work = tempfile.mkdtemp(prefix="bench-load-")
    report = {"size": args.size, "hosts": args.hosts, "drivers": drivers, "sources": sources, "parallel": args.parallel,
              "link_kib_s": args.link, "cpus": os.cpu_count(), "loadavg_start": os.getloadavg()[0]}
    with Sandbox(args.state_dir, size=args.size, hosts=args.hosts) as sb:
        st = sb.state
        transfer = st["transfer_dir"]
        store = os.path.join(transfer, "store")
        refs = sorted(set(r for name, files in st["release"]["files"].items() for r in files))
        amd64_refs = sorted(set(r for name, files in st["release"]["files"].items() if "x86_64" in name for r in files))
        started = time.monotonic()
        ansible_module(sb, "connected-host", "airgap.microshift.image_download",
                       {"images": refs, "store": store, "authfile": st["pull_secret"], "parallel": 8})
        report["download_s"] = round(time.monotonic() - started, 1)
        with open(os.path.join(store, "store.json"), encoding="utf-8") as handle:
            index_text = handle.read()
        key = generate_private_key()
        trusted = os.path.join(transfer, "bench-trusted.pub")
        with open(trusted, "wb") as handle:
            handle.write(public_key_pem(key))
        medium = os.path.join(transfer, "set")
        if "set" in sources or "medium" in sources:
            pack(store, medium, signing_key=key, parallel=4)
        disk = os.path.join(args.state_dir, "hostdisk")
        os.makedirs(disk, exist_ok=True)
        sh(["sync"])
        rate = write_rate(disk, args.dd_mib)
        report["disk_write_bytes_s"] = int(rate)
        report["gunzip_s"] = round(gunzip_seconds(store, json.loads(index_text), amd64_refs), 2)

        # 3. one host, every driver and source, each into an empty storage
        first = st["hosts"][0]
        base = dict(images=amd64_refs, architecture="amd64", record="", parallel=args.parallel)
        kinds = {"store": {"src": [store]}, "set": {"src": [medium], "trusted_keys": [trusted]}}
        if "medium" in sources:
            # The same set seen through a read-only bind mount in the host's mount namespace: another mount,
            # as a medium plugged into the host is, so its blobs are copied into the staging store.
            mounted = "/run/bench-medium"
            sh(sb.exec_argv(st["hosts"][0], ["sh", "-c", "mkdir -p %s && mount --bind %s %s && mount -o remount,bind,ro %s" % (
                mounted, medium, mounted, mounted)]))
            kinds["medium"] = {"src": [mounted], "trusted_keys": [trusted]}
        runs = {}
        # Interleaved repetitions: other jobs on the machine only ever add time, so the fastest run and
        # the median are both reported.
        for number in range(args.repeat):
            for driver in drivers:
                for source in sources:
                    label = "%s-%s" % (driver, source)
                    perf = args.perf if args.perf and not runs else None
                    figures = one_host(sb, first, disk, base, kinds[source], driver, rate, "%s-%d" % (label, number), perf)
                    figures["loadavg"] = round(os.getloadavg()[0], 2)
                    runs.setdefault(label, []).append(figures)
                    print(json.dumps({label: figures}, sort_keys=True), file=sys.stderr)
        report["one_host"] = dict((label, summarize(values)) for label, values in runs.items())
        report["loadavg_end_one_host"] = os.getloadavg()[0]
        site = {}
        if not args.no_site:
            site = run_site(sb, args, st, disk, store, index_text, dict(base, driver=drivers[0]), amd64_refs, work)
            report["site"] = site
            report["site_wall_s"] = site.pop("wall_s")
        for node in st["hosts"]:
            shutil.rmtree(os.path.join(disk, node), ignore_errors=True)
    shutil.rmtree(work, ignore_errors=True)
    shutil.rmtree(os.path.join(args.state_dir, "hostdisk"), ignore_errors=True)
    report["targets"] = {
        "one_host_load_le_1.5x_floor": dict((label, v["min_ratio"] <= 1.5) for label, v in report["one_host"].items()),
    }
    if site:
        report["targets"]["bytes_sent_per_host_le_1.02x_missing_unique"] = all(v["ratio"] is None or v["ratio"] <= 1.02 for v in site.values())
    print(json.dumps(report, indent=2, sort_keys=True))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump(report, handle, indent=2, sort_keys=True)
    return 0


def run_site(sb, args, st, disk, store, index_text, base, amd64_refs, work):
    """4. a site: the bastion sends each host what it lacks, hosts in parallel; the first host holds the release but ``--changed`` images."""
    driver = base.pop("driver")

    def storage(node):
        return {"graphroot": os.path.join(disk, node, "storage"), "runroot": "/run/bench-storage", "driver": driver}

    index = json.loads(index_text)
    first = st["hosts"][0]
    ansible_module(sb, first, "airgap.microshift.image_load", dict(base, src=[store], **storage(first)))
    for ref in amd64_refs[:args.changed]:
        name = ref if "@" in ref else ref.rsplit(":", 1)[0] + "@" + index["images"][ref]["digest"]
        sh(sb.exec_argv(first, ["skopeo", "delete", "containers-storage:[%s@%s+%s]%s" % (
            driver, storage(first)["graphroot"], "/run/bench-storage", name)]))
    rsh = nsrsh(sb, work)
    site = {}
    plans = {}
    for node in st["hosts"]:
        _w, plans[node] = ansible_module(sb, node, "airgap.microshift.image_load",
                                         dict(base, src=["/var/lib/bench-staging"], index=index_text, **storage(node)), check=True)
    procs = {}
    started = time.monotonic()
    for node in st["hosts"]:
        listing = os.path.join(work, node + ".files")
        with open(listing, "w", encoding="utf-8") as handle:
            handle.write("\n".join(plans[node]["fetch"]) + "\n")
        sh(sb.exec_argv(node, ["mkdir", "-p", "/var/lib/bench-staging"]))
        argv = ["rsync", "--stats", "--times", "--files-from=" + listing, "-e", rsh]
        if args.link != "0":
            argv.append("--bwlimit=" + args.link)
        procs[node] = (time.monotonic(), subprocess.Popen(argv + [store + "/", "%s:/var/lib/bench-staging/" % node],
                                                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    for node, (t0, proc) in procs.items():
        out, err = proc.communicate()
        if proc.returncode != 0:
            raise SystemExit("rsync to %s failed: %s" % (node, err))
        sent = int(re.search(r"Total bytes sent: ([0-9,]+)", out).group(1).replace(",", ""))
        site[node] = {"missing_images": len(plans[node]["loaded"]), "missing_unique_bytes": plans[node]["bytes"],
                      "rsync_bytes_sent": sent,
                      "ratio": round(sent / float(plans[node]["bytes"]), 4) if plans[node]["bytes"] else None,
                      "transfer_s": round(time.monotonic() - t0, 1)}
    # each host loads what it received (index written next to the blobs), in parallel
    loads = {}
    for node in st["hosts"]:
        loads[node] = ansible_module(sb, node, "airgap.microshift.image_load",
                                     dict(base, src=["/var/lib/bench-staging"], index=index_text, **storage(node)), wait=False)
    for node, finish in loads.items():
        wall, result = finish()
        site[node].update({"loaded": len(result["loaded"]), "load_s": round(wall, 1), "module_s": result["seconds"]})
    site["wall_s"] = round(time.monotonic() - started, 1)
    return site


if __name__ == "__main__":
    sys.exit(main())
