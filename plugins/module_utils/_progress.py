# Copyright: airgap.microshift contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""A progress file that a playbook follows while a module runs in the background.

A module started with ``async`` and ``poll: 0`` appends one line per finished item; the role
waits for the k-th line with ``ansible.builtin.wait_for`` (``search_regex``) and prints it as
the label of loop item k, so a long run shows ``[k/N] <item>`` lines as it goes. The format,
one item per line, fields separated by tabs::

    <k>\\t<status>\\t<name>\\t<bytes>\\n
    end\\t<ok|failed>\\t<message>\\n

A module killed before it could write its ``end`` line (SIGKILL, the out-of-memory killer)
would leave a follower waiting: :meth:`ProgressFile.guard` forks a small watcher that writes
``end failed`` for it when the module's process is gone without one.

Each line is written with one ``write`` on a file opened for appending and ends with a
newline, so a reader never takes a half-written line for a whole one (the regexes require
the newline). Names and messages never hold tabs or newlines (they are replaced by spaces).
"""

from __future__ import annotations

import os
import threading
import time


def _field(text):
    return " ".join(str(text if text is not None else "").split())


def item_line(count, status, name, nbytes):
    return "%d\t%s\t%s\t%d\n" % (count, _field(status), _field(name), int(nbytes or 0))


def start_line(count, asked):
    return "start\t%d\t%d\n" % (int(count), int(asked))


def end_line(ok, message=None):
    return "end\t%s\t%s\n" % ("ok" if ok else "failed", _field(message))


def parse(text):
    """``(start, items, end)`` of a progress file's text: dicts (start and end None when absent)."""
    start, items, end = None, [], None
    for line in text.splitlines(True):
        if not line.endswith("\n"):
            break
        fields = line.rstrip("\n").split("\t")
        if fields[0] == "start" and len(fields) == 3:
            start = {"count": int(fields[1]), "asked": int(fields[2])}
        elif fields[0] == "end" and len(fields) == 3:
            end = {"ok": fields[1] == "ok", "message": fields[2]}
        elif len(fields) == 4 and fields[0].isdigit():
            items.append({"count": int(fields[0]), "status": fields[1], "name": fields[2], "bytes": int(fields[3])})
    return start, items, end


class ProgressFile(object):
    """Writes a progress file (created empty, mode 0644; an older file of that name is replaced)."""

    def __init__(self, path):
        self.path = path
        self.count = 0
        self.ended = False
        self._lock = threading.Lock()
        directory = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(directory):
            os.makedirs(directory, 0o750)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND, 0o644)
        self._handle = os.fdopen(fd, "w")

    def _write(self, line):
        self._handle.write(line)
        self._handle.flush()

    def start(self, count, asked):
        with self._lock:
            if not self.ended:
                self._write(start_line(count, asked))

    def item(self, status, name, nbytes=0):
        with self._lock:
            if self.ended:
                return
            self.count += 1
            self._write(item_line(self.count, status, name, nbytes))

    def end(self, ok, message=None):
        with self._lock:
            if self.ended:
                return
            self.ended = True
            self._write(end_line(ok, message))
            self._handle.close()

    def guard(self, interval=0.5):
        """Fork a watcher that ends the file for this process if it dies without ending it.

        Call before any thread starts. The watcher holds no inherited descriptor (the module's
        stdout stays closable), leaves the process group (a kill of the group leaves it alive)
        and exits as soon as this process is gone.
        """
        parent = os.getpid()
        try:
            pid = os.fork()
        except OSError:
            return False
        if pid:
            return True
        try:
            os.setsid()
            devnull = os.open(os.devnull, os.O_RDWR)
            for fd in (0, 1, 2):
                os.dup2(devnull, fd)
            os.closerange(3, 65536)
            while os.getppid() == parent:
                time.sleep(interval)
            with open(self.path, "r") as handle:
                dummy, dummy2, end = parse(handle.read())
            if end is None:
                fd = os.open(self.path, os.O_WRONLY | os.O_APPEND)
                os.write(fd, end_line(False, "the process writing this file ended without a result (killed?)").encode("utf-8"))
                os.close(fd)
        except BaseException:  # pylint: disable=broad-except
            pass
        os._exit(0)
