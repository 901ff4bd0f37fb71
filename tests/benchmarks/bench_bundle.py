# Copyright: airgap.microshift contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""Throughput of image_bundle's pack, verify and unpack against the machine's own cp + sha256sum.

Builds a synthetic image store of random blobs (about --size-mib MiB, blobs named by their
sha256, one OCI layout per image, store.json), then times:

- the reference: ``cp -r`` of the blobs, ``sync``, then ``sha256sum`` of the copies;
- pack (to --volume-size volumes, signed with a fresh ECDSA P-256 key), verify and unpack into an
  empty store (both checking the signature and reading the medium strictly), each followed by
  ``sync`` for the same footing as the reference; pack and unpack fsync every file themselves.

Prints a table and writes the numbers as JSON (--json). Run from the collection root:

    PYTHONPATH=.build/collections .venv/bin/python tests/benchmarks/bench_bundle.py --size-mib 1024
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time

from ansible_collections.airgap.microshift.plugins.module_utils._bundle import pack, parse_size, unpack, verify
from ansible_collections.airgap.microshift.plugins.module_utils._signing import generate_private_key

MiB = 1024 * 1024


def build_store(root, total, seed=7):
    """Random blobs from 4 KiB to 96 MiB (as real layers are), grouped into images of 1-6 layers."""
    rng = random.Random(seed)
    blob_dir = os.path.join(root, "blobs", "sha256")
    os.makedirs(blob_dir)
    index = {"format": 1, "images": {}, "blobs": {}}
    written = 0
    number = 0
    while written < total:
        number += 1
        layers = []
        for _layer in range(rng.randint(1, 6)):
            size = min(int(rng.choice([4096, 64 * 1024, MiB, 8 * MiB, 24 * MiB, 96 * MiB]) * rng.uniform(0.5, 1.0)),
                       max(total - written, 4096))
            data = os.urandom(size)
            hexdigest = hashlib.sha256(data).hexdigest()
            with open(os.path.join(blob_dir, hexdigest), "wb") as handle:
                handle.write(data)
            index["blobs"]["sha256:" + hexdigest] = size
            layers.append({"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": "sha256:" + hexdigest,
                           "size": size})
            written += size
        manifest = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                               "config": layers[0], "layers": layers}).encode()
        digest = hashlib.sha256(manifest).hexdigest()
        with open(os.path.join(blob_dir, digest), "wb") as handle:
            handle.write(manifest)
        index["blobs"]["sha256:" + digest] = len(manifest)
        layout = "images/quay.io/bench/image%d/sha256-%s" % (number, digest)
        os.makedirs(os.path.join(root, layout))
        with open(os.path.join(root, layout, "oci-layout"), "w") as handle:
            json.dump({"imageLayoutVersion": "1.0.0"}, handle)
        with open(os.path.join(root, layout, "index.json"), "w") as handle:
            json.dump({"schemaVersion": 2, "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json",
                                                          "digest": "sha256:" + digest, "size": len(manifest)}]}, handle)
        media_type = "application/vnd.oci.image.manifest.v1+json"
        index["images"]["quay.io/bench/image%d@sha256:%s" % (number, digest)] = {
            "digest": "sha256:" + digest, "media_type": media_type, "manifest_size": len(manifest), "layout": layout,
            "manifests": [{"digest": "sha256:" + digest, "size": len(manifest), "media_type": media_type, "platform": "linux/amd64",
                           "blobs": [{"digest": layer["digest"], "size": layer["size"], "media_type": layer["mediaType"]}
                                     for layer in layers]}],
            "size": sum(layer["size"] for layer in layers) + len(manifest)}
    with open(os.path.join(root, "store.json"), "w") as handle:
        json.dump(index, handle, indent=2, sort_keys=True)
    return index


