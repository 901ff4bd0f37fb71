# Copyright: airgap.microshift contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""``python -m tests.sandbox ...``: raise, inspect, use and remove the test bed."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

from . import booted as booted_hosts
from . import ns
from . import release as releases
from . import rootfs
from .sandbox import Sandbox, SandboxError, load_state, node_command, sandbox_id, sweep_all

DEFAULT_STATE_DIR = os.environ.get("AMSB_STATE_DIR", "/tmp/amsb-state")


def _log(msg):
    sys.stderr.write("[sandbox] %s\n" % msg)


def _state_dir(args):
    return os.path.realpath(args.state_dir)


def cmd_up(args):
    wan = None
    if args.wan or args.wan_bandwidth or args.wan_latency or args.wan_faults or args.wan_mode:
        wan = {"bandwidth": args.wan_bandwidth, "latency": args.wan_latency, "faults": args.wan_faults, "mode": args.wan_mode,
               "seed": args.seed}
    ostree = [h for h in (args.ostree_hosts or "").split(",") if h]
    sb = Sandbox(_state_dir(args), size=args.size, hosts=args.hosts, version=args.version, seed=args.seed, ref_mode=args.ref_mode,
                 cache_dir=args.cache_dir, wan=wan, python=args.python, log=_log, host_kind=args.host_kind,
                 qemu_hosts=args.qemu_hosts, ostree_hosts=ostree, rootfs_cache=args.rootfs_cache,
                 booted_mirror=not args.booted_without_mirror)
    t0 = time.monotonic()
    state = sb.up()
    sb.detach()
    _log("up in %.1fs; state file %s" % (time.monotonic() - t0, os.path.join(state["state_dir"], "sandbox.json")))
    if args.json:
        json.dump(state, sys.stdout, indent=2, sort_keys=True)
        sys.stdout.write("\n")
    else:
        _print_summary(state)
    return 0


def _print_summary(state):
    rel = state["release"]
    print("sandbox %s: %s" % (state["id"], state["status"]))
    print("  state file   %s" % os.path.join(state["state_dir"], "sandbox.json"))
    print("  inventory    %s" % state.get("inventory"))
    print("  release      %s %s (seed %s, %d images, logical %d B, unique %d B)" % (
        rel["version"], rel["size"], rel["seed"], rel["image_count"], rel["logical_bytes"], rel["unique_bytes"]))
    print("  release dir  %s" % rel["dir"])
    print("  release rpm  %s" % rel["rpm"])
    print("  pull secret  %s" % state["pull_secret"])
    for name, reg in state["registries"].items():
        print("  internet     %-28s %s:443 user %s" % (name, reg["address"], reg["user"]))
    m = state["mirror"]
    print("  mirror       %-28s %s:%d user %s (CA %s)" % (m["hostport"], m["address"], m["port"], m["user"], m["ca"]))
    print("  nodes        %s" % ", ".join("%s(%s%s)" % (n, i["site"], ", " + i["kind"] if i.get("kind") else "")
                                          for n, i in state["nodes"].items()))
    if state.get("booted"):
        b = state["booted"]
        hosts = ", ".join("%s %s" % (h, state["nodes"][h]["address"]) for h in state["booted_hosts"])
        print("  booted hosts %s (root file system %s, %s)" % (hosts, b["rootfs"]["hash"], b["rootfs"]["dir"]))
        print("  ssh          %s" % " ".join(booted_hosts.ssh_argv(state, state["booted_hosts"][0])))
    if state.get("wan"):
        print("  WAN proxy    %s %s" % (state["wan"]["mode"], json.dumps(state["wan"]["settings"])))


def cmd_down(args):
    sb = Sandbox(_state_dir(args), log=_log)
    removed = sb.down(keep_logs=args.keep_logs)
    left = ns.leftovers(sb.sid)
    if any(left.values()):
        _log("still present after down: %s" % json.dumps(left))
        return 1
    _log("down: stopped %d processes, removed %d mounts and %d network namespaces" % (
        len(removed["processes"]), len(removed["mounts"]), len(removed["netns"])))
    return 0


def cmd_status(args):
    sid = sandbox_id(_state_dir(args))
    left = ns.leftovers(sid)
    try:
        state = load_state(_state_dir(args))
    except SandboxError:
        print(json.dumps({"id": sid, "status": "down", "leftovers": left}, indent=2) if args.json else
              "sandbox %s: down%s" % (sid, "" if not any(left.values()) else " (leftovers: %s; run cleanup)" % json.dumps(left)))
        return 3
    dead = [name for name, pid in state["processes"].items() if not os.path.exists("/proc/%d" % pid)]
    state["dead_processes"] = dead
    if args.json:
        json.dump(state, sys.stdout, indent=2, sort_keys=True)
        sys.stdout.write("\n")
    else:
        _print_summary(state)
        print("  processes    %s" % ", ".join("%s=%d%s" % (n, p, " (DEAD)" if n in dead else "") for n, p in state["processes"].items()))
    return 1 if dead else 0


