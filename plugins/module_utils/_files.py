# Copyright: airgap.microshift contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""Writing files so that a crash never leaves an empty, half-written or stray file.

Plain functions; none imports Ansible. :func:`write_file` is the one small-file writer: a
temporary file in the target directory, written and fsynced, renamed over the target (by
``os.replace`` or by the caller's ``move``), then the directory fsynced so the rename itself
survives a power cut; on any failure the temporary file is removed. The store and the transfer
sets write through it directly.

:func:`ensure_file` is how every module writes a file it manages: it takes the module
(an ``AnsibleModule`` made with ``add_file_common_args=True``), writes through :func:`write_file`
with ``AnsibleModule.atomic_move`` (SELinux contexts and the existing file's attributes kept,
``unsafe_writes`` honoured, the temporary file registered with ``add_cleanup_file``), then applies
the common file options (``mode``, ``owner``, ``group``, SELinux, ``attributes``) with
``set_fs_attributes_if_different``. It writes nothing in check mode and when the content is
already there.

Long writes (blobs, volume files) use :func:`open_temp`: the temporary file is created and
locked (``flock``) while a directory lock is held, so :func:`remove_stale_temps`, which runs
under the same lock, removes only the temporary files whose writer is gone, never those of a
concurrent run.
"""

from __future__ import annotations

import fcntl
import os
import tempfile
import threading

TEMP_PREFIX = ".bundle-"
TEMP_SUFFIX = ".tmp"


def fsync_dir(directory):
    """fsync a directory (after a rename or unlink in it); filesystems that cannot are let be."""
    try:
        fd = os.open(directory or ".", os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def discard(path):
    try:
        os.unlink(path)
    except OSError:
        pass


def read_limited(path, limit):
    """The first ``limit + 1`` bytes of ``path`` at most: a caller that gets more than ``limit``
    knows the file is too large without reading it whole. Raises OSError."""
    with open(path, "rb") as handle:
        return handle.read(limit + 1)


def same_content(path, data):
    """True when ``path`` is a file holding exactly ``data``."""
    try:
        if os.path.getsize(path) != len(data):
            return False
        with open(path, "rb") as handle:
            return handle.read() == data
    except OSError:
        return False


def write_file(path, data, mode=None, move=None, prefix=None, synced_dirs=None):
    """Write ``data`` (bytes) to ``path`` atomically and durably.

    ``mode`` is applied to the temporary file before the rename. ``move(temp, path)`` replaces
    the rename (``AnsibleModule.atomic_move``); it may raise or exit, the temporary file is
    removed all the same. With ``synced_dirs`` (a set), the directory is added to it instead of
    being fsynced now: a caller writing many files fsyncs each directory once, at the end.
    """
    directory = os.path.dirname(os.path.abspath(path))
    fd, temp = tempfile.mkstemp(dir=directory, prefix=prefix or ".%s." % os.path.basename(path)[:32], suffix=TEMP_SUFFIX)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        if mode is not None:
            os.chmod(temp, mode)
        if move is None:
            os.replace(temp, path)
        else:
            move(temp, path)
        temp = None
        if synced_dirs is None:
            fsync_dir(directory)
        else:
            synced_dirs.add(directory)
    finally:
        if temp is not None:
            discard(temp)
    return True


def _umask():
    current = os.umask(0o077)
    os.umask(current)
    return current


def ensure_file(module, path, data, what, mode=None, default_mode=None):
    """Make ``path`` hold ``data`` (bytes) with the attributes the module's file options ask for.

    Returns whether anything changed (or would, in check mode). With ``data`` None the content is
    left as it is (the caller knows it is right) and only the attributes are applied. ``mode`` overrides the module's
    ``mode`` option (a second file with a mode of its own); ``default_mode`` is the mode of a
    new file when neither is given (otherwise the umask decides, as for Ansible's own file
    modules). A new file is created unreadable by others (umask 077 around the move) and gets
    its mode right after, so a secret is never exposed in between. Failures end the module with
    one sentence naming ``what`` (the option that names the file) and the path.
    """
    path = os.path.abspath(path)
    if os.path.isdir(path):
        module.fail_json(msg="%s %s is a directory, not a file." % (what, path))
    directory = os.path.dirname(path)
    if not os.path.isdir(directory):
        module.fail_json(msg="The directory %s of %s %s does not exist." % (directory, what, path))
    exists = os.path.lexists(path)
    changed = data is not None and not same_content(path, data)
    file_args = module.load_file_common_arguments(module.params, path=path)
    if mode is not None:
        file_args["mode"] = mode
    if file_args.get("mode") is None and not exists:
        file_args["mode"] = default_mode if default_mode is not None else 0o666 & ~_umask()
    if changed and not module.check_mode:
        unsafe_writes = bool(module.params.get("unsafe_writes"))

        def move(temp, target):
            module.add_cleanup_file(temp)
            module.atomic_move(temp, target, unsafe_writes=unsafe_writes)

        previous_umask = None if exists else os.umask(0o077)
        try:
            write_file(path, data, move=move)
        except Exception as exc:  # pylint: disable=broad-except
            # atomic_move raises a plain Exception whose cause holds the OSError
            cause = exc if isinstance(exc, OSError) else (exc.__cause__ or exc)
            module.fail_json(msg="Cannot write %s %s: %s." % (what, path, getattr(cause, "strerror", None) or cause))
        finally:
            if previous_umask is not None:
                os.umask(previous_umask)
    if os.path.lexists(path):
        changed = module.set_fs_attributes_if_different(file_args, changed)
    return changed


class DirLock:
    """An exclusive ``flock`` on ``<directory>/<name>``, or on ``directory`` itself when ``name`` is None
    (no file is created: a medium gets nothing it does not carry). Serialises temp-file creation and
    cleanup, and the store's read-modify-write of ``store.json`` (``_store.StoreLock``).

    ``flock`` excludes other processes; threads take turns on ``thread_lock`` first (by default
    one per instance, for threads that share it; a caller whose threads each make their own
    instance passes one lock for all of them).
    """

    def __init__(self, directory, name=None, thread_lock=None):
        self.path = os.path.join(directory, name) if name else directory
        self.fd = None
        self._thread_lock = thread_lock or threading.Lock()

    def __enter__(self):
        self._thread_lock.acquire()
        try:
            if os.path.isdir(self.path):
                self.fd = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY | getattr(os, "O_CLOEXEC", 0))
            else:
                self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o644)
            try:
                fcntl.flock(self.fd, fcntl.LOCK_EX)
            except BaseException:
                os.close(self.fd)
                raise
        except BaseException:
            self._thread_lock.release()
            raise
        return self

    def __exit__(self, *exc):
        try:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
        finally:
            self._thread_lock.release()
        return False


def open_temp(directory, label, lock):
    """A new temporary file in ``directory``, locked for as long as it is open: ``(file object, path)``.

    ``lock`` is a context manager (:class:`DirLock` or the store's lock) also held by
    :func:`remove_stale_temps`: a temporary file is never seen unlocked by the cleanup.
    """
    with lock:
        fd, temp = tempfile.mkstemp(dir=directory, prefix=TEMP_PREFIX + label[:16] + ".", suffix=TEMP_SUFFIX)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BaseException:
            os.close(fd)
            discard(temp)
            raise
    return os.fdopen(fd, "wb", buffering=0), temp


def remove_stale_temps(directory, lock):
    """Remove the temporary files a crashed run left in ``directory`` (ours only, by prefix and suffix).

    Under ``lock``, each candidate is locked without waiting first: a file whose writer still
    runs stays locked by it and is left alone. Returns the names removed.
    """
    removed = []
    with lock:
        try:
            names = os.listdir(directory)
        except OSError:
            return removed
        for name in names:
            if not (name.startswith(TEMP_PREFIX) and name.endswith(TEMP_SUFFIX)):
                continue
            path = os.path.join(directory, name)
            try:
                fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
            except OSError:
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                continue  # a live writer holds it
            finally:
                os.close(fd)
            discard(path)
            removed.append(name)
    return removed


def mount_of(path, mountinfo="/proc/self/mountinfo"):
    """``(device, mount point)`` of the mount ``path`` (or its nearest existing parent) is on.

    Two paths can be hard-linked to each other only within one mount: a bind mount of the same
    filesystem has the same device but another mount point. The mount point is the longest one of
    ``mountinfo`` the resolved path lies under; without ``mountinfo`` it is None.
    """
    probe = os.path.realpath(path)
    while not os.path.exists(probe) and os.path.dirname(probe) != probe:
        probe = os.path.dirname(probe)
    try:
        device = os.stat(probe).st_dev
    except OSError:
        return None, None
    try:
        with open(mountinfo, "r") as handle:
            points = [line.split()[4].replace("\\040", " ") for line in handle if len(line.split()) > 4]
    except OSError:
        return device, None
    best = None
    for point in points:
        if probe == point or probe.startswith(point.rstrip("/") + "/"):
            if best is None or len(point) > len(best):
                best = point
    return device, best
