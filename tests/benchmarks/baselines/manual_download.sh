#!/bin/sh
# Copyright: airgap.microshift contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
#
# Baseline (a), download side: the documented manual procedure, re-implemented. One skopeo copy
# per reference, one after the other, each image into its own dir: directory named after the
# reference without its registry. Nothing is shared between images, so a layer used by many
# images is fetched and stored once per image.
#
# usage: manual_download.sh REFS_FILE DEST_DIR AUTHFILE
set -eu
refs=$1
dest=$2
authfile=$3
while IFS= read -r ref; do
    [ -n "$ref" ] || continue
    path=${ref#*/}
    mkdir -p "$dest/$path"
    skopeo copy --all --quiet --preserve-digests --authfile "$authfile" "docker://$ref" "dir://$dest/$path"
done < "$refs"
