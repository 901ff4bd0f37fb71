#!/usr/bin/env bash
# The main job.
#
#   tools/demo.sh                      the whole flow on the embedded sandbox (tests/sandbox):
#                                      list -> download -> pack -> (gap) -> verify -> unpack ->
#                                      upload -> configure two MicroShift hosts -> pull through
#                                      the mirror; then it prints where to look.
#   tools/demo.sh -i INVENTORY [...]   playbooks/site.yml on your own inventory.
#
# Environment: DEMO_SIZE (tiny|default|bench, default: default), DEMO_HOSTS (default 2),
# DEMO_HOST_KIND (auto|booted|ns, default auto: booted hosts when the machine can raise them),
# DEMO_KEEP=1 keeps the sandbox up afterwards (tear it down with
# `python -m tests.sandbox down --state-dir .cache/demo/sandbox`).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
export PATH="$ROOT/.venv/bin:$PATH"
export ANSIBLE_COLLECTIONS_PATH="$ROOT/.build/collections"
export ANSIBLE_CALLBACKS_ENABLED="airgap.microshift.run_report"

if [ "$#" -gt 0 ]; then
    export AIRGAP_MICROSHIFT_REPORT_DIR="${AIRGAP_MICROSHIFT_REPORT_DIR:-$PWD/airgap-microshift-report}"
    exec ansible-playbook playbooks/site.yml "$@"
fi

DEMO="$ROOT/.cache/demo"
STATE="$DEMO/sandbox"
RESULTS="$DEMO/results"
mkdir -p "$DEMO"
rm -rf "$RESULTS"
mkdir -p "$RESULTS"
export AIRGAP_MICROSHIFT_REPORT_DIR="$RESULTS/report"

python -m tests.sandbox down --state-dir "$STATE" >/dev/null 2>&1 || true
teardown() {
    if [ "${DEMO_KEEP:-0}" = 1 ]; then
        echo "The sandbox is still up: python -m tests.sandbox down --state-dir $STATE"
    else
        python -m tests.sandbox down --state-dir "$STATE" >/dev/null 2>&1 || true
    fi
}
trap teardown EXIT

# The MicroShift hosts are booted hosts (Debian 13 systemd machines reached over SSH) when this
# machine can raise them (DEMO_HOST_KIND=auto, the default), namespace hosts otherwise.
echo "==> Raising the sandbox (size ${DEMO_SIZE:-default}, ${DEMO_HOSTS:-2} MicroShift hosts, host kind ${DEMO_HOST_KIND:-auto})"
python -m tests.sandbox up --state-dir "$STATE" --size "${DEMO_SIZE:-default}" --hosts "${DEMO_HOSTS:-2}" \
    --host-kind "${DEMO_HOST_KIND:-auto}"

# The transfer signing key pair (docs/signing.md): made once by the signing_key module; the
# connected host signs with the private half, the bastion trusts the public half. A demo key
# without passphrase, readable by root only.
mkdir -p "$DEMO/keys" && chmod 0700 "$DEMO/keys"
ansible localhost -c local -i localhost, -e 'ansible_python_interpreter={{ ansible_playbook_python }}' \
    -m airgap.microshift.signing_key -a "path=$DEMO/keys/transfer-signing.key" >/dev/null

# Variables for the playbooks, from the sandbox's state, in the group_vars of the sandbox inventory
# as a site's inventory would hold them. They carry the mirror's password, so the files are 0600
# (never on a command line).
VARS="$STATE/ansible/group_vars"
python - "$STATE/sandbox.json" "$VARS" "$RESULTS" "$DEMO/keys" <<'EOF'
import json
import os
import sys

state = json.load(open(sys.argv[1]))
results = sys.argv[3]
keys = sys.argv[4]
if state["host_kind"] == "booted":
    print("    MicroShift hosts: booted (%s)" % ", ".join("%s %s" % (h, state["host_kinds"][h]) for h in state["booted_hosts"]))
