# Copyright: airgap.microshift contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""containers-registries.conf(5) version 2 drop-ins: build, validate, render and re-read them.

Plain functions with no Ansible dependency. A drop-in is handled as structured data (the
dictionary a TOML parser returns), checked against the version 2 schema, rendered as TOML and
read back twice before anyone writes it: by :func:`parse_toml_subset`, a strict parser of the
TOML subset :func:`render` emits (RHEL 9's Python 3.9 has no ``tomllib``), and by ``tomllib``
where the Python has it. Both must give back the data that was rendered.

Typical use::

    data = mirror_config("mirror.example.com:8443", namespace="microshift",
                         registries=registries_for(images))
    text = checked_render(data, header="Ansible managed")   # raises RegistriesConfError
"""

from __future__ import annotations

import json
import re

try:
    import tomllib as _tomllib
except ImportError:  # Python < 3.11 (RHEL 9): the strict subset parser is the only reader.
    _tomllib = None

from ansible_collections.airgap.microshift.plugins.module_utils._reference import (
    DEFAULT_REGISTRIES,
    InvalidReference,
    parse_reference,
)

SHORT_NAME_MODES = ("enforcing", "permissive", "disabled")
PULL_FROM_MIRROR = ("all", "digest-only", "tag-only")

# Order of keys in the rendered text; also the list of the keys the schema knows.
TOP_LEVEL_KEYS = ("unqualified-search-registries", "short-name-mode", "credential-helpers",
                  "additional-layer-store-auth-helper", "registry", "aliases")
REGISTRY_KEYS = ("prefix", "location", "insecure", "blocked", "mirror-by-digest-only", "mirror")
MIRROR_KEYS = ("location", "insecure", "pull-from-mirror")

_HOST_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_HOST = r"(?:%s(?:\.%s)*|\[[0-9a-fA-F:.]+\])" % (_HOST_COMPONENT, _HOST_COMPONENT)
_PORT = r"(?::(?P<port>[0-9]{1,5}))?"
_PATH = r"(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*"
_LOCATION_RE = re.compile(r"^%s%s%s$" % (_HOST, _PORT, _PATH))
_WILDCARD_PREFIX_RE = re.compile(r"^\*\.%s(?:\.%s)*$" % (_HOST_COMPONENT, _HOST_COMPONENT))
_BARE_KEY_RE = re.compile(r"^[A-Za-z0-9_-]+$")


class RegistriesConfError(ValueError):
    """A drop-in that is not a valid registries.conf version 2 file; ``errors`` lists why."""

    def __init__(self, errors, what="the registries.conf drop-in"):
        if isinstance(errors, str):
            errors = [errors]
        self.errors = list(errors)
        super().__init__("%s is invalid: %s" % (what, "; ".join(self.errors)))


class TomlSubsetError(ValueError):
    """Text outside the TOML subset :func:`render` emits, or invalid TOML."""


# --------------------------------------------------------------------------- locations

def location_problem(value, what="location", allow_wildcard=False):
    """None when ``value`` is a valid ``host[:port][/path]``, else a sentence saying why not."""
    if not isinstance(value, str):
        return "%s must be a string, not %s" % (what, _type_name(value))
    if not value:
        return "%s must not be empty" % what
    if value != value.strip():
        return "%s %r has leading or trailing white space" % (what, value)
    if "://" in value:
        return "%s %r must not carry a scheme (write host[:port][/path])" % (what, value)
    if allow_wildcard and value.startswith("*."):
        if _WILDCARD_PREFIX_RE.match(value):
            return None
        return "%s %r is not a valid wildcard (*.domain)" % (what, value)
    match = _LOCATION_RE.match(value)
    if not match:
        if "@" in value or value.rsplit("/", 1)[-1].count(":") and "/" in value:
            return "%s %r must not carry a tag or digest (write host[:port][/path])" % (what, value)
        return "%s %r is not a valid host[:port][/path]" % (what, value)
    port = match.group("port")
    if port is not None and not 0 < int(port) < 65536:
        return "%s %r has a port outside 1-65535" % (what, value)
    return None


def registries_for(images, defaults=DEFAULT_REGISTRIES):
    """The source registries to mirror: ``defaults`` then every other registry of ``images``.

    Raises :class:`RegistriesConfError` naming every reference that does not parse.
    """
    result = []
    for registry in defaults:
        if registry not in result:
            result.append(registry)
    errors = []
    extra = []
    for ref in images or []:
        try:
            registry = parse_reference(ref).registry
        except InvalidReference as exc:
            errors.append(str(exc))
            continue
        if registry not in result and registry not in extra:
            extra.append(registry)
    if errors:
        raise RegistriesConfError(errors, what="the image list")
    return result + sorted(extra)


def mirror_location(mirror, namespace=None):
    """``mirror[/namespace]``: where a source registry's repositories live on the mirror."""
    base = mirror.strip().rstrip("/")
    if namespace and namespace.strip("/"):
        base += "/" + namespace.strip("/")
    return base


def mirror_config(mirror, namespace=None, registries=DEFAULT_REGISTRIES, digest_only=True, insecure=False,
                  additional=None):
    """The drop-in as structured data.

    One ``[[registry]]`` for the mirror itself, then one per source registry with the mirror
    as its only ``[[registry.mirror]]``; ``additional`` tables come last, as given.
    ``insecure`` is written only when true.
    """
    mirror = mirror.strip().rstrip("/")
    target = mirror_location(mirror, namespace)
    own = {"location": mirror}
    if insecure:
        own["insecure"] = True
    entries = [own]
    for source in registries:
        if source == mirror:
            continue
        entry_mirror = {"location": target}
        if insecure:
            entry_mirror["insecure"] = True
        entries.append({
            "prefix": source,
            "location": source,
            "mirror-by-digest-only": bool(digest_only),
            "mirror": [entry_mirror],
        })
    for table in additional or []:
        entries.append(table)
    return {"registry": entries}


def dropin_argument_spec():
    """The options that make a drop-in (:func:`build_dropin`), as an ``AnsibleModule`` argument spec:
    the modules that write one share them. ``mirror`` is required or not by each module."""
    return dict(
        mirror=dict(type="str"),
        namespace=dict(type="str"),
        registries=dict(type="list", elements="str", default=list(DEFAULT_REGISTRIES)),
        images=dict(type="list", elements="str", default=[]),
        digest_only=dict(type="bool", default=True),
        insecure=dict(type="bool", default=False),
        additional_registries=dict(type="list", elements="dict", default=[]),
        header=dict(type="str"),
    )


def insecure_warning(path, location):
    """The warning of a drop-in that lets the containers tools talk to the mirror without TLS verification."""
    return ("The drop-in %s allows plain HTTP or unverified TLS to the mirror %s (insecure=true): anyone on the path "
            "can read and change the images." % (path, location.split("/")[0]))


class DropinOptionError(ValueError):
    """An option that cannot make a drop-in; the message is one sentence naming the option and the file."""

    def __init__(self, message, errors=None):
        self.errors = list(errors or [])
        super().__init__(message)


def build_dropin(mirror, namespace=None, registries=DEFAULT_REGISTRIES, images=(), digest_only=True, insecure=False,
                 additional=None, header=None, path="the drop-in"):
    """The drop-in that sends the pulls of ``registries`` and of the registries of ``images`` to ``mirror``.

    Returns ``(text, sources, location)``: the checked text (:func:`checked_render`), the source
    registries sent to the mirror and the mirror location (``mirror[/namespace]``). Raises
    :class:`DropinOptionError` naming the option at fault and ``path`` (nothing is to be written).
    """
    mirror = (mirror or "").strip().rstrip("/")
    problem = location_problem(mirror, "mirror")
    if problem is None and "/" in mirror:
        problem = "mirror %r must be host or host:port (put a path in namespace)" % mirror
    if problem:
        raise DropinOptionError("Option %s; the drop-in %s was not changed." % (problem, path))
    namespace = (namespace or "").strip("/") or None
    for source in registries:
        problem = location_problem(source, "registries entry")
        if problem:
            raise DropinOptionError("Option %s; the drop-in %s was not changed." % (problem, path))
    try:
        sources = registries_for(images, defaults=registries)
    except RegistriesConfError as exc:
        raise DropinOptionError("Option images: %s; the drop-in %s was not changed." % ("; ".join(exc.errors), path),
                                exc.errors)
    try:
        data = mirror_config(mirror, namespace, sources, digest_only=digest_only, insecure=insecure, additional=additional)
        text = checked_render(data, header=header, what="the drop-in %s" % path)
    except RegistriesConfError as exc:
        raise DropinOptionError("%s; it was not written and the current file was left as it was." % exc, exc.errors)
    return text, [source for source in sources if source != mirror], mirror_location(mirror, namespace)


# --------------------------------------------------------------------------- schema

def _type_name(value):
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a table"
    return type(value).__name__


def _check_type(errors, where, key, value, kind):
    ok = {
        "str": isinstance(value, str),
        "bool": isinstance(value, bool),
        "list_str": isinstance(value, list) and all(isinstance(item, str) for item in value),
        "tables": isinstance(value, list) and all(isinstance(item, dict) for item in value),
        "table_str": isinstance(value, dict) and all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()),
    }[kind]
    if not ok:
        expected = {"str": "a string", "bool": "a boolean (true or false)", "list_str": "a list of strings",
                    "tables": "a list of tables", "table_str": "a table of strings"}[kind]
        errors.append("%s%s must be %s, not %s" % (where, key, expected, _type_name(value)))
    return ok


