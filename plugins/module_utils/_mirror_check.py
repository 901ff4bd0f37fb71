# Copyright: airgap.microshift contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""Check that a host resolves images through its own containers configuration, as CRI-O will.

Plain Python with no Ansible dependency, for ``mirror_check``. Each reference is resolved by its
original name with ``skopeo inspect --raw docker://<ref>`` (run by the shared :class:`~_skopeo.Skopeo`,
with its environment, retries and messages), so ``registries.conf`` and its drop-ins,
``certs.d`` and the system trust store decide where it comes from; the manifest returned must
hash to the reference's digest. When the mirror fails, containers/image falls back to the
source and reports both: :func:`explain` reads the mirror's part first, since that is what the
check is about and what decides whether a retry can help.

Direct reads: one skopeo process per image costs a process, a TLS handshake and a login each.
:class:`DirectReader` first reads every manifest itself over kept-alive HTTPS connections,
through the same configuration: the host's registries.conf and drop-ins merged as
containers/image merges them, its pull sources in the same order (mirrors first, the same
prefix rewriting, ``mirror-by-digest-only`` and ``pull-from-mirror``), the same certificates
(the system trust store, ``certs.d`` or ``cert_dir``; no certificate that names its host only in
the legacy Common Name field) and the same auth file. It only ever confirms: a reference is
served when the first source in that order that answers returns bytes of the reference's
digest. Anything else (a failure, a reference by tag, a configuration it cannot read exactly
as the containers tools do) is left to skopeo, which then gives the verdict and its words.
:func:`direct_read_obstacle` names what makes the reader step aside for the whole run.
"""

from __future__ import annotations

import hashlib
import os
import re

from ansible_collections.airgap.microshift.plugins.module_utils import _registries_conf, _workers
from ansible_collections.airgap.microshift.plugins.module_utils._registry import CannotTell
from ansible_collections.airgap.microshift.plugins.module_utils._reference import InvalidReference, parse_reference
from ansible_collections.airgap.microshift.plugins.module_utils._skopeo import (
    PERMANENT,
    TRANSIENT,
    SkopeoError,
    classify_error,
    condense,
    fatal_message,
)

_MIRRORS_RE = re.compile(r"\(Mirrors also failed: (?P<mirrors>.*)\): (?P<source>[^\s:]+(?::[0-9]+)?/[^\s]*?): (?P<error>.*)$", re.S)
_MIRROR_ITEM_RE = re.compile(r"\[(?P<ref>[^\s\]]+): (?P<error>.*?)\](?=\s*(?:\[|$))", re.S)


def explain(stderr):
    """``(kind, reason, detail)`` of a failed ``skopeo inspect`` of a reference through registries.conf.

    When mirrors were tried, containers/image lists their errors first: those say why the mirror
    did not serve the image and decide whether a retry can help. With no mirror tried, no mirror
    is configured for that reference (or only the source was allowed, as for a tag under
    ``mirror-by-digest-only``). ``detail`` is empty: the reason already quotes skopeo.
    """
    message = fatal_message(stderr)
    match = _MIRRORS_RE.search(message)
    if match:
        mirrors = _MIRROR_ITEM_RE.findall(match.group("mirrors")) or [("mirror", match.group("mirrors"))]
        parts = []
        kinds = []
        for ref, error in mirrors:
            kind, cause = classify_error(error)
            kinds.append(kind)
            parts.append("%s (%s: %s)" % (cause, ref, condense(error, 200)))
        kind = TRANSIENT if TRANSIENT in kinds else PERMANENT
        dummy, source_cause = classify_error(match.group("error"))
        return kind, "the mirror does not serve it: %s; the source %s failed too: %s" % (
            "; ".join(parts), match.group("source").split("/")[0], source_cause), ""
    kind, cause = classify_error(message)
    return kind, "no mirror was tried for it (is one configured for this registry?); the source answered: %s (%s)" % (
        cause, condense(message, 200)), ""


DEFAULT_REGISTRIES_CONF = "/etc/containers/registries.conf"
REGISTRIES_CONF_D = "/etc/containers/registries.conf.d"
# Files the containers tools read instead of, or on top of, the system's registries.conf.
_USER_REGISTRIES = ("~/.config/containers/registries.conf", "~/.config/containers/registries.conf.d")
# Where the containers tools look for credentials when no auth file is given (containers-auth.json(5)).
_DEFAULT_AUTH_FILES = ("~/.config/containers/auth.json", "~/.docker/config.json", "~/.dockercfg")
_PROXY_VARIABLES = ("https_proxy", "HTTPS_PROXY", "http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY")


def direct_read_obstacle(authfile, environ=None, expanduser=os.path.expanduser, exists=os.path.exists, uid=None):
    """Why manifests cannot be read here exactly as the containers tools would read them, or None.

    Each of these changes what skopeo reads or how, in a way the direct reader does not follow:
    a registries.conf named by the environment or in the user's home, a proxy, and, with no auth
    file given, credentials the containers tools would find on their own.
    """
    environ = os.environ if environ is None else environ
    if environ.get("CONTAINERS_REGISTRIES_CONF"):
        return "CONTAINERS_REGISTRIES_CONF is set"
    for name in _PROXY_VARIABLES:
        if environ.get(name):
            return "a proxy is configured (%s)" % name
    for path in _USER_REGISTRIES:
        if exists(expanduser(path)):
            return "%s exists" % expanduser(path)
    if not authfile:
        if environ.get("REGISTRY_AUTH_FILE"):
            return "REGISTRY_AUTH_FILE is set"
        runtime = environ.get("XDG_RUNTIME_DIR") or "/run/containers/%d" % (os.getuid() if uid is None else uid)
        for path in [os.path.join(runtime, "containers", "auth.json") if environ.get("XDG_RUNTIME_DIR")
                     else os.path.join(runtime, "auth.json")] + [expanduser(p) for p in _DEFAULT_AUTH_FILES]:
            if exists(path):
                return "no auth file is given and the containers tools would read %s" % path
    return None


def configuration_obstacle(files):
    """Why the host's registries.conf files (``[(path, settings)]``) need skopeo, or None.

    Credential helpers other than the auth files change where credentials come from.
    """
    for path, data in files:
        helpers = data.get("credential-helpers")
        if helpers is not None and helpers != ["containers-auth.json"]:
            return "%s sets credential-helpers" % path
    return None


class DirectReader:
    """Confirms references the way the containers tools resolve them, over kept-alive connections.

    ``registries`` is the host's merged ``{prefix: entry}`` (``_image_trust.read_host_registries``),
    ``source`` a :class:`~_registry.RegistrySource` with the host's auth file and certificates.
    :meth:`served_from` returns where a reference was read from, or None to let skopeo decide.
    """

    def __init__(self, registries, source):
        self.registries = registries
        self.source = source

    def served_from(self, ref):
        """The physical reference (mirror first) that serves ``ref`` with bytes of its digest, or None.

        It only confirms: whatever goes wrong here, even what it did not foresee, leaves ``ref`` to skopeo.
        """
        try:
            return self._served_from(ref)
        except Exception:  # pylint: disable=broad-except
            return None

    def _served_from(self, ref):
        parsed = parse_reference(ref)
        if parsed.digest is None or not parsed.digest.startswith("sha256:"):
            return None
        for candidate in _registries_conf.pull_sources(self.registries, ref):
            physical = parse_reference(candidate["ref"])
            if physical.registry in ("docker.io", "index.docker.io"):
                # containers/image reads these from registry-1.docker.io
                return None
            try:
                found = self.source.manifest(physical.registry, physical.repository, parsed.digest)
            except CannotTell:
                # that source failed; containers/image goes on to the next one too
                continue
            if found is None:
                continue
            if "sha256:" + hashlib.sha256(found[0]).hexdigest() != parsed.digest:
                return None
            return candidate["ref"]
        return None


class MirrorCheck:
    """One check of a list of references: sort them, resolve them in parallel, report.

    ``tool`` is a :class:`~_skopeo.Skopeo` (with the host's ``--registries-conf`` and
    ``--command-timeout`` as global arguments), ``options`` the :class:`~_skopeo.RegistryOptions`
    of the auth file and certificates. With ``digest_only``, references by tag are not sent (a
    digest-only mirror never serves them) but listed in ``tag_refs``. With a ``reader``
    (:class:`DirectReader`), skopeo only runs for the references it does not confirm;
    ``obstacle`` says why there is no reader, if one was wanted.
    """

    def __init__(self, images, tool, options, digest_only=True, parallel=4, reader=None, obstacle=None):
        self.tool = tool
        self.reader = reader
        self.obstacle = obstacle
        self.options = options
        self.parallel = max(1, int(parallel))
        self.refs, self.tag_refs, self.invalid = [], [], []
        for ref in images:
            if ref in self.refs or ref in self.tag_refs or ref in [item["ref"] for item in self.invalid]:
                continue
            try:
                parsed = parse_reference(ref)
            except InvalidReference as exc:
                self.invalid.append({"ref": ref, "reason": str(exc), "attempts": 0})
                continue
            (self.tag_refs if parsed.digest is None and digest_only else self.refs).append(ref)
        self.results = []
        self.direct = {}
        self.skopeo_runs = 0

    def check(self, ref):
        """``(ref, None, attempts)`` when the host resolves ``ref`` to its own bytes, else ``(ref, reason, attempts)``."""
        digest = parse_reference(ref).digest
        try:
            result = self.tool.run(self.tool.inspect_argv(ref, self.options), what=ref, explain=explain)
        except SkopeoError as exc:
            return ref, exc.reason, exc.attempts
        served = "sha256:" + hashlib.sha256(result.stdout).hexdigest()
        if digest and served != digest:
            return ref, "the manifest served has the digest %s, not %s" % (served, digest), result.attempts
        return ref, None, result.attempts

    def run(self):
        confirmed = {}
        if self.reader is not None and self.refs:
            found = _workers.run_parallel(self.refs, self.parallel, self.reader.served_from)
            confirmed = dict((ref, where) for ref, where in zip(self.refs, found) if where is not None)
        self.direct = confirmed
        rest = [ref for ref in self.refs if ref not in confirmed]
        checked = dict((item[0], item) for item in _workers.run_parallel(rest, self.parallel, self.check))
        self.skopeo_runs = sum(item[2] for item in checked.values())
        self.results = [(ref, None, 1) if ref in confirmed else checked[ref] for ref in self.refs]
        return self

    def result(self):
        """The module's result: ``served``, ``not_served``, ``tag_refs``, ``retries`` and ``reads``."""
        return dict(changed=False, served=[ref for ref, reason, attempts in self.results if reason is None],
                    not_served=self.invalid + [{"ref": ref, "reason": reason, "attempts": attempts}
                                               for ref, reason, attempts in self.results if reason is not None],
                    tag_refs=list(self.tag_refs), retries=sum(attempts - 1 for ref, reason, attempts in self.results),
                    reads={"direct": len(self.direct), "skopeo": self.skopeo_runs, "obstacle": self.obstacle})

    def problems(self, result, fail_on_tag_refs=True):
        """``(failure, warning)``: the sentence that fails the task, and the one that only warns (each or None)."""
        failure, warning = [], None
        if result["not_served"]:
            failure.append("%d of %d image(s) do not resolve through the host's containers configuration: %s." % (
                len(result["not_served"]), len(result["not_served"]) + len(result["served"]),
                "; ".join("%s: %s" % (item["ref"], item["reason"]) for item in result["not_served"])))
        if self.tag_refs:
            text = "%d reference(s) by tag can never be pulled through a digest-only mirror: %s" % (
                len(self.tag_refs), ", ".join(self.tag_refs))
            if fail_on_tag_refs:
                failure.append(text + " (set fail_on_tag_refs=false to allow them, or list them by digest).")
            else:
                warning = text + "."
        return " ".join(failure) or None, warning
