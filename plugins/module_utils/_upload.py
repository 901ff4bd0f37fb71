# Copyright: airgap.microshift contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""Plan and run the upload of an image store (or a ``dir:`` tree) into a mirror registry.

Plain functions and classes with no Ansible dependency: the module gives them a ``run``
callable (``args -> (rc, stdout, stderr)``) and they build every skopeo command line, read
the store, name the mirror tags, schedule the pushes and classify failures.

Two sources are read:

- the image store (``store.json`` + OCI layouts sharing ``blobs/``), see docs/store-format.md,
  read through ``_store`` (its one owner);
- a tree made by ``skopeo copy --all --preserve-digests docker://<ref> dir:<dir>/<ref without
  registry>``: each image is a directory holding ``manifest.json`` (the top-level manifest or
  index), ``<hex>.manifest.json`` per architecture when it is a list, and one file per blob
  named by its hex digest.

Both are outside data: every digest is matched against its grammar before it names a file,
manifests are read strictly (regular files only, never through a link, size-capped JSON) and
must hash to their digest, an index may only list manifests (no nested index, each walked once),
and every blob file a push will read must be a regular file of the size its manifest gives.

Signatures: an image of the store carries the sigstore attachments of its manifests (see
docs/store-format.md). Each lands in the image's mirror repository under the tag the containers
tools look for, ``sha256-<hex>.sig`` (``_sigstore.attachment_tag``), pushed with ``skopeo copy
--preserve-digests`` from a one-manifest layout over the store's blobs; an attachment the mirror
already serves with the same digest is skipped, like a blob that is already there.

Pushes keep digests (``--all --preserve-digests``). Blobs shared between images are sent once:
containers/image mounts a blob from another repository of the same registry when its blob-info
cache knows the blob is there, so two pushes that need the same blob never run at the same time
(the first one uploads it, the later ones mount it).
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import stat
import tempfile
import threading
import time

from ansible_collections.airgap.microshift.plugins.module_utils import _sigstore, _store, _strict, _workers
from ansible_collections.airgap.microshift.plugins.module_utils._reference import (
    InvalidReference,
    is_digest,
    mirror_repository,
    parse_reference,
)
from ansible_collections.airgap.microshift.plugins.module_utils._registry import CannotTell, ManifestReader
from ansible_collections.airgap.microshift.plugins.module_utils._skopeo import (
    PERMANENT,
    RegistryOptions,
    Skopeo,
    SkopeoError,
    classify_error,
    subprocess_runner,
)

TAG_POLICIES = ("timestamp", "digest", "source", "none")
SOURCE_FORMATS = ("store", "dir", "auto")
STATUSES = ("pushed", "skipped", "failed", "not_started")

DIR_MANIFEST = "manifest.json"

# A placeholder registry to parse dir-tree paths (which have none) with the reference grammar.
_DIR_REGISTRY = "dir.invalid"

_UPLOADED_RE = re.compile(r"Upload of layer (sha256:[0-9a-f]{64}) complete")
_REUSED_RE = re.compile(r"Skipping blob (sha256:[0-9a-f]{64}) \(already present\)")


class UploadError(Exception):
    """A problem with the input (store, tree, options): one sentence naming the thing."""


# --------------------------------------------------------------------------- tag naming

def timestamp_stamp(now=None):
    """The run's ``yymmddHHMMSS`` stamp, in UTC (``now`` is seconds since the epoch)."""
    return time.strftime("%y%m%d%H%M%S", time.gmtime(time.time() if now is None else now))


def timestamp_tag(stamp, counter):
    """``mirror-<yymmddHHMMSS>-<counter>``: the tag the manual procedure gives each upload."""
    if not re.match(r"^[0-9]{12}$", stamp or ""):
        raise ValueError("%r is not a yymmddHHMMSS stamp" % (stamp,))
    if not isinstance(counter, int) or isinstance(counter, bool) or counter < 1:
        raise ValueError("%r is not a counter (a positive integer)" % (counter,))
    return "mirror-%s-%d" % (stamp, counter)


def digest_tag(digest):
    """``sha256-<hex>``: a tag that names a digest (tags cannot hold ``:``)."""
    if not is_digest(digest):
        raise ValueError("%r is not a sha256 digest" % (digest,))
    return digest.replace(":", "-", 1)


def source_tag(ref_tag, digest):
    """The source tag where the reference had one, else the digest tag."""
    return ref_tag if ref_tag else digest_tag(digest)


