# Copyright: airgap.microshift contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""Container auth files (containers-auth.json(5)): read, validate, look up, merge, remove, mask.

``{"auths": {"<registry[:port][/namespace]>": {"auth": base64("user:password"), "email": ...}}}``.
Every other entry, every other key of an entry and every other top-level key is kept as is.
Plain functions with no Ansible dependency; the one reader of auth files (``registry_auth``
edits them, the direct manifest reads of an upload take their credentials from them).
"""

from __future__ import annotations

import base64
import binascii
import copy
import json
import os
import re
import stat

MASK = "********"
# An auth file holds a few credentials: a larger one is not an auth file.
MAX_AUTHFILE_SIZE = 4 * 1024 * 1024
_REGISTRY_RE = re.compile(r"^[^\s/]+(?:/[^\s]+)?$")


class AuthFileError(Exception):
    """An auth file that cannot be used; the message names the file and the problem."""


def encode_auth(username, password):
    return base64.b64encode(("%s:%s" % (username, password)).encode("utf-8")).decode("ascii")


def decode_auth(value):
    """``(username, password)`` of an ``auth`` value; raises ValueError when it is not base64 ``user:password``."""
    if not isinstance(value, str):
        raise ValueError("not a string")
    try:
        raw = base64.b64decode(value.encode("ascii"), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeError, ValueError):
        raise ValueError("not base64")
    if ":" not in raw:
        raise ValueError("not user:password")
    username, password = raw.split(":", 1)
    return username, password


def validate_registry(registry):
    """Raise ValueError unless ``registry`` is ``host[:port][/namespace]`` (no scheme, no spaces)."""
    if not isinstance(registry, str) or not registry or "://" in registry or not _REGISTRY_RE.match(registry):
        raise ValueError("%r is not a registry key (host[:port][/namespace], without a scheme)" % (registry,))


def parse_authfile(text, path):
    """Parse and validate auth file content; ``path`` names the file in error messages."""
    if not text.strip():
        return {"auths": {}}
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise AuthFileError("%s is not valid JSON (%s); it was left untouched" % (path, exc))
    if not isinstance(data, dict):
        raise AuthFileError("%s is not an auth file: its content is not a JSON object; it was left untouched" % path)
    auths = data.setdefault("auths", {})
    if not isinstance(auths, dict):
        raise AuthFileError("%s is not an auth file: 'auths' is not an object; it was left untouched" % path)
    for registry, entry in auths.items():
        if not isinstance(entry, dict):
            raise AuthFileError("%s: the entry for %s is not an object; the file was left untouched" % (path, registry))
        if "auth" in entry:
            try:
                decode_auth(entry["auth"])
            except ValueError as exc:
                raise AuthFileError("%s: the auth of %s is not base64 'user:password' (%s); the file was left untouched"
                                    % (path, registry, exc))
    return data


def read_authfile(path):
    """The parsed and validated auth file at ``path`` (a regular file of UTF-8 JSON).

    Raises :class:`AuthFileError` naming the file: not a regular file, unreadable, too large,
    not UTF-8 or not an auth file.
    """
    try:
        info = os.stat(path)
        if not stat.S_ISREG(info.st_mode):
            raise AuthFileError("%s exists and is not a regular file" % path)
        if info.st_size > MAX_AUTHFILE_SIZE:
            raise AuthFileError("%s has %d bytes, more than an auth file may have; it was left untouched" % (path, info.st_size))
        with open(path, "rb") as handle:
            raw = handle.read(MAX_AUTHFILE_SIZE + 1)
    except OSError as exc:
        raise AuthFileError("cannot read %s: %s" % (path, exc.strerror or exc))
    try:
        text = raw.decode("utf-8")
    except UnicodeError:
        raise AuthFileError("%s is not UTF-8 text; it was left untouched" % path)
    return parse_authfile(text, path)


def uses_helper(data):
    """Whether the auth file delegates credentials to a helper program (``credHelpers``, ``credsStore``)."""
    return bool(data.get("credHelpers") or data.get("credsStore"))


def _normalized_key(key):
    key = key.strip()
    for prefix in ("https://", "http://"):
        if key.startswith(prefix):
            key = key[len(prefix):]
    return key.rstrip("/")


def lookup(data, registry, repository):
    """``(key, entry)`` of the most specific ``auths`` entry for ``registry/repository``, or None.

    The order containers/image uses: ``registry/a/b/c``, ``registry/a/b``, ``registry/a``, then
    ``registry``; keys written with a scheme or a trailing slash count as without.
    """
    entries = dict((_normalized_key(key), value) for key, value in (data or {}).get("auths", {}).items())
    parts = repository.split("/")
    candidates = ["%s/%s" % (registry, "/".join(parts[:n])) for n in range(len(parts), 0, -1)] + [registry]
    for candidate in candidates:
        if candidate in entries:
            return candidate, entries[candidate]
    return None


def entry_credentials(entry):
    """``(username, password, email)`` of an entry (None when it has no ``auth``)."""
    if not isinstance(entry, dict) or "auth" not in entry:
        return None
    username, password = decode_auth(entry["auth"])
    return username, password, entry.get("email")


def set_credentials(data, registry, username, password, email=None):
    """A copy of ``data`` with ``registry`` set to these credentials, and whether that changes anything.

    Compares decoded credentials, so an equivalent encoding is not a change. Other keys of the
    entry (such as ``identitytoken``) are kept.
    """
    new = copy.deepcopy(data)
    auths = new.setdefault("auths", {})
    current = auths.get(registry)
    if entry_credentials(current) == (username, password, email):
        return new, False
    entry = dict(current) if isinstance(current, dict) else {}
    entry["auth"] = encode_auth(username, password)
    if email:
        entry["email"] = email
    else:
        entry.pop("email", None)
    auths[registry] = entry
    return new, True


def remove_credentials(data, registry):
    new = copy.deepcopy(data)
    auths = new.setdefault("auths", {})
    if registry not in auths:
        return new, False
    del auths[registry]
    return new, True


def masked(data):
    """What a diff may show: registries, usernames and emails; every secret masked."""
    view = {}
    for registry, entry in sorted((data or {}).get("auths", {}).items()):
        shown = {}
        if isinstance(entry, dict):
            if "auth" in entry:
                try:
                    shown["username"] = decode_auth(entry["auth"])[0]
                except ValueError:
                    shown["username"] = None
                shown["auth"] = MASK
            if entry.get("email"):
                shown["email"] = entry["email"]
            for key in sorted(entry):
                if key not in ("auth", "email"):
                    shown[key] = MASK
        view[registry] = shown
    return {"auths": view}


def dumps(data):
    return json.dumps(data, indent=2, sort_keys=False) + "\n"
