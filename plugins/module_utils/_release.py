# Copyright: airgap.microshift contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""Which container images a MicroShift release needs.

MicroShift ships one JSON document per component and architecture under
``/usr/share/microshift/release`` (RPM ``microshift-*-release-info``)::

    {"release": {"base": "<version>"}, "images": {"<key>": "<image reference>", ...}}

named ``release-<arch>.json`` for the core and ``release-<component>-<arch>.json`` for the
optional components. This module finds those documents in directories, single files and
RPM packages, selects them by architecture and component, and turns them into one sorted,
de-duplicated list of references, with where each reference came from.

Plain functions with no Ansible dependency: every problem raises :class:`ReleaseError`
whose message is one sentence naming the file and the problem.
"""

from __future__ import annotations

import json
import os
import posixpath
import re
import traceback

from ansible_collections.airgap.microshift.plugins.module_utils import _files
from ansible_collections.airgap.microshift.plugins.module_utils._reference import (
    DEFAULT_REGISTRIES,
    InvalidReference,
    parse_reference,
)
from ansible_collections.airgap.microshift.plugins.module_utils._rpm import (
    RpmError,
    extract,
)

try:
    import jmespath
    import jmespath.exceptions
except ImportError:  # pragma: no cover - depends on the host
    jmespath = None
    JMESPATH_IMPORT_ERROR = traceback.format_exc()
else:
    JMESPATH_IMPORT_ERROR = None

DEFAULT_PATH = "/usr/share/microshift/release"
RELEASE_DIR = "/usr/share/microshift/release"
RPM_MEMBER_PATTERN = "*" + RELEASE_DIR + "/release-*.json"

ARCHES = ("x86_64", "aarch64")
ARCH_ALIASES = {"amd64": "x86_64", "arm64": "aarch64", "x86_64": "x86_64", "aarch64": "aarch64"}
CORE = "core"
COMPONENTS = (
    "core",
    "olm",
    "multus",
    "gateway-api",
    "cert-manager",
    "sriov",
    "metrics-server",
    "node-exporter",
    "kube-state-metrics",
    "ai-model-serving",
)
ALL = "all"

# A release document is a few kilobytes; refuse anything that cannot be one.
MAX_DOCUMENT_SIZE = 64 * 1024 * 1024

_FILE_RE = re.compile(r"^release-(?:(?P<component>[a-z0-9][a-z0-9-]*)-)?(?P<arch>%s)\.json$" % "|".join(ARCHES))


class ReleaseError(ValueError):
    """Bad input: the message is one sentence naming the file or option and the problem."""


def normalize_arch(arch):
    """``x86_64``/``aarch64``, also from the ``amd64``/``arm64`` aliases."""
    key = str(arch).strip().lower()
    if key not in ARCH_ALIASES:
        raise ReleaseError("Architecture %r is not supported: use one of %s (or the aliases amd64, arm64)."
                           % (arch, ", ".join(ARCHES)))
    return ARCH_ALIASES[key]


def parse_file_name(name):
    """``(component, arch)`` for a release file name, or ``None`` when it is not one."""
    match = _FILE_RE.match(posixpath.basename(name))
    if not match:
        return None
    return match.group("component") or CORE, match.group("arch")


class ReleaseSource:
    """One release document: where it is, which component and architecture it describes."""

    def __init__(self, name, component, arch, path=None, content=None):
        self.name = name
        self.component = component
        self.arch = arch
        self._path = path
        self._content = content

    def read(self):
        if self._content is not None:
            return self._content
        try:
            size = os.path.getsize(self._path)
            if size > MAX_DOCUMENT_SIZE:
                raise ReleaseError("%s has %d bytes, too large to be a MicroShift release file." % (self.name, size))
            with open(self._path, "rb") as handle:
                return handle.read()
        except OSError as exc:
            raise ReleaseError("%s cannot be read: %s." % (self.name, exc.strerror or exc))


def find_sources(paths=None, rpms=None, runner=None):
    """Every release document found in ``paths`` (directories or files) and ``rpms``."""
    sources = []
    for path in paths or []:
        if not os.path.exists(path):
            raise ReleaseError("%s does not exist: give a directory of release files or a release-*.json file." % path)
        if os.path.isdir(path):
            try:
                names = sorted(os.listdir(path))
            except OSError as exc:
                raise ReleaseError("%s cannot be listed: %s." % (path, exc.strerror or exc))
            found = False
            for name in names:
                parsed = parse_file_name(name)
                full = os.path.join(path, name)
                if parsed and os.path.isfile(full):
                    sources.append(ReleaseSource(full, parsed[0], parsed[1], path=full))
                    found = True
            if not found:
                raise ReleaseError("%s holds no release file (release-<arch>.json or release-<component>-<arch>.json)." % path)
        else:
            parsed = parse_file_name(path)
            if not parsed:
                raise ReleaseError("%s is not named release-<arch>.json or release-<component>-<arch>.json "
                                   "(arch one of %s), so its component and architecture are unknown." % (path, ", ".join(ARCHES)))
            sources.append(ReleaseSource(path, parsed[0], parsed[1], path=path))
    for rpm in rpms or []:
        if not os.path.isfile(rpm):
            raise ReleaseError("%s does not exist or is not a file: give a microshift-*-release-info RPM package." % rpm)
        try:
            header, members = extract(rpm, _is_release_member, runner)
        except RpmError as exc:
            raise ReleaseError(str(exc))
        if not members:
            listed = ", ".join(header.files[:10]) if header.files else "no files at all"
            if len(header.files) > 10:
                listed += ", ..."
            raise ReleaseError("%s (%s) holds no %s/release-*.json file (it holds %s)." % (rpm, header.nevr, RELEASE_DIR, listed))
        base = os.path.basename(rpm)
        for member, data in members:
            component, arch = parse_file_name(member)
            sources.append(ReleaseSource("%s:%s" % (base, member), component, arch, content=data))
    return sources


def _is_release_member(name):
    return (
        posixpath.dirname(name).endswith(RELEASE_DIR)
        and parse_file_name(name) is not None
    )


def select_sources(sources, arches, components, where="the sources"):
    """The sources for ``arches`` x ``components``; ``components`` may be ``['all']``."""
    available = {}
    for source in sources:
        available.setdefault(source.arch, set()).add(source.component)
    components = list(components or [CORE])
    for component in components:
        if component != ALL and component not in COMPONENTS and not any(component in comps for comps in available.values()):
            raise ReleaseError("Component %r is unknown: use %s, or all." % (component, ", ".join(COMPONENTS)))
    selected = []
    for arch in arches:
        present = available.get(arch, set())
        if not present:
            raise ReleaseError("No release file for architecture %s in %s; they hold %s." % (arch, where, _describe(available)))
        wanted = sorted(present) if ALL in components else components
        for component in wanted:
            if component not in present:
                raise ReleaseError("No release file for component %s and architecture %s in %s; for %s they hold %s."
                                   % (component, arch, where, arch, ", ".join(sorted(present))))
        selected.extend(s for s in sources if s.arch == arch and s.component in wanted)
    return selected


def _describe(available):
    if not available:
        return "no release file at all"
    return "; ".join("%s: %s" % (arch, ", ".join(sorted(comps))) for arch, comps in sorted(available.items()))


def compile_query(query):
    """A compiled JMESPath expression, or ``None`` for the default (every value of ``images``)."""
    if query is None or query == "":
        return None
    if jmespath is None:
        raise ReleaseError("The query option needs the jmespath Python library: install it (pip install jmespath, "
                           "or the python3-jmespath package) on the host that runs the module.")
    try:
        return jmespath.compile(query)
    except jmespath.exceptions.JMESPathError as exc:
        raise ReleaseError("The query %r is not a valid JMESPath expression: %s." % (query, _one_line(exc)))


def _one_line(exc):
    return " ".join(str(exc).split()).rstrip(".")


def load_document(source):
    """The parsed and checked JSON document of a source."""
    raw = source.read()
    try:
        text = raw.decode("utf-8") if isinstance(raw, bytes) else raw
        doc = json.loads(text)
    except (UnicodeDecodeError, ValueError) as exc:
        raise ReleaseError("%s is not valid JSON: %s." % (source.name, exc))
    if not isinstance(doc, dict):
        raise ReleaseError("%s is not a MicroShift release file: its top level is not a JSON object." % source.name)
    if "images" not in doc:
        raise ReleaseError("%s is not a MicroShift release file: it has no images object." % source.name)
    images = doc["images"]
    if not isinstance(images, dict):
        raise ReleaseError("%s is not a MicroShift release file: its images value is a %s, not an object."
                           % (source.name, type(images).__name__))
    for key, ref in images.items():
        if not isinstance(ref, str):
            raise ReleaseError("%s has a non-string image reference under images.%s: %r." % (source.name, key, ref))
    return doc


def release_version(doc):
    release = doc.get("release")
    if isinstance(release, dict) and isinstance(release.get("base"), str):
        return release["base"]
    return None


def query_document(doc, compiled, source_name):
    """``[(ref, [keys])]`` that the query selects from one document."""
    images = doc["images"]
    if compiled is None:
        result = images
    else:
        try:
            result = compiled.search(doc)
        except jmespath.exceptions.JMESPathError as exc:
            raise ReleaseError("The query %r fails on %s: %s." % (compiled.expression, source_name, _one_line(exc)))
    pairs = []
    if isinstance(result, dict):
        for key, ref in result.items():
            if not isinstance(ref, str):
                raise ReleaseError("The query %r yields a non-string value under %r for %s: %r."
                                   % (compiled.expression, key, source_name, ref))
            pairs.append((ref, [key]))
    elif isinstance(result, list):
        for ref in result:
            if not isinstance(ref, str):
                raise ReleaseError("The query %r yields a non-string item for %s: %r." % (compiled.expression, source_name, ref))
            pairs.append((ref, sorted(k for k, v in images.items() if v == ref)))
    elif result is None:
        pairs = []
    else:
        raise ReleaseError("The query %r yields a %s for %s, not a list of strings or an object of strings."
                           % (compiled.expression, type(result).__name__, source_name))
    for ref, dummy in pairs:
        check_reference(ref, source_name)
    return pairs


def check_reference(ref, where):
    try:
        return parse_reference(ref)
    except InvalidReference as exc:
        raise ReleaseError("%s has an invalid image reference: %s." % (where, exc))


def read_extra_images_file(path):
    """References from a text file: one a line, ``#`` starts a comment, blank lines ignored."""
    try:
        raw = _files.read_limited(path, MAX_DOCUMENT_SIZE)
    except OSError as exc:
        raise ReleaseError("%s cannot be read: %s." % (path, exc.strerror or exc))
    if len(raw) > MAX_DOCUMENT_SIZE:
        raise ReleaseError("%s is larger than %d bytes, too large for a list of image references." % (path, MAX_DOCUMENT_SIZE))
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ReleaseError("%s is not UTF-8 text: %s." % (path, exc))
    refs = []
    for number, line in enumerate(text.splitlines(), 1):
        ref = line.split("#", 1)[0].strip()
        if ref:
            check_reference(ref, "%s line %d" % (path, number))
            refs.append(ref)
    return refs


