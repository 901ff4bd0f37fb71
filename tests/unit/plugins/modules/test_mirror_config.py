# Copyright: airgap.microshift contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""mirror_config main(): real files in a temporary directory, real trust store commands (sh)."""

from __future__ import annotations

import base64
import json
import os
import stat

import pytest

from ansible_collections.airgap.microshift.plugins.module_utils import _host_state
from ansible_collections.airgap.microshift.plugins.module_utils._registries_conf import check_text
from ansible_collections.airgap.microshift.plugins.modules import mirror_config
from ansible_collections.airgap.microshift.tests.unit.plugins.helpers.modules import (
    reset_module_warnings, run_main, warning_texts,
)

DIGEST = "sha256:" + "ab" * 32
CA = "-----BEGIN CERTIFICATE-----\nMIIBfake\n-----END CERTIFICATE-----\n"
PASSWORD = "S3CRET-mirror-pw"


def run_module(capsys, args, check_mode=False, diff=False):
    reset_module_warnings()
    return run_main(mirror_config, capsys, args, check_mode, diff)


def _mode(path):
    return stat.S_IMODE(os.stat(str(path)).st_mode)


def _auth(user, password):
    return base64.b64encode(("%s:%s" % (user, password)).encode()).decode()


@pytest.fixture
def host(tmp_path):
    """A host's tree: the paths the module writes, and a trust store command that counts its runs."""
    root = tmp_path / "host"
    root.mkdir()
    counter = tmp_path / "trust-runs"
    args = {
        "mirror": "mirror.example.com:8443",
        "namespace": "microshift",
        "images": ["quay.io/openshift/release@" + DIGEST, "ghcr.io/org/app@" + DIGEST],
        "registries_conf": str(root / "etc/containers/registries.conf.d/999-microshift-mirror.conf"),
        "header": "Ansible managed",
        "ca": CA,
        "ca_path": str(root / "usr/local/share/ca-certificates/microshift-mirror.crt"),
        "trust_command": ["sh", "-c", "echo run >> %s" % counter],
        "certs_d": True,
        "certs_d_dir": str(root / "etc/containers/certs.d"),
        "username": "microshift",
        "password": PASSWORD,
        "auth_files": [str(root / "etc/crio/openshift-pull-secret"), str(root / "etc/ostree/auth.json")],
    }
    return root, counter, args


def _runs(counter):
    return len(counter.read_text().splitlines()) if counter.exists() else 0


def _tree(root):
    """Every file under root with its bytes and mode."""
    found = {}
    for directory, dummy, names in os.walk(str(root)):
        for name in names:
            path = os.path.join(directory, name)
            with open(path, "rb") as handle:
                found[os.path.relpath(path, str(root))] = (handle.read(), _mode(path))
    return found