def assign_tags(images, policy, stamp):
    """Set ``image.tag`` for the images to push (sorted by source), following ``policy``."""
    if policy not in TAG_POLICIES:
        raise ValueError("tag policy %r is not one of %s" % (policy, ", ".join(TAG_POLICIES)))
    counter = 0
    seen = {}
    for image in sorted(images, key=lambda i: i.source):
        if policy == "timestamp":
            counter += 1
            image.tag = timestamp_tag(stamp, counter)
        elif policy == "digest":
            image.tag = digest_tag(image.digest)
        elif policy == "source":
            image.tag = source_tag(image.source_tag, image.digest)
        else:
            image.tag = None
        if image.tag:
            key = (image.repository, image.tag)
            if key in seen and seen[key] != image.digest:
                raise UploadError(
                    "Images %s and %s would both be tagged %s:%s with different digests; use tag_policy digest or timestamp."
                    % (seen[key + ("source",)], image.source, image.repository, image.tag))
            seen[key] = image.digest
            seen[key + ("source",)] = image.source


# --------------------------------------------------------------------------- images

class Image:
    """One image to upload: where it is, what it holds, and where it goes."""

    def __init__(self, source, transport, path, digest, source_tag=None, repository_path=None):
        self.source = source            # the ref as listed (store) or the tree path (dir)
        self.transport = transport      # "oci" or "dir"
        self.path = path                # the OCI layout or the image directory
        self.digest = digest            # top-level manifest or index digest
        self.source_tag = source_tag
        self.repository_path = repository_path  # repository without registry (for the mirror)
        self.manifests = []             # every manifest digest: top-level first, then per arch
        self.blobs = {}                 # config and layer digests -> size
        self.repository = None          # <mirror>[/<namespace>]/<repository>
        self.tag = None
        self.status = None
        self.error = None
        self.duplicate_of = None
        self.uploaded = []              # blob digests skopeo reported as uploaded
        self.reused = []                # blob digests skopeo reported as already there or mounted
        self.attempts = 0
        self.signatures = []            # sigstore attachments: {"manifest", "tag", "digest", "size", "blobs", "status"}

    @property
    def mirror_ref(self):
        return "%s@%s" % (self.repository, self.digest)

    def push_target(self):
        return "docker://%s" % ("%s:%s" % (self.repository, self.tag) if self.tag else self.mirror_ref)

    def mapping(self):
        entry = {
            "source": self.source,
            "mirror": self.mirror_ref,
            "digest": self.digest,
            "tag": self.tag,
            "status": self.status,
        }
        if self.signatures:
            entry["signatures"] = [{"manifest": sig["manifest"], "mirror": "%s:%s" % (self.repository, sig["tag"]),
                                    "digest": sig["digest"], "status": sig["status"]} for sig in self.signatures]
        return entry


def walk_manifests(image, read_manifest):
    """Fill ``image.manifests`` and ``image.blobs`` from the top-level manifest down.

    ``read_manifest(digest, top)`` returns the manifest parsed by ``_store.parse_manifest`` or
    raises :class:`UploadError`. Each manifest is read once; an index may list manifests only.
    """
    pending = [(image.digest, True)]
    seen = set()
    while pending:
        digest, top = pending.pop(0)
        if digest in seen:
            continue
        seen.add(digest)
        document = read_manifest(digest, top)
        image.manifests.append(digest)
        if document["kind"] == "index":
            if not top:
                raise UploadError("Image %s has a nested index %s, which is not supported." % (image.source, digest))
            pending.extend((child["digest"], False) for child in document["children"])
        else:
            for entry in [document["config"]] + document["layers"]:
                if entry.get("foreign"):
                    continue  # a foreign layer: the registry never had it
                image.blobs[entry["digest"]] = entry["size"]


def detect_format(path):
    """``store`` when ``path`` holds a store.json, ``dir`` when it holds image directories."""
    if os.path.lexists(os.path.join(path, _store.STORE_INDEX)):
        return "store"
    if not os.path.isdir(path):
        raise UploadError("The image source %s is not a directory." % path)
    return "dir"


def _parse(data, what):
    try:
        return _store.parse_manifest(data, what)
    except _store.StoreError as exc:
        raise UploadError(str(exc))


def load_store(store):
    """The images of an image store, from its store.json (checked by ``_store``)."""
    index_path = os.path.join(store, _store.STORE_INDEX)
    if not os.path.lexists(index_path):
        raise UploadError("The store %s has no %s." % (store, _store.STORE_INDEX))
    try:
        index = _store.read_index(store)
    except _store.StoreError as exc:
        raise UploadError("Store index %s cannot be used: %s" % (index_path, exc))
    blob_dir = os.path.join(store, _store.BLOBS_DIR, "sha256")
    images = []
    for ref in sorted(index["images"]):
        entry = index["images"][ref]
        parsed = parse_reference(ref)
        image = Image(ref, "oci", os.path.join(store, entry["layout"]), entry["digest"], parsed.tag, parsed.repository)

        def read_manifest(digest, top, image=image):
            size = index["blobs"].get(digest)
            if size is None or not os.path.lexists(_store.blob_path(store, digest)):
                raise UploadError("Image %s is not complete in the store: manifest %s is missing from %s." % (image.source, digest, blob_dir))
            # Manifests are pushed as they are: a changed one would land on the mirror under another digest.
            try:
                data = _store.read_blob(store, digest, size, _store.blob_path(store, digest))
            except _store.StoreError as exc:
                raise UploadError("Image %s is corrupt in the store: manifest %s does not match its digest (%s); download it again."
                                  % (image.source, digest, str(exc).rstrip(".")))
            return _parse(data, "manifest %s of image %s" % (digest, image.source))

        walk_manifests(image, read_manifest)
        if _store.read_layout_digest(store, entry["layout"]) != entry["digest"]:
            raise UploadError("Image %s has no OCI layout naming %s at %s." % (ref, entry["digest"], image.path))
        image.signatures = load_signatures(store, ref, entry)
        images.append(image)
    return images


