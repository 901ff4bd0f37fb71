# Copyright: airgap.microshift contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""What a host is and holds, read in one pass; the files a role manages saved and put back.

Plain Python with no Ansible dependency, for ``host_state``. A role that configures many hosts
pays for every task on every host, so the questions it asks before it touches a host (which OS
family, is it an rpm-ostree host, is skopeo there, is a unit installed, which files exist) and the
copy of the files it may have to restore are answered here in one module run instead of one task
each.
"""

from __future__ import annotations

import base64
import grp
import os
import pwd
import stat

from ansible_collections.airgap.microshift.plugins.module_utils._files import fsync_dir, write_file

# The managed files are small text files (a CA, a drop-in, a pull secret, a policy): a larger one
# is not what the role wrote and is refused rather than carried in a task result.
MAX_SAVED_BYTES = 4 * 1024 * 1024

# ID and ID_LIKE of os-release(5) that name an OS family the way Ansible's facts do.
_FAMILIES = (
    ("RedHat", ("rhel", "centos", "fedora", "rocky", "almalinux", "ol", "redhat")),
    ("Debian", ("debian", "ubuntu")),
)


class HostStateError(Exception):
    """A file cannot be saved or restored; the message names it."""


def parse_os_release(text):
    """``{KEY: value}`` of an os-release(5) file (quotes removed, comments and bad lines skipped)."""
    values = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, value = line.split("=", 1)
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
            value = value[1:-1]
        values[key.strip()] = value
    return values


def os_family(release):
    """The OS family (``RedHat``, ``Debian``) of an os-release dict, else its ID (``""`` when unknown)."""
    ids = [release.get("ID", "").lower()] + release.get("ID_LIKE", "").lower().split()
    for family, names in _FAMILIES:
        if any(name in names for name in ids):
            return family
    return release.get("ID", "")


def read_os_family(paths=("/etc/os-release", "/usr/lib/os-release")):
    for path in paths:
        try:
            with open(path, encoding="utf-8", errors="replace") as handle:
                return os_family(parse_os_release(handle.read()))
        except OSError:
            continue
    return ""


def _name(lookup, ident):
    try:
        return lookup(ident)[0]
    except KeyError:
        return str(ident)


def save(path):
    """The state of one file: ``exists``, and when it does ``mode``, ``owner``, ``group`` and ``content`` (base64)."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return {"exists": False}
    except OSError as exc:
        raise HostStateError("cannot read %s: %s" % (path, exc.strerror or exc)) from exc
    if not stat.S_ISREG(info.st_mode):
        raise HostStateError("%s is not a regular file, so it cannot be saved and restored" % path)
    if info.st_size > MAX_SAVED_BYTES:
        raise HostStateError("%s holds %d bytes, more than the %d a managed file may hold" % (path, info.st_size, MAX_SAVED_BYTES))
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except OSError as exc:
        raise HostStateError("cannot read %s: %s" % (path, exc.strerror or exc)) from exc
    return {"exists": True, "mode": "%04o" % stat.S_IMODE(info.st_mode), "owner": _name(pwd.getpwuid, info.st_uid),
            "group": _name(grp.getgrgid, info.st_gid), "content": base64.b64encode(data).decode("ascii")}


def save_all(paths):
    """``{path: state}`` of every path (each once)."""
    return {path: save(path) for path in dict.fromkeys(paths)}


def _ids(entry, path):
    try:
        uid = pwd.getpwnam(entry["owner"]).pw_uid if not str(entry["owner"]).isdigit() else int(entry["owner"])
        gid = grp.getgrnam(entry["group"]).gr_gid if not str(entry["group"]).isdigit() else int(entry["group"])
    except KeyError as exc:
        raise HostStateError("cannot restore %s: its owner or group %s no longer exists" % (path, exc)) from exc
    return uid, gid


def differs(path, entry):
    """True when ``path`` is not as ``entry`` (a :func:`save` result) describes it."""
    current = save(path)
    if not entry.get("exists"):
        return current["exists"]
    return current != {key: entry[key] for key in ("exists", "mode", "owner", "group", "content")}


def restore(path, entry, check_mode=False):
    """Put ``path`` back as ``entry`` says (content, mode, owner, group, atomically), or remove it; True when it changed."""
    for key in ("exists",) + (("mode", "owner", "group", "content") if entry.get("exists") else ()):
        if key not in entry:
            raise HostStateError("the saved state of %s has no %s: pass what a save returned" % (path, key))
    if not differs(path, entry):
        return False
    if check_mode:
        return True
    if not entry["exists"]:
        try:
            os.unlink(path)
        except FileNotFoundError:
            return False
        except OSError as exc:
            raise HostStateError("cannot remove %s: %s" % (path, exc.strerror or exc)) from exc
        fsync_dir(os.path.dirname(path))
        return True
    try:
        data = base64.b64decode(entry["content"], validate=True)
        mode = int(str(entry["mode"]), 8)
    except ValueError as exc:
        raise HostStateError("the saved state of %s is not valid: %s" % (path, exc)) from exc
    uid, gid = _ids(entry, path)
    directory = os.path.dirname(path)
    try:
        os.makedirs(directory, exist_ok=True)

        def move(temp, dest):
            os.chown(temp, uid, gid)
            os.chmod(temp, mode)
            os.replace(temp, dest)

        write_file(path, data, mode=mode, move=move)
    except OSError as exc:
        raise HostStateError("cannot restore %s: %s" % (path, exc.strerror or exc)) from exc
    return True


