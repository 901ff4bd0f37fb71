# Copyright: airgap.microshift contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Ask the containers tools of this host about each reference: `podman image exists` and the sha256 of
`skopeo inspect --raw containers-storage:<ref>`. Prints JSON {ref: {"exists": bool, "digest": str|null}}."""
import hashlib
import json
import subprocess
import sys


def main():
    with open(sys.argv[1], encoding="utf-8") as handle:
        refs = json.load(handle)
    report = {}
    for ref in refs:
        # Only the report on stdout (ssh may join stderr to it, and podman 5 warns about cgroups v1 there).
        exists = subprocess.run(["podman", "image", "exists", ref], check=False, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL).returncode == 0
        raw = subprocess.run(["skopeo", "inspect", "--raw", "containers-storage:" + ref], check=False,
                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        digest = "sha256:" + hashlib.sha256(raw.stdout).hexdigest() if raw.returncode == 0 else None
        report[ref] = {"exists": exists, "digest": digest}
    print(json.dumps(report))


if __name__ == "__main__":
    main()