def load_signatures(store, ref, entry):
    """The attachments an image of the store records, each read strictly and checked against its record."""
    out = []
    for manifest, record in sorted((entry.get("signatures") or {}).items()):
        what = "The signatures of manifest %s of image %s" % (manifest, ref)
        try:
            raw = _store.read_blob(store, record["digest"], record["size"], what, max_size=_sigstore.MAX_ATTACHMENT)
            attachment = _sigstore.parse_attachment(raw, what)
        except (_store.StoreError, _sigstore.SigstoreError) as exc:
            raise UploadError("%s cannot be pushed: %s" % (what, str(exc).rstrip(".")) + ".")
        blobs = _sigstore.attachment_blobs(attachment)
        if [(b["digest"], b["size"]) for b in blobs] != [(b["digest"], b["size"]) for b in record["blobs"]]:
            raise UploadError("%s: the attachment %s lists other blobs than store.json records for it." % (what, record["digest"]))
        for blob in blobs:
            problem = _store.verify_blob(store, blob["digest"], blob["size"])
            if problem:
                raise UploadError("%s cannot be pushed: %s." % (what, problem))
        out.append({"manifest": manifest, "tag": _sigstore.attachment_tag(manifest), "digest": record["digest"],
                    "size": record["size"], "blobs": blobs, "status": None})
    return out


def _dir_file(root, relpath, what, size=None, max_size=None):
    try:
        return _strict.read_file(root, relpath, what, size=size, max_size=max_size)
    except _strict.OutsideDataError as exc:
        raise UploadError(str(exc))


def _dir_image(root, relpath):
    """An image of a ``dir:`` tree at ``root/relpath`` (relpath is the ref without registry)."""
    try:
        parsed = parse_reference("%s/%s" % (_DIR_REGISTRY, relpath))
    except InvalidReference:
        raise UploadError("Directory %s does not name an image (<repository>[:tag][@sha256:<hex>])." % os.path.join(root, relpath))
    path = os.path.join(root, relpath)
    top_raw = _dir_file(root, "%s/%s" % (relpath, DIR_MANIFEST), os.path.join(path, DIR_MANIFEST), max_size=_store.MAX_MANIFEST_SIZE)
    digest = "sha256:" + hashlib.sha256(top_raw).hexdigest()
    if parsed.digest and parsed.digest != digest:
        raise UploadError("Image directory %s holds a manifest.json of digest %s, not the one its name pins." % (path, digest))
    image = Image(relpath, "dir", path, digest, parsed.tag, parsed.repository)
    sizes = {}

    def read_manifest(digest, top):
        if top:
            return _parse(top_raw, os.path.join(path, DIR_MANIFEST))
        name = "%s.manifest.json" % digest[7:]
        if not os.path.lexists(os.path.join(path, name)):
            raise UploadError("Image directory %s has no %s (was it copied with --all?)." % (path, name))
        data = _dir_file(root, "%s/%s" % (relpath, name), os.path.join(path, name), size=sizes.get(digest),
                         max_size=_store.MAX_MANIFEST_SIZE)
        if "sha256:" + hashlib.sha256(data).hexdigest() != digest:
            raise UploadError("%s does not match its digest %s." % (os.path.join(path, name), digest))
        document = _parse(data, os.path.join(path, name))
        return document

    def remember_sizes(digest, top):
        document = read_manifest(digest, top)
        if document["kind"] == "index":
            sizes.update((child["digest"], child["size"]) for child in document["children"])
        return document

    walk_manifests(image, remember_sizes)
    _check_dir_blobs(root, relpath, image)
    return image