_TOP_TYPES = {"unqualified-search-registries": "list_str", "short-name-mode": "str", "credential-helpers": "list_str",
              "additional-layer-store-auth-helper": "str", "registry": "tables", "aliases": "table_str"}
_REGISTRY_TYPES = {"prefix": "str", "location": "str", "insecure": "bool", "blocked": "bool",
                   "mirror-by-digest-only": "bool", "mirror": "tables"}
_MIRROR_TYPES = {"location": "str", "insecure": "bool", "pull-from-mirror": "str"}


def validate(data):
    """Every problem of ``data`` against the registries.conf version 2 schema, as sentences.

    Known keys and their types at the top level, in ``[[registry]]`` and in
    ``[[registry.mirror]]``; ``location`` required and a valid ``host[:port][/path]``; no two
    ``[[registry]]`` with the same prefix (the prefix defaults to the location); values of
    ``short-name-mode`` and ``pull-from-mirror``; no ``pull-from-mirror`` under
    ``mirror-by-digest-only = true`` (containers/image refuses that mix).
    """
    errors = []
    if not isinstance(data, dict):
        return ["the document must be a table, not %s" % _type_name(data)]
    for key in data:
        if key not in _TOP_TYPES:
            errors.append("unknown top-level key %r (known: %s)" % (key, ", ".join(TOP_LEVEL_KEYS)))
    for key, kind in _TOP_TYPES.items():
        if key in data:
            _check_type(errors, "", key, data[key], kind)
    if isinstance(data.get("short-name-mode"), str) and data["short-name-mode"] not in SHORT_NAME_MODES:
        errors.append("short-name-mode must be one of %s, not %r" % (", ".join(SHORT_NAME_MODES), data["short-name-mode"]))
    if isinstance(data.get("unqualified-search-registries"), list):
        for item in data["unqualified-search-registries"]:
            problem = isinstance(item, str) and location_problem(item, "unqualified-search-registries entry")
            if problem:
                errors.append(problem)
    registries = data.get("registry")
    if isinstance(registries, list):
        seen = {}
        for index, table in enumerate(registries):
            if isinstance(table, dict):
                _validate_registry(errors, index, table, seen)
    return errors


