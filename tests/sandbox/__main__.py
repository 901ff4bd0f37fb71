# Copyright: airgap.microshift contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Command line of the test bed: ``python -m tests.sandbox {up,down,status,exec,wan,cleanup,generate}``."""

from __future__ import annotations

import os
import sys

if __package__ in (None, ""):
    # Run by path (python tests/sandbox): make the package importable from the repository root.
    _here = os.path.dirname(os.path.abspath(__file__))
    # Drop this directory from the path (its tests/ package would shadow the repository's tests/).
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _here]
    sys.path.insert(0, os.path.dirname(os.path.dirname(_here)))
    from tests.sandbox.cli import main  # pylint: disable=import-error
else:
    from .cli import main

sys.exit(main())
