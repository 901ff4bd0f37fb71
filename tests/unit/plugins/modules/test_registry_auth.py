# Copyright: airgap.microshift contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""registry_auth main(): real files in a temporary directory."""

from __future__ import annotations

import base64
import json
import os
import stat

import pytest


from ansible_collections.airgap.microshift.plugins.modules import registry_auth
from ansible_collections.airgap.microshift.tests.unit.plugins.helpers.modules import run_main


def run_module(capsys, args, check_mode=False, diff=False):
    return run_main(registry_auth, capsys, args, check_mode, diff)


def _auth(user, password):
    return base64.b64encode(("%s:%s" % (user, password)).encode()).decode()


def _mode(path):
    return stat.S_IMODE(os.stat(str(path)).st_mode)


def test_add_update_remove_rhythm(tmp_path, capsys):
    path = tmp_path / "auth.json"
    path.write_text(json.dumps({"auths": {"quay.io": {"auth": _auth("q", "qpass")}}, "credHelpers": {"r.example": "helper"}}))
    os.chmod(str(path), 0o600)
    args = {"path": str(path), "registry": "mirror.example.com:8443", "username": "micro", "password": "S3CRET-pw"}
    before = path.read_bytes()

    result, out = run_module(capsys, args, check_mode=True, diff=True)
    assert result["changed"] and path.read_bytes() == before
    assert "S3CRET-pw" not in out and _auth("micro", "S3CRET-pw") not in out and "qpass" not in out
    assert result["diff"]["after"]["auths"]["mirror.example.com:8443"] == {"username": "micro", "auth": "********"}

    result, out = run_module(capsys, args, diff=True)
    assert result["changed"] and "S3CRET-pw" not in out
    data = json.loads(path.read_text())
    assert data["auths"]["mirror.example.com:8443"] == {"auth": _auth("micro", "S3CRET-pw")}
    assert data["auths"]["quay.io"] == {"auth": _auth("q", "qpass")} and data["credHelpers"] == {"r.example": "helper"}
    assert _mode(path) == 0o600
    assert sorted(os.listdir(str(tmp_path))) == ["auth.json"]  # no temporary left

    result, dummy = run_module(capsys, args)
    assert not result["changed"]
    result, dummy = run_module(capsys, args, check_mode=True)
    assert not result["changed"]

    result, dummy = run_module(capsys, dict(args, password="new-one"))
    assert result["changed"] and json.loads(path.read_text())["auths"]["mirror.example.com:8443"]["auth"] == _auth("micro", "new-one")

    absent = {"path": str(path), "registry": "mirror.example.com:8443", "state": "absent"}
    result, dummy = run_module(capsys, absent, check_mode=True)
    assert result["changed"] and "mirror.example.com:8443" in json.loads(path.read_text())["auths"]
    result, dummy = run_module(capsys, absent)
    assert result["changed"] and set(json.loads(path.read_text())["auths"]) == {"quay.io"}
    result, dummy = run_module(capsys, absent)
    assert not result["changed"]


def test_new_file_is_private_and_mode_is_fixed(tmp_path, capsys):
    path = tmp_path / "pull-secret"
    old_umask = os.umask(0o022)
    try:
        result, dummy = run_module(capsys, {"path": str(path), "registry": "quay.io", "username": "u", "password": "pw-Secret9"})
    finally:
        os.umask(old_umask)
    assert result["changed"] and _mode(path) == 0o600
    os.chmod(str(path), 0o644)
    result, dummy = run_module(capsys, {"path": str(path), "registry": "quay.io", "username": "u", "password": "pw-Secret9"})
    assert result["changed"] and _mode(path) == 0o600
    result, dummy = run_module(capsys, {"path": str(path), "registry": "quay.io", "username": "u", "password": "pw-Secret9", "mode": "0640"})
    assert result["changed"] and _mode(path) == 0o640


@pytest.mark.parametrize("content, words", [
    ("{broken", "is not valid JSON"),
    ('{"auths": "no"}', "'auths' is not an object"),
    ('{"auths": {"quay.io": {"auth": "bm9jb2xvbg=="}}}', "the auth of quay.io is not base64"),
])
def test_malformed_file_fails_and_is_untouched(tmp_path, capsys, content, words):
    path = tmp_path / "auth.json"
    path.write_text(content)
    os.chmod(str(path), 0o644)
    result, dummy = run_module(capsys, {"path": str(path), "registry": "mirror:5000", "username": "u", "password": "pw-Secret9"})
    assert result["failed"] and str(path) in result["msg"] and words in result["msg"]
    assert path.read_text() == content and _mode(path) == 0o644


def test_unreadable_file_fails_clearly(tmp_path, capsys):
    path = tmp_path / "auth.json"
    os.mkdir(str(path))
    result, dummy = run_module(capsys, {"path": str(path), "registry": "mirror:5000", "username": "u", "password": "pw-Secret9"})
    assert result["failed"] and str(path) in result["msg"]


def test_missing_directory(tmp_path, capsys):
    path = tmp_path / "containers" / "auth.json"
    args = {"path": str(path), "registry": "quay.io", "username": "u", "password": "pw-Secret9"}
    result, dummy = run_module(capsys, args)
    assert result["failed"] and str(tmp_path / "containers") in result["msg"] and "create_dir" in result["msg"]
    result, dummy = run_module(capsys, dict(args, create_dir=True), check_mode=True)
    assert result["changed"] and not os.path.exists(str(tmp_path / "containers"))
    result, dummy = run_module(capsys, dict(args, create_dir=True))
    assert result["changed"] and _mode(tmp_path / "containers") == 0o700 and _mode(path) == 0o600


def test_bad_registry_and_missing_password(tmp_path, capsys):
    result, dummy = run_module(capsys, {"path": str(tmp_path / "a"), "registry": "https://quay.io", "username": "u", "password": "pw-Secret9"})
    assert result["failed"] and result["msg"].startswith("registry: ")
    result, dummy = run_module(capsys, {"path": str(tmp_path / "a"), "registry": "quay.io", "username": "u"})
    assert result["failed"] and "password" in result["msg"]
