# Copyright: airgap.microshift contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""containers-policy.json(5): read, validate, merge, render, and find the requirements of a reference.

Plain functions with no Ansible dependency. The policy decides which images the host's containers
tools (podman, skopeo, CRI-O) accept; a policy they cannot parse makes every pull fail, so a
policy is validated here as strictly as containers/image parses it before anyone writes it:
known keys only, ``default`` present, requirement lists not empty, exactly one key source per
signed requirement, valid ``signedIdentity`` rules.

Typical use::

    policy = parse(text, "/etc/containers/policy.json")             # raises PolicyError
    merged = merge(policy, signed={"quay.io/openshift-release-dev": sigstore_requirement(["/etc/containers/release.pub"])},
                   exceptions=["registry.redhat.io/some/unsigned"])
    text = checked_render(merged)
    scope, requirements = requirements_for(merged, "quay.io/openshift-release-dev/ocp@sha256:...")
"""

from __future__ import annotations

import base64
import binascii
import copy
import json
import re

from ansible_collections.airgap.microshift.plugins.module_utils import _sigstore, _strict

MAX_POLICY_SIZE = 4 * 1024 * 1024
DOCKER = "docker"
ACCEPT_ANYTHING = "insecureAcceptAnything"
REJECT = "reject"
SIGNED_BY = "signedBy"
SIGSTORE_SIGNED = "sigstoreSigned"
SIGNED_BASE_LAYER = "signedBaseLayer"

# Keys each requirement type takes (besides "type").
_REQUIREMENT_KEYS = {
    ACCEPT_ANYTHING: (),
    REJECT: (),
    SIGNED_BY: ("keyType", "keyPath", "keyPaths", "keyData", "signedIdentity"),
    SIGNED_BASE_LAYER: ("baseLayerIdentity",),
    SIGSTORE_SIGNED: ("keyPath", "keyPaths", "keyData", "keyDatas", "fulcio", "pki", "rekorPublicKeyPath", "rekorPublicKeyPaths",
                      "rekorPublicKeyData", "rekorPublicKeyDatas", "signedIdentity"),
}
_KEY_TYPES = ("GPGKeys", "signedByGPGKeys", "X509Certificates", "signedByX509CAs")
_SCOPE_RE = re.compile(r"^(?:\*\.)?[a-zA-Z0-9](?:[a-zA-Z0-9.-]*[a-zA-Z0-9])?(?::[0-9]{1,5})?(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*$")


class PolicyError(ValueError):
    """A policy that the containers tools would refuse; ``errors`` lists why."""

    def __init__(self, errors, what="the policy"):
        if isinstance(errors, str):
            errors = [errors]
        self.errors = list(errors)
        super(PolicyError, self).__init__("%s is invalid: %s." % (what, "; ".join(self.errors)))


# ---------------------------------------------------------------- reading


def parse(data, what="the policy"):
    """The policy document of ``data`` (bytes or text): strict JSON, then :func:`validate`d."""
    if isinstance(data, str):
        data = data.encode("utf-8")
    try:
        doc = _strict.load_json(data, what, max_size=MAX_POLICY_SIZE)
    except _strict.OutsideDataError as exc:
        raise PolicyError(str(exc).rstrip("."), what)
    check(doc, what)
    return doc


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
        return "an object"
    return "null" if value is None else type(value).__name__


def _base64_problem(value):
    if not isinstance(value, str):
        return "must be a base64 string, not %s" % _type_name(value)
    try:
        base64.b64decode(value.encode("ascii"), validate=True)
    except (ValueError, binascii.Error, UnicodeEncodeError):
        return "is not base64"
    return None


def _requirement_problems(req, where):
    if not isinstance(req, dict):
        return ["%s must be an object, not %s" % (where, _type_name(req))]
    kind = req.get("type")
    if not isinstance(kind, str) or kind not in _REQUIREMENT_KEYS:
        return ["%s has the type %s, not one of %s" % (where, repr(kind)[:60], ", ".join(sorted(_REQUIREMENT_KEYS)))]
    errors = []
    for key in req:
        if key != "type" and key not in _REQUIREMENT_KEYS[kind]:
            errors.append("%s (%s) has the unknown key %s" % (where, kind, repr(key)[:60]))
    for key in ("keyPath", "rekorPublicKeyPath"):
        if key in req and (not isinstance(req[key], str) or not req[key]):
            errors.append("%s: %s must be a path" % (where, key))
    for key in ("keyPaths", "rekorPublicKeyPaths"):
        if key in req and (not isinstance(req[key], list) or not req[key] or not all(isinstance(p, str) and p for p in req[key])):
            errors.append("%s: %s must be a non-empty list of paths" % (where, key))
    for key in ("keyData", "rekorPublicKeyData"):
        if key in req:
            problem = _base64_problem(req[key])
            if problem:
                errors.append("%s: %s %s" % (where, key, problem))
    for key in ("keyDatas", "rekorPublicKeyDatas"):
        if key in req:
            if not isinstance(req[key], list) or not req[key]:
                errors.append("%s: %s must be a non-empty list" % (where, key))
            else:
                errors.extend("%s: %s %s" % (where, key, p) for p in filter(None, (_base64_problem(v) for v in req[key])))
    if "signedIdentity" in req:
        problem = _sigstore.identity_problem(req["signedIdentity"])
        if problem:
            errors.append("%s: %s" % (where, problem))
    if kind == SIGNED_BY:
        if req.get("keyType") not in _KEY_TYPES:
            errors.append("%s: keyType must be one of %s" % (where, ", ".join(_KEY_TYPES)))
        sources = [key for key in ("keyPath", "keyPaths", "keyData") if key in req]
        if len(sources) != 1:
            errors.append("%s: signedBy takes exactly one of keyPath, keyPaths and keyData" % where)
    elif kind == SIGSTORE_SIGNED:
        sources = [key for key in ("keyPath", "keyPaths", "keyData", "keyDatas", "fulcio", "pki") if key in req]
        if len(sources) != 1:
            errors.append("%s: sigstoreSigned takes exactly one of keyPath, keyPaths, keyData, keyDatas, fulcio and pki" % where)
        for key in ("fulcio", "pki"):
            if key in req and not isinstance(req[key], dict):
                errors.append("%s: %s must be an object" % (where, key))
        rekor = [key for key in ("rekorPublicKeyPath", "rekorPublicKeyPaths", "rekorPublicKeyData", "rekorPublicKeyDatas") if key in req]
        if len(rekor) > 1:
            errors.append("%s: at most one of the rekorPublicKey options may be set" % where)
        if "fulcio" in req and not rekor:
            errors.append("%s: fulcio needs a rekorPublicKey option" % where)
        if "pki" in req and rekor:
            errors.append("%s: pki cannot be combined with a rekorPublicKey option" % where)
    elif kind == SIGNED_BASE_LAYER:
        if not isinstance(req.get("baseLayerIdentity"), dict):
            errors.append("%s: signedBaseLayer needs a baseLayerIdentity object" % where)
    return errors


def _requirements_problems(reqs, where):
    if not isinstance(reqs, list):
        return ["%s must be a list of requirements, not %s" % (where, _type_name(reqs))]
    if not reqs:
        return ["%s is an empty list of requirements" % where]
    errors = []
    for number, req in enumerate(reqs):
        errors.extend(_requirement_problems(req, "%s, requirement %d" % (where, number + 1)))
    return errors


def scope_problem(scope):
    """None when ``scope`` is a docker scope: ``host[:port][/path]`` or ``*.domain``; else why not."""
    if not isinstance(scope, str) or not scope:
        return "a scope must be a non-empty string"
    if scope != scope.strip() or not _SCOPE_RE.match(scope) or (scope.startswith("*.") and ("/" in scope or ":" in scope)):
        return "%s is not a registry scope (host[:port][/repository path], or *.domain)" % repr(scope)[:120]
    return None


def validate(doc):
    """Every problem of a policy document, as containers/image would refuse it (sentences)."""
    if not isinstance(doc, dict):
        return ["the policy must be a JSON object, not %s" % _type_name(doc)]
    errors = []
    for key in doc:
        if key not in ("default", "transports"):
            errors.append("unknown top-level key %s (known: default, transports)" % repr(key)[:60])
    if "default" not in doc:
        errors.append("the default requirements are missing")
    else:
        errors.extend(_requirements_problems(doc["default"], "default"))
    transports = doc.get("transports", {})
    if not isinstance(transports, dict):
        errors.append("transports must be an object, not %s" % _type_name(transports))
        return errors
    for transport, scopes in transports.items():
        if not isinstance(scopes, dict):
            errors.append("transports.%s must be an object of scopes, not %s" % (transport, _type_name(scopes)))
            continue
        for scope, reqs in scopes.items():
            errors.extend(_requirements_problems(reqs, "transports.%s[%s]" % (transport, json.dumps(scope)[:120])))
    return errors


def check(doc, what="the policy"):
    errors = validate(doc)
    if errors:
        raise PolicyError(errors, what)
    return doc


# ---------------------------------------------------------------- writing


def sigstore_requirement(key_paths, identity=None):
    """A ``sigstoreSigned`` requirement trusting the public key files ``key_paths``."""
    paths = list(key_paths)
    if not paths:
        raise PolicyError("a sigstoreSigned requirement needs at least one public key file")
    req = {"type": SIGSTORE_SIGNED}
    if len(paths) == 1:
        req["keyPath"] = paths[0]
    else:
        req["keyPaths"] = paths
    req["signedIdentity"] = dict(identity or _sigstore.DEFAULT_IDENTITY)
    return req


def merge(doc, signed=None, exceptions=(), default=None):
    """A copy of ``doc`` with ``signed`` scopes (``{scope: [requirements]}``) and ``exceptions`` set.

    Every other entry of the policy is kept as it is. Each exception scope accepts anything (a
    repository left unsigned under a signed scope). ``default`` replaces the default requirements
    when given. ``doc`` None starts from a policy accepting anything.
    """
    merged = copy.deepcopy(doc) if doc is not None else {"default": [{"type": ACCEPT_ANYTHING}], "transports": {}}
    errors = [scope_problem(scope) for scope in list(signed or {}) + list(exceptions)]
    overlap = set(signed or {}) & set(exceptions)
    if overlap:
        errors.append("%s is both a signed scope and an exception" % sorted(overlap)[0])
    errors = [e for e in errors if e]
    if errors:
        raise PolicyError(errors, "the signature scopes")
    if default is not None:
        merged["default"] = copy.deepcopy(default)
    transports = merged.setdefault("transports", {})
    docker = transports.setdefault(DOCKER, {})
    for scope, reqs in (signed or {}).items():
        docker[scope] = copy.deepcopy(reqs)
    for scope in exceptions:
        docker[scope] = [{"type": ACCEPT_ANYTHING}]
    return merged


def remove(doc, scopes):
    """A copy of ``doc`` without the docker entries of ``scopes`` (they fall back to broader scopes)."""
    merged = copy.deepcopy(doc)
    docker = merged.get("transports", {}).get(DOCKER)
    if isinstance(docker, dict):
        for scope in scopes:
            docker.pop(scope, None)
        if not docker and not (doc.get("transports") or {}).get(DOCKER) == {}:
            del merged["transports"][DOCKER]     # an empty transport the merge made: gone with its entries
    return merged


def render(doc):
    """The text of a policy: indented JSON, the document's own key order, one trailing newline."""
    return json.dumps(doc, indent=4) + "\n"


