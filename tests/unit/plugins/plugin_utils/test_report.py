# Copyright: airgap.microshift contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

import json

import pytest

from ansible_collections.airgap.microshift.plugins.plugin_utils._report import (
    HIDDEN,
    human_bytes,
    phase_seconds,
    render_markdown,
    sanitize,
)


def test_sanitize_drops_credential_keys_and_masks_values():
    data = {
        "summary": {"images_fetched": 3, "bytes_fetched": 1024},
        "password": "hunter2",
        "mirror_password": "hunter2",
        "token": "abc",
        "auths": {"quay.io": {"auth": "dXNlcjpwYXNz"}},
        "authfile": "/root/.pull-secret.json",
        "nested": [{"registry_auth": "x", "ref": "quay.io/a/b"}],
        "msg": 'cannot parse {"auth": "dXNlcjpwYXNz"} and Authorization: Basic dXNlcjpwYXNzd29yZA==',
    }
    clean = sanitize(data)
    text = json.dumps(clean)
    assert "hunter2" not in text
    assert "dXNlcjpwYXNz" not in text
    assert "\"abc\"" not in text
    assert "token" not in clean and "auths" not in clean and "password" not in clean
    assert clean["authfile"] == "/root/.pull-secret.json"
    assert clean["nested"] == [{"ref": "quay.io/a/b"}]
    assert HIDDEN in clean["msg"]
    assert data["password"] == "hunter2", "sanitize must not modify its input"


@pytest.mark.parametrize("value, text", [(0, "0 B"), (1023, "1023 B"), (1536, "1.5 KiB"), (5 * 1024 ** 3, "5.0 GiB"), ("x", "x")])
def test_human_bytes(value, text):
    assert human_bytes(value) == text


def test_render_markdown_sections():
    report = {
        "playbook": "connected_site.yml",
        "started": "2026-01-01T00:00:00Z",
        "finished": "2026-01-01T00:01:00Z",
        "seconds": 60.0,
        "hosts": {"connected-host": {"ok": 5, "changed": 2, "failures": 0, "unreachable": 0, "skipped": 1}},
        "phases": [{"phase": "download", "tasks": 3, "changed": 1, "failed": 0, "skipped": 0, "seconds": 42.5}],
        "results": [
            {"host": "connected-host", "task": "Download the images", "phase": "download", "status": "ok",
             "result": {"summary": {"bytes_fetched": 2048, "dedup_ratio": 3.7, "images_fetched": 2},
                        "images": [{"ref": "quay.io/a/b@sha256:" + "a" * 64, "digest": "sha256:" + "a" * 64,
                                    "size": 4096, "status": "fetched"},
                                   {"ref": "quay.io/a/c:v1", "digest": None, "size": None, "status": "failed",
                                    "error": "manifest unknown | not found"}]}},
            {"host": "bastion", "task": "Upload", "phase": "upload", "status": "failed",
             "result": {"msg": "the mirror refused the credentials",
                        "mapping": [{"source": "quay.io/a/b@sha256:" + "a" * 64, "mirror": "m:8443/a/b@sha256:" + "a" * 64,
                                     "tag": "mirror-260101000000-1", "status": "pushed"}]}},
        ],
    }
    text = render_markdown(report)
    assert text.startswith("# airgap.microshift run report")
    assert "| connected-host | 5 | 2 | 0 | 0 | 1 |" in text
    assert "| download | 3 | 1 | 0 | 0 | 42.5 |" in text
    assert "| bytes_fetched | 2.0 KiB (2048) |" in text
    assert "| dedup_ratio | 3.700 |" in text
    assert "manifest unknown \\| not found" in text
    assert "**Upload** on `bastion` (upload): the mirror refused the credentials" in text
    assert "mirror-260101000000-1" in text


def test_phase_seconds_sum_the_tasks_own_times():
    # image_list runs at the start and again at the end of the play: its time is the time of its
    # own tasks (3 s + 2 s), not the 100 s between its first task and its last.
    runs = [
        {"phase": "image_list", "started": 1000.0, "ended": 1003.0},
        {"phase": "download", "started": 1003.0, "ended": 1090.0},
        {"phase": "(playbook)", "started": 1090.0, "ended": 1098.0},
        {"phase": "image_list", "started": 1098.0, "ended": 1100.0},
    ]
    assert phase_seconds(runs) == {"image_list": 5.0, "download": 87.0, "(playbook)": 8.0}


def test_phase_seconds_count_a_task_run_on_many_hosts_once():
    # One task on three hosts at the same time is one run: its span, not three times it.
    runs = [{"phase": "host_config", "started": 10.0, "ended": 12.5}]
    assert phase_seconds(runs) == {"host_config": 2.5}


def test_phase_seconds_skip_runs_without_results():
    runs = [{"phase": "upload", "started": 5.0, "ended": None}, {"phase": "upload", "started": 6.0, "ended": 6.25}]
    assert phase_seconds(runs) == {"upload": 0.25}
