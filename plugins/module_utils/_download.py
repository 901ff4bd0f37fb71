# Copyright: airgap.microshift contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""Plan and run the download of images into the image store (docs/store-format.md).

1. Plan: ``skopeo inspect --raw`` of every ref and of every per-architecture manifest (in
   parallel) gives every blob and its size, hence the exact logical, unique and missing bytes.
2. Schedule: a bounded pool of ``skopeo copy`` runs, fed as the plans arrive (the first copy
   does not wait for the whole plan); an image starts only when none of the blobs it still
   misses is being fetched by a running copy, so every blob crosses the wire once.
3. Record: after a copy, the image's manifests (the exact bytes the plan read) and configs are
   put in place, every blob is checked, then the image is added to ``store.json``.

Signatures: while an image is planned, the sigstore attachment of each of its manifests (the
index and every per-architecture manifest) is read from the source, over kept-alive HTTPS
(``_registry.RegistrySource``; ``skopeo copy`` of the attachment when that steps aside); a 404
for the attachment's tag means the manifest is unsigned. Where signatures are required (scopes,
exceptions and public keys), they are verified in Python (``_sigstore``) before any layer is
copied, so an image whose signature is missing or refused fails at once, naming the reason. The
attachments join the store as ordinary blobs, recorded under the image's ``signatures``.

skopeo cannot write docker (schema 2) manifests into an OCI layout while preserving digests.
For such images skopeo fetches the layers (byte for byte the same in both formats) through a
converted copy, and the original manifests and configs are written next to them, so the
layout names the original digest and ``skopeo copy --preserve-digests oci:...`` reproduces it.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import json
import os
import queue
import shutil
import tempfile
import time

from ansible_collections.airgap.microshift.plugins.module_utils import _store as store_mod
from ansible_collections.airgap.microshift.plugins.module_utils import _signing, _sigstore, _strict, _workers
from ansible_collections.airgap.microshift.plugins.module_utils._containers_policy import scope_candidates, scope_problem
from ansible_collections.airgap.microshift.plugins.module_utils._reference import InvalidReference, parse_reference
from ansible_collections.airgap.microshift.plugins.module_utils._registry import CannotTell, RegistrySource
from ansible_collections.airgap.microshift.plugins.module_utils._skopeo import PERMANENT, SkopeoError

DOCKER_TYPES = (store_mod.MEDIA_DOCKER_LIST, store_mod.MEDIA_DOCKER_MANIFEST)


class PlanError(Exception):
    """An image whose manifests cannot be used; the message names the image."""


class SignatureRefused(PlanError):
    """An image whose required signature is missing or refused; the message names the image and why."""


def request_problem(refs, store):
    """The first problem with the images and the store asked for, as one sentence naming the option, or None."""
    for ref in refs:
        try:
            parse_reference(ref)
            store_mod.layout_name(ref)
        except (InvalidReference, store_mod.StoreError) as exc:
            return "Option images: %s." % str(exc).rstrip(".")
    if ":" in os.path.abspath(store):
        return ("Option store names %s, which contains ':', which skopeo reads as the end of its oci: transport name; "
                "choose a path without ':'." % store)
    problem = store_mod.creation_problem(store)
    return "Option store names %s, which %s." % (store, problem) if problem else None


def sha256_bytes(data):
    return "sha256:" + hashlib.sha256(data).hexdigest()


def pinned_reference(ref, digest):
    """``registry/repository@digest``: copies use the digest the plan resolved, never a tag."""
    parsed = parse_reference(ref)
    return "%s/%s@%s" % (parsed.registry, parsed.repository, digest)


def format_platform(platform):
    if not isinstance(platform, dict):
        return None
    parts = [platform.get("os") or "", platform.get("architecture") or ""]
    if platform.get("variant"):
        parts.append(platform["variant"])
    value = "/".join(parts)
    return value if value.strip("/") else None


def parse_manifest(raw, what):
    """Parse manifest or index bytes into ``{"media_type", "kind", "children" | "config"+"layers"}``.

    The strict reading is ``_store.parse_manifest``'s (the one reader of manifests); this keeps
    the plan's shape: each child with its platform as ``os/arch[/variant]``.
    """
    try:
        doc = store_mod.parse_manifest(raw, "%s: the registry returned a manifest that" % what)
    except store_mod.StoreError as exc:
        raise PlanError(str(exc).rstrip("."))
    if doc["kind"] == "index":
        children = [{"digest": c["digest"], "size": c["size"], "media_type": c["media_type"],
                     "platform": format_platform(c.get("platform"))} for c in doc["children"]]
        return {"media_type": doc["media_type"], "kind": "index", "children": children}

    def strip(descriptor):
        return {"digest": descriptor["digest"], "size": descriptor["size"], "media_type": descriptor["media_type"]}
    return {"media_type": doc["media_type"], "kind": "manifest", "config": strip(doc["config"]),
            "layers": [strip(layer) for layer in doc["layers"]]}


