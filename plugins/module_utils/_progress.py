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

Each line is written with one ``pwrite`` and ends with a newline, so a reader never takes a
half-written line for a whole one (the regexes require the newline). The file's space is
reserved when it is created (NUL bytes follow the text), so a full disk cannot cut it short.
Names and messages never hold tabs or newlines (they are replaced by spaces) and are shortened
to fit their reserved space.
"""

from __future__ import annotations

import os
import threading
import time


NAME_LIMIT = 400          # characters of an item's name kept on its line
MESSAGE_LIMIT = 3000      # characters of the end message kept on its line
_ITEM_SPACE = NAME_LIMIT + 100
_FIXED_SPACE = MESSAGE_LIMIT + 200


def _field(text, limit=None):
    text = " ".join(str(text if text is not None else "").split())
    if limit is not None and len(text) > limit:
        text = text[:limit - 3] + "..."
    return text


def item_line(count, status, name, nbytes):
    return "%d\t%s\t%s\t%d\n" % (count, _field(status, 40), _field(name, NAME_LIMIT), int(nbytes or 0))


def start_line(count, asked):
    return "start\t%d\t%d\n" % (int(count), int(asked))


def end_line(ok, message=None):
    return "end\t%s\t%s\n" % ("ok" if ok else "failed", _field(message, MESSAGE_LIMIT))


def parse(text):
    """``(start, items, end)`` of a progress file's text: dicts (start and end None when absent)."""
    start, items, end = None, [], None
    for line in text.split("\0", 1)[0].splitlines(True):
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


def _append_end(path, line):
    """Write ``line`` where the text of the file stops (its first NUL byte, or its end)."""
    fd = os.open(path, os.O_RDWR)
    try:
        data = b""
        while True:
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            data += chunk
        offset = data.find(b"\0")
        os.pwrite(fd, line.encode("utf-8"), len(data) if offset < 0 else offset)
    finally:
        os.close(fd)


class _NoProgress:
    """What a module writes to when it has no progress file (none asked for, or check mode)."""

    def reserve(self, items):
        pass

    def start(self, count, asked):
        pass

    def item(self, status, name, nbytes=0):
        pass

    def end(self, ok, message=None):
        pass


class ProgressFile:
    """Writes a progress file (created empty, mode 0644; an older file of that name is replaced).

    ``items`` is how many item lines may come: their space (and the end line's) is reserved on
    disk when the file is created, so a disk that fills up meanwhile (the store's, often) never
    keeps the file from saying how the run ended. Readers stop at the first NUL byte.
    """

    def __init__(self, path, items=0):
        self.path = path
        self.count = 0
        self.ended = False
        self._lock = threading.Lock()
        self._offset = 0
        directory = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(directory):
            os.makedirs(directory, 0o750)
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
        self.reserve(items)

    def reserve(self, items):
        """Reserve the space of the end line and of ``items`` item lines (once the caller knows how many)."""
        try:
            os.posix_fallocate(self._fd, 0, _FIXED_SPACE + max(0, int(items)) * _ITEM_SPACE)
        except (OSError, AttributeError):
            pass  # a filesystem without fallocate: the lines are appended as they come

    @classmethod
    def for_module(cls, path, items, check_mode=False):
        """The progress file of a module run, guarded (:meth:`guard`); a stand-in that writes nothing
        when ``path`` is not set or in check mode. Raises OSError when the file cannot be made."""
        if not path or check_mode:
            return _NoProgress()
        progress = cls(path, items=items)
        progress.guard()
        return progress

    def _write(self, line):
        data = line.encode("utf-8")
        try:
            os.pwrite(self._fd, data, self._offset)
            self._offset += len(data)
        except OSError:
            pass  # progress is a courtesy: it never fails the run

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
            os.close(self._fd)

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
            with open(self.path, "rb") as handle:
                dummy, dummy2, end = parse(handle.read().decode("utf-8", "replace"))
            if end is None:
                _append_end(self.path, end_line(False, "the process writing this file ended without a result (killed?)"))
        except BaseException:  # pylint: disable=broad-except
            pass
        os._exit(0)
