# Copyright: airgap.microshift contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""How mirror_check reads skopeo's errors: the mirror's part first (stderr captured on the test bed)."""

from __future__ import annotations

from ansible_collections.airgap.microshift.plugins.module_utils._mirror_check import explain

SANDBOX_X509 = (
    'time="2026-01-01T00:00:00Z" level=fatal msg="Error parsing image name \\"docker://quay.io/a/b@sha256:%s\\": '
    '(Mirrors also failed: [mirror.airgap.test:8443/ns/a/b@sha256:%s: pinging container registry mirror.airgap.test:8443: '
    'Get \\"https://mirror.airgap.test:8443/v2/\\": x509: certificate signed by unknown authority]): quay.io/a/b@sha256:%s: '
    'pinging container registry quay.io: Get \\"https://quay.io/v2/\\": dial tcp: lookup quay.io on 127.0.0.1:53: '
    'read udp 127.0.0.1:34520->127.0.0.1:53: read: connection refused"\n' % ("1" * 64, "1" * 64, "1" * 64))


def test_explain_reads_the_mirror_error_first():
    kind, reason, detail = explain(SANDBOX_X509)
    # The source's "connection refused" must not turn a certificate problem into a retry.
    assert kind == "permanent"
    assert reason.startswith("the mirror does not serve it: TLS certificate verification failed (x509)")
    assert "mirror.airgap.test:8443/ns/a/b@sha256:" in reason
    assert "the source quay.io failed too" in reason
    assert detail == ""  # the reason quotes skopeo already


def test_explain_without_a_mirror():
    stderr = ('time="x" level=fatal msg="Error parsing image name \\"docker://ghcr.io/a/b:v1\\": pinging container registry '
              'ghcr.io: Get \\"https://ghcr.io/v2/\\": dial tcp: lookup ghcr.io: no such host"')
    kind, reason, detail = explain(stderr)
    assert kind == "permanent"
    assert reason.startswith("no mirror was tried for it")
    assert "no such host" in reason


def test_explain_transient_mirror_error():
    stderr = ('level=fatal msg="(Mirrors also failed: [m:5000/a/b@sha256:%s: reading manifest: received unexpected HTTP status: '
              '503 Service Unavailable]): quay.io/a/b@sha256:%s: no such host"' % ("2" * 64, "2" * 64))
    kind, reason, detail = explain(stderr)
    assert kind == "transient"
    assert "registry server error (5xx)" in reason