def build_image_plan(ref, top_raw, children_raw):
    """Assemble the plan of one image from raw manifests.

    ``children_raw`` maps each per-architecture manifest digest to its bytes (unused for a
    single manifest). Pure: unit tests call it with synthetic manifests.
    """
    parsed_ref = parse_reference(ref)
    digest = sha256_bytes(top_raw)
    if parsed_ref.digest and parsed_ref.digest != digest:
        raise PlanError("%s: the registry returned a manifest whose digest is %s" % (ref, digest))
    top = parse_manifest(top_raw, ref)
    manifests = []
    if top["kind"] == "index":
        entries = [(child, children_raw.get(child["digest"])) for child in top["children"]]
    else:
        entries = [({"digest": digest, "size": len(top_raw), "media_type": top["media_type"], "platform": None}, top_raw)]
    for child, raw in entries:
        if raw is None:
            raise PlanError("%s: manifest %s was not read" % (ref, child["digest"]))
        if sha256_bytes(raw) != child["digest"] or len(raw) != child["size"]:
            raise PlanError("%s: manifest %s does not match its descriptor" % (ref, child["digest"]))
        parsed = parse_manifest(raw, "%s (manifest %s)" % (ref, child["digest"])) if raw is not top_raw else top
        if parsed["kind"] != "manifest":
            raise PlanError("%s: nested indexes are not supported (%s)" % (ref, child["digest"]))
        blobs = [parsed["config"]] + parsed["layers"]
        manifests.append({"digest": child["digest"], "size": child["size"], "media_type": parsed["media_type"],
                          "platform": child["platform"], "raw": raw, "config": parsed["config"], "blobs": blobs})
    all_blobs = {digest: len(top_raw)}
    for manifest in manifests:
        all_blobs[manifest["digest"]] = manifest["size"]
        for blob in manifest["blobs"]:
            all_blobs[blob["digest"]] = blob["size"]
    docker_typed = top["media_type"] in DOCKER_TYPES or any(m["media_type"] in DOCKER_TYPES for m in manifests)
    return {
        "ref": ref,
        "layout": store_mod.layout_path(ref),
        "digest": digest,
        "media_type": top["media_type"],
        "manifest_size": len(top_raw),
        "raw": top_raw,
        "manifests": manifests,
        "blobs": all_blobs,
        "fetchable": dict((b["digest"], b["size"]) for m in manifests for b in m["blobs"]),
        "size": sum(all_blobs.values()),
        "docker_typed": docker_typed,
    }


def store_entry(plan, platforms=None):
    """The ``store.json`` entry of a downloaded image (``platforms`` fills single-arch gaps)."""
    platforms = platforms or {}
    entry = {
        "digest": plan["digest"],
        "media_type": plan["media_type"],
        "manifest_size": plan["manifest_size"],
        "layout": plan["layout"],
        "manifests": [{"digest": m["digest"], "media_type": m["media_type"], "size": m["size"],
                       "platform": m["platform"] or platforms.get(m["digest"]),
                       "blobs": [{"digest": b["digest"], "size": b["size"], "media_type": b["media_type"]} for b in m["blobs"]]}
                      for m in plan["manifests"]],
        "size": plan["size"],
        "fetched": store_mod.utc_now(),
    }
    if plan.get("signatures") is not None:
        entry["signatures"] = dict((digest, found["record"]) for digest, found in sorted(plan["signatures"].items()))
    return entry


# Signatures -------------------------------------------------------------------------------


class SignatureOptions:
    """Whether to fetch signatures, and where they are required (scopes, exceptions, public keys)."""

    def __init__(self, fetch=True, scopes=(), exceptions=(), keys=(), source=None):
        self.fetch = fetch
        self.scopes = list(scopes)
        self.exceptions = list(exceptions)
        self.keys = list(keys)
        self.source = source

    def required(self, ref):
        """True when ``ref`` falls under a required scope (the most specific of scopes and exceptions wins)."""
        for candidate in scope_candidates(ref):
            if candidate in self.exceptions:
                return False
            if candidate in self.scopes:
                return True
        return False


def signature_options(params):
    """``(problem, SignatureOptions)`` of a module's signature options, checked before anything runs.

    ``problem`` is one sentence naming the option (a scope that is not one, exceptions without scopes,
    scopes without keys or without fetching, a key file that is not a public key), or None.
    """
    scopes, exceptions, key_files = params["signature_scopes"], params["signature_exceptions"], params["signature_keys"]
    for option, values in (("signature_scopes", scopes), ("signature_exceptions", exceptions)):
        for scope in values:
            problem = scope_problem(scope)
            if problem:
                return "Option %s: %s." % (option, problem), None
    if (scopes or exceptions) and not params["signatures"]:
        return ("Options signature_scopes and signature_exceptions need signatures: true (the signatures are fetched to be "
                "checked)."), None
    if scopes and not key_files:
        return "Option signature_scopes requires signature_keys: the public keys the required signatures are checked with.", None
    if exceptions and not scopes:
        return "Option signature_exceptions lists exceptions to signature_scopes, which is empty.", None
    keys = []
    if scopes:
        try:
            keys = _signing.read_public_keys(key_files, image=True)
        except _signing.SigningError as exc:
            return "Option signature_keys: %s." % str(exc).rstrip("."), None
    source = None
    if params["signatures"]:
        source = RegistrySource(params.get("authfile"), params.get("validate_certs", True), params.get("cert_dir"))
    return None, SignatureOptions(fetch=params["signatures"], scopes=scopes, exceptions=exceptions, keys=keys, source=source)