def _check_table(errors, where, table, types, known):
    """Unknown keys, the type of every known one, and the ``location`` every table needs (whether it has one)."""
    for key in table:
        if key not in types:
            errors.append("%sunknown key %r (known: %s)" % (where, key, ", ".join(known)))
    for key, kind in types.items():
        if key in table:
            _check_type(errors, where, key, table[key], kind)
    if "location" not in table:
        errors.append("%slocation is required" % where)
        return False
    return True


def _validate_registry(errors, index, table, seen):
    where = "[[registry]] #%d: " % (index + 1)
    location = table.get("location")
    prefix = table.get("prefix")
    if _check_table(errors, where, table, _REGISTRY_TYPES, REGISTRY_KEYS) and isinstance(location, str):
        problem = location_problem(location, "location")
        if problem:
            errors.append(where + problem)
    if isinstance(prefix, str):
        problem = location_problem(prefix, "prefix", allow_wildcard=True)
        if problem:
            errors.append(where + problem)
    effective = prefix if isinstance(prefix, str) and prefix else location
    if isinstance(effective, str) and effective:
        if effective in seen:
            errors.append("%sprefix %r is already used by [[registry]] #%d" % (where, effective, seen[effective] + 1))
        else:
            seen[effective] = index
    mirrors = table.get("mirror")
    if isinstance(mirrors, list):
        for number, mirror in enumerate(mirrors):
            if isinstance(mirror, dict):
                _validate_mirror(errors, "%s[[registry.mirror]] #%d: " % (where, number + 1), mirror,
                                 table.get("mirror-by-digest-only") is True)