def checked_render(doc, what="the policy"):
    """Validate ``doc``, render it and read the text back (the same document); returns the text."""
    check(doc, what)
    text = render(doc)
    if parse(text, what) != doc:
        raise PolicyError("the rendered text does not read back to the same policy", what)
    return text


def key_files(doc):
    """Every public key file a policy names (``keyPath``/``keyPaths`` of sigstoreSigned and signedBy), sorted."""
    paths = set()
    for scopes in (doc.get("transports") or {}).values():
        for reqs in scopes.values():
            for req in reqs:
                if req.get("type") in (SIGSTORE_SIGNED, SIGNED_BY):
                    paths.update([req["keyPath"]] if "keyPath" in req else req.get("keyPaths", []))
    for req in doc.get("default", []):
        if req.get("type") in (SIGSTORE_SIGNED, SIGNED_BY):
            paths.update([req["keyPath"]] if "keyPath" in req else req.get("keyPaths", []))
    return sorted(paths)


# ---------------------------------------------------------------- evaluating


def scope_candidates(ref):
    """The docker scopes that may hold the requirements of ``ref``, most specific first.

    As containers/image looks them up: the reference itself (with its tag or digest), its
    repository, each parent namespace up to the registry (with its port), then ``*.domain``
    wildcards of the registry's host name (without the port), then the transport default ``""``.
    """
    name = ref.split("@", 1)[0]
    slash = name.rfind("/")
    colon = name.rfind(":")
    if colon > slash:
        name = name[:colon]
    out = [ref]
    current = name
    while True:
        out.append(current)
        if "/" not in current:
            break
        current = current.rsplit("/", 1)[0]
    host = current.split(":", 1)[0]
    while "." in host:
        host = host.split(".", 1)[1]
        out.append("*." + host)
    out.append("")
    return out


def requirements_for(doc, ref, transport=DOCKER):
    """``(scope, requirements)`` that apply to ``ref`` (scope None for the policy's default)."""
    scopes = (doc.get("transports") or {}).get(transport)
    if isinstance(scopes, dict):
        for candidate in scope_candidates(ref):
            if candidate in scopes:
                return candidate, scopes[candidate]
    return None, doc.get("default", [])