def attachment_record(parsed):
    """What ``store.json`` records of an attachment: digest, size, media type and blobs."""
    return {"digest": parsed["digest"], "size": parsed["size"], "media_type": parsed["media_type"],
            "blobs": _sigstore.attachment_blobs(parsed)}


def _fetch_with_skopeo(skopeo, registry_options, ref, tag, what):
    """``(raw, {digest: bytes})`` of an attachment copied with skopeo into a ``dir:``, or None (absent)."""
    parsed = parse_reference(ref)
    source = "docker://%s/%s:%s" % (parsed.registry, parsed.repository, tag)
    work = tempfile.mkdtemp(prefix="airgap-signatures-")
    try:
        argv = skopeo.copy_argv(source, "dir:" + work, src_options=registry_options, all_images=False, preserve_digests=True)
        try:
            skopeo.run(argv, what)
        except SkopeoError as exc:
            if exc.kind == PERMANENT and exc.cause.startswith("manifest unknown"):
                return None
            raise
        raw = _strict.read_file(work, "manifest.json", what, max_size=_sigstore.MAX_ATTACHMENT)
        blobs = {}
        attachment = _sigstore.parse_attachment(raw, what)
        for blob in _sigstore.attachment_blobs(attachment):
            blobs[blob["digest"]] = _strict.read_file(work, blob["digest"][7:], what, size=blob["size"], max_size=_sigstore.MAX_PAYLOAD)
        return raw, blobs
    finally:
        shutil.rmtree(work, ignore_errors=True)


def fetch_attachment(source, skopeo, registry_options, ref, digest):
    """The sigstore attachment of the manifest ``digest`` of ``ref``, or None when it is unsigned.

    Returns ``{"raw", "attachment", "record", "blobs": {digest: bytes}}``; raises :class:`PlanError`
    naming the image when the attachment is unusable, :class:`SkopeoError` when it cannot be read.
    """
    parsed = parse_reference(ref)
    tag = _sigstore.attachment_tag(digest)
    what = "%s: the signatures of manifest %s (%s/%s:%s)" % (ref, digest, parsed.registry, parsed.repository, tag)
    fetched = None
    try:
        found = source.manifest(parsed.registry, parsed.repository, tag, accept=_sigstore.ATTACHMENT_MEDIA_TYPE) if source else None
        if source is not None:
            if found is None:
                return None
            attachment = _sigstore.parse_attachment(found[0], what)
            blobs = {}
            for blob in _sigstore.attachment_blobs(attachment):
                data = source.blob(parsed.registry, parsed.repository, blob["digest"], _sigstore.MAX_PAYLOAD)
                if data is None or len(data) != blob["size"]:
                    raise PlanError("%s name the blob %s, which the registry does not serve with its size" % (what, blob["digest"]))
                blobs[blob["digest"]] = data
            fetched = (found[0], blobs)
    except CannotTell:
        fetched = None
    except _sigstore.SigstoreError as exc:
        raise PlanError(str(exc).rstrip("."))
    try:
        if fetched is None:
            fetched = _fetch_with_skopeo(skopeo, registry_options, ref, tag, what)
            if fetched is None:
                return None
        attachment = _sigstore.parse_attachment(fetched[0], what)
    except (_sigstore.SigstoreError, _strict.OutsideDataError) as exc:
        raise PlanError(str(exc).rstrip("."))
    return {"raw": fetched[0], "attachment": attachment, "record": attachment_record(attachment), "blobs": fetched[1]}


def signatures_of(found):
    """``[(media_type, payload, annotations)]`` of a fetched or stored attachment (``{"attachment", "blobs"}``)."""
    if found is None:
        return []
    try:
        return _sigstore.signatures_of(found["attachment"], found["blobs"])
    except _sigstore.SigstoreError as exc:
        raise PlanError(str(exc).rstrip("."))


def verify_image_signatures(ref, index, manifests, signatures, keys):
    """``(verified, problem)``: every per-architecture manifest needs an accepted signature, and a signed
    index must verify too (what the hosts enforce is the manifest they pull).

    ``index`` is ``(digest, raw)`` or None for a single manifest; ``manifests`` ``[(digest, raw, platform)]``;
    ``signatures`` ``{digest: [(media_type, payload, annotations)]}``. The identity rule is
    ``matchRepoDigestOrExact`` for ``ref``, as in Red Hat's policy.
    """
    verified = 0
    for digest, raw, platform in manifests:
        accepted, reason = _sigstore.evaluate_signatures(keys, None, ref, raw, signatures.get(digest, []))
        if not accepted:
            return verified, "%s: the signature of its manifest %s%s is refused: %s" % (
                ref, digest, " (%s)" % platform if platform else "", reason)
        verified += 1
    if index is not None and signatures.get(index[0]):
        accepted, reason = _sigstore.evaluate_signatures(keys, None, ref, index[1], signatures[index[0]])
        if not accepted:
            return verified, "%s: the signature of its index %s is refused: %s" % (ref, index[0], reason)
        verified += 1
    return verified, None