def restore_all(saved, check_mode=False):
    """Restore every file of ``saved`` (``{path: state}``); the list of those that changed."""
    changed = []
    problems = []
    for path, entry in saved.items():
        try:
            if restore(path, entry, check_mode):
                changed.append(path)
        except HostStateError as exc:
            problems.append(str(exc))
    if problems:
        raise HostStateError("; ".join(problems) + (" (restored: %s)" % ", ".join(changed) if changed else ""))
    return changed


def _wanted_ids(owner, group, path):
    try:
        uid = -1 if owner is None else (int(owner) if str(owner).isdigit() else pwd.getpwnam(owner).pw_uid)
    except KeyError as exc:
        raise HostStateError("the owner %s of %s does not exist" % (owner, path)) from exc
    try:
        gid = -1 if group is None else (int(group) if str(group).isdigit() else grp.getgrnam(group).gr_gid)
    except KeyError as exc:
        raise HostStateError("the group %s of %s does not exist" % (group, path)) from exc
    return uid, gid


def file_differs(path, data, mode, owner=None, group=None):
    """True when ``path`` does not hold ``data`` with ``mode`` (an int) and, when given, ``owner`` and ``group``."""
    uid, gid = _wanted_ids(owner, group, path)
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return True
    except OSError as exc:
        raise HostStateError("cannot read %s: %s" % (path, exc.strerror or exc)) from exc
    if not stat.S_ISREG(info.st_mode):
        raise HostStateError("%s is not a regular file" % path)
    if stat.S_IMODE(info.st_mode) != mode or uid not in (-1, info.st_uid) or gid not in (-1, info.st_gid):
        return True
    if info.st_size != len(data):
        return True
    try:
        with open(path, "rb") as handle:
            return handle.read() != data
    except OSError as exc:
        raise HostStateError("cannot read %s: %s" % (path, exc.strerror or exc)) from exc


def apply_files(files, move=None):
    """Make every file of ``files`` as described, all of them or none.

    ``files`` is a list of dicts: ``path``, ``data`` (bytes), ``mode`` (int), ``owner`` and
    ``group`` (names or ids; None keeps the file's), ``dir_mode`` (int: the mode of a missing parent
    directory, created with its missing parents). Every file is saved first (:func:`save`); a file
    that already is as described is not touched. A new file is created unreadable by others and
    gets its mode right after. ``move(temp, path)`` replaces the rename (see
    :func:`write_file`).

    Returns the journal ``{"changed": [paths], "saved": {path: state}, "created": [directories]}``.
    When one file cannot be written, every file written before it is put back and every directory
    created is removed (:func:`undo_files`), and :class:`HostStateError` names the file.
    """
    journal = {"changed": [], "saved": {}, "created": []}
    pending = []
    for entry in files:
        path = entry["path"]
        if file_differs(path, entry["data"], entry["mode"], entry.get("owner"), entry.get("group")):
            journal["saved"][path] = save(path)
            pending.append(entry)
    try:
        for entry in pending:
            path = entry["path"]
            uid, gid = _wanted_ids(entry.get("owner"), entry.get("group"), path)
            directory = os.path.dirname(path)
            missing = []
            parent = directory
            while parent and not os.path.isdir(parent):
                missing.append(parent)
                parent = os.path.dirname(parent)
            for new_dir in reversed(missing):
                os.mkdir(new_dir, entry.get("dir_mode", 0o755))
                journal["created"].append(new_dir)
                os.chown(new_dir, uid, gid)
                os.chmod(new_dir, entry.get("dir_mode", 0o755))
            previous = os.umask(0o077)
            try:
                write_file(path, entry["data"], move=move)
            finally:
                os.umask(previous)
            journal["changed"].append(path)
            os.chown(path, uid, gid)
            os.chmod(path, entry["mode"])
    except Exception as exc:  # pylint: disable=broad-except
        # OSError, HostStateError, or the plain Exception of AnsibleModule.atomic_move, whose cause holds the OSError
        cause = exc if isinstance(exc, (OSError, HostStateError)) else (exc.__cause__ or exc)
        message = "cannot write %s: %s" % (entry["path"], getattr(cause, "strerror", None) or cause)
        try:
            undo_files(journal)
        except HostStateError as undo_exc:
            raise HostStateError("%s, and putting back the files written before failed: %s" % (message, undo_exc)) from exc
        raise HostStateError(message + (", so the files written before were put back as they were" if journal["changed"]
                                        else "")) from exc
    return journal


def undo_files(journal):
    """Put back the files an :func:`apply_files` journal changed and remove the directories it created."""
    restore_all({path: journal["saved"][path] for path in journal["changed"] if path in journal["saved"]})
    for directory in reversed(journal["created"]):
        try:
            os.rmdir(directory)
        except OSError:
            pass


def unit_states(text):
    """``{unit: {property: value}}`` from ``systemctl show --property=Id,... units`` (blocks separated by blank lines)."""
    units = {}
    for block in text.strip().split("\n\n"):
        props = dict(line.split("=", 1) for line in block.splitlines() if "=" in line)
        if props.get("Id"):
            units[props["Id"]] = {k: v for k, v in props.items() if k != "Id"}
    return units


__all__ = ["HostStateError", "MAX_SAVED_BYTES", "apply_files", "differs", "file_differs", "os_family", "parse_os_release",
           "read_os_family", "restore", "restore_all", "save", "save_all", "undo_files", "unit_states"]
