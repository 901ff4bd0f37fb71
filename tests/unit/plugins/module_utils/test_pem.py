# Copyright: airgap.microshift contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""The CA and key checks the roles run on the control node: real openssl files, and openssl's own verdicts."""

from __future__ import annotations

import subprocess

import pytest

from ansible_collections.airgap.microshift.plugins.filter.certificate_problem import FilterModule as CertificateFilters
from ansible_collections.airgap.microshift.plugins.filter.public_key_problem import FilterModule as KeyFilters
from ansible_collections.airgap.microshift.plugins.module_utils._pem import certificate_problem, public_key_problem


def _openssl(*args, stdin=None):
    return subprocess.run(["openssl"] + list(args), input=stdin, capture_output=True, text=True, check=False)


@pytest.fixture(scope="module")
def pems(tmp_path_factory):
    """Two CA certificates, a public key and a private key, written by openssl."""
    d = tmp_path_factory.mktemp("pem")
    out = {}
    for name in ("ca1", "ca2"):
        proc = _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                        "-keyout", str(d / (name + ".key")), "-out", str(d / (name + ".crt")), "-subj", "/CN=" + name, "-days", "2")
        assert proc.returncode == 0, proc.stderr
        out[name] = (d / (name + ".crt")).read_text()
    out["key"] = (d / "ca1.key").read_text()
    out["pub"] = _openssl("pkey", "-in", str(d / "ca1.key"), "-pubout").stdout
    return out


def _corrupt(pem):
    """The same block with bytes of its body changed: still base64, no longer DER."""
    lines = pem.splitlines()
    lines[2] = "A" * len(lines[2])
    return "\n".join(lines) + "\n"


def test_certificates(pems):
    assert certificate_problem(pems["ca1"]) == ""
    assert certificate_problem(pems["ca1"].strip()) == ""
    assert certificate_problem("subject=CN = ca1\n" + pems["ca1"]) == ""
    assert certificate_problem(pems["ca1"] + pems["ca2"]) == ""
    assert certificate_problem("") == "no BEGIN CERTIFICATE block"
    assert certificate_problem(pems["pub"]) == "no BEGIN CERTIFICATE block"
    assert certificate_problem("-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n") == (
        "its certificate block does not decode to an X.509 certificate")
    assert certificate_problem(_corrupt(pems["ca1"])) == "its certificate block does not decode to an X.509 certificate"
    assert certificate_problem(pems["ca1"] + _corrupt(pems["ca2"])) == (
        "its certificate block 2 of 2 does not decode to an X.509 certificate")
    assert certificate_problem(None) == "not a text"


def test_public_keys(pems):
    assert public_key_problem(pems["pub"]) == ""
    assert public_key_problem(pems["key"]) == "no BEGIN PUBLIC KEY block"
    assert public_key_problem(pems["ca1"]) == "no BEGIN PUBLIC KEY block"
    assert public_key_problem(pems["pub"] + pems["pub"]) == "2 PUBLIC KEY blocks, where one key is expected"
    assert public_key_problem(_corrupt(pems["pub"]).replace("A" * 10, "!" * 10, 1)) == (
        "its PUBLIC KEY block does not decode to a public key")
    assert public_key_problem("not a key") == "no BEGIN PUBLIC KEY block"


@pytest.mark.parametrize("case", ["ca1", "ca1-body-only", "pub", "key", "corrupt", "not-base64", "empty", "truncated"])
def test_certificate_verdict_is_openssls(pems, case):
    """For one block, the check accepts exactly what ``openssl x509`` accepts (what the role ran before)."""
    text = {
        "ca1": pems["ca1"], "ca1-body-only": pems["ca1"].strip(), "pub": pems["pub"], "key": pems["key"],
        "corrupt": _corrupt(pems["ca1"]), "not-base64": "-----BEGIN CERTIFICATE-----\n!!\n-----END CERTIFICATE-----\n",
        "empty": "", "truncated": "\n".join(pems["ca1"].splitlines()[:3] + pems["ca1"].splitlines()[-1:]) + "\n",
    }[case]
    assert (certificate_problem(text) == "") == (_openssl("x509", "-noout", stdin=text).returncode == 0)


@pytest.mark.parametrize("case", ["pub", "key", "ca1", "corrupt", "empty"])
def test_public_key_verdict_is_openssls(pems, case):
    text = {"pub": pems["pub"], "key": pems["key"], "ca1": pems["ca1"], "corrupt": _corrupt(pems["pub"]), "empty": ""}[case]
    assert (public_key_problem(text) == "") == (_openssl("pkey", "-pubin", "-noout", stdin=text).returncode == 0)


def test_filters_are_these_functions():
    assert CertificateFilters().filters() == {"certificate_problem": certificate_problem}
    assert KeyFilters().filters() == {"public_key_problem": public_key_problem}