def plan_signatures(plan, skopeo, options):
    """Fetch the attachments of every manifest of a plan and, where required, verify them.

    Fills ``plan["signatures"]`` (manifest digest -> fetched attachment), adds the attachments'
    blobs to the plan's blobs and size, and ``plan["signature_counts"]``. Raises :class:`PlanError`.
    """
    sig = options.signatures
    started = time.monotonic()
    digests = [plan["digest"]] + [m["digest"] for m in plan["manifests"] if m["digest"] != plan["digest"]]
    found = {}
    for digest in digests:
        attachment = fetch_attachment(sig.source, skopeo, options.registry, plan["ref"], digest)
        if attachment is not None:
            found[digest] = attachment
    plan["signatures"] = found
    for attachment in found.values():
        plan["blobs"][attachment["record"]["digest"]] = attachment["record"]["size"]
        for blob in attachment["record"]["blobs"]:
            plan["blobs"][blob["digest"]] = blob["size"]
    plan["size"] = sum(plan["blobs"].values())
    counts = {"signed": len(found), "unsigned": len(digests) - len(found), "verified": 0,
              "bytes": sum(a["record"]["size"] + sum(b["size"] for b in a["record"]["blobs"]) for a in found.values())}
    if sig.required(plan["ref"]):
        index = (plan["digest"], plan["raw"]) if plan["media_type"] in store_mod.INDEX_MEDIA_TYPES else None
        manifests = [(m["digest"], m["raw"], m["platform"]) for m in plan["manifests"]]
        counts["verified"], problem = verify_image_signatures(plan["ref"], index, manifests,
                                                              dict((d, signatures_of(a)) for d, a in found.items()), sig.keys)
        if problem:
            raise SignatureRefused(problem)
    counts["seconds"] = time.monotonic() - started
    plan["signature_counts"] = counts
    return plan


def stored_signatures(store, entry, ref):
    """``({manifest digest: signatures}, {manifest digest: raw})`` of an image of the store, read strictly."""
    signatures, raws = {}, {}
    for digest, record in (entry.get("signatures") or {}).items():
        what = "%s: the signatures of manifest %s in the store" % (ref, digest)
        try:
            raw = store_mod.read_blob(store, record["digest"], record["size"], what, max_size=_sigstore.MAX_ATTACHMENT)
            attachment = _sigstore.parse_attachment(raw, what)
            blobs = dict((b["digest"], store_mod.read_blob(store, b["digest"], b["size"], what, max_size=_sigstore.MAX_PAYLOAD))
                         for b in _sigstore.attachment_blobs(attachment))
        except (store_mod.StoreError, _sigstore.SigstoreError) as exc:
            raise PlanError(str(exc).rstrip("."))
        signatures[digest] = signatures_of({"attachment": attachment, "blobs": blobs})
    for digest, size in [(entry["digest"], entry["manifest_size"])] + [(m["digest"], m["size"]) for m in entry["manifests"]]:
        try:
            raws[digest] = store_mod.read_blob(store, digest, size, "%s: manifest %s in the store" % (ref, digest))
        except store_mod.StoreError as exc:
            raise PlanError(str(exc).rstrip("."))
    return signatures, raws


def verify_stored(store, entry, ref, keys):
    """``(counts, problem)`` of the signatures an image of the store holds, verified with ``keys``."""
    signatures, raws = stored_signatures(store, entry, ref)
    index = (entry["digest"], raws[entry["digest"]]) if entry["media_type"] in store_mod.INDEX_MEDIA_TYPES else None
    manifests = [(m["digest"], raws[m["digest"]], m.get("platform")) for m in entry["manifests"]]
    verified, problem = verify_image_signatures(ref, index, manifests, signatures, keys)
    return verified, problem


def signature_counts(entry):
    """Signed and unsigned manifests of a store entry (``None`` when its signatures were never looked up)."""
    counts = store_mod.signature_summary(entry)
    if counts is not None:
        counts.update(verified=0, bytes=sum(store_mod.signature_blobs(entry).values()))
    return counts


# Scheduling -------------------------------------------------------------------------------


class BlobScheduler(_workers.Scheduler):
    """The download's policy: the image with the most bytes still to fetch starts first.

    ``missing`` maps each image to the set of blobs it must fetch; ``sizes`` (optional) maps
    blobs to sizes. Images can be added while others run (:meth:`add`), as their plans arrive.
    """

    def __init__(self, missing=None, sizes=None):
        self.sizes = dict(sizes or {})
        super().__init__()
        for name, blobs in (missing or {}).items():
            self.add(name, blobs)

    def add(self, name, blobs, sizes=None):
        """Queue ``name``, which needs ``blobs`` (a set of digests, ``sizes`` their sizes)."""
        self.sizes.update(sizes or {})
        super().add(name, dict((blob, self.sizes.get(blob, 0)) for blob in blobs))

    @property
    def completed(self):
        return self.done

    def remaining(self, name):
        return set(self.missing(name))

    def choose(self, ready, missing):
        return max(ready, key=lambda name: (sum(missing[name].values()), -self.position[name]))


def simulate_schedule(missing, parallel, sizes=None):
    """Run the scheduler with ``parallel`` slots, finishing the oldest copy first.

    Returns the list of concurrent sets observed (each a set of image names). For tests and
    for reasoning about a plan; the real run finishes copies in whatever order they end.
    """
    scheduler = BlobScheduler(missing, sizes)
    snapshots = []
    started = []
    while scheduler.pending or scheduler.running:
        while len(scheduler.running) < parallel:
            name = scheduler.next_ready()
            if name is None:
                break
            scheduler.start(name)
            started.append(name)
            snapshots.append(set(scheduler.running))
        oldest = next(n for n in started if n in scheduler.running)
        scheduler.finish(oldest)
    return snapshots


