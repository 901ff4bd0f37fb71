# Copyright: airgap.microshift contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""The signing_key module's main(): generation, check mode, idempotence, formats, bad input."""

from __future__ import annotations

import os
import stat
import subprocess

import pytest

from ansible_collections.airgap.microshift.plugins.module_utils import _signing
from ansible_collections.airgap.microshift.plugins.modules import signing_key
from ansible_collections.airgap.microshift.tests.unit.plugins.helpers.modules import run_main


def run_module(capsys, args, check_mode=False):
    return run_main(signing_key, capsys, args, check_mode)[0]


def test_generate_check_mode_idempotence(capsys, tmp_path):
    path = str(tmp_path / "transfer.key")
    args = {"path": path, "passphrase": "s3cret-pass"}
    preview = run_module(capsys, args, check_mode=True)
    assert preview["changed"] is True and not os.path.exists(path)
    made = run_module(capsys, args)
    assert made["changed"] is True and made["generated"] is True and made["key_type"] == "ecdsa-p256"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600 and stat.S_IMODE(os.stat(path + ".pub").st_mode) == 0o644
    assert b"ENCRYPTED PRIVATE KEY" in open(path, "rb").read()
    assert "s3cret-pass" not in str(made)
    again = run_module(capsys, args)
    assert again["changed"] is False and again["fingerprint"] == made["fingerprint"]
    assert run_module(capsys, args, check_mode=True)["changed"] is False
    # The public key is rewritten from the private one when it goes missing.
    os.unlink(path + ".pub")
    restored = run_module(capsys, args)
    assert restored["changed"] is True and restored["generated"] is False and restored["fingerprint"] == made["fingerprint"]
    # openssl reads the pair.
    subprocess.run(["openssl", "pkey", "-pubin", "-in", path + ".pub", "-noout"], check=True)
    subprocess.run(["openssl", "pkey", "-in", path, "-passin", "pass:s3cret-pass", "-noout"], check=True)


def test_wrong_passphrase_keeps_the_key(capsys, tmp_path):
    path = str(tmp_path / "transfer.key")
    run_module(capsys, {"path": path, "passphrase": "the-r1ght-0ne"})
    before = open(path, "rb").read()
    result = run_module(capsys, {"path": path, "passphrase": "n0t-the-r1ght-0ne"})
    assert result["failed"] is True and path in result["msg"] and "left as it was" in result["msg"]
    assert open(path, "rb").read() == before


def test_force_rotates_and_absent_removes(capsys, tmp_path):
    path = str(tmp_path / "transfer.key")
    first = run_module(capsys, {"path": path, "key_type": "ed25519"})
    second = run_module(capsys, {"path": path, "key_type": "ed25519", "force": True})
    assert second["changed"] and second["fingerprint"] != first["fingerprint"] and second["key_type"] == "ed25519"
    gone = run_module(capsys, {"path": path, "state": "absent"})
    assert gone["changed"] is True and not os.path.exists(path) and not os.path.exists(path + ".pub")
    assert run_module(capsys, {"path": path, "state": "absent"})["changed"] is False


def test_missing_directory_is_named(capsys, tmp_path):
    path = str(tmp_path / "no-such-dir" / "k.key")
    result = run_module(capsys, {"path": path})
    assert result["failed"] is True and str(tmp_path / "no-such-dir") in result["msg"]


@pytest.mark.skipif(not _signing.HAS_NACL, reason="pynacl is not installed")
@pytest.mark.parametrize("key_format, pem_type", [("sigstore", b"ENCRYPTED SIGSTORE PRIVATE KEY"), ("cosign", b"ENCRYPTED COSIGN PRIVATE KEY")])
def test_sigstore_format(capsys, tmp_path, key_format, pem_type):
    path = str(tmp_path / "image.key")
    made = run_module(capsys, {"path": path, "key_format": key_format, "passphrase": "pw"})
    assert made["changed"] and pem_type in open(path, "rb").read()
    assert run_module(capsys, {"path": path, "key_format": key_format, "passphrase": "pw"})["changed"] is False
    key = _signing.read_private_key(path, "pw")
    assert _signing.fingerprint(key.public_key()) == made["fingerprint"]


def test_sigstore_format_needs_a_passphrase(capsys, tmp_path):
    result = run_module(capsys, {"path": str(tmp_path / "k.key"), "key_format": "sigstore"})
    assert result["failed"] is True and "passphrase" in result["msg"]
