# Copyright: airgap.microshift contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""The run_report callback, through a real ansible-playbook run."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from ansible_collections.airgap.microshift.plugins.plugin_utils import _report
from ansible_collections.airgap.microshift.tests.unit.plugins.helpers.release import FIXTURES

COLLECTION_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(_report.__file__))))
COLLECTIONS_PATH = os.path.dirname(os.path.dirname(os.path.dirname(COLLECTION_ROOT)))
RELEASE_5_0 = os.path.join(FIXTURES, "5.0")

PLAYBOOK = """
- name: Exercise the report
  hosts: localhost
  gather_facts: false
  tasks:
    - name: List the images
      airgap.microshift.release_images:
        path: {fixtures}
        arch: x86_64
        components: all
    - name: Handle a secret
      ansible.builtin.set_fact:
        mirror_password: s3cr3t-Pa55
      no_log: true
    - name: Fail on purpose
      ansible.builtin.fail:
        msg: the mirror refused the credentials
"""


def _run_playbook(tmp_path, name, text, **env_extra):
    """ansible-playbook of ``text`` on localhost with the report on; returns (process, report dir)."""
    playbook = tmp_path / name
    playbook.write_text(text)
    report_dir = tmp_path / "reports"
    env = dict(os.environ)
    env.update({
        "ANSIBLE_COLLECTIONS_PATH": COLLECTIONS_PATH,
        "ANSIBLE_CALLBACKS_ENABLED": "airgap.microshift.run_report",
        "AIRGAP_MICROSHIFT_REPORT_DIR": str(report_dir),
        "ANSIBLE_NOCOLOR": "1",
    })
    env.update(env_extra)
    proc = subprocess.run(
        [sys.executable, "-m", "ansible.cli.playbook", "-i", "localhost,", "-c", "local",
         "-e", "ansible_python_interpreter=" + sys.executable, str(playbook)],
        env=env, cwd=str(tmp_path), capture_output=True, text=True, timeout=300, check=False,
    )
    return proc, report_dir


def test_report_written_and_free_of_secrets(tmp_path):
    proc, report_dir = _run_playbook(tmp_path, "report-test.yml", PLAYBOOK.format(fixtures=RELEASE_5_0))
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "Run report:" in proc.stdout
    report = json.loads((report_dir / "latest.json").read_text())
    markdown = (report_dir / "latest.md").read_text()
    assert report["playbook"] == "report-test.yml"
    assert report["hosts"]["localhost"]["failures"] == 1
    listed = [r for r in report["results"] if r["module"] == "airgap.microshift.release_images"]
    assert len(listed) == 1 and len(listed[0]["result"]["images"]) > 40
    failures = [r for r in report["results"] if r["status"] == "failed"]
    assert [f["result"]["msg"] for f in failures] == ["the mirror refused the credentials"]
    assert "images listed" in markdown
    assert "the mirror refused the credentials" in markdown
    for path in report_dir.iterdir():
        assert "s3cr3t-Pa55" not in path.read_text()
        assert oct(path.stat().st_mode & 0o777) == oct(0o640)


ASYNC_PLAYBOOK = """
- name: A module of the collection in the background
  hosts: localhost
  gather_facts: false
  tasks:
    - name: Start the store lookup
      airgap.microshift.image_store_info:
        store: {store}
        images: [quay.io/example/app@sha256:{hexd}]
      async: 60
      poll: 0
      register: job
    - name: Collect the store lookup
      ansible.builtin.async_status:
        jid: "{{{{ job.ansible_job_id }}}}"
      register: outcome
      until: outcome.finished
      retries: 60
      delay: 1
    - name: Another job, not of the collection
      ansible.builtin.command: /bin/true
      async: 60
      poll: 0
      register: other
    - name: Collect the other job
      ansible.builtin.async_status:
        jid: "{{{{ other.ansible_job_id }}}}"
      register: other_outcome
      until: other_outcome.finished
      retries: 60
      delay: 1
"""


def test_a_module_run_with_async_is_recorded_through_async_status(tmp_path):
    proc, report_dir = _run_playbook(tmp_path, "async-test.yml", ASYNC_PLAYBOOK.format(store=tmp_path / "no-store", hexd="a" * 64),
                                     ANSIBLE_ASYNC_DIR=str(tmp_path / "async"))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads((report_dir / "latest.json").read_text())
    collected = [r for r in report["results"] if r["task"] == "Collect the store lookup"]
    assert len(collected) == 1
    assert collected[0]["result"]["missing"] == ["quay.io/example/app@sha256:" + "a" * 64]
    assert collected[0]["result"]["summary"]["missing"] == 1
    assert not [r for r in report["results"] if r["task"] == "Collect the other job"]


PHASE_ROLE_TASKS = """
- name: Note that the role ran
  ansible.builtin.debug:
    msg: the role ran
"""

PHASE_PLAYBOOK = """
- name: A role at the start and at the end, something slow in between
  hosts: localhost
  gather_facts: false
  tasks:
    - name: Run the role at the start
      ansible.builtin.include_role:
        name: phase_role
    - name: Wait outside the role
      ansible.builtin.command: sleep 3
      changed_when: false
    - name: Run the role at the end
      ansible.builtin.include_role:
        name: phase_role
"""


def test_phase_time_is_the_time_of_its_own_tasks(tmp_path):
    tasks = tmp_path / "roles" / "phase_role" / "tasks"
    tasks.mkdir(parents=True)
    (tasks / "main.yml").write_text(PHASE_ROLE_TASKS)
    proc, report_dir = _run_playbook(tmp_path, "phase-test.yml", PHASE_PLAYBOOK, ANSIBLE_ROLES_PATH=str(tmp_path / "roles"))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads((report_dir / "latest.json").read_text())
    phases = {p["phase"]: p for p in report["phases"]}
    assert phases["phase_role"]["tasks"] == 2
    assert phases["(playbook)"]["seconds"] >= 3.0
    # The tasks run one after the other, so the phases' times add up to no more than the run's;
    # a phase measured from its first task to its last would hold the 3 s wait a second time.
    assert sum(p["seconds"] for p in report["phases"]) <= report["seconds"] + 0.01, report["phases"]
    assert phases["phase_role"]["seconds"] < phases["(playbook)"]["seconds"], report["phases"]