def _validate_mirror(errors, where, mirror, digest_only):
    if _check_table(errors, where, mirror, _MIRROR_TYPES, MIRROR_KEYS) and isinstance(mirror["location"], str):
        problem = location_problem(mirror["location"], "location")
        if problem:
            errors.append(where + problem)
    pull = mirror.get("pull-from-mirror")
    if isinstance(pull, str):
        if pull not in PULL_FROM_MIRROR:
            errors.append("%spull-from-mirror must be one of %s, not %r" % (where, ", ".join(PULL_FROM_MIRROR), pull))
        elif digest_only:
            errors.append("%spull-from-mirror cannot be set when the registry has mirror-by-digest-only = true" % where)


def check(data, what="the registries.conf drop-in"):
    """Raise :class:`RegistriesConfError` listing every problem of ``data``."""
    errors = validate(data)
    if errors:
        raise RegistriesConfError(errors, what)


# --------------------------------------------------------------------------- rendering

def _string(value):
    out = ['"']
    for char in value:
        if char == '"':
            out.append('\\"')
        elif char == "\\":
            out.append("\\\\")
        elif char == "\n":
            out.append("\\n")
        elif char == "\t":
            out.append("\\t")
        elif ord(char) < 0x20 or ord(char) == 0x7f:
            out.append("\\u%04x" % ord(char))
        else:
            out.append(char)
    out.append('"')
    return "".join(out)


def _value(value):
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return _string(value)
    if isinstance(value, list):
        return "[" + ", ".join(_value(item) for item in value) + "]"
    raise TypeError("cannot render %s" % _type_name(value))


def _key(key):
    return key if _BARE_KEY_RE.match(key) else _string(key)


_CONTROL_RE = re.compile(r"[\x00-\x08\x0b-\x1f\x7f\u0085\u2028\u2029]")


def header_problem(header):
    """None when ``header`` can become TOML comments; else why not (a control character breaks the file)."""
    if header is None:
        return None
    match = _CONTROL_RE.search(header.replace("\r\n", "\n"))
    if match:
        return "header holds the control character %r, which a TOML comment cannot hold" % match.group(0)
    return None


def comment_lines(header):
    """``header`` as TOML comment lines (a line already starting with ``#`` is kept)."""
    lines = []
    problem = header_problem(header)
    if problem:
        raise RegistriesConfError([problem])
    for line in (header or "").replace("\r\n", "\n").split("\n"):
        line = line.rstrip()
        if line.startswith("#"):
            lines.append(line)
        else:
            lines.append(("# " + line).rstrip())
    return lines


def render(data, header=None):
    """TOML text of ``data`` (validate it first); ``header`` becomes leading comments."""
    lines = comment_lines(header)
    for key in TOP_LEVEL_KEYS:
        if key in data and key not in ("registry", "aliases"):
            lines.append("%s = %s" % (key, _value(data[key])))
    for table in data.get("registry", []):
        if lines:
            lines.append("")
        lines.append("[[registry]]")
        for key in REGISTRY_KEYS:
            if key in table and key != "mirror":
                lines.append("%s = %s" % (key, _value(table[key])))
        for mirror in table.get("mirror", []):
            lines.append("")
            lines.append("[[registry.mirror]]")
            for key in MIRROR_KEYS:
                if key in mirror:
                    lines.append("%s = %s" % (key, _value(mirror[key])))
    if "aliases" in data:
        if lines:
            lines.append("")
        lines.append("[aliases]")
        for name in sorted(data["aliases"]):
            lines.append("%s = %s" % (_key(name), _value(data["aliases"][name])))
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- strict re-reading

