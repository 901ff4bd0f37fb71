#!/bin/sh
# Copyright: airgap.microshift contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
#
# Baseline (b), download side: the same skopeo copy per reference into dir: directories, run
# JOBS at a time by xargs -P (the approach of MicroShift's own image mirroring script). Faster
# than one at a time, but each image is still fetched and stored whole.
#
# usage: parallel_download.sh REFS_FILE DEST_DIR AUTHFILE [JOBS]
set -eu
refs=$1
dest=$2
authfile=$3
jobs=${4:-8}
export dest authfile
# shellcheck disable=SC2016  # the inner script expands its own variables
grep -v '^[[:space:]]*$' "$refs" | xargs -r -P "$jobs" -n 1 sh -c '
    set -eu
    path=${1#*/}
    mkdir -p "$dest/$path"
    exec skopeo copy --all --quiet --preserve-digests --authfile "$authfile" "docker://$1" "dir://$dest/$path"
' copy