def _check_dir_blobs(root, relpath, image):
    """Every blob file skopeo will read: a regular file (not a link) of the size the manifest gives.

    Contents are checked by the registry, which refuses a blob that does not match its digest.
    """
    try:
        fd = _strict.open_dir(root, relpath)
    except _strict.OutsideDataError as exc:
        raise UploadError(str(exc))
    try:
        for digest, size in sorted(image.blobs.items()):
            name = digest[7:]
            try:
                info = os.stat(name, dir_fd=fd, follow_symlinks=False)
            except OSError:
                raise UploadError("Image directory %s lacks blob %s." % (image.path, name))
            if not stat.S_ISREG(info.st_mode):
                raise UploadError("%s is %s, not a regular file; it is not pushed." % (
                    os.path.join(image.path, name), _strict._describe_mode(info.st_mode)))
            if info.st_size != size:
                raise UploadError("%s has %d bytes, not the %d its manifest declares." % (os.path.join(image.path, name), info.st_size, size))
    finally:
        os.close(fd)


def load_dir_tree(root):
    """The images of a tree made by the manual procedure's ``dir:`` download loop."""
    images = []
    for current, dirs, files in os.walk(root):
        dirs.sort()
        if DIR_MANIFEST in files:
            images.append(_dir_image(root, os.path.relpath(current, root)))
            dirs[:] = []
    if not images:
        raise UploadError("No image directory (with a manifest.json) found under %s." % root)
    return sorted(images, key=lambda i: i.source)


def load_images(path, source_format="auto"):
    """Images of a store or a ``dir:`` tree, and the format that was read."""
    if source_format not in SOURCE_FORMATS:
        raise UploadError("source_format %r is not one of %s." % (source_format, ", ".join(SOURCE_FORMATS)))
    if not os.path.isdir(path):
        raise UploadError("The image source %s is not a directory." % path)
    fmt = detect_format(path) if source_format == "auto" else source_format
    if fmt == "store":
        if ":" in os.path.abspath(path):
            raise UploadError("The store path %s contains ':', which skopeo's oci: transport cannot address." % path)
        return load_store(path), fmt
    return load_dir_tree(path), fmt


def select_images(images, wanted):
    """The images named in ``wanted`` (refs, or tree paths); all of them when it is empty."""
    if not wanted:
        return list(images)
    by_name = {}
    for image in images:
        by_name[image.source] = image
        if image.transport == "oci":
            # A store ref also answers to its form without registry, like the dir tree.
            by_name.setdefault(image.source.split("/", 1)[1], image)
    chosen = []
    missing = []
    for ref in wanted:
        image = by_name.get(ref)
        if image is None and "/" in ref:
            image = by_name.get(ref.split("/", 1)[1])
        if image is None:
            missing.append(ref)
        elif image not in chosen:
            chosen.append(image)
    if missing:
        raise UploadError("Not in the image source: %s." % ", ".join(missing))
    return chosen


def mirror_problem(mirror, namespace=None):
    """Why ``mirror`` (``host[:port]``) and ``namespace`` (a repository path) cannot name the mirror, or None."""
    try:
        probe = "%s/%s/probe" % (mirror, namespace) if namespace else "%s/probe" % mirror
        if parse_reference(probe).registry == mirror:
            return None
    except InvalidReference:
        pass
    return "Option mirror %r is not a registry host[:port], or namespace %r is not a repository path." % (mirror, namespace)


def plan_repositories(images, mirror, namespace=None):
    """Set each image's mirror repository; mark images that land on the same repo and digest as duplicates."""
    primary = {}
    for image in sorted(images, key=lambda i: i.source):
        ref = image.source if image.transport == "oci" else "%s/%s" % (_DIR_REGISTRY, image.source)
        image.repository = mirror_repository(ref, mirror, namespace)
        key = (image.repository, image.digest)
        if key in primary:
            image.duplicate_of = primary[key]
        else:
            primary[key] = image
    return [image for image in images if image.duplicate_of is None]


# --------------------------------------------------------------------------- skopeo command lines

_ABSENT_CAUSES = ("manifest unknown", "repository unknown")


