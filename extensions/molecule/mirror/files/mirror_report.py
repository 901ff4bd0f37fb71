# Copyright: airgap.microshift contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""What the site mirror serves, checked against an image store, independently of the collection.

Run on a host that reaches the mirror. For every reference given (default: every image of the
store) it fetches the manifest its digest names with ``skopeo inspect --raw`` and each
architecture's manifest under it from the registry API, and compares the sha256 of the bytes with
the digest and with the store's copy; it fetches every config and layer blob of the image from
``/v2/<repo>/blobs/<digest>`` (each once per repository) and compares them with the store's files; with ``--mapping`` it resolves every mirror tag of the
mapping through the registry API; and it lists the catalog and every repository's tags. Prints one JSON document.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import hashlib
import json
import os
import shutil
import ssl
import subprocess
import sys
import tempfile
import urllib.request


MANIFEST_TYPES = ", ".join((
    "application/vnd.oci.image.index.v1+json", "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json", "application/vnd.docker.distribution.manifest.v2+json"))


def repository(ref):
    """``quay.io/a/b@sha256:x`` or ``quay.io/a/b:tag`` -> ``a/b`` (the mirror drops the registry)."""
    name = ref.split("@", 1)[0]
    if "@" not in ref and name.rfind(":") > name.rfind("/"):
        name = name[:name.rfind(":")]
    return name.split("/", 1)[1]


class Mirror:
    def __init__(self, hostport, authfile, ca):
        self.hostport = hostport
        self.authfile = authfile
        with open(authfile, encoding="utf-8") as f:
            self.auth = json.load(f)["auths"][hostport]["auth"]
        self.context = ssl.create_default_context(cafile=ca)
        self.cert_dir = tempfile.mkdtemp(prefix="mirror-report-")
        shutil.copy(ca, os.path.join(self.cert_dir, "ca.crt"))

    def close(self):
        shutil.rmtree(self.cert_dir, ignore_errors=True)

    def get(self, path, accept=None):
        headers = {"Authorization": "Basic " + self.auth}
        if accept:
            headers["Accept"] = accept
        req = urllib.request.Request("https://%s%s" % (self.hostport, path), headers=headers)
        with urllib.request.urlopen(req, context=self.context, timeout=60) as resp:
            return resp.read()

    def raw(self, ref):
        proc = subprocess.run(["skopeo", "inspect", "--raw", "--authfile", self.authfile, "--cert-dir", self.cert_dir, "docker://" + ref],
                              capture_output=True, check=False)
        if proc.returncode != 0:
            raise RuntimeError(proc.stderr.decode(errors="replace").strip())
        return proc.stdout


def sha256(data):
    return "sha256:" + hashlib.sha256(data).hexdigest()


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--mirror", required=True)
    parser.add_argument("--authfile", required=True)
    parser.add_argument("--ca", required=True)
    parser.add_argument("--store", help="the image store the mirror was loaded from")
    parser.add_argument("--refs", help="a JSON file listing the references to check (default: every image of the store)")
    parser.add_argument("--mapping", help="a mapping file of image_upload: resolve each mirror tag it names")
    parser.add_argument("--tags-only", action="store_true", help="only list the catalog and the tags")
    args = parser.parse_args()

    mirror = Mirror(args.mirror, args.authfile, args.ca)
    report = {"refs_checked": [], "manifests_checked": 0, "blobs_checked": 0, "bytes_checked": 0, "tags_checked": 0, "failures": []}
    try:
        jobs = []
        if not args.tags_only:
            with open(os.path.join(args.store, "store.json"), encoding="utf-8") as f:
                store = json.load(f)
            refs = sorted(store["images"])
            if args.refs:
                with open(args.refs, encoding="utf-8") as f:
                    refs = sorted(set(json.load(f)))
            store_hash = {}

            def store_blob(digest):
                if digest not in store_hash:
                    with open(os.path.join(args.store, "blobs", "sha256", digest.split(":", 1)[1]), "rb") as f:
                        store_hash[digest] = sha256(f.read())
                return store_hash[digest]

            def check_manifest(ref, repo, digest, media_type=None):
                # The ref's own digest through skopeo (as a client resolves it); the per-architecture
                # manifests under it straight from the registry API.
                if media_type is None:
                    data = mirror.raw("%s/%s@%s" % (args.mirror, repo, digest))
                else:
                    data = mirror.get("/v2/%s/manifests/%s" % (repo, digest), accept=media_type)
                if sha256(data) != digest or store_blob(digest) != digest:
                    return "%s: the mirror served %s for %s@%s" % (ref, sha256(data), repo, digest)
                return None

            def check_blob(ref, repo, digest, size):
                data = mirror.get("/v2/%s/blobs/%s" % (repo, digest))
                if sha256(data) != digest or len(data) != size or store_blob(digest) != sha256(data):
                    return "%s: blob %s of %s differs from the store's (%s, %d bytes)" % (ref, digest, repo, sha256(data), len(data))
                return None

            fetched = set()
            for ref in refs:
                image = store["images"].get(ref)
                if image is None:
                    report["failures"].append("%s is not in the store" % ref)
                    continue
                repo = repository(ref)
                report["refs_checked"].append(ref)
                jobs.append(("manifest", check_manifest, (ref, repo, image["digest"])))
                for manifest in image["manifests"]:
                    if manifest["digest"] != image["digest"]:
                        jobs.append(("manifest", check_manifest, (ref, repo, manifest["digest"], manifest["media_type"])))
                    for blob in manifest["blobs"]:
                        # Every blob of every repository, each (repository, blob) pair once.
                        if (repo, blob["digest"]) not in fetched:
                            fetched.add((repo, blob["digest"]))
                            jobs.append(("blob", check_blob, (ref, repo, blob["digest"], blob["size"])))
            if args.mapping:
                with open(args.mapping, encoding="utf-8") as f:
                    mapping = json.load(f)
                for entry in mapping:
                    if entry.get("tag"):
                        repo_path = entry["mirror"].split("@", 1)[0].split("/", 1)[1]

                        def check_tag(entry=entry, repo_path=repo_path):
                            data = mirror.get("/v2/%s/manifests/%s" % (repo_path, entry["tag"]), accept=MANIFEST_TYPES)
                            if sha256(data) != entry["digest"]:
                                return "%s: tag %s:%s names %s" % (entry["source"], repo_path, entry["tag"], sha256(data))
                            return None
                        jobs.append(("tag", check_tag, ()))
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            futures = [(kind, args_, pool.submit(func, *args_)) for kind, func, args_ in jobs]
            for kind, args_, future in futures:
                try:
                    problem = future.result()
                except (RuntimeError, OSError, ValueError, KeyError) as exc:
                    problem = "%s %s: %s" % (kind, " ".join(str(a) for a in args_), exc)
                if problem:
                    report["failures"].append(problem)
                report[{"manifest": "manifests_checked", "blob": "blobs_checked", "tag": "tags_checked"}[kind]] += 1
                if kind == "blob" and not problem:
                    report["bytes_checked"] += args_[3]
        report["blob_digests_checked"] = len({job[2][2] for job in jobs if job[0] == "blob"})
        catalog = json.loads(mirror.get("/v2/_catalog?n=1000"))["repositories"] or []
        report["catalog"] = sorted(catalog)
        report["tags"] = {repo: sorted(json.loads(mirror.get("/v2/%s/tags/list" % repo)).get("tags") or []) for repo in report["catalog"]}
    finally:
        mirror.close()
    json.dump(report, sys.stdout, indent=1, sort_keys=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