_ESCAPES = {'"': '"', "\\": "\\", "n": "\n", "t": "\t", "b": "\b", "f": "\f", "r": "\r"}


class _Line:
    def __init__(self, text, number):
        self.text = text
        self.pos = 0
        self.number = number

    def error(self, message):
        return TomlSubsetError("line %d: %s" % (self.number, message))

    def skip_space(self):
        while self.pos < len(self.text) and self.text[self.pos] in " \t":
            self.pos += 1

    def at_end(self):
        """True at the end of the line or at a comment."""
        self.skip_space()
        return self.pos >= len(self.text) or self.text[self.pos] == "#"

    def peek(self):
        return self.text[self.pos] if self.pos < len(self.text) else ""

    def expect(self, char):
        self.skip_space()
        if self.peek() != char:
            raise self.error("expected %r at column %d" % (char, self.pos + 1))
        self.pos += 1

    def string(self):
        self.expect('"')
        out = []
        while True:
            if self.pos >= len(self.text):
                raise self.error("unterminated string")
            char = self.text[self.pos]
            self.pos += 1
            if char == '"':
                return "".join(out)
            if char == "\\":
                code = self.peek()
                self.pos += 1
                if code in _ESCAPES:
                    out.append(_ESCAPES[code])
                elif code == "u" and re.match(r"^[0-9a-fA-F]{4}$", self.text[self.pos:self.pos + 4]):
                    out.append(chr(int(self.text[self.pos:self.pos + 4], 16)))
                    self.pos += 4
                else:
                    raise self.error("invalid escape sequence \\%s" % code)
            elif ord(char) < 0x20 and char != "\t" or ord(char) == 0x7f:
                raise self.error("control character in a string")
            else:
                out.append(char)

    def key(self):
        self.skip_space()
        if self.peek() == '"':
            return self.string()
        match = re.match(r"[A-Za-z0-9_-]+", self.text[self.pos:])
        if not match:
            raise self.error("expected a key at column %d" % (self.pos + 1))
        self.pos += match.end()
        return match.group(0)

    def value(self):
        self.skip_space()
        char = self.peek()
        if char == '"':
            if self.text.startswith('"""', self.pos):
                raise self.error("multi-line strings are not in the supported subset")
            return self.string()
        if char == "[":
            self.pos += 1
            items = []
            while True:
                self.skip_space()
                if self.peek() == "]":
                    self.pos += 1
                    return items
                items.append(self.value())
                self.skip_space()
                if self.peek() == ",":
                    self.pos += 1
                elif self.peek() != "]":
                    raise self.error("expected ',' or ']' in an array")
        for word, result in (("true", True), ("false", False)):
            if self.text.startswith(word, self.pos) and not re.match(r"[A-Za-z0-9_-]", self.text[self.pos + len(word):self.pos + len(word) + 1]):
                self.pos += len(word)
                return result
        raise self.error("unsupported value at column %d (strings, booleans and arrays only)" % (self.pos + 1))


def parse_toml_subset(text):
    """Parse the TOML subset that :func:`render` emits, strictly.

    Comments, blank lines, ``[table]``, ``[[array.of.tables]]``, ``key = value`` with bare or
    quoted keys, basic strings, booleans and one-line arrays. Anything else (or anything TOML
    forbids, such as a key defined twice) raises :class:`TomlSubsetError` with the line number.
    """
    root = {}
    current = root
    explicit_tables = set()
    for number, raw in enumerate(text.splitlines(), 1):
        line = _Line(raw, number)
        if line.at_end():
            continue
        if raw.lstrip().startswith("[["):
            line.skip_space()
            line.pos += 2
            path = _header_path(line)
            line.expect("]")
            line.expect("]")
            current = _append_table(root, path, line)
        elif line.peek() == "[":
            line.pos += 1
            path = _header_path(line)
            line.expect("]")
            if path in explicit_tables:
                raise line.error("table [%s] defined twice" % ".".join(path))
            explicit_tables.add(path)
            current = _open_table(root, path, line)
        else:
            key = line.key()
            line.skip_space()
            if line.peek() == ".":
                raise line.error("dotted keys are not in the supported subset")
            line.expect("=")
            value = line.value()
            if key in current:
                raise line.error("key %r defined twice in the same table" % key)
            current[key] = value
        if not line.at_end():
            raise line.error("unexpected text after the end of the statement: %r" % line.text[line.pos:])
    return root


