# Copyright: airgap.microshift contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""Running a module's ``main()`` in-process, as Ansible passes it its arguments."""

from __future__ import annotations

import json

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


def reset_module_warnings():
    """Module warnings are process-wide: a test that runs main() in-process must not see the
    warnings of an earlier one (ansible-test forks per test, plain pytest does not)."""
    from ansible.module_utils.common import warnings as module_warnings
    for name in ("_global_warnings", "_global_deprecations"):
        store = getattr(module_warnings, name, None)
        if store is not None:
            store.clear()