class Registry:
    """How to reach the mirror (auth file, TLS settings) and the retry policy, on top of ``_skopeo``."""

    def __init__(self, skopeo, authfile=None, tls_verify=True, cert_dir=None, runner=None, retries=3, retry_delay=2.0,
                 sleep=None, rng=None, direct_reads=False):
        self.skopeo = skopeo
        self.options = RegistryOptions(authfile=authfile, tls_verify=tls_verify, cert_dir=cert_dir)
        self.runner = runner
        self.retries = retries
        self.retry_delay = retry_delay
        self.sleep = sleep
        self.rng = rng
        # With direct_reads, manifest checks are plain HTTPS GETs on kept-alive connections
        # (_registry.ManifestReader); skopeo answers whatever those cannot tell.
        self.direct_reads = direct_reads
        self._readers = {}
        self._readers_lock = threading.Lock()
        self.direct_checks = 0

    def reader(self, host):
        with self._readers_lock:
            if host not in self._readers:
                self._readers[host] = ManifestReader(host, self.options.authfile, self.options.tls_verify, self.options.cert_dir)
            return self._readers[host]

    def tool(self, runner=None):
        return Skopeo(self.skopeo, retries=self.retries, retry_delay=self.retry_delay, runner=runner or self.runner,
                      sleep=self.sleep, rng=self.rng)

    def copy_args(self, image, store=None):
        """``skopeo --debug copy --all --preserve-digests`` of one image to the mirror.

        ``--debug`` makes skopeo say which blobs it uploaded and which it found or mounted.
        """
        if image.transport == "oci":
            source = "oci:%s" % os.path.abspath(image.path)
            shared = os.path.join(store, "blobs")
        else:
            source = "dir:%s" % os.path.abspath(image.path)
            shared = None
        argv = self.tool().copy_argv(source, image.push_target(), dest_options=self.options, src_shared_blob_dir=shared)
        return argv[:1] + ["--debug"] + argv[1:]

    def inspect_args(self, repository, digest):
        """``skopeo inspect --raw`` of ``repository@digest`` (fetches the manifest, writes nothing)."""
        return self.tool().inspect_argv("%s@%s" % (repository, digest), self.options)

    def push(self, image, store):
        """Push ``image``; returns ``(ok, message)`` and records the blobs skopeo uploaded or reused."""
        def runner(argv, env=None):
            rc, out, err = (self.runner or subprocess_runner)(argv, env=env)
            uploaded, reused = blob_report(err)
            image.uploaded.extend(uploaded)
            image.reused.extend(reused)
            image.attempts += 1
            return rc, out, err

        passed = set()

        def progressed(err):
            # A try that got past a blob no earlier try had got past (uploaded it, mounted it or
            # found it there) went further: the retry budget is for tries that went nowhere.
            uploaded, reused = blob_report(err)
            new = set(uploaded + reused) - passed
            passed.update(new)
            return bool(new)

        try:
            self.tool(runner).run(self.copy_args(image, store), what="Pushing %s to %s" % (image.source, image.push_target()[9:]),
                                  progressed=progressed)
        except SkopeoError as exc:
            return False, exc.message
        return True, None

    def push_signature(self, image, signature, store):
        """Push one attachment of ``image`` under its tag; returns ``(ok, message)``."""
        layout = tempfile.mkdtemp(prefix="airgap-signature-")
        try:
            _store.write_layout(layout, ".", signature["digest"], _sigstore.ATTACHMENT_MEDIA_TYPE, signature["size"])
            target = "docker://%s:%s" % (image.repository, signature["tag"])
            argv = self.tool().copy_argv("oci:%s" % os.path.abspath(layout), target, dest_options=self.options, all_images=False,
                                         src_shared_blob_dir=os.path.join(store, _store.BLOBS_DIR))
            self.tool().run(argv, what="Pushing the signatures of %s (%s) to %s" % (image.source, signature["manifest"], target[9:]))
        except SkopeoError as exc:
            return False, exc.message
        except OSError as exc:
            return False, "Cannot prepare the signatures of %s for the push: %s" % (image.source, exc.strerror or exc)
        finally:
            shutil.rmtree(layout, ignore_errors=True)
        return True, None

    def served_tag(self, repository, tag, digest):
        """Like :meth:`served`, for a tag: ``(True, None)`` when ``repository:tag`` is the manifest ``digest``."""
        ref = "%s:%s" % (repository, tag)
        if self.direct_reads:
            host, dummy, path = repository.partition("/")
            try:
                found = self.reader(host).get_manifest(path, tag, accept=_sigstore.ATTACHMENT_MEDIA_TYPE)
                with self._readers_lock:
                    self.direct_checks += 1
                return found is not None and "sha256:" + hashlib.sha256(found[0]).hexdigest() == digest, None
            except CannotTell:
                pass
        try:
            result = self.tool().run(self.tool().inspect_argv(ref, self.options), what="Checking %s" % ref)
        except SkopeoError as exc:
            if exc.kind == PERMANENT and exc.cause.startswith(_ABSENT_CAUSES):
                return False, None
            return False, exc.message
        body = result.stdout if isinstance(result.stdout, bytes) else (result.stdout or "").encode("utf-8")
        return "sha256:" + hashlib.sha256(body).hexdigest() == digest, None

    def served(self, repository, digest):
        """``(True, None)`` when the mirror serves ``repository@digest`` with those exact bytes.

        ``(False, None)`` when the registry says it is not there; ``(False, message)`` on any other
        failure (auth, TLS, network after the retries).
        """
        ref = "%s@%s" % (repository, digest)
        if self.direct_reads:
            host, dummy, path = repository.partition("/")
            try:
                served = self.reader(host).served(path, digest)
                with self._readers_lock:
                    self.direct_checks += 1
                return served, None
            except CannotTell:
                pass
        try:
            result = self.tool().run(self.inspect_args(repository, digest), what="Checking %s" % ref)
        except SkopeoError as exc:
            if exc.kind == PERMANENT and exc.cause.startswith(_ABSENT_CAUSES):
                return False, None
            return False, exc.message
        body = result.stdout if isinstance(result.stdout, bytes) else (result.stdout or "").encode("utf-8")
        if "sha256:" + hashlib.sha256(body).hexdigest() == digest:
            return True, None
        return False, "Checking %s: the mirror returned a manifest of another digest" % ref


