# Copyright: airgap.microshift contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Test bed for airgap.microshift: a simulated internet, a real air gap and isolated MicroShift hosts.

Python API::

    from tests.sandbox import Sandbox
    with Sandbox("/tmp/sb", size="tiny", hosts=2) as sb:
        sb.run("connected", ["skopeo", "inspect", "--authfile", sb.state["pull_secret"], "docker://quay.io/..."])

CLI: ``python -m tests.sandbox up --state-dir DIR --size tiny --hosts 2`` (see ``--help`` and tests/README.md).
"""

from .sandbox import Sandbox, SandboxError, load_state, node_argv, sandbox_id, sweep_all  # noqa: F401
from .release import ensure_release, generate, SIZES  # noqa: F401
