# Copyright: airgap.microshift contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""Sigstore signatures put next to images of a test registry (``helpers.registry.LocalRegistry``),
as a vendor's registry serves them: an attachment tagged ``sha256-<hex>.sig``, pushed with real skopeo."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess

from ansible_collections.airgap.microshift.plugins.module_utils import _sigstore
from ansible_collections.airgap.microshift.plugins.module_utils import _store as store_mod

SKOPEO = shutil.which("skopeo")


def push_attachment(registry, repository, digest, signatures, work):
    """Tag an attachment holding ``signatures`` as the signatures of ``digest`` in ``repository``."""
    raw, blobs = _sigstore.build_attachment(signatures)
    layout = os.path.join(work, "attachment-" + hashlib.sha256(raw).hexdigest()[:12])
    os.makedirs(os.path.join(layout, "blobs", "sha256"))
    for data in list(blobs.values()) + [raw]:
        with open(os.path.join(layout, "blobs", "sha256", hashlib.sha256(data).hexdigest()), "wb") as handle:
            handle.write(data)
    with open(os.path.join(layout, "oci-layout"), "w") as handle:
        json.dump(store_mod.OCI_LAYOUT, handle)
    with open(os.path.join(layout, "index.json"), "w") as handle:
        json.dump(store_mod.layout_index("sha256:" + hashlib.sha256(raw).hexdigest(), _sigstore.ATTACHMENT_MEDIA_TYPE, len(raw)), handle)
    subprocess.run([SKOPEO, "copy", "--quiet", "--preserve-digests", "--dest-cert-dir", registry.cert_dir, "--dest-authfile",
                    registry.authfile, "oci:" + layout, "docker://%s/%s:%s" % (registry.host, repository, _sigstore.attachment_tag(digest))],
                   check=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    return "sha256:" + hashlib.sha256(raw).hexdigest()


def sign_image(registry, image, key, work, identity=None, only=None):
    """Sign the index and each per-architecture manifest of a pushed image (``only``: those digests).

    ``identity`` (default: the image's repository by digest) may name the digest as ``{digest}``.
    """
    body, dummy = registry.manifest(image["repository"], image["digest"])
    digests = [image["digest"]] + [m["digest"] for m in json.loads(body).get("manifests", [])]
    for digest in digests:
        if only is None or digest in only:
            push_attachment(registry, image["repository"], digest,
                            [_sigstore.make_signature(key, (identity or "%s/%s@{digest}" % (registry.host, image["repository"])).format(
                                digest=digest), digest)],
                            work)
    return digests