else:
    print("    MicroShift hosts: namespace hosts%s" % (" (booted hosts are not possible here: %s)" % state["host_kind_reason"]
                                                     if state.get("host_kind_reason") else ""))
mirror = state["mirror"]
release_dir = state["release"]["dir"]
components = ["core", "olm", "multus", "gateway-api", "cert-manager", "sriov", "metrics-server",
              "node-exporter", "kube-state-metrics"]
variables = {
    "image_list_path": [release_dir],
    "image_list_arch": ["x86_64"],
    "image_list_components": components,
    "image_list_dest": os.path.join(results, "microshift-container-refs.txt"),
    "download_authfile": state["pull_secret"],
    "transfer_media_path": state["transfer_dir"],
    "transfer_media_paths": [state["transfer_dir"]],
    "transfer_volume_size": "64MiB",
    "transfer_release": "sandbox",
    "transfer_signing_key": os.path.join(keys, "transfer-signing.key"),
    "transfer_trusted_keys": [os.path.join(keys, "transfer-signing.key.pub")],
    "upload_mirror": mirror["hostport"],
    "upload_authfile": "/var/lib/airgap-microshift/mirror-auth.json",
    "upload_mapping_file": os.path.join(results, "mapping.json"),
    "airgap_mirror_username": mirror["user"],
    "airgap_mirror_password": mirror["password"],
    "host_config_mirror": mirror["hostport"],
    "host_config_mirror_ca": mirror["ca"],
    "host_config_mirror_username": mirror["user"],
    "host_config_mirror_password": mirror["password"],
}
os.makedirs(sys.argv[2], mode=0o700, exist_ok=True)
files = {"all.yml": variables}
if state["host_kind"] == "booted":
    # A booted host lists its own installed release files, as a real host does.
    files["microshift.yml"] = {"image_list_path": [], "image_list_dest": ""}
for name, content in files.items():
    fd = os.open(os.path.join(sys.argv[2], name), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        json.dump(content, handle, indent=2)
EOF

export ANSIBLE_CONFIG="$STATE/ansible/ansible.cfg"
echo "==> Running playbooks/site.yml on the sandbox"
ansible-playbook -i "$STATE/ansible/inventory.yml" playbooks/site.yml

echo "==> Pulling original quay.io refs through the mirror, inside each MicroShift host"
python - "$STATE/sandbox.json" "$RESULTS/microshift-container-refs.txt" <<'EOF'
import json
import subprocess
import sys

state = json.load(open(sys.argv[1]))
refs = [line.strip() for line in open(sys.argv[2]) if line.strip().startswith("quay.io/") and "@sha256:" in line]
hosts = sorted(node for node, info in state["nodes"].items() if node.startswith("microshift-"))
for number, host in enumerate(hosts):
    ref = refs[number * 7 % len(refs)]
    subprocess.run([sys.executable, "-m", "tests.sandbox", "exec", "--state-dir", state["state_dir"], host, "--",
                    "podman", "--storage-driver", "vfs", "pull", "--quiet",
                    "--authfile", "/etc/crio/openshift-pull-secret", ref], check=True, stdout=subprocess.DEVNULL)
    print("%s: podman pull %s ... ok (there is no internet: it came from the mirror)" % (host, ref))
EOF

echo "==> The drop-in written on microshift-1"
python -m tests.sandbox exec --state-dir "$STATE" microshift-1 -- cat /etc/containers/registries.conf.d/999-microshift-mirror.conf

cat <<EOF

Done. Where to look:
  image list         $RESULTS/microshift-container-refs.txt
  mirror mapping     $RESULTS/mapping.json
  run reports        $RESULTS/report/latest.md (and .json, one pair per playbook run)
  transfer set       $STATE/transfer/vol-*/  (bundle.json, its signature bundle.json.sig, SHA256SUMS; with DEMO_KEEP=1)
  signing key pair   $DEMO/keys/transfer-signing.key(.pub)
EOF
