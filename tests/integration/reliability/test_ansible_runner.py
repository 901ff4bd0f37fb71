# Copyright: airgap.microshift contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The collection run the way AWX / Automation Controller runs a job: through ``ansible-runner``.

AWX hands each job to ansible-runner as a private data directory: the project (playbooks and
ansible.cfg), the inventory, extra variables in ``env/extravars``, the credentials injected as
environment variables (``env/envvars``) and as files the injector writes (their paths in
environment variables), never on a command line. Runner records the job's whole environment in
``artifacts/<ident>/command``, so the password is injected as a file, its path in a variable. Runner writes back what AWX shows: the job
events (``artifacts/<ident>/job_events/*.json``, from its own event callback), the output, the
return code and the command it ran.

Here: the site playbook (connected side, transfer set, upload, hosts) and then configure_hosts
alone, each as one runner job on the test bed, with the mirror's credentials injected as AWX
injects a custom credential (the user name as a variable, the password and the CA as files),
and the collection's run report enabled next to runner's event callback. Checked: the job
events (every host's results, the collection's modules among them, the play recap), the
artifacts, the run report beside the events, and that no password or auth token reaches the
events, the artifacts, the report or the command line.
"""

from __future__ import annotations

import base64
import glob
import json
import os
import shutil
import subprocess
import sys

import pytest
import yaml

from conftest import COLLECTIONS, CmdlineSampler

RUNNER = os.path.join(os.path.dirname(sys.executable), "ansible-runner")
# The variables a job template's survey or extra vars would carry: no secret among them.
PROJECT_PLAYBOOK = """---
# The job template's playbook: the collection's own playbook, with the credentials AWX injected.
- name: Run the collection's playbook
  ansible.builtin.import_playbook: airgap.microshift.{playbook}
"""


def _secrets(state):
    pairs = [(reg["user"], reg["password"]) for reg in state["registries"].values()]
    pairs.append((state["mirror"]["user"], state["mirror"]["password"]))
    out = []
    for user, password in pairs:
        out += [password, base64.b64encode(("%s:%s" % (user, password)).encode()).decode()]
    return out


def _stats(events):
    return next(e for e in events if e["event"] == "playbook_on_stats")["event_data"]


def _private_data_dir(bed, root, playbook, extravars):
    """A private data directory as AWX writes one for a job (project, inventory, env/*)."""
    pdd = os.path.join(root, playbook)
    os.makedirs(os.path.join(pdd, "project"))
    os.makedirs(os.path.join(pdd, "inventory"))
    os.makedirs(os.path.join(pdd, "env"), mode=0o700)
    with open(os.path.join(pdd, "project", "%s.yml" % playbook), "w", encoding="utf-8") as f:
        f.write(PROJECT_PLAYBOOK.format(playbook=playbook))
    # The project's ansible.cfg: the test bed's (its connection plugin for namespace hosts).
    shutil.copy(bed.state["ansible"]["config"], os.path.join(pdd, "project", "ansible.cfg"))
    shutil.copy(os.path.join(os.path.dirname(bed.state["ansible"]["config"]), "inventory.yml"), os.path.join(pdd, "inventory", "hosts.yml"))
    mirror = bed.state["mirror"]
    # File credentials: the injector writes each file (0600) into the private data dir and names it
    # in an environment variable (AWX: injectors.file + injectors.env "{{ tower.filename.<name> }}").
    # The password goes in a file, not in an environment variable: runner writes the job's whole
    # environment into artifacts/<ident>/command.
    ca_file = os.path.join(pdd, "env", "mirror_ca")
    shutil.copy(mirror["ca"], ca_file)
    password_file = os.path.join(pdd, "env", "mirror_password")
    fd = os.open(password_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(mirror["password"])
    envvars = {
        # A custom credential type's injectors: the user name as a variable, the secret as a file.
        "AIRGAP_MIRROR_USERNAME": mirror["user"], "AIRGAP_MIRROR_PASSWORD_FILE": password_file,
        "AIRGAP_MIRROR_CA_FILE": ca_file,
        "ANSIBLE_COLLECTIONS_PATH": COLLECTIONS,
        "ANSIBLE_CALLBACKS_ENABLED": "airgap.microshift.run_report",
        "AIRGAP_MICROSHIFT_REPORT_DIR": os.path.join(root, playbook + "-report"),
        "ANSIBLE_LOCAL_TEMP": os.path.join(bed.work, "ansible-local"),
        "ANSIBLE_NOCOLOR": "1",
    }
    for name, data in (("envvars", envvars), ("extravars", extravars)):
        fd = os.open(os.path.join(pdd, "env", name), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            yaml.safe_dump(data, f)
    with open(os.path.join(pdd, "env", "settings"), "w", encoding="utf-8") as f:
        yaml.safe_dump({"suppress_ansible_output": True, "job_timeout": 1200}, f)
    return pdd


# Where the playbook finds what AWX injected: lookups of the environment, never a literal.
CREDENTIAL_VARS = {
    "host_config_mirror_username": "{{ lookup('ansible.builtin.env', 'AIRGAP_MIRROR_USERNAME') }}",
    "host_config_mirror_password": "{{ lookup('ansible.builtin.file', lookup('ansible.builtin.env', 'AIRGAP_MIRROR_PASSWORD_FILE')) }}",
    "host_config_mirror_ca": "{{ lookup('ansible.builtin.env', 'AIRGAP_MIRROR_CA_FILE') }}",
}


def _run(bed, pdd, playbook, ident):
    env = bed.env(callback=None)
    for key in list(env):
        if key.startswith("ANSIBLE_"):
            del env[key]
    sampler = CmdlineSampler(0.05)
    sampler.start()
    try:
        proc = subprocess.run([RUNNER, "run", pdd, "-p", "%s.yml" % playbook, "--ident", ident], capture_output=True, text=True,
                              env=env, timeout=1500, check=False)
    finally:
        sampler.stop()
    artifacts = os.path.join(pdd, "artifacts", ident)
    events = []
    for path in sorted(glob.glob(os.path.join(artifacts, "job_events", "*.json")), key=lambda p: int(os.path.basename(p).split("-")[0])):
        with open(path, encoding="utf-8") as f:
            events.append(json.load(f))
    texts = {}
    for base, dummy, names in os.walk(artifacts):
        for name in names:
            with open(os.path.join(base, name), encoding="utf-8", errors="replace") as f:
                texts[os.path.join(base, name)] = f.read()
    report_dir = os.path.join(os.path.dirname(pdd), playbook + "-report")
    for path in glob.glob(os.path.join(report_dir, "*")):
        with open(path, encoding="utf-8", errors="replace") as f:
            texts[path] = f.read()
    return {"proc": proc, "artifacts": artifacts, "events": events, "texts": texts, "sampler": sampler, "report_dir": report_dir}


@pytest.fixture(scope="module")
def runner_jobs(bed, tmp_path_factory):
    if not os.path.exists(RUNNER):
        pytest.fail("ansible-runner is not installed in %s (tools/setup.sh installs requirements-dev.txt)" % os.path.dirname(RUNNER))
    bed.wan_calm()
    root = str(tmp_path_factory.mktemp("runner"))
    state = bed.state
    images = bed.digest_refs(components=["core"])
    site_vars = dict(CREDENTIAL_VARS, **{
        "image_list_path": [bed.release_dir], "image_list_arch": ["x86_64"], "image_list_components": ["core"],
        "image_list_dest": os.path.join(root, "refs.txt"),
        "download_authfile": state["pull_secret"], "download_free_space_margin": 0,
        "transfer_media_path": os.path.join(root, "media"), "transfer_media_paths": [os.path.join(root, "media")],
        "transfer_volume_size": "64MiB", "transfer_release": "runner",
        "transfer_signing_key": bed.keys["private"], "transfer_trusted_keys": [bed.keys["public"]],
        "upload_mirror": state["mirror"]["hostport"], "upload_authfile": "/var/lib/airgap-microshift/mirror-auth.json",
        "upload_namespace": "runner",
        "airgap_mirror_username": "{{ lookup('ansible.builtin.env', 'AIRGAP_MIRROR_USERNAME') }}",
        "airgap_mirror_password": "{{ lookup('ansible.builtin.file', lookup('ansible.builtin.env', 'AIRGAP_MIRROR_PASSWORD_FILE')) }}",
        "host_config_mirror": state["mirror"]["hostport"], "host_config_mirror_namespace": "runner",
    })
    os.makedirs(site_vars["transfer_media_path"])
    jobs = {}
    # The jobs configure the MicroShift host for real (CA, drop-in, pull secret): undone afterwards, so
    # the tests that follow find it as the test bed made it.
    hosts = [name for name in state["nodes"] if name.startswith("microshift-")]
    before = dict((name, bed.node_snapshot(name)) for name in hosts)
    try:
        pdd = _private_data_dir(bed, root, "site", site_vars)
        jobs["site"] = _run(bed, pdd, "site", "1")
        hosts_vars = dict(CREDENTIAL_VARS, host_config_mirror=state["mirror"]["hostport"], host_config_mirror_namespace="runner",
                          host_config_images=images)
        pdd = _private_data_dir(bed, root, "configure_hosts", hosts_vars)
        jobs["configure_hosts"] = _run(bed, pdd, "configure_hosts", "2")
        jobs["secrets"] = _secrets(state)
        yield jobs
    finally:
        for name in hosts:
            bed.node_restore(name, before[name])
        for name in hosts:
            # Nothing the jobs added is left that is neither the test bed's nor the machine's own.
            left = [p for p in bed.node_snapshot(name, limit=0) if p not in before[name] and not os.path.lexists(p)]
            assert not left, "%s still holds %s" % (name, left)


@pytest.mark.parametrize("job", ["site", "configure_hosts"])
def test_job_succeeds_with_events_and_artifacts(runner_jobs, job):
    run = runner_jobs[job]
    proc = run["proc"]
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    artifacts = run["artifacts"]
    with open(os.path.join(artifacts, "rc"), encoding="utf-8") as f:
        assert f.read().strip() == "0"
    with open(os.path.join(artifacts, "status"), encoding="utf-8") as f:
        assert f.read().strip() == "successful"
    for name in ("stdout", "command", "job_events"):
        assert os.path.exists(os.path.join(artifacts, name)), name
    events = run["events"]
    # Runner adds "verbose" events for output outside a task (its own last lines among them).
    kinds = [e["event"] for e in events if e["event"] != "verbose"]
    assert kinds[0] == "playbook_on_start" and kinds[-1] == "playbook_on_stats" and kinds.count("playbook_on_stats") == 1
    # Every event is numbered in order, as AWX stores them.
    assert [e["counter"] for e in events] == list(range(1, len(events) + 1))
    stats = _stats(events)
    assert not stats.get("failures") and not stats.get("dark"), stats
    assert "microshift-1" in stats["ok"]
    done = [e for e in events if e["event"] == "runner_on_ok" and e["event_data"].get("host") == "microshift-1"]
    actions = {e["event_data"]["task_action"] for e in done}
    # The host's configuration and its verification through the mirror, as job events.
    assert {"airgap.microshift.mirror_config", "airgap.microshift.mirror_check"} <= actions, sorted(actions)
    check = next(e for e in done if e["event_data"]["task_action"] == "airgap.microshift.mirror_check")
    assert check["event_data"]["res"]["served"] and not check["event_data"]["res"]["not_served"]


@pytest.mark.parametrize("job", ["site", "configure_hosts"])
def test_run_report_beside_the_event_callback(runner_jobs, job):
    run = runner_jobs[job]
    with open(os.path.join(run["report_dir"], "latest.json"), encoding="utf-8") as f:
        report = json.load(f)
    assert "microshift-1" in report["hosts"]
    # The report and the events tell the same story: as many failed results (none).
    failed_events = [e for e in run["events"] if e["event"] == "runner_on_failed" and not e["event_data"].get("ignore_errors")]
    assert not failed_events
    assert report["hosts"]["microshift-1"]["failures"] == 0 and report["hosts"]["microshift-1"]["ok"] > 0, report["hosts"]


def test_second_job_changes_nothing_on_the_host(runner_jobs):
    stats = _stats(runner_jobs["configure_hosts"]["events"])
    assert not stats.get("changed", {}).get("microshift-1"), stats


@pytest.mark.parametrize("job", ["site", "configure_hosts"])
def test_no_secret_in_events_artifacts_report_or_command_line(runner_jobs, job):
    run = runner_jobs[job]
    secrets = runner_jobs["secrets"]
    assert run["texts"] and any("job_events" in path for path in run["texts"])
    leaks = sorted({(path, secret[:4] + "...") for path, text in run["texts"].items() for secret in secrets if secret in text})
    assert not leaks, leaks
    with open(os.path.join(run["artifacts"], "command"), encoding="utf-8") as f:
        command = f.read()
    assert not any(secret in command for secret in secrets)
    raw = [s.encode() for s in secrets]
    argv_leaks = [a.split(b"\0")[0].decode(errors="replace") for a in run["sampler"].samples if any(s in a for s in raw)]
    assert not argv_leaks, argv_leaks
