# Copyright: airgap.microshift contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""host_state main() and _host_state: real files in a temporary directory."""

from __future__ import annotations

import base64
import os
import stat

from ansible_collections.airgap.microshift.plugins.module_utils import _host_state
from ansible_collections.airgap.microshift.plugins.modules import host_state
from ansible_collections.airgap.microshift.tests.unit.plugins.helpers.modules import run_main


def run_module(capsys, args, check_mode=False):
    return run_main(host_state, capsys, args, check_mode)


def _mode(path):
    return stat.S_IMODE(os.stat(str(path)).st_mode)


def test_save_then_restore_puts_back_content_mode_and_absence(tmp_path, capsys):
    secret = tmp_path / "crio" / "pull-secret"
    secret.parent.mkdir()
    secret.write_bytes(b'{"auths": {"quay.io": {"auth": "eDp5"}}}\n')
    os.chmod(str(secret), 0o600)
    dropin = tmp_path / "registries.conf.d" / "999-mirror.conf"
    paths = [str(secret), str(dropin)]

    saved, out = run_module(capsys, {"save": paths})
    assert not saved["changed"] and saved["saved"][str(dropin)] == {"exists": False}
    assert saved["saved"][str(secret)]["mode"] == "0600" and saved["saved"][str(secret)]["owner"]

    # What a failed configuration leaves behind: a changed secret (other mode) and a new drop-in.
    secret.write_bytes(b'{"auths": {}}\n')
    os.chmod(str(secret), 0o644)
    dropin.parent.mkdir()
    dropin.write_text("[[registry]]\n")

    result, dummy = run_module(capsys, {"restore": saved["saved"]}, check_mode=True)
    assert result["changed"] and sorted(result["restored"]) == sorted(paths)
    assert dropin.exists() and secret.read_bytes() == b'{"auths": {}}\n'

    result, dummy = run_module(capsys, {"restore": saved["saved"]})
    assert result["changed"] and sorted(result["restored"]) == sorted(paths)
    assert not dropin.exists()
    assert secret.read_bytes() == b'{"auths": {"quay.io": {"auth": "eDp5"}}}\n' and _mode(secret) == 0o600
    assert sorted(os.listdir(str(secret.parent))) == ["pull-secret"]  # no temporary left

    result, dummy = run_module(capsys, {"restore": saved["saved"]})
    assert not result["changed"] and result["restored"] == []
    # The content is returned (the role runs the task with no_log).
    assert base64.b64decode(saved["saved"][str(secret)]["content"]) in out.encode() or saved["saved"][str(secret)]["content"] in out


def test_reads_the_host_in_one_run(tmp_path, capsys):
    marker = tmp_path / "ostree-booted"
    marker.write_text("")
    result, dummy = run_module(capsys, {"exists": [str(marker), str(tmp_path / "absent")], "commands": ["sh", "no-such-command-here"]})
    assert result["exists"] == {str(marker): True, str(tmp_path / "absent"): False}
    assert result["commands"]["sh"].endswith("/sh") and result["commands"]["no-such-command-here"] == ""
    assert result["check_mode"] is False and result["systemd"] is True and result["units"] == {}
    result, dummy = run_module(capsys, {}, check_mode=True)
    assert result["check_mode"] is True and not result["changed"]


def test_refuses_what_it_cannot_restore(tmp_path, capsys):
    directory = tmp_path / "a-directory"
    directory.mkdir()
    result, dummy = run_module(capsys, {"save": [str(directory)]})
    assert result["failed"] and result["msg"] == "%s is not a regular file, so it cannot be saved and restored" % directory
    result, dummy = run_module(capsys, {"restore": {str(tmp_path / "x"): {"exists": True, "mode": "0644"}}})
    assert result["failed"] and "has no owner" in result["msg"] and str(tmp_path / "x") in result["msg"]
    assert not (tmp_path / "x").exists()


def test_os_family_from_os_release():
    assert _host_state.os_family(_host_state.parse_os_release('ID="rhel"\nID_LIKE="fedora"\n')) == "RedHat"
    assert _host_state.os_family(_host_state.parse_os_release("ID=rocky\nID_LIKE='rhel centos fedora'\n")) == "RedHat"
    assert _host_state.os_family(_host_state.parse_os_release("# comment\nID=debian\nVERSION_ID=13\n")) == "Debian"
    assert _host_state.os_family(_host_state.parse_os_release("ID=ubuntu\nID_LIKE=debian\n")) == "Debian"
    assert _host_state.os_family(_host_state.parse_os_release("ID=alpine\n")) == "alpine"
    assert _host_state.os_family({}) == ""


def test_unit_states_of_systemctl_show():
    text = "Id=microshift.service\nLoadState=loaded\nUnitFileState=disabled\n\nId=nothing.service\nLoadState=not-found\nUnitFileState=\n"
    assert _host_state.unit_states(text) == {"microshift.service": {"LoadState": "loaded", "UnitFileState": "disabled"},
                                             "nothing.service": {"LoadState": "not-found", "UnitFileState": ""}}