def timed(call):
    started = time.monotonic()
    value = call()
    subprocess.run(["sync"], check=True)
    return time.monotonic() - started, value


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", maxsplit=1)[0])
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--volume-size", default="256MiB")
    parser.add_argument("--parallel", type=int, default=4)
    parser.add_argument("--work", default=None, help="scratch directory (default: a temporary one, removed)")
    parser.add_argument("--json", default="bench_bundle.json", help="where to write the numbers")
    args = parser.parse_args()

    work = tempfile.mkdtemp(prefix="bench-bundle-", dir=args.work)
    try:
        store = os.path.join(work, "store")
        index = build_store(store, args.size_mib * MiB)
        unique = sum(index["blobs"].values())
        subprocess.run(["sync"], check=True)

        ref = os.path.join(work, "ref")
        t_cp, _done = timed(lambda: subprocess.run(["cp", "-r", os.path.join(store, "blobs"), ref], check=True))
        files = sorted(os.path.join(ref, "sha256", name) for name in os.listdir(os.path.join(ref, "sha256")))
        t_sum, _done = timed(lambda: subprocess.run(["sha256sum"] + files, check=True, stdout=subprocess.DEVNULL))
        # coreutils' sha256sum may not use the CPU's SHA extensions; OpenSSL (like Python's hashlib) does.
        t_ossl, _done = timed(lambda: subprocess.run(["openssl", "dgst", "-sha256"] + files, check=True, stdout=subprocess.DEVNULL))
        shutil.rmtree(ref)

        media = os.path.join(work, "media")
        rebuilt = os.path.join(work, "rebuilt")
        volume_size = parse_size(args.volume_size)
        key = generate_private_key()
        trusted = [key.public_key()]
        t_pack, packed = timed(lambda: pack(store, media, volume_size=volume_size, parallel=args.parallel, signing_key=key))
        t_verify, (report, _m, _f) = timed(lambda: verify([media], parallel=args.parallel, trusted_keys=trusted))
        t_unpack, unpacked = timed(lambda: unpack([media], rebuilt, parallel=args.parallel, trusted_keys=trusted))
        t_repack, repacked = timed(lambda: pack(store, media, volume_size=volume_size, parallel=args.parallel, signing_key=key))
        t_reunpack, _done = timed(lambda: unpack([media], rebuilt, parallel=args.parallel, trusted_keys=trusted))
        assert report["ok"] and packed["changed"] and not repacked["changed"] and unpacked["changed"]
        set_bytes = sum(os.path.getsize(os.path.join(r, n)) for r, _d, ns in os.walk(media) for n in ns)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    ref_rate = unique / (t_cp + t_sum)
    rows = [
        ("reference cp + sync", t_cp, None),
        ("reference sha256sum", t_sum, None),
        ("reference cp + sha256sum", t_cp + t_sum, ref_rate),
        ("reference openssl dgst -sha256", t_ossl, None),
        ("reference cp + openssl dgst", t_cp + t_ossl, unique / (t_cp + t_ossl)),
        ("pack (copy + hash + fsync)", t_pack, unique / t_pack),
        ("verify (hash)", t_verify, unique / t_verify),
        ("unpack (join + hash + fsync)", t_unpack, unique / t_unpack),
        ("pack rerun (nothing to do)", t_repack, None),
        ("unpack rerun (nothing to do)", t_reunpack, None),
    ]
    result = {
        "unique_bytes": unique,
        "blobs": len(index["blobs"]),
        "volume_size": volume_size,
        "volumes": packed["volume_count"],
        "set_bytes": set_bytes,
        "set_overhead_ratio": round(set_bytes / float(unique), 5),
        "parallel": args.parallel,
        "cpus": os.cpu_count(),
        "seconds": dict((name, round(t, 3)) for name, t, _r in rows),
        "rate_mib_s": dict((name, round(r / MiB, 1)) for name, _t, r in rows if r),
        "ratio_to_reference": dict((name, round(r / ref_rate, 2)) for name, _t, r in rows[5:] if r),
        "ratio_to_openssl_reference": dict((name, round(r * (t_cp + t_ossl) / unique, 2)) for name, _t, r in rows[5:] if r),
    }
    print("%d blobs, %.1f MiB unique, %d volume(s) of %s, parallel %d, %d CPU(s)" % (
        result["blobs"], unique / float(MiB), result["volumes"], args.volume_size, args.parallel, result["cpus"]))
    print("transfer set: %d bytes = %.4fx the unique bytes" % (set_bytes, result["set_overhead_ratio"]))
    print("%-32s %9s %10s %9s %11s" % ("step", "seconds", "MiB/s", "vs ref", "vs openssl"))
    for name, seconds, rate in rows:
        ours = rate and name.startswith(("pack", "verify", "unpack"))
        print("%-32s %9.2f %10s %9s %11s" % (name, seconds, "%.0f" % (rate / MiB) if rate else "",
                                             "%.2f" % (rate / ref_rate) if ours else "",
                                             "%.2f" % (rate * (t_cp + t_ossl) / unique) if ours else ""))
    with open(args.json, "w") as handle:
        json.dump(result, handle, indent=2, sort_keys=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
