#!/bin/sh
# Copyright: airgap.microshift contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
#
# Baseline (a), upload side: the documented manual procedure, re-implemented. Every directory of
# the tree that holds a manifest.json is one image; they are pushed one after the other to
# TARGET/<path without digest>, tagged mirror-<yymmddHHMMSS>-<n> (one time stamp per run, a counter
# per image) so that no push moves an existing tag.
#
# One deliberate difference: the documented loop only cuts an "@sha256:..." suffix, so an image
# downloaded by tag (repo:tag) would be pushed as repo:tag:mirror-..., which is not a valid
# reference. The tag is cut too here, so that the baseline pushes every image.
#
# usage: manual_upload.sh SRC_DIR TARGET AUTHFILE     (TARGET: host:port[/namespace])
set -eu
src=$1
target=$2
authfile=$3
stamp=mirror-$(date +%y%m%d%H%M%S)
n=1
list=$(mktemp)
trap 'rm -f "$list"' EXIT
(cd "$src" && find . -type f -name manifest.json -printf '%P\n') > "$list"
while IFS= read -r manifest; do
    img=$(dirname "$manifest")
    repo=${img%%@*}
    case ${repo##*/} in *:*) repo=${repo%:*} ;; esac
    skopeo copy --all --quiet --preserve-digests --authfile "$authfile" \
        "dir://$src/$img" "docker://$target/$repo:$stamp-$n"
    n=$((n + 1))
done < "$list"
