#!/usr/bin/env bash
# Builds the collection's documentation site with antsibull-docs and Sphinx, offline, into
# .build/docsite/build/html (or the directory given as $1): the modules', roles' and callback's
# own documentation plus the guides in docs/docsite/. Fails on any Sphinx warning, except
# references into docs.ansible.com, which an offline build cannot resolve.
#
#   bash tools/docsite.sh && xdg-open .build/docsite/build/html/index.html
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DEST="${1:-$ROOT/.build/docsite}"
export PATH="$ROOT/.venv/bin:$PATH"
export ANSIBLE_COLLECTIONS_PATH="${ANSIBLE_COLLECTIONS_PATH:-$ROOT/.build/collections}"

rm -rf "$DEST"
mkdir -p "$DEST"
antsibull-docs sphinx-init --use-current --squash-hierarchy --fail-on-error \
    --project airgap.microshift --copyright "airgap.microshift contributors" \
    --title "airgap.microshift" --html-short-title "airgap.microshift" \
    --dest-dir "$DEST" airgap.microshift >/dev/null
# Offline: Sphinx must not try to fetch other sites' inventories (it would reach for the network).
echo "intersphinx_mapping = {}" >> "$DEST/conf.py"

mkdir -p "$DEST/rst"
chmod og-w "$DEST/rst"  # antsibull-docs wants that directory writable by its owner only
antsibull-docs --config-file "$DEST/antsibull-docs.cfg" collection --use-current --squash-hierarchy \
    --fail-on-error --cleanup everything --dest-dir "$DEST/rst" airgap.microshift

status=0
sphinx-build -M html "$DEST/rst" "$DEST/build" -c "$DEST" -q --keep-going -w "$DEST/warnings.log" \
    >"$DEST/sphinx.log" 2>&1 || status=$?
# What an offline build cannot resolve: labels of docs.ansible.com and of other collections, and
# ansible-core's environment variables. Every other warning is a defect of this documentation.
grep -v -E "WARNING: (undefined label: '(ansible_collections\.(ansible|community|containers)\.[^']*|[a-z_]+)'( \[ref\.ref\])?$|'envvar' reference target not found: ANSIBLE_)" \
    "$DEST/warnings.log" | grep -E "WARNING|ERROR" && { echo "the documentation site has the warnings above"; exit 1; }
[ "$status" -eq 0 ] || { cat "$DEST/sphinx.log"; echo "sphinx-build failed ($status)"; exit 1; }
echo "site: $DEST/build/html/index.html ($(find "$DEST/build/html" -name '*.html' | wc -l) pages)"