def cmd_exec(args):
    state = load_state(_state_dir(args))
    argv = list(args.command)
    if argv and argv[0] == "--":
        argv = argv[1:]
    if not argv:
        argv = ["/bin/sh"]
    env = dict(os.environ)
    env[ns.ENV_MARK] = state["id"]
    cmd = node_command(state, args.node, argv)
    if cmd[0] == "ssh" and argv == ["/bin/sh"] and sys.stdin.isatty():
        cmd = cmd[:-2] + ["-t"]
    return subprocess.call(cmd, env=env)


def cmd_update(args):
    sb = Sandbox(_state_dir(args), log=_log)
    t0 = time.monotonic()
    update = sb.publish_update(changed=args.changed)
    _log("release update published in %.1fs" % (time.monotonic() - t0))
    if args.json:
        json.dump(update, sys.stdout, indent=2, sort_keys=True)
        sys.stdout.write("\n")
    else:
        print("release update: %d changed images, release files in %s" % (update["changed"], update["release"]["dir"]))
        for img in update["changed_images"]:
            for before, after in zip(img["refs_before"], img["refs_after"]):
                print("  %s\n    -> %s" % (before, after))
        print("  new blobs: %d, %d bytes" % (len(update["new_blobs"]), sum(update["new_blobs"].values())))
    return 0


def cmd_signature(args):
    sb = Sandbox(_state_dir(args), log=_log)
    done = sb.mirror_signature(args.repository, args.manifest, key=args.key, identity=args.identity, remove=args.remove)
    print(json.dumps(done, indent=2, sort_keys=True))
    return 0


def cmd_wan(args):
    sb = Sandbox(_state_dir(args))
    if args.reset_counters:
        sb.wan_control({"cmd": "reset_counters"})
    if args.bandwidth is not None or args.latency is not None or args.faults is not None:
        reply = sb.wan_set(bandwidth=args.bandwidth, latency=args.latency, faults=args.faults)
    else:
        reply = sb.wan_counters()
    reply.pop("ok", None)
    json.dump(reply, sys.stdout, indent=2, sort_keys=True)
    sys.stdout.write("\n")
    return 0


def cmd_cleanup(args):
    if args.all:
        removed = sweep_all(_log)
    else:
        removed = Sandbox(_state_dir(args), log=_log).down()
    print(json.dumps(removed, indent=2))
    left = ns.leftovers(None if args.all else sandbox_id(_state_dir(args)))
    return 1 if any(left.values()) else 0


def cmd_generate(args):
    t0 = time.monotonic()
    meta = releases.ensure_release(args.cache_dir, args.version, args.size, args.seed, args.ref_mode)
    out = {k: meta[k] for k in ("version", "size", "seed", "ref_mode", "image_count", "blob_count", "logical_bytes", "unique_bytes",
                                "release_dir", "rpm", "storage_dirs")}
    out["seconds"] = round(time.monotonic() - t0, 2)
    print(json.dumps(out, indent=2))
    return 0


def cmd_rootfs(args):
    t0 = time.monotonic()
    entry = rootfs.ensure_rootfs(args.rootfs_cache, _log)
    out = {k: entry[k] for k in ("hash", "dir", "tree", "kernel", "initrd", "bytes", "kernel_version")}
    out["build_seconds"] = entry["seconds"]
    out["built_now"] = entry["built_now"]
    if args.disk:
        out["disk_image"] = rootfs.ensure_disk_image(entry, _log)
    out["seconds"] = round(time.monotonic() - t0, 2)
    print(json.dumps(out, indent=2))
    return 0