class _Entry:
    def __init__(self, ref):
        self.ref = ref
        self.keys = set()
        self.components = set()
        self.arches = set()
        self.files = set()
        self.releases = set()

    def as_dict(self):
        return {
            "ref": self.ref,
            "image_keys": sorted(self.keys),
            "components": sorted(self.components),
            "arches": sorted(self.arches),
            "files": sorted(self.files),
            "releases": sorted(self.releases),
        }


def list_images(paths=None, rpms=None, arches=None, components=None, query=None,
                extra_images=None, extra_images_file=None, runner=None):
    """The images of a release.

    Returns a dict with ``images`` (sorted unique references), ``entries`` (one dict per
    reference: ref, image_keys, components, arches, files, releases), ``releases`` (component to
    version), ``files`` (sources read), ``tag_refs`` (references without a digest) and
    ``registries`` (every registry host used).
    """
    if not paths and not rpms:
        paths = [DEFAULT_PATH]
    arches = sorted(set(normalize_arch(a) for a in (arches or [])))
    if not arches:
        raise ReleaseError("No architecture given: set arch to x86_64 or aarch64.")
    compiled = compile_query(query)
    where = ", ".join(list(paths or []) + list(rpms or []))
    sources = select_sources(find_sources(paths, rpms, runner), arches, components, where)

    entries = {}
    versions = {}
    files = []
    for source in sources:
        doc = load_document(source)
        files.append(source.name)
        version = release_version(doc)
        if version is not None:
            versions.setdefault(source.component, set()).add(version)
        for ref, keys in query_document(doc, compiled, source.name):
            entry = entries.setdefault(ref, _Entry(ref))
            entry.keys.update(keys)
            entry.components.add(source.component)
            entry.arches.add(source.arch)
            entry.files.add(source.name)
            if version is not None:
                entry.releases.add(version)

    extras = [(ref, "extra_images") for ref in extra_images or []]
    if extra_images_file:
        extras.extend((ref, extra_images_file) for ref in read_extra_images_file(extra_images_file))
    for ref, origin in extras:
        check_reference(ref, origin if origin != "extra_images" else "The extra_images option")
        entries.setdefault(ref, _Entry(ref)).files.add(origin)

    images = sorted(entries)
    parsed = dict((ref, parse_reference(ref)) for ref in images)
    return {
        "images": images,
        "entries": [entries[ref].as_dict() for ref in images],
        # Several versions of one component (say, two releases mirrored for an upgrade) are listed together.
        "releases": dict((comp, ", ".join(sorted(vers))) for comp, vers in sorted(versions.items())),
        "files": files,
        "tag_refs": [ref for ref in images if parsed[ref].digest is None],
        "registries": sorted(set(p.registry for p in parsed.values())),
    }


def warnings_for(result, known_registries=DEFAULT_REGISTRIES):
    """Sentences to warn about: references by tag and registries outside the usual ones."""
    messages = []
    tag_refs = result["tag_refs"]
    if tag_refs:
        messages.append(
            "%d image reference(s) name a tag, not a digest; a mirror configured with mirror-by-digest-only = true "
            "can never serve them: %s" % (len(tag_refs), ", ".join(tag_refs))
        )
    others = [r for r in result["registries"] if r not in known_registries]
    if others:
        messages.append(
            "Images come from registries besides %s: %s; the hosts' registries configuration must cover them too."
            % (", ".join(known_registries), ", ".join(others))
        )
    return messages


def render_list(images):
    """The text of a list file: one reference a line."""
    return "".join(ref + "\n" for ref in images)
