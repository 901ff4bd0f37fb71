# Copyright: airgap.microshift contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""Child processes of the tests: run to completion, or started so that they end with their test."""

from __future__ import annotations

import signal
import socket
import subprocess
import time


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


def run(argv, **kwargs):
    """``argv`` to completion; its stdout (text); an AssertionError with its stderr when it fails."""
    result = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True, check=False, **kwargs)
    if result.returncode != 0:
        raise AssertionError("%s failed (%d): %s" % (" ".join(argv), result.returncode, result.stderr[-2000:]))
    return result.stdout


def stop(process, timeout=10):
    """End a child started by a test: SIGTERM, then SIGKILL when it does not go."""
    if process is None or process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout)


def wait_until(ready, process, log_path, what, timeout=30.0):
    """Poll ``ready()`` until it is true; fail with the log's end if ``process`` exits or time runs out."""
    deadline = time.monotonic() + timeout
    while not ready():
        if process.poll() is not None:
            with open(log_path, errors="replace") as handle:
                raise RuntimeError("%s exited: %s" % (what, handle.read()[-2000:]))
        if time.monotonic() > deadline:
            raise RuntimeError("%s did not start within %d s" % (what, timeout))
        time.sleep(0.05)


def free_port():
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
    finally:
        sock.close()