def classify_failure(message):
    """``permanent`` (auth, TLS, unknown) or ``transient`` (network, 429, 5xx), as ``_skopeo`` decides."""
    return classify_error(message)[0]


def blob_report(stderr):
    """Blobs skopeo uploaded and blobs it found already there (or mounted), from ``--debug`` output."""
    return _UPLOADED_RE.findall(stderr or ""), _REUSED_RE.findall(stderr or "")


# --------------------------------------------------------------------------- scheduling

class PushScheduler(_workers.Scheduler):
    """The upload's policy: which push to start next, so that shared blobs are sent once and early.

    ``needs`` maps each name to ``{blob digest: size}``; ``present`` is the set of blobs the
    registry already holds. A push waits while another running push sends one of the blobs it
    still needs (the first one uploads it; the later ones find it, or mount it from the
    repository it went to). Among the pushes that can start, the one that sends the most bytes
    other pending pushes also need goes first, the smallest of those first: it unlocks them
    soonest. Pushes that share nothing go largest first, so that no big one ends the run alone.
    """

    def __init__(self, needs, present=None):
        super().__init__(needs, done=present)

    def choose(self, ready, missing):
        demand = {}
        for blobs in missing.values():
            for blob in blobs:
                demand[blob] = demand.get(blob, 0) + 1

        def key(name):
            shared = sum(size for blob, size in missing[name].items() if demand[blob] > 1)
            total = sum(missing[name].values())
            return (shared > 0, shared, -total if shared else total, -self.position[name])
        return max(ready, key=key)


def run_scheduled(images, parallel, work, should_stop=lambda: False):
    """``work(image)`` for every image on up to ``parallel`` threads, as :class:`PushScheduler` orders.

    ``work`` returns True when the image's blobs are now on the registry. Once ``should_stop()``
    is true no new push starts. Returns the images never started.
    """
    by_name = dict((image.source, image) for image in images)
    scheduler = PushScheduler(dict((image.source, image.blobs) for image in images))
    left = _workers.run_scheduled(scheduler, parallel, lambda name: work(by_name[name]), should_stop)
    return [by_name[name] for name in left]


def run_parallel(items, parallel, work):
    """``work(item)`` for every item on up to ``parallel`` threads (no ordering constraints)."""
    return _workers.run_parallel(items, parallel, work)


# --------------------------------------------------------------------------- the upload