def _header_path(line):
    parts = [line.key()]
    while True:
        line.skip_space()
        if line.peek() != ".":
            return tuple(parts)
        line.pos += 1
        parts.append(line.key())


def _descend(root, path, line):
    node = root
    for part in path:
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if isinstance(child, list):
            if not child or not isinstance(child[-1], dict):
                raise line.error("%s is not a table" % part)
            child = child[-1]
        elif not isinstance(child, dict):
            raise line.error("%s is a value, not a table" % part)
        node = child
    return node


def _append_table(root, path, line):
    parent = _descend(root, path[:-1], line)
    name = path[-1]
    if name not in parent:
        parent[name] = []
    if not isinstance(parent[name], list) or (parent[name] and not isinstance(parent[name][0], dict)):
        raise line.error("[[%s]] redefines a key that is not an array of tables" % ".".join(path))
    table = {}
    parent[name].append(table)
    return table


def _open_table(root, path, line):
    parent = _descend(root, path[:-1], line)
    name = path[-1]
    if name in parent and not isinstance(parent[name], dict):
        raise line.error("[%s] redefines a key that is not a table" % ".".join(path))
    return parent.setdefault(name, {})


def read_back(text):
    """Parse ``text`` with the subset parser and, when present, with ``tomllib``.

    Returns the parsed data; raises :class:`TomlSubsetError` if either parser refuses the
    text or if they disagree.
    """
    data = parse_toml_subset(text)
    if _tomllib is not None:
        try:
            other = _tomllib.loads(text)
        except ValueError as exc:
            raise TomlSubsetError("tomllib refuses the text: %s" % exc)
        if other != data:
            raise TomlSubsetError("tomllib and the subset parser read the text differently")
    return data


def checked_render(data, header=None, what="the registries.conf drop-in"):
    """Validate ``data``, render it and read the text back; returns the text.

    Raises :class:`RegistriesConfError` when the data breaks the schema or when the text does
    not read back to the same data (so a broken drop-in is never handed out for writing).
    """
    check(data, what)
    text = render(data, header)
    try:
        again = read_back(text)
    except TomlSubsetError as exc:
        raise RegistriesConfError("the rendered text is not valid TOML (%s)" % exc, what)
    if _canonical(again) != _canonical(data):
        raise RegistriesConfError("the rendered text does not read back to the same settings", what)
    check(again, what)
    return text


def check_text(text, what="the registries.conf drop-in"):
    """Parse ``text`` (subset parser and tomllib) and validate it; returns the data."""
    try:
        data = read_back(text)
    except TomlSubsetError as exc:
        raise RegistriesConfError("not valid TOML (%s)" % exc, what)
    check(data, what)
    return data


def _canonical(data):
    return json.dumps(data, sort_keys=True)


# --------------------------------------------------------------------------- a host's configuration

def read_host_file(text, what):
    """The settings of one registries.conf file of a host (the main file or a drop-in), any TOML.

    Read with ``tomllib`` where the Python has it, else with the strict subset parser (which a
    hand-written file may go beyond: it then fails with the line it could not read).
    """
    try:
        if _tomllib is not None:
            data = _tomllib.loads(text)
        else:
            data = parse_toml_subset(text)
    except (ValueError, TomlSubsetError) as exc:
        raise RegistriesConfError("it is not valid TOML (%s)" % exc, what)
    if not isinstance(data, dict):
        raise RegistriesConfError("it is not a table", what)
    return data


def _v1_entries(data, what):
    """The ``[[registry]]`` entries a version 1 file (``[registries.search]`` ...) stands for."""
    entries = {}
    v1 = data.get("registries")
    if not isinstance(v1, dict):
        raise RegistriesConfError("registries must be a table of a version 1 file", what)
    for kind, flag in (("block", "blocked"), ("insecure", "insecure")):
        table = v1.get(kind) or {}
        for location in (table.get("registries") or []) if isinstance(table, dict) else []:
            entry = entries.setdefault(location, {"prefix": location, "location": location})
            entry[flag] = True
    return list(entries.values())