def build_parser():
    parser = argparse.ArgumentParser(prog="python -m tests.sandbox", description=__doc__)
    sub = parser.add_subparsers(dest="cmd", required=True)

    def add_state(p):
        p.add_argument("--state-dir", default=DEFAULT_STATE_DIR, help="sandbox state dir (default %(default)s, env AMSB_STATE_DIR)")

    def add_release(p):
        p.add_argument("--size", choices=sorted(releases.SIZES), default="tiny")
        p.add_argument("--version", default=releases.DEFAULT_VERSION, choices=releases.available_versions(),
                       help="release shape to copy (default %(default)s)")
        p.add_argument("--seed", type=int, default=releases.DEFAULT_SEED)
        p.add_argument("--ref-mode", choices=("index", "arch"), default="index",
                       help="digest refs point at the OCI index (index) or at the per-arch manifest (arch)")
        p.add_argument("--cache-dir", default=releases.DEFAULT_CACHE_DIR)

    p = sub.add_parser("up", help="raise the sandbox (cleans leftovers of the same state dir first)")
    add_state(p)
    add_release(p)
    p.add_argument("--hosts", type=int, default=2, help="number of MicroShift hosts")
    p.add_argument("--host-kind", choices=booted_hosts.KINDS, default="ns",
                   help="ns: namespace hosts; booted: real systemd machines over SSH; mixed: the first half booted;"
                        " last: the last host booted, the others namespace hosts (default %(default)s)")
    p.add_argument("--qemu-hosts", type=int, default=0, help="how many of the booted hosts are QEMU guests (the last ones)")
    p.add_argument("--ostree-hosts", default="", help="booted hosts that carry the rpm-ostree marker /run/ostree-booted (comma-separated)")
    p.add_argument("--rootfs-cache", default=rootfs.DEFAULT_CACHE_DIR, help="cache of the booted hosts' root file system")
    p.add_argument("--booted-without-mirror", action="store_true",
                   help="booted hosts cannot reach the mirror registry (a site with no registry; SSH still works)")
    p.add_argument("--python", default=None, help="ansible_python_interpreter for the nodes (default: this Python)")
    p.add_argument("--wan", action="store_true", help="put the WAN proxy between the connected host and the internet")
    p.add_argument("--wan-bandwidth", help="e.g. 200mbit, 25MB (bytes/s without unit)")
    p.add_argument("--wan-latency", help="added round-trip time, e.g. 20ms")
    p.add_argument("--wan-faults", help="e.g. reset=0.05,http429=0.05,http503=0.05")
    p.add_argument("--wan-mode", choices=("passthrough", "terminate"), help="terminate TLS to see HTTP (default: when HTTP faults are set)")
    p.add_argument("--json", action="store_true", help="print the state as JSON")
    p.set_defaults(func=cmd_up)

    p = sub.add_parser("down", help="stop and remove the sandbox")
    add_state(p)
    p.add_argument("--keep-logs", action="store_true")
    p.set_defaults(func=cmd_down)

    p = sub.add_parser("status", help="show the sandbox (exit 0 up, 1 degraded, 3 down)")
    add_state(p)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("exec", help="run a command on a node: exec NODE -- cmd ...")
    add_state(p)
    p.add_argument("node", help="connected, airgap-bastion, microshift-N, or internet/gap (bare network namespace)")
    p.add_argument("command", nargs=argparse.REMAINDER)
    p.set_defaults(func=cmd_exec)

    p = sub.add_parser("update", help="publish a release update: N images get a new top layer (new digests), the rest is unchanged")
    add_state(p)
    p.add_argument("--changed", type=int, default=2, help="how many images change (default %(default)s)")
    p.add_argument("--json", action="store_true", help="print the update as JSON")
    p.set_defaults(func=cmd_update)

    p = sub.add_parser("signature", help="tamper with a manifest's signatures on the site mirror (remove them, or replace them)")
    add_state(p)
    p.add_argument("--repository", required=True, help="the mirror repository without its host, namespace included")
    p.add_argument("--manifest", required=True, help="the digest of the signed manifest")
    p.add_argument("--remove", action="store_true", help="drop the attachment's tag")
    p.add_argument("--key", choices=("release", "other"), default="release", help="sign with the test release key or another key")
    p.add_argument("--identity", help="the docker reference the new signature names")
    p.set_defaults(func=cmd_signature)

    p = sub.add_parser("wan", help="read counters of the WAN proxy or change its settings")
    add_state(p)
    p.add_argument("--bandwidth")
    p.add_argument("--latency")
    p.add_argument("--faults")
    p.add_argument("--reset-counters", action="store_true")
    p.set_defaults(func=cmd_wan)

    p = sub.add_parser("cleanup", help="remove leftovers of a crashed sandbox (this state dir, or --all)")
    add_state(p)
    p.add_argument("--all", action="store_true", help="every amsb- namespace, mount and process on this machine")
    p.set_defaults(func=cmd_cleanup)

    p = sub.add_parser("rootfs", help="build (or find in the cache) the booted hosts' root file system and print where it is")
    p.add_argument("--rootfs-cache", default=rootfs.DEFAULT_CACHE_DIR)
    p.add_argument("--disk", action="store_true", help="also make the QEMU disk image")
    p.set_defaults(func=cmd_rootfs)

    p = sub.add_parser("generate", help="generate (or find in the cache) a synthetic release and print its summary")
    add_release(p)
    p.set_defaults(func=cmd_generate)
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (SandboxError, releases.ReleaseError, ns.NsError, booted_hosts.BootedError, rootfs.RootfsError, ValueError, OSError) as exc:
        _log("error: %s" % exc)
        return 2