class Upload:
    """One run: check what the mirror has, push the rest, verify, and report.

    ``on_start(count, asked)`` is called once the pushes are known (``count`` images to push of
    ``asked``); ``on_image(image)`` for every image as it ends pushed, failed or not started
    (from worker threads). With ``keep_going`` false, the first image that fails on its own (the
    culprit) stops new pushes: it and its own error come first in every report, and the images
    never started are ``not_started``, not failed.
    """

    def __init__(self, registry, images, store=None, parallel=4, keep_going=False, on_start=None, on_image=None):
        self.registry = registry
        self.images = images            # every selected image (duplicates included)
        self.store = store
        self.parallel = max(1, int(parallel))
        self.keep_going = keep_going
        self.on_start = on_start or (lambda count, asked: None)
        self.on_image = on_image or (lambda image: None)
        self.stopped = False
        self.culprit = None
        self.to_push = []
        self.signatures_to_push = []     # (image, attachment) pairs the mirror did not serve
        self.missing = []
        self.started = time.time()
        self._lock = threading.Lock()

    @property
    def check_parallel(self):
        # Read-only manifest checks are small requests: more of them in flight than pushes.
        return max(self.parallel, 8)

    @property
    def primaries(self):
        return [image for image in self.images if image.duplicate_of is None]

    def _failed(self, image, message):
        image.status = "failed"
        image.error = message
        with self._lock:
            if self.culprit is None:
                self.culprit = image
            if not self.keep_going:
                self.stopped = True

    def _not_started(self, images):
        for image in images:
            image.status = "not_started"
            image.error = "Not pushed: %s failed first and keep_going is false." % self.culprit.source
            self.on_image(image)

    def check_present(self):
        """Mark the images the mirror already serves as skipped; fail the ones that cannot be checked."""
        def check(image):
            served, message = self.registry.served(image.repository, image.digest)
            if message:
                image.status = "failed"
                image.error = "Cannot check %s on the mirror: %s" % (image.source, message)
            elif served:
                image.status = "skipped"
                image.tag = None
            return image

        run_parallel(self.primaries, self.check_parallel, check)
        for image in self.primaries:
            if image.status == "failed":
                self._failed(image, image.error)
        return [image for image in self.primaries if image.status is None]

    def push_all(self, to_push):
        """Push the images (already tagged), scheduling shared blobs once; returns True when all went well."""
        def push(image):
            ok, message = self.registry.push(image, self.store)
            if ok:
                image.status = "pushed"
            else:
                self._failed(image, message)
            self.on_image(image)
            return ok

        order = sorted(to_push, key=lambda i: i.source)
        self._not_started(run_scheduled(order, self.parallel, push, lambda: self.stopped))
        return all(image.status == "pushed" for image in to_push)

    def check_signatures(self, images=None):
        """Mark each attachment of the (primary) images the mirror already serves as skipped.

        Returns the ``(image, signature)`` pairs still to push; an attachment that cannot be checked
        fails its image.
        """
        pairs = [(image, sig) for image in (images if images is not None else self.primaries)
                 if image.status != "failed" for sig in image.signatures]

        def check(pair):
            image, sig = pair
            served, message = self.registry.served_tag(image.repository, sig["tag"], sig["digest"])
            if message:
                sig["status"] = "failed"
                self._failed(image, "Cannot check the signatures of %s on the mirror: %s" % (image.source, message))
            elif served:
                sig["status"] = "skipped"
            return pair

        run_parallel(pairs, self.check_parallel, check)
        return [(image, sig) for image, sig in pairs if sig["status"] is None]

    def push_signatures(self, pairs):
        """Push the attachments (after their images); an attachment that fails fails its image."""
        def push(pair):
            image, sig = pair
            if image.status == "failed" or self.stopped:
                sig["status"] = "failed"
                return pair
            ok, message = self.registry.push_signature(image, sig, self.store)
            sig["status"] = "pushed" if ok else "failed"
            if not ok:
                self._failed(image, message)
            return pair

        run_parallel(pairs, self.parallel, push)
        return all(sig["status"] == "pushed" for dummy, sig in pairs)

    def verify_signatures(self, scope="pushed"):
        """Every attachment pushed by this run (with ``scope="all"``, every one) served under its tag."""
        statuses = ("pushed", "skipped") if scope == "all" else ("pushed",)
        checks = [(image, sig) for image in self.primaries for sig in image.signatures if sig["status"] in statuses]

        def check(pair):
            image, sig = pair
            served, message = self.registry.served_tag(image.repository, sig["tag"], sig["digest"])
            return None if served else (image, "%s:%s" % (image.repository, sig["tag"]), message or "not served")

        missing = [result for result in run_parallel(checks, self.check_parallel, check) if result]
        for image, dummy, dummy2 in missing:
            image.status = "failed"
            image.error = "The mirror does not serve every signature of %s after the push." % image.source
        return missing

    def run(self, tag_policy, check_mode=False, verify="pushed"):
        """Check the mirror, tag, then (outside check mode) push and verify. Raises :class:`UploadError`."""
        to_push = self.check_present()
        if self.stopped:
            self._not_started(to_push)
            return self
        assign_tags(to_push, tag_policy, timestamp_stamp(self.started))
        self.to_push = to_push
        if check_mode:
            self.signatures_to_push = self.check_signatures()
            for image, signature in self.signatures_to_push:
                signature["status"] = "pushed"
            for image in to_push:
                image.status = "pushed"
            return self
        self.on_start(len(to_push), len(self.primaries))
        self.push_all(to_push)
        # the attachments after their images: a host finds a signature only next to its image
        self.signatures_to_push = self.check_signatures()
        self.push_signatures(self.signatures_to_push)
        self.missing = self.verify(verify) + self.verify_signatures(verify)
        return self

    def verify(self, scope="pushed"):
        """Every manifest (top-level and per arch) of the images pushed by this run, served by the mirror.

        With ``scope="all"`` the images found already there are checked manifest by manifest too
        (otherwise their top-level digest, checked before, stands for them: the registry refuses an
        index whose manifests it does not hold). Returns ``[(image, digest, problem)]`` for those it
        does not serve.
        """
        statuses = ("pushed", "skipped") if scope == "all" else ("pushed",)
        checks = [(image, digest) for image in self.primaries if image.status in statuses for digest in image.manifests]

        def check(item):
            image, digest = item
            served, message = self.registry.served(image.repository, digest)
            if served:
                return None
            return image, digest, message or "not served"

        missing = [result for result in run_parallel(checks, self.check_parallel, check) if result]
        for image, dummy, dummy2 in missing:
            image.status = "failed"
            image.error = "The mirror does not serve every manifest of %s after the push." % image.source
        return missing

    def finish(self):
        """Copy each primary's outcome to its duplicates."""
        for image in self.images:
            if image.duplicate_of is not None:
                primary = image.duplicate_of
                image.status = primary.status
                image.tag = primary.tag
                image.error = primary.error
                image.signatures = primary.signatures

    def summary(self, duration):
        counts = dict((status, 0) for status in STATUSES)
        for image in self.images:
            counts[image.status or "failed"] = counts.get(image.status or "failed", 0) + 1
        sizes = {}
        for image in self.primaries:
            sizes.update(image.blobs)
        uploaded = set()
        reused = set()
        for image in self.primaries:
            uploaded.update(image.uploaded)
            reused.update(image.reused)
        uploads = sum(len(image.uploaded) for image in self.primaries)
        counts.update(signature_counts(self.primaries))
        counts.update({
            "images": len(self.images),
            "bytes": sum(sizes.get(blob, 0) for image in self.primaries for blob in image.uploaded),
            "blobs_uploaded": uploads,
            "blobs_reused": len(reused - uploaded),
            "retries": sum(max(0, image.attempts - 1) for image in self.primaries),
            "duration": round(duration, 3),
        })
        return counts

    def failure(self):
        """The sentence that fails the task, or None: the culprit's own error first."""
        if self.missing:
            return "The mirror does not serve %d manifest(s) after the upload: %s." % (len(self.missing), ", ".join(self.missing_names()))
        failed = self.failures()
        if not failed:
            return None
        first = failed[0].error
        if self.stopped and not self.to_push:
            # stopped before any push: the mirror could not be checked (the same cause for every image, as a rule)
            others = len(failed) - 1
            return first + (" (and %d other image(s) could not be checked)" % others if others else "")
        message = first if len(failed) == 1 else "%d image(s) failed to upload (%s); the first: %s" % (
            len(failed), ", ".join(image.source for image in failed), first)
        unstarted = [image for image in self.primaries if image.status == "not_started"]
        if unstarted:
            message += " %d image(s) were not started (keep_going is false): %s." % (
                len(unstarted), ", ".join(image.source for image in unstarted))
        return message

    def missing_names(self):
        """What the final check found missing: ``repository@digest`` of a manifest, ``repository:tag`` of an attachment."""
        return ["%s@%s" % (image.repository, name) if name.startswith("sha256:") else name for image, name, dummy in self.missing]

    def failures(self):
        """The images that failed, the culprit first, then in source order."""
        failed = sorted((image for image in self.primaries if image.status == "failed"), key=lambda i: i.source)
        if self.culprit in failed:
            failed.remove(self.culprit)
            failed.insert(0, self.culprit)
        return failed

    def outcome(self, check_mode=False):
        """``(failure, result)``: the sentence that fails the task (or None) and the module's result."""
        self.finish()
        result = {"mapping": mapping_document(self.images)}
        if check_mode and not self.stopped:
            result.update(changed=bool(self.to_push or self.signatures_to_push), summary=planned_summary(self.images, self.to_push))
            return None, result
        result.update(changed=any(image.status == "pushed" or any(sig["status"] == "pushed" for sig in image.signatures)
                                  for image in self.primaries),
                      summary=self.summary(time.time() - self.started))
        failure = self.failure()
        if failure:
            result["failures"] = [image.error for image in self.failures()]
            if self.missing:
                result["missing_manifests"] = self.missing_names()
        return failure, result


