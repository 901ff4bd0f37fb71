# Copyright: airgap.microshift contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""Helpers shared by the unit tests: running a module's main() in-process, child processes that
cannot outlive the test, and a test CA with a server certificate."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess

import pytest

from ansible.module_utils.testing import patch_module_args


def run_main(module, capsys, args, check_mode=False, diff=False):
    """``module.main()`` with ``args`` as Ansible passes them; returns ``(result, printed text)``.

    The exit code must agree with the result's ``failed``.
    """
    module_args = dict(args)
    if check_mode:
        module_args["_ansible_check_mode"] = True
    if diff:
        module_args["_ansible_diff"] = True
    with patch_module_args(module_args):
        with pytest.raises(SystemExit) as exit_info:
            module.main()
    out = capsys.readouterr().out
    result = json.loads(out)
    assert (exit_info.value.code not in (0, None)) == bool(result.get("failed")), result
    return result, out


def warning_texts(result):
    """The warnings' texts: plain strings, or structured events in newer ansible-core."""
    return [w if isinstance(w, str) else json.dumps(w) for w in result.get("warnings", [])]


def die_with_parent():
    """``preexec_fn``: SIGTERM the child (a registry, a namespace holder) when its parent ends.

    ansible-test runs each test in a fork that leaves with ``os._exit``, skipping the finalizers
    of wider-scoped fixtures; this makes sure nothing a test started outlives its process.
    """
    try:
        import ctypes
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def make_test_ca(pki, name="ca", cn="airgap test CA"):
    """A self-signed CA made with openssl: ``(key path, certificate path)`` in ``pki``."""
    key, crt = os.path.join(pki, name + ".key"), os.path.join(pki, name + ".crt")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", crt, "-days", "2",
                    "-subj", "/CN=" + cn, "-addext", "basicConstraints=critical,CA:TRUE",
                    "-addext", "keyUsage=critical,keyCertSign,cRLSign"], check=True, capture_output=True)
    return key, crt


def make_server_cert(pki, ca, san="IP:127.0.0.1,DNS:localhost"):
    """A server key and certificate for ``san`` signed by ``ca`` (from :func:`make_test_ca`)."""
    key, csr, crt, ext = (os.path.join(pki, name) for name in ("server.key", "server.csr", "server.crt", "server.ext"))
    with open(ext, "w") as handle:
        handle.write("subjectAltName=%s\nextendedKeyUsage=serverAuth\n" % san)
    subprocess.run(["openssl", "req", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", csr, "-subj", "/CN=127.0.0.1"],
                   check=True, capture_output=True)
    subprocess.run(["openssl", "x509", "-req", "-in", csr, "-CA", ca[1], "-CAkey", ca[0], "-CAcreateserial", "-out", crt,
                    "-days", "2", "-extfile", ext], check=True, capture_output=True)
    return key, crt


def free_port():
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
    finally:
        sock.close()
