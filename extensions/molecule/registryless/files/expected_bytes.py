# Copyright: airgap.microshift contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The bytes a host must receive to load images, computed from the store's own files (not its index).

For each image: the top-level manifest (whose digest the ref pins, or its store layout names), the
manifest of the architecture (read from the index blob itself), its config and its layers, each blob
once; minus the layers of the images given with --held. Prints JSON: {"blobs": {digest: size}, "bytes": N}.
"""
import argparse
import json
import os


def read(store, digest):
    with open(os.path.join(store, "blobs", "sha256", digest.split(":", 1)[1]), "rb") as handle:
        return handle.read()


def image_blobs(store, layout_digest, arch):
    top = read(store, layout_digest)
    doc = json.loads(top)
    blobs = {layout_digest: len(top)}
    if "manifests" in doc:
        chosen = [m for m in doc["manifests"] if m.get("platform", {}).get("architecture") == arch][0]
        raw = read(store, chosen["digest"])
        blobs[chosen["digest"]] = len(raw)
        doc = json.loads(raw)
    for blob in [doc["config"]] + doc["layers"]:
        blobs[blob["digest"]] = blob["size"]
    return blobs, set(b["digest"] for b in doc["layers"])


def digest_of(store, ref):
    if "@" in ref:
        return ref.split("@", 1)[1]
    repo, tag = ref.rsplit(":", 1)
    layout = os.path.join(store, "images", repo, "tag-" + tag, "index.json")
    with open(layout, encoding="utf-8") as handle:
        return json.load(handle)["manifests"][0]["digest"]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--store", required=True)
    parser.add_argument("--arch", default="amd64")
    parser.add_argument("--refs", required=True, help="JSON file: the refs to load")
    parser.add_argument("--held", default=None, help="JSON file: refs the host holds already")
    args = parser.parse_args()
    with open(args.refs, encoding="utf-8") as handle:
        refs = json.load(handle)
    held_layers = set()
    if args.held:
        with open(args.held, encoding="utf-8") as handle:
            for ref in json.load(handle):
                held_layers |= image_blobs(args.store, digest_of(args.store, ref), args.arch)[1]
    needed = {}
    for ref in refs:
        blobs, _layers = image_blobs(args.store, digest_of(args.store, ref), args.arch)
        needed.update((d, s) for d, s in blobs.items() if d not in held_layers)
    print(json.dumps({"blobs": needed, "bytes": sum(needed.values())}))


if __name__ == "__main__":
    main()