def may_start_early(free, margin, to_fetch_so_far, planned, total):
    """Whether copies may start before every image is planned, as far as disk space goes.

    Only while the free space is at least twice the bytes the images planned so far
    extrapolate to for the whole list (``to_fetch_so_far * total / planned``). A list that
    would not fit is then refused by the check on the complete plan, before any copy;
    copies still start at once on a store with ample room. Pure.
    """
    if planned <= 0:
        return False
    projected = to_fetch_so_far * float(total) / planned
    return free - margin >= 2 * projected


# Running ----------------------------------------------------------------------------------

# Manifest reads are small and wait on round trips: more of them in flight than copies.
MIN_PLAN_PARALLEL = 8


class DownloadOptions:
    def __init__(self, store, registry_options, parallel=4, keep_going=False, verify=False, free_space_margin=0, signatures=None):
        self.store = store
        self.signatures = signatures or SignatureOptions(fetch=False)
        self.registry = registry_options
        self.parallel = max(1, int(parallel))
        self.plan_parallel = max(self.parallel, MIN_PLAN_PARALLEL)
        self.keep_going = keep_going
        self.verify = verify
        self.free_space_margin = max(0, int(free_space_margin))


def _error_message(exc):
    return exc.message if isinstance(exc, SkopeoError) else str(exc)


def plan_image(ref, skopeo, options):
    """Read the manifests of ``ref`` (the index, then each per-architecture manifest).

    Returns ``(plan, retries)``; raises :class:`SkopeoError` or :class:`PlanError` naming the ref.
    """
    retries = 0
    top = skopeo.inspect_raw(ref, options.registry)
    retries += top.retries
    parsed = parse_manifest(top.stdout, ref)
    children_raw = {}
    if parsed["kind"] == "index":
        digests = sorted(set(child["digest"] for child in parsed["children"]))
        # the per-architecture manifests at once: the first copy waits for this image's plan
        reads = _workers.run_parallel(digests, len(digests),
                                      lambda digest: skopeo.inspect_raw(pinned_reference(ref, digest), options.registry))
        for digest, read in zip(digests, reads):
            retries += read.retries
            children_raw[digest] = read.stdout
    plan = build_image_plan(ref, top.stdout, children_raw)
    if options.signatures.fetch:
        plan_signatures(plan, skopeo, options)
    return plan, retries


def missing_blobs(store, blobs):
    """The blobs of ``{digest: size}`` not in place in ``store``."""
    return dict((digest, size) for digest, size in blobs.items() if not store_mod.blob_present(store, digest, size))


