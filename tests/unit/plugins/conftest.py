# Copyright: airgap.microshift contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""The fixtures the unit tests share; what they are made of lives in ``helpers``, the only test
code a test file imports:

- ``helpers.modules``: a module's ``main()`` run in-process with real arguments;
- ``helpers.processes``: child processes that end with their test (``die_with_parent``), free ports;
- ``helpers.registry``: a real ``docker-registry`` on loopback (TLS from a test CA, htpasswd or token
  logins, or plain HTTP; in a private network namespace when asked);
- ``helpers.images``: synthetic OCI images, pushed to such a registry, copied into an image store or
  a ``dir:`` tree;
- ``helpers.stores``: image stores written directly as docs/store-format.md describes;
- ``helpers.release``: the release-info fixtures and RPMs built from them with rpmbuild.

``local_registry`` is a real registry (``docker-registry serve``, TLS from a test CA, htpasswd
logins) on 127.0.0.1, ``token_registry`` the same with token logins, and ``synthetic_images``
builds images and pushes them into ``local_registry``: use a fresh repository namespace per test
so tests do not see each other's pushes. Registries are per test: ansible-test forks every test
and never runs the finalizers of wider-scoped fixtures, so a session registry would be left running.
"""

from __future__ import annotations

import os
import tempfile

import pytest

from ansible_collections.airgap.microshift.tests.unit.plugins.helpers.images import SyntheticImages
from ansible_collections.airgap.microshift.tests.unit.plugins.helpers.modules import reset_module_warnings
from ansible_collections.airgap.microshift.tests.unit.plugins.helpers.registry import NEEDS_TOOLS, REGISTRY_TOOLS, registry_fixture


@pytest.fixture(autouse=True)
def _fresh_module_warnings():
    reset_module_warnings()
    yield


@pytest.fixture
def local_registry(tmp_path_factory):
    """A :class:`~helpers.registry.LocalRegistry` with TLS and htpasswd logins (attributes: host, ca_path,
    cert_dir, username, password, authfile, log_path; helpers: manifest, image_blobs, blob_gets...)."""
    if not REGISTRY_TOOLS:
        pytest.skip(NEEDS_TOOLS)
    yield from registry_fixture(tmp_path_factory, auth="htpasswd")


@pytest.fixture
def token_registry(tmp_path_factory):
    """Like ``local_registry``, with token logins (a :class:`~helpers.registry.TokenServer` realm) instead of htpasswd."""
    if not REGISTRY_TOOLS:
        pytest.skip(NEEDS_TOOLS)
    yield from registry_fixture(tmp_path_factory, auth="token")


@pytest.fixture
def synthetic_images(local_registry, tmp_path):
    """A :class:`~helpers.images.SyntheticImages` bound to ``local_registry``, with a seed unique to the test."""
    return SyntheticImages(local_registry, str(tmp_path / "synthetic"), seed="%s-%d" % (tmp_path.name, os.getpid()))


# -- the fuzzing count, printed at the end of the session ----------------------------------------
# Tests may run in forked children (ansible-test's ansible_forked) on xdist workers: each example
# is counted as one line in a file the whole session shares, named in the environment.

FUZZ_COUNTS_ENV = "AIRGAP_FUZZ_COUNTS"


def pytest_configure(config):
    if not hasattr(config, "workerinput") and FUZZ_COUNTS_ENV not in os.environ:
        fd, path = tempfile.mkstemp(prefix="airgap-fuzz-", suffix=".counts")
        os.close(fd)
        os.environ[FUZZ_COUNTS_ENV] = path
        config.airgap_fuzz_counts = path


def pytest_terminal_summary(terminalreporter):
    path = getattr(terminalreporter.config, "airgap_fuzz_counts", None)
    if not path:
        return
    try:
        with open(path, encoding="utf-8") as handle:
            lines = [line.strip() for line in handle if line.strip()]
    finally:
        os.unlink(path)
    if lines:
        totals = {}
        for reader in lines:
            totals[reader] = totals.get(reader, 0) + 1
        terminalreporter.write_line("fuzzing of outside data: %d examples over %d readers (%s), no traceback" % (
            len(lines), len(totals), ", ".join("%s %d" % (reader, number) for reader, number in sorted(totals.items()))))
