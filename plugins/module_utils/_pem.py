# Copyright: airgap.microshift contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""Is a text a PEM certificate, or a PEM public key? Checked on the control node before a host is touched.

Plain Python with no Ansible dependency, for the ``certificate_problem`` and ``public_key_problem``
filters. A role checks the CA and the keys it is given once on the control node, in the process
that runs the play, instead of starting a program for it: a fleet of hosts shares them. Each
function returns an empty string for a good text, else the reason in a few words.

The parsing is the ``cryptography`` library's (a dependency of ansible-core), so a block that looks
right but does not decode, or decodes to something else, is caught as ``openssl`` would catch it.
"""

from __future__ import annotations

import re

_BLOCK = re.compile(r"-----BEGIN ([A-Z0-9 ]+)-----(.*?)-----END \1-----", re.DOTALL)


def _blocks(text, label):
    return ["-----BEGIN %s-----%s-----END %s-----\n" % (label, body, label)
            for kind, body in _BLOCK.findall(text) if kind == label]


def certificate_problem(text):
    """'' when *text* holds one or more PEM X.509 certificates (a CA or a CA bundle), each valid; else why not."""
    if not isinstance(text, str):
        return "not a text"
    blocks = _blocks(text, "CERTIFICATE")
    if not blocks:
        return "no BEGIN CERTIFICATE block"
    from cryptography import x509  # pylint: disable=import-outside-toplevel
    for number, block in enumerate(blocks, 1):
        try:
            x509.load_pem_x509_certificate(block.encode("ascii"))
        except (ValueError, UnicodeEncodeError):
            return ("its certificate block %d of %d does not decode to an X.509 certificate" % (number, len(blocks))
                    if len(blocks) > 1 else "its certificate block does not decode to an X.509 certificate")
    return ""


def public_key_problem(text):
    """'' when *text* holds exactly one PEM public key (a BEGIN PUBLIC KEY block) that decodes; else why not."""
    if not isinstance(text, str):
        return "not a text"
    blocks = _blocks(text, "PUBLIC KEY")
    if not blocks:
        return "no BEGIN PUBLIC KEY block"
    if len(blocks) > 1:
        return "%d PUBLIC KEY blocks, where one key is expected" % len(blocks)
    from cryptography.hazmat.primitives import serialization  # pylint: disable=import-outside-toplevel
    try:
        serialization.load_pem_public_key(blocks[0].encode("ascii"))
    except (ValueError, UnicodeEncodeError, TypeError):
        return "its PUBLIC KEY block does not decode to a public key"
    return ""