def image_bytes(image):
    """Bytes of the blobs skopeo uploaded for ``image`` (what its progress line counts)."""
    return sum(image.blobs.get(blob, 0) for blob in set(image.uploaded))


def signature_counts(primaries):
    """``signatures_pushed``, ``signatures_skipped`` and ``signatures_failed`` over the images' attachments."""
    counts = {"signatures_pushed": 0, "signatures_skipped": 0, "signatures_failed": 0}
    for image in primaries:
        for sig in image.signatures:
            if sig["status"] in ("pushed", "skipped", "failed"):
                counts["signatures_" + sig["status"]] += 1
    return counts


def planned_summary(images, to_push):
    """The summary of a check-mode run: what would be pushed and how many bytes at most."""
    counts = dict((status, 0) for status in STATUSES)
    counts.update(signature_counts([image for image in images if image.duplicate_of is None]))
    for image in images:
        counts[image.status or "failed"] += 1
    sizes = {}
    for image in to_push:
        sizes.update(image.blobs)
    counts.update({"images": len(images), "bytes": sum(sizes.values()), "blobs_uploaded": 0, "blobs_reused": 0, "retries": 0, "duration": 0.0})
    return counts


def mapping_document(images):
    """The mapping list, in source order."""
    return [image.mapping() for image in sorted(images, key=lambda i: i.source)]
