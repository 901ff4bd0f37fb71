# Copyright: airgap.microshift contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Secrets and TLS: the whole flow at -vvv leaks no password or auth token anywhere, auth files
are 0600, TLS verification is on everywhere unless a user opts out, and opting out warns.
"""

from __future__ import annotations

import base64
import json
import os
import stat
import subprocess

import pytest

from conftest import COMPONENTS, CmdlineSampler, record


def _secrets(state):
    """Every password of the test bed, with the base64 ``auth`` values built from them."""
    pairs = [(reg["user"], reg["password"]) for reg in state["registries"].values()]
    pairs.append((state["mirror"]["user"], state["mirror"]["password"]))
    out = []
    for user, password in pairs:
        out.append(password)
        out.append(base64.b64encode(("%s:%s" % (user, password)).encode()).decode())
    return out


@pytest.fixture(scope="module")
def site_run(bed, tmp_path_factory):
    """playbooks/site.yml on the sandbox at -vvv, as tools/demo.sh runs it, with the sampler on."""
    bed.wan_calm()
    state = bed.state
    root = str(tmp_path_factory.mktemp("site-run"))
    pull_secret = os.path.join(root, "pull-secret.json")
    log_path = os.path.join(root, "ansible.log")
    report_dir = os.path.join(root, "report")
    mirror = state["mirror"]
    variables = {
        "image_list_path": [bed.release_dir], "image_list_arch": ["x86_64"], "image_list_components": COMPONENTS,
        "image_list_dest": os.path.join(root, "refs.txt"),
        # The collection writes the source credentials into a new pull secret (registry_auth).
        "download_authfile": pull_secret,
        "airgap_source_credentials": [{"registry": name, "username": reg["user"], "password": reg["password"]}
                                      for name, reg in state["registries"].items()],
        "download_free_space_margin": 0,
        "transfer_media_path": os.path.join(root, "media"), "transfer_media_paths": [os.path.join(root, "media")],
        "transfer_volume_size": "64MiB", "transfer_release": "secrets",
        # sets are signed on the connected side and checked on the air-gapped side (docs/signing.md)
        "transfer_signing_key": bed.keys["private"], "transfer_trusted_keys": [bed.keys["public"]],
        "upload_mirror": mirror["hostport"], "upload_authfile": "/var/lib/airgap-microshift/mirror-auth.json",
        "upload_mapping_file": os.path.join(root, "mapping.json"), "upload_namespace": "secrets",
        "airgap_mirror_username": mirror["user"], "airgap_mirror_password": mirror["password"],
        "host_config_mirror": mirror["hostport"], "host_config_mirror_namespace": "secrets", "host_config_mirror_ca": mirror["ca"],
        "host_config_mirror_username": mirror["user"], "host_config_mirror_password": mirror["password"],
    }
    os.makedirs(variables["transfer_media_path"])
    env = {"ANSIBLE_LOG_PATH": log_path, "ANSIBLE_CALLBACKS_ENABLED": "airgap.microshift.run_report",
           "AIRGAP_MICROSHIFT_REPORT_DIR": report_dir}
    sampler = CmdlineSampler(0.05)
    sampler.start()
    try:
        dummy, argv = bed.write_playbook([{"name": "The whole flow", "ansible.builtin.import_playbook": "airgap.microshift.site"}],
                                         variables)
        proc = subprocess.run(argv + ["-vvv"], capture_output=True, text=True, env=bed.env(env, callback="default"), cwd=bed.work,
                              timeout=1200, check=False)
    finally:
        sampler.stop()
    files = {}
    for top in (report_dir, root):
        for base, dummy, names in os.walk(top):
            for name in names:
                path = os.path.join(base, name)
                if path.endswith((".json", ".md", ".log", ".txt")):
                    with open(path, encoding="utf-8", errors="replace") as handle:
                        files[path] = handle.read()
    return {"proc": proc, "sampler": sampler, "files": files, "root": root, "variables": variables, "pull_secret": pull_secret,
            "log": log_path, "report_dir": report_dir}


def test_site_flow_completes(site_run):
    proc = site_run["proc"]
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert os.path.exists(site_run["log"])
    assert any(path.startswith(site_run["report_dir"]) for path in site_run["files"])


def test_no_secret_in_output_logs_or_reports(bed, site_run):
    secrets = _secrets(bed.state)
    proc = site_run["proc"]
    places = {"stdout": proc.stdout, "stderr": proc.stderr}
    places.update((path, text) for path, text in site_run["files"].items()
                  if path != site_run["pull_secret"] and not path.endswith("mirror-auth.json"))
    leaks = [(where, secret[:4] + "...") for where, text in places.items() for secret in secrets if secret in text]
    assert leaks == []
    # The scan does find secrets where they belong: the pull secret the collection wrote.
    assert any(secret in site_run["files"][site_run["pull_secret"]] for secret in secrets)
    record("secrets_scan", {"places": len(places), "secrets": len(secrets), "output_bytes": len(proc.stdout) + len(proc.stderr)})


def test_no_secret_on_any_command_line(bed, site_run):
    sampler = site_run["sampler"]
    secrets = [s.encode() for s in _secrets(bed.state)]
    leaks = [raw.split(b"\0")[0].decode(errors="replace") for raw in sampler.samples if any(s in raw for s in secrets)]
    assert leaks == []
    skopeo = [argv for argv in sampler.argvs() if argv and argv[0].endswith(b"skopeo")]
    assert skopeo, "no skopeo command line was sampled"
    record("cmdline_sampling", {"rounds": sampler.rounds, "command_lines": len(sampler.samples), "skopeo_command_lines": len(skopeo)})


def test_tls_verification_is_on_everywhere(bed, site_run):
    # Only the test bed's own processes: other jobs on the machine may run skopeo against loopback.
    inodes = set(os.stat(info["path"]).st_ino for info in bed.state["namespaces"].values())
    skopeo = [argv for argv in site_run["sampler"].argvs(inodes) if argv and argv[0].endswith(b"skopeo")]
    insecure = [b" ".join(argv).decode(errors="replace") for argv in skopeo
                if any(arg.endswith(b"tls-verify=false") or arg == b"--insecure-policy" for arg in argv)]
    assert insecure == []
    verified = [argv for argv in skopeo if any(arg.endswith(b"tls-verify=true") for arg in argv)]
    assert verified, "no skopeo call named --tls-verify=true"
    # The drop-in written on the host does not allow an insecure mirror.
    assert "insecure = true" not in "".join(t for p, t in site_run["files"].items() if p.endswith(".conf"))


def test_auth_files_written_by_the_collection_are_0600(bed, site_run):
    paths = [site_run["pull_secret"],
             bed.node_file("airgap-bastion", "/var/lib/airgap-microshift/mirror-auth.json"),
             bed.node_file("microshift-1", "/etc/crio/openshift-pull-secret")]
    modes = dict((path, stat.S_IMODE(os.stat(path).st_mode)) for path in paths)
    assert modes == dict((path, 0o600) for path in paths)
    with open(paths[0], encoding="utf-8") as handle:
        assert set(json.load(handle)["auths"]) == set(bed.state["registries"])


def test_insecure_options_are_opt_in_and_warn(calm, reference_store, tmp_path):
    bed = calm
    ref = reference_store["refs"][0]
    result, task = bed.module("image_download", {"images": [ref], "store": str(tmp_path / "store"), "authfile": bed.state["pull_secret"],
                                                 "validate_certs": False, "free_space_margin": 0})
    assert result.rc == 0, result
    assert any("validate_certs is false" in w for w in task.get("warnings", [])), task.get("warnings")
    result, task = bed.module("image_upload", {"store": reference_store["store"], "mirror": bed.mirror["hostport"],
                                               "namespace": "insecure", "authfile": bed.mirror["auth_file"], "tls_verify": False,
                                               "images": [ref]}, hosts="airgapped")
    assert result.rc == 0, result
    # the option's former name still works (an alias) and warns the same way
    assert any("validate_certs is false" in w for w in task.get("warnings", [])), task.get("warnings")
    result, task = bed.module("registries_conf", {"path": str(tmp_path / "insecure.conf"), "mirror": bed.mirror["hostport"],
                                                  "insecure": True})
    assert result.rc == 0, result
    assert any("insecure=true" in w for w in task.get("warnings", [])), task.get("warnings")
