# Copyright: airgap.microshift contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""registries_conf main(): real files in a temporary directory."""

from __future__ import annotations

import os
import stat

import pytest


from ansible_collections.airgap.microshift.plugins.module_utils._registries_conf import check_text
from ansible_collections.airgap.microshift.plugins.modules import registries_conf
from ansible_collections.airgap.microshift.tests.unit.plugins.helpers.modules import run_main, warning_texts

DIGEST = "sha256:" + "cd" * 32


def run_module(capsys, args, check_mode=False, diff=False):
    return run_main(registries_conf, capsys, args, check_mode, diff)[0]


@pytest.fixture
def dropin(tmp_path):
    return str(tmp_path / "registries.conf.d" / "999-microshift-mirror.conf")


def _read(path):
    with open(path) as handle:
        return handle.read()


def test_writes_a_valid_drop_in(capsys, dropin):
    result = run_module(capsys, {"path": dropin, "mirror": "mirror.example.com:8443", "namespace": "ms",
                                 "images": ["ghcr.io/org/app@" + DIGEST], "header": "Ansible managed"})
    assert result["changed"] is True
    assert result["registries"] == ["quay.io", "registry.redhat.io", "registry.access.redhat.com", "ghcr.io"]
    assert result["mirror_location"] == "mirror.example.com:8443/ms"
    content = _read(dropin)
    assert content == result["content"]
    assert content.startswith("# Ansible managed\n")
    data = check_text(content)
    assert data["registry"][4] == {"prefix": "ghcr.io", "location": "ghcr.io", "mirror-by-digest-only": True,
                                   "mirror": [{"location": "mirror.example.com:8443/ms"}]}
    assert stat.S_IMODE(os.stat(dropin).st_mode) == 0o644
    assert stat.S_IMODE(os.stat(os.path.dirname(dropin)).st_mode) == 0o755
    assert os.listdir(os.path.dirname(dropin)) == [os.path.basename(dropin)]


def test_second_run_changes_nothing(capsys, dropin):
    args = {"path": dropin, "mirror": "mirror:5000"}
    assert run_module(capsys, args)["changed"] is True
    before = os.stat(dropin)
    again = run_module(capsys, args)
    assert again["changed"] is False
    after = os.stat(dropin)
    assert (before.st_ino, before.st_mtime_ns) == (after.st_ino, after.st_mtime_ns)


def test_check_mode_and_diff_write_nothing(capsys, dropin):
    result = run_module(capsys, {"path": dropin, "mirror": "mirror:5000"}, check_mode=True, diff=True)
    assert result["changed"] is True
    assert result["diff"]["before"] == ""
    assert 'location = "mirror:5000"' in result["diff"]["after"]
    assert not os.path.exists(dropin)
    assert not os.path.exists(os.path.dirname(dropin))


def test_diff_against_the_current_file(capsys, dropin):
    run_module(capsys, {"path": dropin, "mirror": "mirror:5000"})
    old = _read(dropin)
    result = run_module(capsys, {"path": dropin, "mirror": "mirror:5000", "namespace": "ns"}, check_mode=True, diff=True)
    assert result["changed"] is True
    assert result["diff"]["before"] == old
    assert 'location = "mirror:5000/ns"' in result["diff"]["after"]
    assert _read(dropin) == old


def test_mode_is_enforced_and_reported(capsys, dropin):
    run_module(capsys, {"path": dropin, "mirror": "mirror:5000"})
    os.chmod(dropin, 0o600)
    assert run_module(capsys, {"path": dropin, "mirror": "mirror:5000"}, check_mode=True)["changed"] is True
    assert stat.S_IMODE(os.stat(dropin).st_mode) == 0o600
    assert run_module(capsys, {"path": dropin, "mirror": "mirror:5000"})["changed"] is True
    assert stat.S_IMODE(os.stat(dropin).st_mode) == 0o644


def test_insecure_warns(capsys, dropin):
    result = run_module(capsys, {"path": dropin, "mirror": "mirror:5000", "insecure": True})
    assert "insecure = true" in _read(dropin)
    assert any("insecure=true" in text for text in warning_texts(result))


@pytest.mark.parametrize("args, expected", [
    ({"mirror": "bad mirror"}, "mirror 'bad mirror' is not a valid host[:port][/path]"),
    ({"mirror": "https://mirror:5000"}, "must not carry a scheme"),
    ({"mirror": "mirror:5000/ns"}, "put a path in namespace"),
    ({"mirror": "mirror:5000", "namespace": "Bad Namespace"}, "is not a valid host[:port][/path]"),
    ({"mirror": "mirror:5000", "registries": ["quay.io", "not valid"]}, "registries entry 'not valid'"),
    ({"mirror": "mirror:5000", "images": ["busybox"]}, "'busybox' does not start with a registry host"),
    ({"mirror": "mirror:5000", "additional_registries": [{"prefix": "docker.io"}]}, "location is required"),
    ({"mirror": "mirror:5000", "additional_registries": [{"location": "docker.io", "blocked": "yes"}]}, "blocked must be a boolean"),
    ({"mirror": "mirror:5000", "additional_registries": [{"location": "docker.io", "unknown": True}]}, "unknown key 'unknown'"),
    ({"mirror": "mirror:5000", "additional_registries": [{"location": "quay.io"}]}, "prefix 'quay.io' is already used"),
])
def test_refuses_a_broken_drop_in_and_keeps_the_old_file(capsys, dropin, args, expected):
    run_module(capsys, {"path": dropin, "mirror": "mirror:5000"})
    old = _read(dropin)
    old_stat = os.stat(dropin)
    args = dict(args, path=dropin)
    result = run_module(capsys, args)
    assert result["failed"] is True
    assert expected in result["msg"], result["msg"]
    assert dropin in result["msg"]
    assert _read(dropin) == old
    assert os.stat(dropin).st_ino == old_stat.st_ino
    assert os.listdir(os.path.dirname(dropin)) == [os.path.basename(dropin)]


def test_additional_registries_are_written(capsys, dropin):
    result = run_module(capsys, {"path": dropin, "mirror": "mirror:5000",
                                 "additional_registries": [{"location": "docker.io", "blocked": True}]})
    assert result["changed"] is True
    assert check_text(_read(dropin))["registry"][-1] == {"location": "docker.io", "blocked": True}


def test_absent_removes_and_is_idempotent(capsys, dropin):
    run_module(capsys, {"path": dropin, "mirror": "mirror:5000"})
    assert run_module(capsys, {"path": dropin, "state": "absent"}, check_mode=True)["changed"] is True
    assert os.path.exists(dropin)
    assert run_module(capsys, {"path": dropin, "state": "absent"})["changed"] is True
    assert not os.path.exists(dropin)
    assert run_module(capsys, {"path": dropin, "state": "absent"})["changed"] is False


def test_mirror_is_required_when_present(capsys, dropin):
    result = run_module(capsys, {"path": dropin})
    assert result["failed"] is True
    assert "mirror" in result["msg"]