def merge_host_files(files):
    """The registries of a host from ``[(path, data)]``: the main file first, then the drop-ins in order.

    As containers/image merges them: a later file's ``[[registry]]`` replaces an earlier one with
    the same prefix (the location when no prefix is given); a version 1 file's blocked and
    insecure registries become entries of their own. Returns ``{prefix: entry}``.
    """
    merged = {}
    for path, data in files:
        if "registries" in data:
            if "registry" in data:
                raise RegistriesConfError("it mixes the version 1 table [registries] with [[registry]] entries", path)
            entries = _v1_entries(data, path)
        else:
            # Only what resolving a pull needs is checked: a newer key this collection does not
            # know must not fail a host whose own tools accept it.
            entries = data.get("registry", [])
            if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
                raise RegistriesConfError("[[registry]] must be a list of tables", path)
            for number, entry in enumerate(entries):
                if not isinstance(entry.get("prefix") or entry.get("location"), str):
                    raise RegistriesConfError("[[registry]] #%d has neither a prefix nor a location" % (number + 1), path)
                for key in ("prefix", "location"):
                    if key in entry and not isinstance(entry[key], str):
                        raise RegistriesConfError("[[registry]] #%d: %s must be a string" % (number + 1, key), path)
                if not isinstance(entry.get("mirror", []), list) or not all(
                        isinstance(m, dict) and isinstance(m.get("location"), str) for m in entry.get("mirror", [])):
                    raise RegistriesConfError("[[registry]] #%d has a [[registry.mirror]] without a location" % (number + 1), path)
        for entry in entries:
            prefix = entry.get("prefix") or entry.get("location")
            merged[prefix] = entry
    return merged


def _prefix_length(ref, prefix):
    """How long a match of ``prefix`` on ``ref`` is, or -1 (containers/image's refMatchingPrefix)."""
    if prefix.startswith("*."):
        host = ref.split("/", 1)[0].split(":", 1)[0]
        return len(prefix) if host.endswith(prefix[1:]) else -1
    if len(ref) < len(prefix):
        return -1
    if len(ref) == len(prefix):
        return len(prefix) if ref == prefix else -1
    if ref.startswith(prefix) and ref[len(prefix)] in ":/@":
        return len(prefix)
    return -1


def find_registry(registries, ref):
    """The ``[[registry]]`` entry that applies to ``ref`` (the longest matching prefix), or None."""
    best, length = None, -1
    for prefix, entry in registries.items():
        found = _prefix_length(ref, prefix)
        if found > length:
            best, length = entry, found
    return best


def pull_sources(registries, ref):
    """Where the containers tools try to pull ``ref`` from, in order: ``[{"ref", "mirror", "insecure"}]``.

    Mirrors first (for a reference by digest every mirror except ``pull-from-mirror = "tag-only"``
    ones; for a tag, none under ``mirror-by-digest-only``), then the registry's own location. The
    prefix of the reference is replaced by each location. Raises :class:`RegistriesConfError` for a
    blocked registry.
    """
    parsed = parse_reference(ref)
    entry = find_registry(registries, ref)
    if entry is None:
        return [{"ref": ref, "mirror": False, "insecure": False}]
    prefix = entry.get("prefix") or entry.get("location")
    if entry.get("blocked"):
        raise RegistriesConfError("the registry %s is blocked (blocked = true)" % prefix, "the host's registries.conf")
    digested = parsed.digest is not None
    endpoints = []
    for mirror in entry.get("mirror", []):
        pull = mirror.get("pull-from-mirror", "all")
        if entry.get("mirror-by-digest-only"):
            if not digested:
                continue
        elif (pull == "digest-only" and not digested) or (pull == "tag-only" and digested):
            continue
        endpoints.append((mirror["location"], True, bool(mirror.get("insecure"))))
    endpoints.append((entry.get("location") or prefix, False, bool(entry.get("insecure"))))
    sources = []
    for location, is_mirror, insecure in endpoints:
        if prefix.startswith("*."):
            rewritten = ref if not location or location == prefix else location + ref[len(ref.split("/", 1)[0]):]
        else:
            rewritten = location + ref[len(prefix):]
        sources.append({"ref": rewritten, "mirror": is_mirror, "insecure": insecure})
    return sources
