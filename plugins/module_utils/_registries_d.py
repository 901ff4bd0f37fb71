# Copyright: airgap.microshift contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""containers-registries.d(5): where the containers tools look for an image's signatures.

Plain functions with no Ansible dependency. Each ``*.yaml`` file of ``/etc/containers/registries.d``
holds ``default-docker`` and ``docker`` (namespace -> settings); for sigstore attachments the
setting is ``use-sigstore-attachments: true``. It is looked up by the repository an image is
actually read from: behind a mirror, that is the MIRROR's repository, while the signature
policy (policy.json) matches the original name.

containers/image merges every file of the directory and refuses the whole configuration (every
pull fails) when two files define the same namespace or ``default-docker``; :func:`merge_files`
refuses the same, so a new file is checked against its neighbours before it is written.

YAML is read with PyYAML where the Python has it; otherwise with :func:`parse_yaml_subset`, a
strict reader of block mappings of scalars (all that registries.d files hold). Text this module
renders is read back by both before it is handed out.
"""

from __future__ import annotations

import re

try:
    import yaml as _yaml
except ImportError:  # a managed host without PyYAML: the subset reader alone
    _yaml = None

from ansible_collections.airgap.microshift.plugins.module_utils._containers_policy import scope_candidates

NAMESPACE_KEYS = {"lookaside": str, "lookaside-staging": str, "sigstore": str, "sigstore-staging": str,
                  "use-sigstore-attachments": bool}
USE_ATTACHMENTS = "use-sigstore-attachments"
MAX_FILE = 1024 * 1024
_NAMESPACE_RE = re.compile(r"^(?:\*\.)?[a-zA-Z0-9](?:[a-zA-Z0-9.-]*[a-zA-Z0-9])?(?::[0-9]{1,5})?(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*$")
_PLAIN_KEY_RE = re.compile(r"^[A-Za-z0-9_.*/:-]+$")


class RegistriesDError(ValueError):
    """A registries.d configuration the containers tools would refuse; one sentence naming the file."""


# ---------------------------------------------------------------- the YAML subset


def _scalar(text, number):
    text = text.strip()
    if text in ("", "~", "null", "Null", "NULL"):
        return None
    if text in ("true", "True", "TRUE"):
        return True
    if text in ("false", "False", "FALSE"):
        return False
    if text == "{}":
        return {}
    if text[0] in "\"'":
        quote = text[0]
        if len(text) < 2 or text[-1] != quote:
            raise RegistriesDError("line %d: an unterminated quoted string" % number)
        body = text[1:-1]
        if quote == "'":
            if re.search(r"(?<!')'(?!')", body):
                raise RegistriesDError("line %d: a quote inside a single-quoted string" % number)
            return body.replace("''", "'")
        if "\\" in body or '"' in body:
            raise RegistriesDError("line %d: escapes in double-quoted strings are not in the supported subset" % number)
        return body
    if text[0] in "[{&*!|>%@`" or re.search(r"(^|\s)#", text) or ": " in text or text.endswith(":"):
        raise RegistriesDError("line %d: %r is not a plain scalar" % (number, text[:60]))
    return text


def _strip_comment(line):
    out, quote = [], None
    for index, char in enumerate(line):
        if quote:
            if char == quote:
                quote = None
        elif char in "\"'" and (index == 0 or line[index - 1] in " :"):
            quote = char
        elif char == "#" and (index == 0 or line[index - 1] in " \t"):
            break
        out.append(char)
    return "".join(out).rstrip()


def parse_yaml_subset(text):
    """Block mappings of scalars: ``key: value``, ``key:`` opening a nested mapping (or null), comments.

    Anything else (sequences, flow collections other than ``{}``, anchors, tabs for indentation,
    a key defined twice) raises :class:`RegistriesDError` with the line number.
    """
    root = {}
    stack = []          # (indent, mapping) of the open mappings, outermost first
    pending = None      # (mapping, key, indent): a key whose value may be a nested mapping
    for number, raw in enumerate(text.splitlines(), 1):
        if "\t" in raw[:len(raw) - len(raw.lstrip())]:
            raise RegistriesDError("line %d: a tab in the indentation" % number)
        line = _strip_comment(raw)
        body = line.strip()
        if not body or body in ("---", "..."):
            continue
        indent = len(line) - len(line.lstrip(" "))
        if body.startswith("- ") or body == "-":
            raise RegistriesDError("line %d: sequences are not in the supported subset" % number)
        if pending is not None:
            parent, key, key_indent = pending
            pending = None
            if indent > key_indent:
                parent[key] = {}
                stack.append((indent, parent[key]))
        while stack and indent < stack[-1][0]:
            stack.pop()
        if not stack:
            if root:
                raise RegistriesDError("line %d: the indentation does not match any open mapping" % number)
            stack.append((indent, root))
        elif indent != stack[-1][0]:
            raise RegistriesDError("line %d: the indentation does not match any open mapping" % number)
        mapping = stack[-1][1]
        if body[0] in "\"'":
            end = body.find(body[0], 1)
            if end < 0 or body[end + 1:end + 2] != ":":
                raise RegistriesDError("line %d: expected a quoted key followed by ':'" % number)
            key, rest = body[1:end], body[end + 2:]
        else:
            split = body.find(": ")
            if split >= 0:
                key, rest = body[:split], body[split + 2:]
            elif body.endswith(":"):
                key, rest = body[:-1], ""
            else:
                raise RegistriesDError("line %d: expected 'key: value'" % number)
            if not _PLAIN_KEY_RE.match(key):
                raise RegistriesDError("line %d: %r is not a key of the supported subset" % (number, key[:60]))
        if key in mapping:
            raise RegistriesDError("line %d: the key %s is defined twice" % (number, key))
        if rest.strip():
            mapping[key] = _scalar(rest, number)
        else:
            mapping[key] = None
            pending = (mapping, key, indent)
    return root


def load_yaml(text, what):
    """The document of a registries.d file: PyYAML where present, else :func:`parse_yaml_subset`."""
    if len(text) > MAX_FILE:
        raise RegistriesDError("%s has %d bytes, more than a registries.d file may have." % (what, len(text)))
    if _yaml is not None:
        try:
            doc = _yaml.safe_load(text)
        except _yaml.YAMLError as exc:
            raise RegistriesDError("%s is not valid YAML: %s." % (what, " ".join(str(exc).split())[:300]))
    else:
        try:
            doc = parse_yaml_subset(text)
        except RegistriesDError as exc:
            raise RegistriesDError("%s cannot be read: %s." % (what, exc))
    return {} if doc is None else doc


# ---------------------------------------------------------------- the model


def namespace_problem(namespace):
    """None when ``namespace`` is a docker namespace (``host[:port][/path]``, ``*.domain``), else why not."""
    if not isinstance(namespace, str) or not _NAMESPACE_RE.match(namespace):
        return "%s is not a registry namespace (host[:port][/repository path], or *.domain)" % repr(namespace)[:120]
    return None


def _namespace_errors(settings, where):
    if settings is None:
        return []
    if not isinstance(settings, dict):
        return ["%s must be a mapping of settings" % where]
    errors = []
    for key, kind in NAMESPACE_KEYS.items():
        if key in settings and settings[key] is not None and not isinstance(settings[key], kind):
            errors.append("%s: %s must be %s" % (where, key, "true or false" if kind is bool else "a string"))
    for plain, old in (("lookaside", "sigstore"), ("lookaside-staging", "sigstore-staging")):
        if settings.get(plain) and settings.get(old):
            errors.append("%s: %s and %s are the same setting and cannot both be set" % (where, plain, old))
    return errors


def validate(doc):
    """Every problem of one registries.d document that makes containers/image refuse it (sentences)."""
    if not isinstance(doc, dict):
        return ["the document must be a mapping"]
    errors = _namespace_errors(doc.get("default-docker"), "default-docker")
    docker = doc.get("docker")
    if docker is not None:
        if not isinstance(docker, dict):
            errors.append("docker must be a mapping of namespaces")
        else:
            for namespace, settings in docker.items():
                errors.extend(_namespace_errors(settings, "docker[%s]" % namespace))
    return errors


def parse(text, what):
    """A registries.d document from its text, validated; raises :class:`RegistriesDError` naming ``what``."""
    doc = load_yaml(text, what)
    errors = validate(doc)
    if errors:
        raise RegistriesDError("%s is invalid: %s." % (what, "; ".join(errors)))
    return doc


def merge_files(docs):
    """The merged configuration of ``[(path, document)]``, as containers/image merges a directory.

    Raises :class:`RegistriesDError` when two files define ``default-docker`` or the same namespace.
    """
    merged = {"default-docker": None, "docker": {}}
    owner = {}
    for path, doc in docs:
        if doc.get("default-docker") is not None:
            if "default-docker" in owner:
                raise RegistriesDError('"default-docker" is defined both in %s and %s.' % (owner["default-docker"], path))
            owner["default-docker"] = path
            merged["default-docker"] = doc["default-docker"]
        for namespace, settings in (doc.get("docker") or {}).items():
            if namespace in merged["docker"]:
                raise RegistriesDError("%s is defined both in %s and %s." % (namespace, owner[namespace], path))
            owner[namespace] = path
            merged["docker"][namespace] = settings or {}
    merged["owners"] = owner
    return merged


def use_sigstore_attachments(merged, physical_ref):
    """Whether the containers tools read sigstore attachments for an image read from ``physical_ref``.

    The most specific namespace that sets ``use-sigstore-attachments`` decides, then ``default-docker``.
    """
    for candidate in scope_candidates(physical_ref)[:-1]:
        settings = merged["docker"].get(candidate)
        if isinstance(settings, dict) and settings.get(USE_ATTACHMENTS) is not None:
            return bool(settings[USE_ATTACHMENTS])
    default = merged.get("default-docker")
    if isinstance(default, dict) and default.get(USE_ATTACHMENTS) is not None:
        return bool(default[USE_ATTACHMENTS])
    return False


def attachments_document(namespaces):
    """The document setting ``use-sigstore-attachments: true`` for each of ``namespaces``."""
    errors = [p for p in (namespace_problem(n) for n in namespaces) if p]
    if errors:
        raise RegistriesDError("The registries.d namespaces are invalid: %s." % "; ".join(errors))
    if not namespaces:
        raise RegistriesDError("The registries.d file needs at least one namespace.")
    return {"docker": dict((namespace, {USE_ATTACHMENTS: True}) for namespace in namespaces)}


def render(doc, header=None):
    """YAML text of a document of :func:`attachments_document`'s shape; ``header`` becomes comments."""
    lines = []
    for line in (header or "").replace("\r\n", "\n").split("\n") if header else []:
        lines.append(("# " + line.lstrip("#").strip()).rstrip())
    lines.append("docker:")
    for namespace, settings in doc["docker"].items():
        lines.append("  %s:" % namespace)
        for key, value in settings.items():
            lines.append("    %s: %s" % (key, "true" if value is True else "false" if value is False else value))
    return "\n".join(lines) + "\n"


def checked_render(doc, header=None, what="the registries.d file"):
    """Render ``doc`` and read it back with the subset reader and with PyYAML (when present): both give ``doc``."""
    if header and re.search(r"[\x00-\x08\x0b-\x1f\x7f]", header.replace("\r\n", "\n")):
        raise RegistriesDError("%s: the header holds a control character." % what)
    text = render(doc, header)
    again = parse_yaml_subset(text)
    if again != doc or (_yaml is not None and _yaml.safe_load(text) != doc):
        raise RegistriesDError("%s: the rendered text does not read back to the same settings." % what)
    errors = validate(again)
    if errors:
        raise RegistriesDError("%s is invalid: %s." % (what, "; ".join(errors)))
    return text