def _layout_blob_digests(store, layout_dir):
    """Digests named by skopeo's own index.json of a layout (index, manifests, configs)."""
    found = set()
    try:
        with open(os.path.join(layout_dir, "index.json"), "rb") as handle:
            index = json.loads(handle.read().decode("utf-8"))
    except (OSError, ValueError):
        return found
    queue_ = [m.get("digest") for m in index.get("manifests", []) if isinstance(m, dict)]
    while queue_:
        digest = queue_.pop()
        if not digest or digest in found:
            continue
        found.add(digest)
        try:
            with open(store_mod.blob_path(store, digest), "rb") as handle:
                doc = json.loads(handle.read().decode("utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(doc, dict):
            queue_.extend(m.get("digest") for m in doc.get("manifests", []) if isinstance(m, dict))
            if isinstance(doc.get("config"), dict):
                found.add(doc["config"].get("digest"))
    return found


def _config_platform(store, digest):
    try:
        with open(store_mod.blob_path(store, digest), "rb") as handle:
            config = json.loads(handle.read().decode("utf-8"))
    except (OSError, ValueError):
        return None
    return format_platform(config) if isinstance(config, dict) else None


def _result(ref, status, digest=None, size=0, layout=None, error=None, attempts=0, retries=0, fetched_bytes=0):
    return {"ref": ref, "digest": digest, "status": status, "size": size, "fetched_bytes": fetched_bytes,
            "attempts": attempts, "retries": retries, "layout": layout or store_mod.layout_path(ref), "error": error}


def download_image(plan, skopeo, options):
    """Fetch one planned image into the store and record it. Returns a result dict (never raises).

    ``result["leftovers"]`` names the converted manifests skopeo wrote for a docker-typed image:
    the caller removes those no image needs once every plan is known.
    """
    store = options.store
    ref = plan["ref"]
    result = _result(ref, "failed", plan["digest"], plan["size"], plan["layout"])
    result["leftovers"] = set()
    layout_dir = os.path.join(store, *plan["layout"].split("/"))
    to_fetch = missing_blobs(store, plan["fetchable"])
    try:
        os.makedirs(layout_dir, exist_ok=True)
        # an index.json left by an interrupted run would make skopeo add a second image
        for leftover in ("index.json", "oci-layout"):
            if os.path.exists(os.path.join(layout_dir, leftover)):
                os.unlink(os.path.join(layout_dir, leftover))
        pinned = pinned_reference(ref, plan["digest"])
        if to_fetch:
            extra = ["--dest-oci-accept-uncompressed-layers"]
            argv = skopeo.copy_argv("docker://" + pinned, "oci:" + layout_dir, src_options=options.registry,
                                    all_images=plan["media_type"] in store_mod.INDEX_MEDIA_TYPES,
                                    preserve_digests=not plan["docker_typed"],
                                    dest_shared_blob_dir=os.path.join(store, store_mod.BLOBS_DIR), extra=extra)
            remaining = [len(to_fetch)]

            def progressed(err):  # pylint: disable=unused-argument
                # A try after which fewer of the image's blobs are missing went further: blobs
                # stay in the store, so the retry budget is for tries that went nowhere.
                now = len(missing_blobs(store, plan["fetchable"]))
                moved, remaining[0] = now < remaining[0], now
                return moved

            copied = skopeo.run(argv, ref, progressed=progressed)
            result["attempts"] = copied.attempts
            result["retries"] += copied.retries
            if plan["docker_typed"]:
                # skopeo wrote converted (OCI) manifests and configs next to the originals
                result["leftovers"] = _layout_blob_digests(store, layout_dir) - set(plan["blobs"])
        store_mod.put_blob(store, plan["digest"], plan["raw"])
        for found in (plan.get("signatures") or {}).values():
            store_mod.put_blob(store, found["record"]["digest"], found["raw"])
            for digest, data in found["blobs"].items():
                store_mod.put_blob(store, digest, data)
        for manifest in plan["manifests"]:
            store_mod.put_blob(store, manifest["digest"], manifest["raw"])
            config = manifest["config"]
            if not store_mod.blob_present(store, config["digest"], config["size"]):
                fetched = skopeo.inspect_raw(pinned_reference(ref, manifest["digest"]), options.registry, config=True,
                                             what="%s (config %s)" % (ref, config["digest"]))
                result["retries"] += fetched.retries
                store_mod.put_blob(store, config["digest"], fetched.stdout)
        for digest, size in sorted(plan["blobs"].items()):
            problem = store_mod.verify_blob(store, digest, size, check_digest=options.verify and digest in to_fetch)
            if problem:
                raise store_mod.StoreError("%s: %s after the copy" % (ref, problem))
        store_mod.write_layout(store, plan["layout"], plan["digest"], plan["media_type"], plan["manifest_size"])
        platforms = dict((m["digest"], _config_platform(store, m["config"]["digest"]))
                         for m in plan["manifests"] if not m["platform"])
        store_mod.record_image(store, ref, store_entry(plan, platforms))
    except SkopeoError as exc:
        if "copy" in exc.argv[1:2]:
            result["attempts"] = exc.attempts
        result["retries"] += exc.attempts - 1
        result["error"] = exc.message
        return result
    except (store_mod.StoreError, OSError) as exc:
        result["error"] = "%s: %s" % (ref, exc) if not str(exc).startswith(ref) else str(exc)
        return result
    result["status"] = "fetched"
    result["fetched_bytes"] = sum(to_fetch.values())
    return result


class DownloadRun:
    """Plan and download a list of refs, the copies starting as soon as their image is planned.

    Manifests are read by a pool of ``options.plan_parallel`` workers; each image, once
    planned, joins the :class:`BlobScheduler` that feeds ``options.parallel`` copies, so the
    first copy starts after the first image's manifests arrive instead of after the whole
    list's. Before each copy, the bytes still to fetch of every image planned so far plus
    ``free_space_margin`` must fit in the store's free space; while the plan is incomplete,
    copies start only when :func:`may_start_early` allows it.

    With ``check_mode`` only the plan is made. ``on_start(count)`` is called once the store has
    been read, with the number of images to plan (those not complete in it); ``on_image(result)``
    (from the calling thread) for every one of them as it ends fetched, failed or not started.
    The store (and its missing parents) is made by ``prepare_store`` (:func:`_store.create` by
    default) only once the first copy is about to start: a refused plan leaves no store behind.

    After :meth:`run`: ``results`` (ref -> result), ``plans``, ``skipped``, ``index`` (the store
    index read at the start), ``to_fetch`` (every blob missing when its image was planned, with
    its size), ``plan_retries``, ``stopped`` (why no further copy started, or None) and
    ``space_error`` (the free-space message, or None). :meth:`outcome` runs it and gives the
    module's result.
    """

    def __init__(self, refs, skopeo, options, check_mode=False, on_start=None, on_image=None, free_bytes=None, prepare_store=None):
        self.refs = list(refs)
        self.skopeo = skopeo
        self.options = options
        self.check_mode = check_mode
        self.on_start = on_start or (lambda count: None)
        self.on_image = on_image or (lambda result: None)
        self.free_bytes = free_bytes or store_mod.free_bytes
        self.prepare_store = prepare_store or (lambda: store_mod.create(options.store))
        self.results = {}
        self.plans = {}
        self.skipped = []
        self.signature_counts = {}
        self.signature_failures = {}
        self.to_fetch = {}
        self.plan_retries = 0
        self.stopped = None
        self.space_error = None
        self.index = None
        self.scheduler = BlobScheduler()
        self._events = queue.Queue()
        self._leftovers = set()
        self._store_ready = False
        self.started = time.monotonic()

    # workers (other threads): they only post events ---------------------------------------

    def _plan_job(self, ref):
        try:
            plan, retries = plan_image(ref, self.skopeo, self.options)
            self._events.put(("planned", ref, (plan, retries)))
        except (SkopeoError, PlanError) as exc:
            self._events.put(("plan_failed", ref, exc))
        except Exception as exc:  # pylint: disable=broad-except
            self._events.put(("plan_failed", ref, PlanError("%s: %s" % (ref, exc))))

    def _copy_job(self, ref):
        try:
            result = download_image(self.plans[ref], self.skopeo, self.options)
        except Exception as exc:  # pylint: disable=broad-except
            result = _result(ref, "failed", self.plans[ref]["digest"], self.plans[ref]["size"], self.plans[ref]["layout"],
                             error="%s: %s" % (ref, exc))
        self._events.put(("copied", ref, result))

    # the calling thread ----------------------------------------------------------------------

    def _finish(self, ref, result):
        self._leftovers |= result.pop("leftovers", set())
        self.results[ref] = result
        self.on_image(result)

    def _stop(self, reason):
        if self.stopped is None:
            self.stopped = reason

    def bytes_still_to_fetch(self):
        return sum(size for digest, size in self.to_fetch.items() if digest not in self.scheduler.completed)

    def _space_allows(self, planning_done, planned, total):
        free = self.free_bytes(self.options.store)
        margin = self.options.free_space_margin
        needed = self.bytes_still_to_fetch()
        if free - margin >= needed and (planning_done or may_start_early(free, margin, sum(self.to_fetch.values()), planned, total)):
            return True
        if planning_done:
            self.space_error = ("not enough free space for store %s: %d bytes needed (%d to fetch plus a margin of %d), %d free"
                                % (self.options.store, needed + margin, needed, margin, free))
            self._stop(self.space_error)
        return False

    def _start_copies(self, pool, running, planning_done, planned, total):
        while self.stopped is None and len(running) < self.options.parallel and self.scheduler.pending:
            ref = self.scheduler.next_ready()
            if ref is None or not self._space_allows(planning_done, planned, total):
                return
            if not self._store_ready:
                self.prepare_store()
                self._store_ready = True
            self.scheduler.start(ref)
            running.add(ref)
            pool.submit(self._copy_job, ref)

    def run(self):
        self.started = time.monotonic()
        store = self.options.store
        self.index = store_mod.read_index(store) if os.path.isdir(store) else store_mod.empty_index()
        to_plan = []
        sig = self.options.signatures
        for ref in self.refs:
            entry = self.index["images"].get(ref) or {}
            # An image stored before its signatures were looked up is planned again (no layer is
            # fetched twice: only its attachments are read).
            if store_mod.image_complete(store, self.index, ref) and (not sig.fetch or "signatures" in entry):
                self.skipped.append(ref)
                self._check_stored(ref, entry)
            else:
                to_plan.append(ref)
        self.on_start(len(to_plan))
        if not to_plan:
            return self
        planner = concurrent.futures.ThreadPoolExecutor(max_workers=min(self.options.plan_parallel, len(to_plan)))
        copier = concurrent.futures.ThreadPoolExecutor(max_workers=self.options.parallel)
        try:
            for ref in to_plan:
                planner.submit(self._plan_job, ref)
            outstanding = len(to_plan)
            running = set()
            while True:
                if not self.check_mode:
                    self._start_copies(copier, running, outstanding == 0, len(self.plans), len(to_plan))
                if outstanding == 0 and not running:
                    break
                kind, ref, payload = self._events.get()
                if kind == "planned":
                    outstanding -= 1
                    plan, retries = payload
                    self.plan_retries += retries
                    self.plans[ref] = plan
                    if "signature_counts" in plan:
                        self.signature_counts[ref] = plan["signature_counts"]
                    missing = missing_blobs(store, plan["fetchable"])
                    for digest, size in missing_blobs(store, plan["blobs"]).items():
                        self.to_fetch[digest] = size
                    self.scheduler.add(ref, set(missing), missing)
                elif kind == "plan_failed":
                    outstanding -= 1
                    result = _result(ref, "failed", error=_error_message(payload), attempts=getattr(payload, "attempts", 1))
                    result["retries"] = max(0, result["attempts"] - 1)
                    if isinstance(payload, SignatureRefused):
                        result["signature_refused"] = True
                    self._finish(ref, result)
                    if not self.options.keep_going:
                        # planning goes on (it is cheap), so that every bad reference is named at once
                        self._stop(result["error"])
                else:
                    running.discard(ref)
                    self.scheduler.finish(ref, payload["status"] == "fetched")
                    self._finish(ref, payload)
                    if payload["status"] == "failed" and not self.options.keep_going:
                        self._stop(payload["error"])
            if self.check_mode and self.stopped is None:
                self._space_allows(True, len(self.plans), len(to_plan))
        finally:
            planner.shutdown(wait=True)
            copier.shutdown(wait=True)
            self._remove_leftovers()
        if not self.check_mode:
            reason = "not started: %s" % (self.stopped or "an earlier image failed and keep_going is false")
            for ref in self.scheduler.cancel_pending():
                plan = self.plans[ref]
                self._finish(ref, _result(ref, "not_started", plan["digest"], plan["size"], plan["layout"], error=reason))
            for ref in to_plan:
                if ref not in self.results and ref not in self.plans:
                    self._finish(ref, _result(ref, "not_started", error=reason))
        return self

    def _check_stored(self, ref, entry):
        """Count (and where required, verify) the signatures of an image the store already holds."""
        sig = self.options.signatures
        counts = signature_counts(entry)
        if counts is None:
            return
        if sig.fetch and sig.required(ref):
            try:
                counts["verified"], problem = verify_stored(self.options.store, entry, ref, sig.keys)
            except PlanError as exc:
                problem = str(exc)
            if problem:
                self.signature_failures[ref] = problem
        self.signature_counts[ref] = counts

    def _remove_leftovers(self):
        """Delete converted manifests skopeo wrote that no image of the store or of this run names."""
        if not self._leftovers:
            return
        needed = set(self.index.get("blobs", {}))
        for plan in self.plans.values():
            needed.update(plan["blobs"])
        for digest in self._leftovers - needed:
            try:
                os.unlink(store_mod.blob_path(self.options.store, digest))
            except OSError:
                pass

    def summary_plan(self):
        """Byte counts of the plan: logical, unique, still to fetch (dedup across images)."""
        unique, logical = {}, 0
        for ref in self.refs:
            if ref in self.plans:
                unique.update(self.plans[ref]["blobs"])
                logical += self.plans[ref]["size"]
            elif ref in self.skipped:
                entry = self.index["images"][ref]
                unique.update(store_mod.image_blobs(entry))
                logical += entry.get("size", 0)
        unique_bytes = sum(unique.values())
        failed = [ref for ref in self.refs if self.results.get(ref, {}).get("status") == "failed" and ref not in self.plans]
        return {
            "images_to_fetch": [ref for ref in self.refs if ref in self.plans],
            "images_skipped": [ref for ref in self.refs if ref in self.skipped],
            "images_failed": failed,
            "logical_bytes": logical,
            "unique_bytes": unique_bytes,
            "bytes_to_fetch": sum(self.to_fetch.values()),
            "blobs_to_fetch": len(self.to_fetch),
            "dedup_ratio": round(float(logical) / unique_bytes, 3) if unique_bytes else 1.0,
        }

    def summary_signatures(self):
        """Manifests signed, unsigned and verified over every image of the run (planned or in the store)."""
        totals = {"signed": 0, "unsigned": 0, "verified": 0, "bytes": 0, "seconds": 0.0, "images_refused": len(self.signature_failures)}
        for counts in self.signature_counts.values():
            for key in ("signed", "unsigned", "verified", "bytes"):
                totals[key] += counts.get(key, 0)
            totals["seconds"] += counts.get("seconds", 0.0)
        totals["seconds"] = round(totals["seconds"], 3)
        totals["images_refused"] += sum(1 for r in self.results.values() if r.get("signature_refused"))
        return totals

    def image_result(self, ref):
        """The ``images`` entry of ``ref``: its result, or what the store or the plan says of it.

        An image of the store whose required signature is refused fails; ``signatures`` counts the
        image's signed, unsigned and verified manifests (None when signatures are not fetched).
        """
        if ref in self.results:
            image = dict(self.results[ref])
            image.pop("signature_refused", None)
        elif ref in self.skipped:
            item = self.index["images"][ref]
            failure = self.signature_failures.get(ref)
            image = _result(ref, "failed" if failure else "skipped", item["digest"], item.get("size", 0), item["layout"], error=failure)
        else:
            item = self.plans[ref]
            image = _result(ref, "planned", item["digest"], item["size"], item["layout"])
        counts = self.signature_counts.get(ref)
        image["signatures"] = dict((k, counts[k]) for k in ("signed", "unsigned", "verified")) if counts else None
        return image

    def summary(self, images, plan):
        duration = max(time.monotonic() - self.started, 0.0)
        fetched = sum(image["fetched_bytes"] for image in images)
        return {
            "images_fetched": sum(1 for image in images if image["status"] == "fetched"),
            "images_skipped": sum(1 for image in images if image["status"] == "skipped"),
            "images_failed": sum(1 for image in images if image["status"] == "failed"),
            "bytes_fetched": fetched,
            "logical_bytes": plan["logical_bytes"],
            "unique_bytes": plan["unique_bytes"],
            "dedup_ratio": plan["dedup_ratio"],
            "duration": round(duration, 3),
            "throughput": int(fetched / duration) if duration > 0 else 0,
            "retries": self.plan_retries + sum(image["retries"] for image in images),
        }

    def outcome(self):
        """Run, then ``(failure, result)``: the sentence that fails the task (or None) and the module's result."""
        store = self.options.store
        try:
            self.run()
        except store_mod.StoreError as exc:
            return "store %s: %s" % (store, exc), {"store": store, "changed": any(
                r["status"] == "fetched" for r in self.results.values())}
        except OSError as exc:
            return "cannot create store %s: %s" % (store, exc.strerror or exc), {"store": store, "changed": False}
        plan = self.summary_plan()
        plan["free_bytes"] = store_mod.free_bytes(store)
        images = [self.image_result(ref) for ref in self.refs]
        summary = self.summary(images, plan)
        if self.options.signatures.fetch:
            summary["signatures"] = self.summary_signatures()
        result = {"store": store, "images": images, "summary": summary, "plan": plan,
                  "changed": summary["images_fetched"] > 0 or (self.check_mode and bool(self.plans))}
        failures = [image for image in images if image["status"] == "failed"]
        if self.space_error:
            return self.space_error, result
        if failures:
            return "%d of %d image(s) failed: %s" % (len(failures), len(images), "; ".join(i["error"] for i in failures)), result
        return None, result