def test_writes_every_file_once_then_changes_nothing(host, capsys):
    root, counter, args = host
    secret = root / "etc/crio/openshift-pull-secret"
    secret.parent.mkdir(parents=True)
    secret.write_text(json.dumps({"auths": {"quay.io": {"auth": _auth("q", "qpass")}}, "credHelpers": {"r.io": "h"}}))
    os.chmod(str(secret), 0o644)

    result, out = run_module(capsys, args, check_mode=True, diff=True)
    assert result["changed"] and len(result["changed_files"]) == 5 and not result["trust_store_rebuilt"]
    assert not (root / "etc/containers").exists() and _runs(counter) == 0
    assert PASSWORD not in out and _auth("microshift", PASSWORD) not in out and "qpass" not in out

    result, out = run_module(capsys, args, diff=True)
    assert result["changed"] and result["trust_store_rebuilt"] and _runs(counter) == 1
    assert result["registries"] == ["quay.io", "registry.redhat.io", "registry.access.redhat.com", "ghcr.io"]
    assert result["mirror_location"] == "mirror.example.com:8443/microshift"
    assert PASSWORD not in out and _auth("microshift", PASSWORD) not in out and "qpass" not in out
    assert [d["after_header"] for d in result["diff"]] == result["changed_files"]

    ca_file = root / "usr/local/share/ca-certificates/microshift-mirror.crt"
    certs_d = root / "etc/containers/certs.d/mirror.example.com:8443/ca.crt"
    assert ca_file.read_text() == CA and certs_d.read_text() == CA
    assert _mode(ca_file) == 0o644 and _mode(certs_d) == 0o644 and _mode(certs_d.parent) == 0o755
    dropin = check_text((root / "etc/containers/registries.conf.d/999-microshift-mirror.conf").read_text())
    assert {r["prefix"]: r["mirror"][0]["location"] for r in dropin["registry"] if "prefix" in r}["ghcr.io"] == \
        "mirror.example.com:8443/microshift"
    data = json.loads(secret.read_text())
    assert data["auths"]["mirror.example.com:8443"] == {"auth": _auth("microshift", PASSWORD)}
    assert data["auths"]["quay.io"] == {"auth": _auth("q", "qpass")} and data["credHelpers"] == {"r.io": "h"}
    assert _mode(secret) == 0o600  # a secret that was readable by others is not any more
    ostree = root / "etc/ostree/auth.json"
    assert json.loads(ostree.read_text()) == {"auths": {"mirror.example.com:8443": {"auth": _auth("microshift", PASSWORD)}}}
    assert _mode(ostree) == 0o600 and _mode(ostree.parent) == 0o755
    before = _tree(root)
    assert not [name for name in before if name.endswith(".tmp")]

    result, dummy = run_module(capsys, args)
    assert not result["changed"] and result["changed_files"] == [] and _runs(counter) == 1
    result, dummy = run_module(capsys, args, check_mode=True)
    assert not result["changed"]
    assert _tree(root) == before


def test_only_what_differs_is_written_and_the_trust_store_only_for_a_new_ca(host, capsys):
    root, counter, args = host
    run_module(capsys, args)
    assert _runs(counter) == 1
    dropin = root / "etc/containers/registries.conf.d/999-microshift-mirror.conf"
    os.chmod(str(dropin), 0o600)
    result, dummy = run_module(capsys, dict(args, password="another"))
    assert result["changed_files"] == [str(dropin), args["auth_files"][0], args["auth_files"][1]]
    assert _mode(dropin) == 0o644 and _runs(counter) == 1

    result, dummy = run_module(capsys, dict(args, ca=CA.replace("fake", "other"), password="another"))
    assert result["changed_files"] == [args["ca_path"], str(root / "etc/containers/certs.d/mirror.example.com:8443/ca.crt")]
    assert result["trust_store_rebuilt"] and _runs(counter) == 2


def test_credentials_already_there_in_other_words_are_left_as_they_are(host, capsys):
    root, counter, args = host
    args = dict(args, auth_files=args["auth_files"][:1])
    run_module(capsys, args)
    secret = root / "etc/crio/openshift-pull-secret"
    secret.write_text(json.dumps(json.loads(secret.read_text()), indent=8))  # as another tool formats it
    os.chmod(str(secret), 0o600)
    text = secret.read_text()
    result, dummy = run_module(capsys, args)
    assert not result["changed"] and secret.read_text() == text


def test_a_malformed_auth_file_fails_before_anything_is_written(host, capsys):
    root, counter, args = host
    secret = root / "etc/crio/openshift-pull-secret"
    secret.parent.mkdir(parents=True)
    secret.write_text('{"auths": {"quay.io": {"auth": "not base64!"}}}')
    before = _tree(root)
    result, out = run_module(capsys, args)
    assert result["failed"] and str(secret) in result["msg"] and "nothing was changed" in result["msg"]
    assert _tree(root) == before and _runs(counter) == 0 and PASSWORD not in out


