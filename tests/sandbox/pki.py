# Copyright: airgap.microshift contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Test CAs, server certificates, htpasswd files and container auth files (openssl, htpasswd)."""

from __future__ import annotations

import base64
import json
import os
import subprocess


class PkiError(Exception):
    """A certificate or credential file cannot be created."""


def _run(cmd):
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise PkiError("%s failed: %s" % (cmd[0], proc.stderr.strip()))
    return proc.stdout


def make_ca(directory, name, common_name):
    """Create ``<name>.key``/``<name>.crt`` (a self-signed CA) in ``directory``; return the cert path."""
    os.makedirs(directory, exist_ok=True)
    key = os.path.join(directory, name + ".key")
    crt = os.path.join(directory, name + ".crt")
    _run(["openssl", "req", "-x509", "-new", "-nodes", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
          "-keyout", key, "-out", crt, "-days", "30", "-subj", "/O=airgap-microshift sandbox/CN=" + common_name,
          "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign"])
    os.chmod(key, 0o600)
    return crt


def make_server_cert(directory, name, ca_crt, ca_key, dns_names, ips=()):
    """Create a server certificate for ``dns_names``/``ips`` signed by the CA; return (crt, key)."""
    key = os.path.join(directory, name + ".key")
    csr = os.path.join(directory, name + ".csr")
    crt = os.path.join(directory, name + ".crt")
    ext = os.path.join(directory, name + ".ext")
    san = ",".join(["DNS:" + d for d in dns_names] + ["IP:" + i for i in ips])
    with open(ext, "w", encoding="ascii") as f:
        f.write("subjectAltName=%s\nextendedKeyUsage=serverAuth\nkeyUsage=critical,digitalSignature,keyEncipherment\n"
                "basicConstraints=critical,CA:FALSE\n" % san)
    _run(["openssl", "req", "-new", "-nodes", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
          "-keyout", key, "-out", csr, "-subj", "/O=airgap-microshift sandbox/CN=" + dns_names[0]])
    _run(["openssl", "x509", "-req", "-in", csr, "-CA", ca_crt, "-CAkey", ca_key, "-CAcreateserial",
          "-out", crt, "-days", "30", "-extfile", ext])
    os.chmod(key, 0o600)
    os.unlink(csr)
    os.unlink(ext)
    return crt, key


def htpasswd_line(user, password):
    """A bcrypt htpasswd line (``htpasswd -Bbn``): the password only goes to a local process."""
    return _run(["htpasswd", "-Bbn", user, password]).strip() + "\n"


def write_auth_file(path, auths):
    """Write a containers auth.json: ``auths`` maps ``registry[:port]`` to (user, password)."""
    data = {"auths": {}}
    for registry, (user, password) in sorted(auths.items()):
        token = base64.b64encode(("%s:%s" % (user, password)).encode()).decode()
        data["auths"][registry] = {"auth": token}
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="ascii") as f:
        json.dump(data, f, indent=2)
        f.write("\n")
    return path
