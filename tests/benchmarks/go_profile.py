# Copyright: airgap.microshift contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""Where a stripped Go program (skopeo) spends its CPU time, from a ``perf`` recording.

Distributions strip their Go binaries, so ``perf report`` shows bare addresses for them; the
function table Go keeps for its own stack traces (the ``.gopclntab`` section, Go 1.18 and later
layout) still names every function. This script reads that table and sums perf's samples per
function, per program and per kind (the program's own code, the kernel on its behalf, libraries)::

    perf record -F 499 -g -o /tmp/load.perf -- <the command that runs the load>
    .venv/bin/python tests/benchmarks/go_profile.py /tmp/load.perf --binary /usr/bin/skopeo --top 15
"""

from __future__ import annotations

import argparse
import bisect
import collections
import re
import struct
import subprocess
import sys


def go_functions(binary):
    """``(sorted entry addresses, names)`` from the ``.gopclntab`` of ``binary`` (Go 1.18+ layout)."""
    sections = subprocess.run(["readelf", "-SW", binary], capture_output=True, text=True, check=True).stdout
    match = re.search(r"\.gopclntab\s+\S+\s+([0-9a-f]+)\s+([0-9a-f]+)\s+([0-9a-f]+)", sections)
    if not match:
        raise SystemExit("%s has no .gopclntab section: not a Go program." % binary)
    _addr, offset, size = (int(x, 16) for x in match.groups())
    with open(binary, "rb") as handle:
        handle.seek(offset)
        table = handle.read(size)
    magic = struct.unpack_from("<I", table, 0)[0]
    if magic not in (0xFFFFFFF0, 0xFFFFFFF1):
        raise SystemExit("%s: a .gopclntab of Go before 1.18 (magic %#x) is not read by this script." % (binary, magic))
    nfunc, _nfiles, text_start, names_off, _cu, _files, _pc, funcs_off = struct.unpack_from("<8Q", table, 8)
    entries = []
    for number in range(nfunc):
        entry, func = struct.unpack_from("<II", table, funcs_off + 8 * number)
        name_off = struct.unpack_from("<i", table, funcs_off + func + 4)[0]
        start = names_off + name_off
        entries.append((text_start + entry, table[start:table.index(b"\0", start)].decode("utf-8", "replace")))
    entries.sort()
    return [a for a, _n in entries], [n for _a, n in entries]


def perf_samples(data):
    """``[(percent, command, object, symbol)]`` of ``perf report`` (self time, no call graphs)."""
    out = subprocess.run(["perf", "report", "-i", data, "--no-children", "--sort", "comm,dso,sym", "--stdio", "-g", "none"],
                         capture_output=True, text=True, check=True).stdout
    rows = []
    for line in out.splitlines():
        match = re.match(r"\s*([0-9.]+)%\s+(\S+)\s+(\S+)\s+\[(.)\]\s+(\S+)", line)
        if match:
            rows.append((float(match.group(1)), match.group(2), match.group(3), match.group(5)))
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", maxsplit=1)[0])
    parser.add_argument("data", help="the perf.data file")
    parser.add_argument("--binary", default="/usr/bin/skopeo", help="the Go program whose functions are named")
    parser.add_argument("--base", type=lambda v: int(v, 0), default=0x400000,
                        help="load address perf subtracted from the program's addresses (0x400000 for a non-PIE program)")
    parser.add_argument("--top", type=int, default=15)
    args = parser.parse_args()
    starts, names = go_functions(args.binary)
    program = args.binary.rsplit("/", 1)[-1]
    by_kind = collections.Counter()
    by_function = collections.Counter()
    for percent, command, obj, symbol in perf_samples(args.data):
        if obj == program and symbol.startswith("0x"):
            index = bisect.bisect_right(starts, int(symbol, 16) + args.base) - 1
            symbol = names[index] if index >= 0 else symbol
        kind = "kernel" if obj.startswith("[kernel") else ("own code" if obj == program else "libraries")
        by_kind["%s: %s" % (command, kind)] += percent
        if obj == program:
            by_function[symbol] += percent
    print("share of every sample, by program and kind:")
    for name, percent in by_kind.most_common():
        print("  %6.2f%%  %s" % (percent, name))
    print("%s's own functions, top %d:" % (program, args.top))
    for name, percent in by_function.most_common(args.top):
        print("  %6.2f%%  %s" % (percent, name))
    return 0


if __name__ == "__main__":
    sys.exit(main())