def test_a_file_that_cannot_be_written_puts_back_every_file_written_before(tmp_path):
    """apply_files with a rename that fails for the third file, as AnsibleModule.atomic_move fails (a plain
    Exception whose cause is the OSError): the two files written before are put back, the directory made
    on the way is removed."""
    old = tmp_path / "etc/containers/old.conf"
    old.parent.mkdir(parents=True)
    old.write_text("# the drop-in of before\n")
    os.chmod(str(old), 0o640)
    before = _tree(tmp_path)
    failing = str(tmp_path / "etc/crio/openshift-pull-secret")

    def move(temp, target):
        if target == failing:
            try:
                raise OSError(28, "No space left on device")
            except OSError as exc:
                raise Exception("Could not replace %r" % target) from exc
        os.replace(temp, target)

    files = [{"path": str(tmp_path / "usr/share/ca/mirror.crt"), "data": b"ca", "mode": 0o644},
             {"path": str(old), "data": b"new", "mode": 0o644},
             {"path": failing, "data": b"{}", "mode": 0o600},
             {"path": str(tmp_path / "etc/ostree/auth.json"), "data": b"{}", "mode": 0o600}]
    with pytest.raises(_host_state.HostStateError) as failure:
        _host_state.apply_files(files, move=move)
    assert str(failure.value) == ("cannot write %s: No space left on device, so the files written before were put back as "
                                  "they were" % failing)
    assert _tree(tmp_path) == before
    assert sorted(os.listdir(str(tmp_path))) == ["etc"] and os.listdir(str(tmp_path / "etc")) == ["containers"]

    journal = _host_state.apply_files(files[:2] + files[3:], move=move)
    assert journal["changed"] == [files[0]["path"], str(old), files[3]["path"]]
    assert _mode(old) == 0o644 and old.read_bytes() == b"new" and _mode(files[3]["path"]) == 0o600
    assert _host_state.apply_files(files[:2] + files[3:])["changed"] == []
    _host_state.undo_files(journal)
    assert _tree(tmp_path) == before


def test_a_failing_trust_store_command_puts_back_the_files_and_runs_once_more(host, capsys):
    root, counter, args = host
    args = dict(args, trust_command=["sh", "-c", "echo run >> %s; echo 'bundle is broken' >&2; exit 3" % counter])
    result, dummy = run_module(capsys, args)
    assert result["failed"]
    assert result["msg"] == ("The trust store command sh -c echo run >> %s; echo 'bundle is broken' >&2; exit 3 failed "
                             "(rc 3: bundle is broken); the files were put back as they were." % counter)
    assert _tree(root) == {} and _runs(counter) == 2  # once with the new CA, once after the files were put back


@pytest.mark.parametrize("change, message", [
    ({"ca": ""}, "Option ca is empty"),
    ({"ca": "not a certificate"}, "Option ca is not a PEM certificate"),
    ({"password": None}, "Options username and password go together"),
    ({"username": "a:b"}, "Option username must not contain ':'"),
    ({"mirror": "https://mirror.example.com"}, "Option mirror: 'https://mirror.example.com' is not a registry key"),
    ({"images": ["quay.io/UPPER@" + DIGEST]}, "Option images"),
])
def test_bad_options_fail_naming_the_option_and_write_nothing(host, capsys, change, message):
    root, counter, args = host
    result, out = run_module(capsys, {k: v for k, v in dict(args, **change).items() if v is not None})
    assert result["failed"] and message in result["msg"], result["msg"]
    assert _tree(root) == {} and PASSWORD not in out


def test_without_credentials_or_ca_only_the_drop_in_is_written(host, capsys):
    root, counter, args = host
    args = {k: v for k, v in args.items() if k not in ("ca", "ca_path", "certs_d", "username", "password")}
    result, dummy = run_module(capsys, dict(args, insecure=True))
    assert result["changed_files"] == [args["registries_conf"]] and _runs(counter) == 0
    assert any("insecure=true" in w for w in warning_texts(result))
    assert list(_tree(root)) == ["etc/containers/registries.conf.d/999-microshift-mirror.conf"]
