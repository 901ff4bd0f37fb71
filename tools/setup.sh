#!/usr/bin/env bash
# Installs everything the demo and the tests need, idempotently: Debian packages, the Python
# virtual environments, the offline pip bootstrap of ansible-test, and the development layout
# ansible_collections/airgap/microshift. Safe to run any number of times.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

APT_PACKAGES=(skopeo docker-registry apache2-utils podman rpm jq openssl iproute2 util-linux zstd xz-utils cpio rsync ca-certificates git
    # The test bed's booted hosts: their root file system (mmdebstrap), nspawn machines, QEMU guests,
    # SSH into the air-gapped namespace (socat as the proxy command).
    mmdebstrap systemd-container qemu-system-x86 qemu-utils e2fsprogs openssh-client socat)

log() { printf '==> %s\n' "$*"; }

missing=()
for pkg in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if ((${#missing[@]})); then
    log "installing Debian packages: ${missing[*]}"
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

find_python() {
    # $1: major.minor. Prefer pyenv's build, then the PATH.
    local want="$1" root
    if command -v pyenv >/dev/null 2>&1; then
        root="$(pyenv root)"
        for dir in "$root"/versions/"$want".*; do
            [ -x "$dir/bin/python$want" ] && { echo "$dir/bin/python$want"; return; }
        done
    fi
    command -v "python$want" || true
}

make_venv() {
    # $1: venv dir, $2: python, $3...: requirement files or specs
    local venv="$1" python="$2"
    shift 2
    local stamp
    stamp="$( (echo "$python"; for req in "$@"; do if [ -f "$req" ]; then cat "$req"; else echo "$req"; fi; done) | sha256sum | cut -c1-16)"
    if [ -f "$venv/.stamp" ] && [ "$(cat "$venv/.stamp")" = "$stamp" ]; then
        return
    fi
    log "creating $venv with $python"
    rm -rf "$venv"
    "$python" -m venv "$venv"
    "$venv/bin/python" -m pip install -q --disable-pip-version-check -U pip 2>&1 | grep -v "^WARNING: Location" || true
    local args=()
    for req in "$@"; do
        if [ -f "$req" ]; then args+=(-r "$req"); else args+=("$req"); fi
    done
    "$venv/bin/python" -m pip install -q --disable-pip-version-check "${args[@]}" 2>&1 | grep -v "^WARNING: Location" || true
    "$venv/bin/python" -c "import ansible" 2>/dev/null || "$venv/bin/python" -c "import galaxy_importer"
    echo "$stamp" > "$venv/.stamp"
}

PY311="$(find_python 3.11)"
PY312="$(find_python 3.12)"
[ -n "$PY311" ] || { echo "Python 3.11 is required (ansible-core 2.19)" >&2; exit 1; }
make_venv .venv "$PY311" requirements-dev.txt
if [ -n "$PY312" ]; then
    make_venv .venv-2.21 "$PY312" 'ansible-core>=2.21,<2.22' 'jmespath>=1.0' 'zstandard>=0.22' 'pytest>=8' 'pytest-xdist>=3'
else
    log "Python 3.12 not found: the ansible-core 2.21 checks will be reported as failed"
fi
if [ "${SETUP_IMPORTER:-1}" = 1 ]; then
    make_venv .venv-importer "$PY311" 'galaxy-importer>=0.4'
fi

# ansible-test --venv bootstraps pip from a cached get-pip script; install the offline stand-in
# under the name each installed ansible-test asks for.
mkdir -p "$HOME/.ansible/test/cache"
for venv in .venv .venv-2.21; do
    [ -d "$venv" ] || continue
    for req in "$venv"/lib/python3*/site-packages/ansible_test/_internal/python_requirements.py; do
        version="$(sed -n "s/^ *pip='\([0-9.]*\)',/\1/p" "$req" | head -n1)"
        [ -n "$version" ] || continue
        cp tools/get_pip_offline.py "$HOME/.ansible/test/cache/get_pip_${version//./_}.py"
    done
done

# Development layout: ansible_collections/airgap/microshift -> the checkout.
mkdir -p .build/collections/ansible_collections/airgap
ln -sfn "$ROOT" .build/collections/ansible_collections/airgap/microshift
log "setup complete"
