#!/usr/bin/env bash
# The main job on an embedded example: lists the images of the real MicroShift 5.0 release
# shipped with the tests, for both architectures and every component, through the image_list
# role, and writes the list like the manual procedure's microshift-container-refs.txt.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
export PATH="$ROOT/.venv/bin:$PATH"
export ANSIBLE_COLLECTIONS_PATH="$ROOT/.build/collections"
OUT="$ROOT/.cache/demo"
mkdir -p "$OUT"
if [ "$#" -gt 0 ]; then
    # An inventory or extra arguments: run against the user's own hosts.
    exec ansible-playbook playbooks/list_images.yml "$@"
fi
ansible-playbook -i localhost, -c local playbooks/list_images.yml \
    -e "image_list_path=['$ROOT/tests/unit/fixtures/release/5.0']" \
    -e "image_list_arch=['x86_64','aarch64']" \
    -e "image_list_components=['all']" \
    -e "image_list_dest=$OUT/microshift-container-refs.txt"
echo
echo "Image list written to $OUT/microshift-container-refs.txt"
