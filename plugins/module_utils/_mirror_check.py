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
"""

from __future__ import annotations

import hashlib
import re

from ansible_collections.airgap.microshift.plugins.module_utils import _workers
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


class MirrorCheck:
    """One check of a list of references: sort them, resolve them in parallel, report.

    ``tool`` is a :class:`~_skopeo.Skopeo` (with the host's ``--registries-conf`` and
    ``--command-timeout`` as global arguments), ``options`` the :class:`~_skopeo.RegistryOptions`
    of the auth file and certificates. With ``digest_only``, references by tag are not sent (a
    digest-only mirror never serves them) but listed in ``tag_refs``.
    """

    def __init__(self, images, tool, options, digest_only=True, parallel=4):
        self.tool = tool
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
        self.results = _workers.run_parallel(self.refs, self.parallel, self.check)
        return self

    def result(self):
        """The module's result: ``served``, ``not_served``, ``tag_refs`` and ``retries``."""
        return dict(changed=False, served=[ref for ref, reason, attempts in self.results if reason is None],
                    not_served=self.invalid + [{"ref": ref, "reason": reason, "attempts": attempts}
                                               for ref, reason, attempts in self.results if reason is not None],
                    tag_refs=list(self.tag_refs), retries=sum(attempts - 1 for ref, reason, attempts in self.results))

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
