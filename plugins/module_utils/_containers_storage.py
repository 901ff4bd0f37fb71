# Copyright: airgap.microshift contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""A host's container storage (the one CRI-O reads), reached only through skopeo's ``containers-storage:`` transport.

Plain Python with no Ansible dependency. Nothing here reads the storage's own files: whether an
image is there is asked of skopeo (``inspect --raw``, whose bytes must hash to the digest), images
are written with ``skopeo copy`` and removed with ``skopeo delete``, so the storage's locks and
formats stay the containers tools' business.

Checked with skopeo 1.9.3 (Debian 12) and the containers/image storage transport it carries:

- ``skopeo copy --preserve-digests oci:<layout> containers-storage:quay.io/a/b@sha256:<index>``
  with an OCI index as the source copies the one manifest of the host's architecture and keeps
  the index itself under its digest: ``skopeo inspect --raw containers-storage:quay.io/a/b@sha256:<index>``
  returns the index byte for byte, and ``podman image exists`` answers for both digests.
- A layer the storage already holds (by its compressed digest) is not read from the source: a
  source without that blob still loads. Shared layers are therefore written once per host.
- Opening a storage that does not exist yet creates it (lock files, directories): a storage
  directory that is absent or empty is known to hold nothing without asking skopeo.
"""

from __future__ import annotations

import hashlib
import os
import re

from ansible_collections.airgap.microshift.plugins.module_utils._reference import (
    InvalidReference,
    format_reference,
    parse_reference,
)
from ansible_collections.airgap.microshift.plugins.module_utils._skopeo import Skopeo, SkopeoError

DEFAULT_GRAPHROOT = "/var/lib/containers/storage"
DEFAULT_RUNROOT = "/run/containers/storage"
DEFAULT_DRIVER = "overlay"
STORAGE_CONFS = ("/etc/containers/storage.conf", "/usr/share/containers/storage.conf")

# uname -m -> the architecture names of OCI platforms
ARCHITECTURES = {
    "x86_64": "amd64", "amd64": "amd64",
    "aarch64": "arm64", "arm64": "arm64",
    "ppc64le": "ppc64le", "s390x": "s390x",
}

# skopeo's garbage collector, for its runs against the storage: a copy keeps little alive (about 10 MB), so
# collecting when the heap has grown tenfold instead of twofold saves about a tenth of a load's CPU time (docs/
# benchmarks.md, *Registry-less sites*); GOMEMLIMIT (Go 1.19 and later) caps the heap all the same. Values already
# in the environment are kept.
GO_GC_ENV = {"GOGC": "1000", "GOMEMLIMIT": "256MiB"}

_ABSENT_RE = re.compile(r"does not resolve to an image ID|identifier is not an image|image not known|no such image",
                        re.IGNORECASE)
_KEY_RE = re.compile(r'^\s*(driver|graphroot|runroot)\s*=\s*"([^"]*)"\s*(?:#.*)?$')


class StorageError(Exception):
    """The storage cannot be read or written; the message is one sentence naming the image or path."""


def oci_architecture(machine):
    """``x86_64`` -> ``amd64``, ``aarch64`` -> ``arm64``; an OCI name stays as it is."""
    return ARCHITECTURES.get(machine, machine)


def read_storage_conf(paths=None, environ=None):
    """``{"driver", "graphroot", "runroot"}`` from the first storage.conf found (``[storage]`` table only).

    ``CONTAINERS_STORAGE_CONF`` wins, as it does for the containers tools. Missing keys are absent.
    """
    environ = os.environ if environ is None else environ
    candidates = [environ["CONTAINERS_STORAGE_CONF"]] if environ.get("CONTAINERS_STORAGE_CONF") else list(paths or STORAGE_CONFS)
    for path in candidates:
        try:
            with open(path, "r") as handle:
                lines = handle.read().splitlines()
        except OSError:
            continue
        found = {}
        table = None
        for line in lines:
            stripped = line.strip()
            if stripped.startswith("["):
                table = stripped.strip("[] \t")
                continue
            match = _KEY_RE.match(line)
            if table == "storage" and match:
                found[match.group(1)] = match.group(2)
        return found
    return {}


class Storage:
    """One container storage: ``graphroot``, ``runroot`` and ``driver``, each given or from storage.conf.

    When none is given, skopeo is left to read the host's storage.conf itself (the storage CRI-O
    reads by default); otherwise every reference carries ``[driver@graphroot+runroot]``.
    """

    def __init__(self, graphroot=None, runroot=None, driver=None, conf=None):
        conf = read_storage_conf() if conf is None else conf
        self.explicit = bool(graphroot or runroot or driver)
        self.graphroot = os.path.abspath(graphroot or conf.get("graphroot") or DEFAULT_GRAPHROOT)
        self.runroot = os.path.abspath(runroot or conf.get("runroot") or DEFAULT_RUNROOT)
        self.driver = driver or conf.get("driver") or DEFAULT_DRIVER
        for name, value in (("graphroot", self.graphroot), ("runroot", self.runroot)):
            if any(c in value for c in "[]+@:"):
                raise StorageError("The storage %s %s contains one of [ ] + @ :, which the containers-storage transport cannot address."
                                   % (name, value))
        if not re.match(r"^[a-z0-9_]+$", self.driver):
            raise StorageError("The storage driver %r is not a driver name (overlay, vfs, btrfs...)." % self.driver)

    def spec(self):
        return "[%s@%s+%s]" % (self.driver, self.graphroot, self.runroot) if self.explicit else ""

    def transport_ref(self, ref):
        return "containers-storage:%s%s" % (self.spec(), ref)

    def is_empty(self):
        """True when the graphroot is absent or an empty directory: it holds no image, and asking would create it."""
        try:
            return not os.listdir(self.graphroot)
        except OSError:
            return True

    def describe(self):
        return {"graphroot": self.graphroot, "runroot": self.runroot, "driver": self.driver,
                "from_storage_conf": not self.explicit}


def storage_names(ref, digest):
    """The names an image of ``ref`` gets in the storage: ``repo@digest`` first, then ``repo:tag`` for a ref by tag."""
    try:
        parsed = parse_reference(ref)
    except InvalidReference as exc:
        raise StorageError("%s is not an image reference: %s." % (ref, exc))
    names = [format_reference(parsed.registry, parsed.repository, digest=digest)]
    if parsed.tag:
        names.append(format_reference(parsed.registry, parsed.repository, tag=parsed.tag))
    return names


class StorageTool:
    """skopeo against one :class:`Storage`: what it holds, load an image, delete an image."""

    def __init__(self, skopeo, storage, runner=None):
        """``skopeo`` is a :class:`Skopeo` (its retry policy applies), or the path of the binary: then
        nothing is retried, as a local storage has nothing transient to wait out."""
        self.storage = storage
        self.skopeo = skopeo if isinstance(skopeo, Skopeo) else Skopeo(skopeo, retries=0, runner=runner)
        for name, value in GO_GC_ENV.items():
            self.skopeo.env.setdefault(name, value)

    def manifest_digest(self, name):
        """The digest of the manifest the storage returns for ``name`` (``repo@digest`` or ``repo:tag``), or None."""
        argv = [self.skopeo.binary, "inspect", "--raw", self.storage.transport_ref(name)]
        try:
            result = self.skopeo.run(argv, what="Reading %s from the container storage %s" % (name, self.storage.graphroot))
        except SkopeoError as exc:
            if _ABSENT_RE.search(exc.stderr or ""):
                return None
            raise StorageError(exc.message)
        body = result.stdout if isinstance(result.stdout, bytes) else (result.stdout or "").encode("utf-8")
        return "sha256:" + hashlib.sha256(body).hexdigest()

    def holds(self, name, digests):
        """True when ``name`` resolves in the storage to a manifest whose digest is one of ``digests``."""
        return self.manifest_digest(name) in set(digests)

    def copy_argv(self, layout, shared_blob_dir, name, architecture=None):
        argv = self.skopeo.copy_argv("oci:%s" % layout, self.storage.transport_ref(name), all_images=False,
                                     preserve_digests=True, src_shared_blob_dir=shared_blob_dir)
        if architecture:
            # A global option: the instance of an index that is copied (and whose blobs are read).
            argv[1:1] = ["--override-os", "linux", "--override-arch", architecture]
        return argv

    def load(self, layout, shared_blob_dir, name, architecture=None):
        """Copy the image of the OCI ``layout`` (blobs in ``shared_blob_dir``) into the storage as ``name``."""
        argv = self.copy_argv(layout, shared_blob_dir, name, architecture)
        try:
            self.skopeo.run(argv, what="Loading %s into the container storage %s" % (name, self.storage.graphroot))
        except SkopeoError as exc:
            raise StorageError(exc.message)

    def delete(self, name):
        """Remove the image named ``name``; False when it was not there."""
        argv = [self.skopeo.binary, "delete", self.storage.transport_ref(name)]
        try:
            self.skopeo.run(argv, what="Removing %s from the container storage %s" % (name, self.storage.graphroot))
        except SkopeoError as exc:
            if _ABSENT_RE.search(exc.stderr or ""):
                return False
            raise StorageError(exc.message)
        return True
