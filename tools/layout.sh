#!/usr/bin/env bash
# Copies the collection's files (tracked and new, not ignored) into
# <dest>/ansible_collections/airgap/microshift, the layout ansible-test requires. Prints that path.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DEST="$1/ansible_collections/airgap/microshift"
rm -rf "$DEST"
mkdir -p "$DEST"
cd "$ROOT"
git ls-files -co --exclude-standard -z | while IFS= read -r -d '' f; do [ -e "$f" ] && printf '%s\0' "$f"; done \
    | rsync -a --from0 --files-from=- ./ "$DEST/"
echo "$DEST"
