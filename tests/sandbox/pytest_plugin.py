# Copyright: airgap.microshift contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""pytest fixtures for the test bed. Enable with ``pytest_plugins = ["tests.sandbox.pytest_plugin"]``.

* ``sandbox``: one tiny sandbox (2 hosts) per test session; ``AMSB_SIZE``/``AMSB_HOSTS`` change it.
* ``sandbox_factory``: ``sandbox_factory(size="tiny", hosts=1, wan={...})`` raises one more,
  torn down at the end of the test.

Both need root (network namespaces); they skip when not root.
"""

from __future__ import annotations

import os

import pytest

from .sandbox import Sandbox


def _need_root():
    if os.geteuid() != 0:
        pytest.skip("the test bed needs root (network and mount namespaces)")


@pytest.fixture(scope="session")
def sandbox(tmp_path_factory):
    _need_root()
    sb = Sandbox(str(tmp_path_factory.mktemp("sandbox")), size=os.environ.get("AMSB_SIZE", "tiny"),
                 hosts=int(os.environ.get("AMSB_HOSTS", "2")))
    sb.up()
    try:
        yield sb
    finally:
        sb.down()


@pytest.fixture
def sandbox_factory(tmp_path_factory):
    _need_root()
    made = []

    def make(**kwargs):
        sb = Sandbox(str(tmp_path_factory.mktemp("sandbox")), **kwargs)
        made.append(sb)
        sb.up()
        return sb

    yield make
    for sb in made:
        sb.down()
