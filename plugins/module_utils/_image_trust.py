# Copyright: airgap.microshift contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""Would a host accept an image? Its own signature policy, evaluated for the image's original reference.

Plain functions with no Ansible dependency, given the host's configuration already read (policy,
registries, registries.d) and a ``source`` that reads from registries; they make the decisions
the host's containers tools make when CRI-O or podman pulls an image by its original name:

1. the policy's requirements for the reference (``_containers_policy.requirements_for``): a
   policy accepting anything needs no registry at all;
2. where the image is read from (``_registries_conf.pull_sources``): the first source (mirror,
   then the registry itself) that serves its manifest;
3. for an index, the manifest of the host's platform, which is what a pull checks;
4. its sigstore attachment, from that same source, when registries.d enables attachments for
   the repository actually read (the mirror's);
5. the requirements (``_sigstore.evaluate_signatures`` for ``sigstoreSigned`` with public keys).

Requirements this collection cannot check (``signedBy`` GPG signatures, ``sigstoreSigned`` with
Fulcio, a PKI or Rekor) give the verdict ``unchecked`` rather than a guess.

``source`` (``_registry.RegistrySource``, or a test's own) has ``manifest(registry, repository,
reference, accept=None)`` -> ``(bytes, media type)`` or None (absent), and ``blob(registry,
repository, digest, max_size)`` -> bytes or None; either raises :class:`SourceError`
(``_registry.CannotTell``) with the reason when it cannot tell. ``read_key(path)`` returns a key
file's bytes or raises ``OSError``.
"""

from __future__ import annotations

import base64
import hashlib
import os

from ansible_collections.airgap.microshift.plugins.module_utils import _containers_policy as policy_mod
from ansible_collections.airgap.microshift.plugins.module_utils import _files, _registries_conf, _registries_d, _signing, _sigstore, _store
from ansible_collections.airgap.microshift.plugins.module_utils import _workers
from ansible_collections.airgap.microshift.plugins.module_utils._reference import InvalidReference, parse_reference
from ansible_collections.airgap.microshift.plugins.module_utils._registry import CannotTell, RegistrySource

ACCEPTED = "accepted"
REJECTED = "rejected"
UNCHECKED = "unchecked"
VERDICTS = (ACCEPTED, REJECTED, UNCHECKED)

# The Go names of the machine types Ansible reports (ansible_architecture).
GOARCH = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64", "ppc64le": "ppc64le",
          "s390x": "s390x", "armv7l": "arm", "i386": "386", "i686": "386"}


# A registry that cannot be read for sure (the message says why): what ``source`` raises.
SourceError = CannotTell


def goarch(machine):
    return GOARCH.get(machine, machine)


def _result(ref, verdict, reason=None, scope=None, source=None, manifest=None, requirement=None):
    return {"ref": ref, "verdict": verdict, "reason": reason, "scope": scope, "source": source, "manifest": manifest,
            "requirement": requirement}


def classify(requirements):
    """``accept`` (nothing to check), ``reject``, ``sigstore`` (signatures to check) or ``unchecked``, and why."""
    kinds = [req.get("type") for req in requirements]
    if policy_mod.REJECT in kinds:
        return "reject", None
    if policy_mod.SIGNED_BASE_LAYER in kinds:
        return "reject", "signedBaseLayer not implemented yet!"
    checkable = True
    for req in requirements:
        if req.get("type") == policy_mod.SIGNED_BY:
            checkable = False
        elif req.get("type") == policy_mod.SIGSTORE_SIGNED:
            if any(key in req for key in ("fulcio", "pki", "rekorPublicKeyPath", "rekorPublicKeyPaths", "rekorPublicKeyData",
                                          "rekorPublicKeyDatas")):
                checkable = False
    if all(kind == policy_mod.ACCEPT_ANYTHING for kind in kinds):
        return "accept", None
    return ("sigstore", None) if checkable else ("unchecked", None)


def requirement_keys(req, read_key):
    """The public keys of a ``sigstoreSigned`` requirement with keys: ``(keys, problem)``."""
    blobs = []
    try:
        if "keyPath" in req:
            blobs.append(("the key file %s" % req["keyPath"], read_key(req["keyPath"])))
        for path in req.get("keyPaths", []):
            blobs.append(("the key file %s" % path, read_key(path)))
    except OSError as exc:
        return None, "cannot read the key file %s: %s" % (getattr(exc, "filename", None) or "", exc.strerror or exc)
    if "keyData" in req:
        blobs.append(("the policy's keyData", base64.b64decode(req["keyData"])))
    for number, data in enumerate(req.get("keyDatas", [])):
        blobs.append(("the policy's keyDatas #%d" % (number + 1), base64.b64decode(data)))
    keys = []
    for what, data in blobs:
        try:
            keys.extend(_signing.load_public_keys(data, what, image=True))
        except _signing.SigningError as exc:
            return None, str(exc).rstrip(".")
    return keys, None


def _split(ref):
    parsed = parse_reference(ref)
    return parsed.registry, parsed.repository


def platform_manifest(index_raw, arch, what, os_name="linux"):
    """The descriptor of ``index_raw``'s manifest for ``os_name``/``arch``, or raise :class:`SourceError`."""
    try:
        doc = _store.parse_manifest(index_raw, what)
    except _store.StoreError as exc:
        raise SourceError(str(exc).rstrip("."))
    matches = [c for c in doc["children"] if (c.get("platform") or {}).get("architecture") == arch
               and (c.get("platform") or {}).get("os", os_name) == os_name]
    if not matches:
        raise SourceError("%s has no manifest for %s/%s" % (what, os_name, arch))
    return matches[0]


def read_signatures(source, physical_ref, digest):
    """``[(media_type, payload, annotations)]`` of the attachment of ``digest`` next to ``physical_ref``."""
    registry, repository = _split(physical_ref)
    found = source.manifest(registry, repository, _sigstore.attachment_tag(digest), accept=_sigstore.ATTACHMENT_MEDIA_TYPE)
    if found is None:
        return []
    what = "the signatures of %s (%s:%s)" % (digest, physical_ref.split("@", 1)[0], _sigstore.attachment_tag(digest))
    try:
        attachment = _sigstore.parse_attachment(found[0], what)
    except _sigstore.SigstoreError as exc:
        raise SourceError(str(exc).rstrip("."))
    payloads = {}
    for layer in attachment["layers"]:
        if layer["media_type"] != _sigstore.SIGNATURE_MEDIA_TYPE:
            payloads[layer["digest"]] = None
            continue
        data = source.blob(registry, repository, layer["digest"], _sigstore.MAX_PAYLOAD)
        if data is None:
            raise SourceError("%s names the layer %s, which %s does not serve" % (what, layer["digest"], registry))
        payloads[layer["digest"]] = data
    out = []
    for layer in attachment["layers"]:
        out.append((layer["media_type"], payloads[layer["digest"]] or b"", layer.get("annotations") or {}))
    return out


def evaluate(ref, policy, registries, registries_d, source, read_key, arch="amd64"):
    """The verdict of the host's policy on the image ``ref`` (its original reference).

    Returns ``{"ref", "verdict", "reason", "scope", "source", "manifest", "requirement"}``: verdict
    ``accepted``, ``rejected`` (``reason`` in containers/image's words) or ``unchecked``; ``source``
    the repository the image was read from; ``manifest`` the digest whose signatures were checked.
    """
    scope, requirements = policy_mod.requirements_for(policy, ref)
    shown_scope = scope if scope is not None else "default"
    decision, why = classify(requirements)
    if decision == "accept":
        return _result(ref, ACCEPTED, scope=shown_scope, requirement=policy_mod.ACCEPT_ANYTHING)
    if decision == "reject":
        return _result(ref, REJECTED, why or "Running image docker://%s is rejected by policy." % ref, shown_scope,
                       requirement=policy_mod.REJECT)
    if decision == "unchecked":
        kinds = sorted(set(req.get("type") for req in requirements if req.get("type") != policy_mod.ACCEPT_ANYTHING))
        return _result(ref, UNCHECKED, "the policy requires %s, which this check cannot verify (GPG signatures, Fulcio, "
                                       "a PKI or Rekor)" % " and ".join(kinds), shown_scope, requirement=", ".join(kinds))
    try:
        sources = _registries_conf.pull_sources(registries, ref)
    except _registries_conf.RegistriesConfError as exc:
        return _result(ref, REJECTED, str(exc).rstrip("."), shown_scope)
    failures = []
    for candidate in sources:
        physical = candidate["ref"]
        registry, repository = _split(physical)
        reference = physical.split("@", 1)[1] if "@" in physical else physical.rsplit(":", 1)[1]
        try:
            found = source.manifest(registry, repository, reference)
        except SourceError as exc:
            failures.append("%s: %s" % (physical, exc))
            continue
        if found is None:
            failures.append("%s: manifest unknown" % physical)
            continue
        return _evaluate_at(ref, physical, found, requirements, shown_scope, registries_d, source, read_key, arch)
    return _result(ref, REJECTED, "no source serves it (%s)" % "; ".join(failures), shown_scope)


def _evaluate_at(ref, physical, found, requirements, scope, registries_d, source, read_key, arch):
    raw = found[0]
    digest = "sha256:" + hashlib.sha256(raw).hexdigest()
    wanted = parse_reference(ref).digest
    if wanted and wanted != digest:
        return _result(ref, REJECTED, "%s served a manifest of digest %s" % (physical, digest), scope, physical.split("@", 1)[0])
    manifest, checked = raw, digest
    try:
        kind = _store.parse_manifest(raw, "the manifest of %s" % physical)["kind"]
        if kind == "index":
            child = platform_manifest(raw, arch, "the index of %s" % physical)
            registry, repository = _split(physical)
            found = source.manifest(registry, repository, child["digest"])
            if found is None or "sha256:" + hashlib.sha256(found[0]).hexdigest() != child["digest"]:
                raise SourceError("%s does not serve its manifest %s for %s" % (physical.split("@", 1)[0], child["digest"], arch))
            manifest, checked = found[0], child["digest"]
        use_attachments = _registries_d.use_sigstore_attachments(registries_d, physical.split("@", 1)[0])
        signatures = read_signatures(source, physical, checked) if use_attachments else []
    except (_store.StoreError, SourceError) as exc:
        return _result(ref, REJECTED, "cannot read its signatures: %s" % str(exc).rstrip("."), scope, physical.split("@", 1)[0], checked)
    for req in requirements:
        if req.get("type") != policy_mod.SIGSTORE_SIGNED:
            continue
        keys, problem = requirement_keys(req, read_key)
        if problem:
            return _result(ref, REJECTED, problem, scope, physical.split("@", 1)[0], checked, policy_mod.SIGSTORE_SIGNED)
        accepted, reason = _sigstore.evaluate_signatures(keys, req.get("signedIdentity"), ref, manifest, signatures)
        if not accepted:
            if not use_attachments and reason == _sigstore.NO_SIGNATURE:
                reason += " (registries.d does not enable use-sigstore-attachments for %s)" % physical.split("@", 1)[0]
            return _result(ref, REJECTED, reason, scope, physical.split("@", 1)[0], checked, policy_mod.SIGSTORE_SIGNED)
    return _result(ref, ACCEPTED, None, scope, physical.split("@", 1)[0], checked, policy_mod.SIGSTORE_SIGNED)


# ---------------------------------------------------------------- the host's own files


class HostConfigError(ValueError):
    """A configuration file of the host that cannot be read; the message names the file."""


MAX_CONFIG_FILE = 4 * 1024 * 1024


def _read_text(path, missing_ok=False):
    try:
        data = _files.read_limited(path, MAX_CONFIG_FILE)
    except OSError as exc:
        if missing_ok and getattr(exc, "errno", None) == 2:
            return None
        raise HostConfigError("Cannot read %s: %s." % (path, exc.strerror or exc))
    if len(data) > MAX_CONFIG_FILE:
        raise HostConfigError("%s has more than %d bytes, too many for a configuration file." % (path, MAX_CONFIG_FILE))
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise HostConfigError("%s is not UTF-8 text." % path)


def _listing(directory, suffix):
    try:
        names = sorted(name for name in os.listdir(directory) if name.endswith(suffix))
    except OSError as exc:
        if getattr(exc, "errno", None) == 2:
            return []
        raise HostConfigError("Cannot list %s: %s." % (directory, exc.strerror or exc))
    return [os.path.join(directory, name) for name in names if os.path.isfile(os.path.join(directory, name))]


def read_host_registries(registries_conf, registries_conf_d):
    """``(registries, files)`` of a host: its registries.conf and drop-ins, as its containers tools merge them.

    ``registries`` is ``{prefix: [[registry]] entry}``; ``files`` the ``[(path, settings)]`` read, the
    main file first, then the drop-ins (``*.conf``) in order. Absent files are skipped. Raises
    :class:`HostConfigError` naming the file at fault.
    """
    files = []
    for path in ([registries_conf] if registries_conf else []) + _listing(registries_conf_d, ".conf"):
        text = _read_text(path, missing_ok=True)
        if text is None:
            continue
        try:
            files.append((path, _registries_conf.read_host_file(text, path)))
        except _registries_conf.RegistriesConfError as exc:
            raise HostConfigError(str(exc))
    try:
        return _registries_conf.merge_host_files(files), files
    except _registries_conf.RegistriesConfError as exc:
        raise HostConfigError(str(exc))


def read_host_configuration(policy_path, registries_conf, registries_conf_d, registries_d):
    """``(policy, registries, registries_d)`` of a host, read from its files as its containers tools read them.

    The policy must exist (the containers tools refuse to pull without one); registries.conf, its
    drop-ins (``*.conf``, in order) and the ``*.yaml`` files of registries.d may be absent. Raises
    :class:`HostConfigError` naming the file at fault.
    """
    text = _read_text(policy_path, missing_ok=True)
    if text is None:
        raise HostConfigError("The signature policy %s does not exist; the containers tools refuse every pull without one." % policy_path)
    try:
        policy = policy_mod.parse(text, policy_path)
    except policy_mod.PolicyError as exc:
        raise HostConfigError(str(exc))
    registries = read_host_registries(registries_conf, registries_conf_d)[0]
    docs = []
    for path in _listing(registries_d, ".yaml"):
        try:
            docs.append((path, _registries_d.parse(_read_text(path), path)))
        except _registries_d.RegistriesDError as exc:
            raise HostConfigError(str(exc))
    try:
        merged = _registries_d.merge_files(docs)
    except _registries_d.RegistriesDError as exc:
        raise HostConfigError("The registries.d configuration %s is refused: %s" % (registries_d, exc))
    return policy, registries, merged


def read_key_file(path):
    """The bytes of a public key file a policy names (at most 1 MiB)."""
    return _files.read_limited(path, 1024 * 1024 - 1)


# ---------------------------------------------------------------- a run over a list of images


def request_problem(params):
    """The first problem with ``signature_check``'s options, as one sentence naming the option, or None."""
    if params["parallel"] < 1:
        return "Option parallel must be 1 or more, not %d." % params["parallel"]
    if params["authfile"] and not os.path.isfile(params["authfile"]):
        return "Option authfile names %s, which does not exist or is not a file." % params["authfile"]
    if params["cert_dir"] and not os.path.isdir(params["cert_dir"]):
        return "Option cert_dir names %s, which does not exist or is not a directory." % params["cert_dir"]
    for ref in params["images"]:
        try:
            parse_reference(ref)
        except InvalidReference as exc:
            return "Option images: %s." % str(exc).rstrip(".")
    return None


def check_images(params, machine):
    """Evaluate the host's policy for every image of ``params["images"]`` (a host of type ``machine``).

    Returns ``(failure, warning, outcome)``: the sentence that fails the task (or None), a warning
    about requirements that cannot be checked (or None), and the module's result. Raises
    :class:`HostConfigError` naming the host's file at fault.
    """
    refs = list(dict.fromkeys(params["images"]))
    policy, registries, registries_d = read_host_configuration(
        params["policy"], params["registries_conf"], params["registries_conf_d"], params["registries_d"])
    arch = goarch(params["architecture"] or machine)
    insecure = [entry["location"] for entry in registries.values() if entry.get("insecure") and entry.get("location")]
    insecure += [m["location"] for entry in registries.values() for m in entry.get("mirror", []) if m.get("insecure")]
    source = RegistrySource(params["authfile"], True, params["cert_dir"], insecure=[location.split("/", 1)[0] for location in insecure])

    def check(ref):
        try:
            return evaluate(ref, policy, registries, registries_d, source, read_key_file, arch)
        except Exception as exc:  # pylint: disable=broad-except
            return _result(ref, REJECTED, "cannot be checked: %s" % exc)

    results = _workers.run_parallel(refs, min(params["parallel"], max(1, len(refs))), check) if refs else []
    outcome = {
        "changed": False,
        "results": results,
        "accepted": [r["ref"] for r in results if r["verdict"] == ACCEPTED],
        "rejected": [dict((k, r[k]) for k in ("ref", "reason", "scope", "source", "manifest")) for r in results if r["verdict"] == REJECTED],
        "unchecked": [dict((k, r[k]) for k in ("ref", "reason", "scope")) for r in results if r["verdict"] == UNCHECKED],
    }
    problems, warning = [], None
    if outcome["rejected"]:
        problems.append("%d of %d image(s) would be refused by the signature policy of the host (%s): %s." % (
            len(outcome["rejected"]), len(results), params["policy"],
            "; ".join("%s: %s" % (item["ref"], item["reason"]) for item in outcome["rejected"])))
    if outcome["unchecked"]:
        warning = "%d image(s) have requirements this check cannot verify: %s." % (
            len(outcome["unchecked"]), "; ".join("%s: %s" % (item["ref"], item["reason"]) for item in outcome["unchecked"]))
        if params["fail_on_unchecked"]:
            problems.append(warning)
            warning = None
    return " ".join(problems) or None, warning, outcome
