#!/bin/sh
# Copyright: airgap.microshift contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
#
# Baseline (b), upload side: every image directory of the tree pushed to TARGET/<path without
# digest or tag>:mirror-<stamp>-<n>, JOBS pushes at a time by xargs -P.
#
# usage: parallel_upload.sh SRC_DIR TARGET AUTHFILE [JOBS]     (TARGET: host:port[/namespace])
set -eu
src=$1
target=$2
authfile=$3
jobs=${4:-8}
stamp=mirror-$(date +%y%m%d%H%M%S)
export src target authfile stamp
# shellcheck disable=SC2016  # the inner script expands its own variables
(cd "$src" && find . -type f -name manifest.json -printf '%P\n') | awk '{ print NR, $0 }' |
    xargs -r -P "$jobs" -L 1 sh -c '
    set -eu
    img=$(dirname "$2")
    repo=${img%%@*}
    case ${repo##*/} in *:*) repo=${repo%:*} ;; esac
    exec skopeo copy --all --quiet --preserve-digests --authfile "$authfile" \
        "dir://$src/$img" "docker://$target/$repo:$stamp-$1"
' push
