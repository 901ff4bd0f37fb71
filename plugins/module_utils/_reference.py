# Copyright: airgap.microshift contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""Container image references: parse, validate and name them.

Plain functions with no Ansible dependency, so modules, filters and unit tests share them.
The grammar is the one of containers/image (docker/reference): a registry host with an
optional port, a repository path of lowercase components, an optional tag and an optional
``sha256`` digest. Unlike ``docker pull``, a registry is required: MicroShift release files
always name one, and guessing ``docker.io`` would hide a typo.
"""

from __future__ import annotations

import re
from collections import namedtuple

DEFAULT_REGISTRIES = ("quay.io", "registry.redhat.io", "registry.access.redhat.com")

_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_DOMAIN = r"(?:%s(?:\.%s)*|\[[0-9a-fA-F:]+\])(?::[0-9]+)?" % (_DOMAIN_COMPONENT, _DOMAIN_COMPONENT)
_TAG = r"[\w][\w.-]{0,127}"
_DIGEST = r"sha256:[a-f0-9]{64}"

_REFERENCE_RE = re.compile(
    r"^(?P<registry>%s)/(?P<repository>%s(?:/%s)*)(?::(?P<tag>%s))?(?:@(?P<digest>%s))?$"
    % (_DOMAIN, _COMPONENT, _COMPONENT, _TAG, _DIGEST)
)
_DIGEST_RE = re.compile(r"^%s$" % _DIGEST)
_TAG_RE = re.compile(r"^%s$" % _TAG)

ImageReference = namedtuple("ImageReference", ["registry", "repository", "tag", "digest"])


class InvalidReference(ValueError):
    """A string that is not a fully qualified image reference."""


def _looks_like_registry(first):
    return "." in first or ":" in first or first == "localhost" or first.startswith("[")


def parse_reference(ref):
    """Parse ``registry/repo[:tag][@sha256:hex]`` into an :class:`ImageReference`.

    Raises :class:`InvalidReference` with a sentence that says what is wrong.
    """
    if not isinstance(ref, str):
        raise InvalidReference("%r is not a string" % (ref,))
    if ref != ref.strip() or not ref:
        raise InvalidReference("%r has leading or trailing white space or is empty" % ref)
    if len(ref) > 4096:
        raise InvalidReference("%r... is longer than 4096 characters" % ref[:40])
    first = ref.split("/", 1)[0]
    if "/" not in ref or not _looks_like_registry(first):
        raise InvalidReference("%r does not start with a registry host (such as quay.io/)" % ref)
    match = _REFERENCE_RE.match(ref)
    if not match:
        if "@" in ref and not _DIGEST_RE.match(ref.rsplit("@", 1)[1]):
            raise InvalidReference("%r has a digest that is not sha256: followed by 64 lowercase hex digits" % ref)
        raise InvalidReference("%r is not a valid image reference (registry/repository[:tag][@sha256:digest])" % ref)
    parts = match.groupdict()
    if len(parts["repository"]) > 255:
        raise InvalidReference("%r has a repository name longer than 255 characters" % ref)
    return ImageReference(parts["registry"], parts["repository"], parts["tag"], parts["digest"])


def is_valid_reference(ref):
    try:
        parse_reference(ref)
    except InvalidReference:
        return False
    return True


def is_digest(value):
    return isinstance(value, str) and bool(_DIGEST_RE.match(value))


def is_valid_tag(value):
    return isinstance(value, str) and bool(_TAG_RE.match(value))


def format_reference(registry, repository, tag=None, digest=None):
    ref = "%s/%s" % (registry, repository)
    if tag:
        ref += ":" + tag
    if digest:
        ref += "@" + digest
    return ref


def by_digest(ref):
    """True when the reference pins a digest (a digest-only mirror can serve it)."""
    return parse_reference(ref).digest is not None


def repository_path(ref):
    """``registry/repository`` of a reference, without tag or digest."""
    parsed = parse_reference(ref)
    return "%s/%s" % (parsed.registry, parsed.repository)


def mirror_repository(ref, mirror, namespace=None):
    """The repository that serves ``ref`` on ``mirror``.

    Follows containers-registries.conf(5) prefix mirroring: ``quay.io/a/b`` mirrored at
    ``mirror:8443`` (with an optional ``namespace``) is ``mirror:8443[/namespace]/a/b``.
    """
    parsed = parse_reference(ref)
    base = mirror.rstrip("/")
    if namespace:
        base += "/" + namespace.strip("/")
    return "%s/%s" % (base, parsed.repository)
