# Copyright: airgap.microshift contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""Signatures from a real registry into the store and back out to a mirror, with real skopeo:
attachments fetched per manifest, required signatures verified before any layer is copied,
stored as blobs, pushed under their tags and skipped when already there."""

from __future__ import annotations

import hashlib
import json
import os

import pytest

from ansible_collections.airgap.microshift.plugins.module_utils import _download as download
from ansible_collections.airgap.microshift.plugins.module_utils import _signing, _sigstore
from ansible_collections.airgap.microshift.plugins.module_utils import _store as store_mod
from ansible_collections.airgap.microshift.plugins.module_utils import _upload as upload_mod
from ansible_collections.airgap.microshift.plugins.module_utils._registry import RegistrySource
from ansible_collections.airgap.microshift.plugins.module_utils._skopeo import RegistryOptions, Skopeo
from ansible_collections.airgap.microshift.tests.unit.plugins.helpers.signatures import SKOPEO, push_attachment, sign_image

pytestmark = pytest.mark.skipif(not _signing.HAS_CRYPTOGRAPHY, reason="cryptography is not installed")


@pytest.fixture(scope="module")
def release_key():
    return _signing.generate_private_key("ecdsa-p256")


def _run(registry, store, refs, signatures):
    options = download.DownloadOptions(store, RegistryOptions(registry.authfile, True, registry.cert_dir), parallel=2,
                                       keep_going=True, signatures=signatures)

    def prepare():
        os.makedirs(os.path.join(store, "blobs", "sha256"), exist_ok=True)
        os.makedirs(os.path.join(store, "images"), exist_ok=True)
        if not os.path.exists(os.path.join(store, "store.json")):
            store_mod.write_index(store, store_mod.empty_index())
    return download.DownloadRun(refs, Skopeo(SKOPEO, retries=0), options, prepare_store=prepare).run()


def _signatures(registry, keys, scopes=(), exceptions=()):
    public = [_signing.load_public_keys(_signing.public_key_pem(key), image=True)[0] for key in keys]
    return download.SignatureOptions(fetch=True, scopes=scopes, exceptions=exceptions, keys=public,
                                     source=RegistrySource(registry.authfile, True, registry.cert_dir))


def test_download_fetches_verifies_and_stores_signatures(local_registry, synthetic_images, release_key, tmp_path):
    work = str(tmp_path)
    signed = synthetic_images.push("signed", "sig/signed", ["amd64", "arm64"], [("base-{arch}", 32 * 1024)])
    single = synthetic_images.push("single", "sig/single", ["amd64"], [("single", 8 * 1024)])
    unsigned = synthetic_images.push("unsigned", "sig/exempt/unsigned", ["amd64", "arm64"], [("u-{arch}", 8 * 1024)])
    digests = sign_image(local_registry, signed, release_key, work)
    sign_image(local_registry, single, release_key, work)
    store = str(tmp_path / "store")
    scope = local_registry.host + "/sig"
    run = _run(local_registry, store, [signed["ref"], single["ref"], unsigned["ref"]],
               _signatures(local_registry, [release_key], [scope], [scope + "/exempt"]))
    assert set(r["status"] for r in run.results.values()) == {"fetched"}, run.results
    index = store_mod.read_index(store)
    assert index["format"] == 2
    entry = index["images"][signed["ref"]]
    assert sorted(entry["signatures"]) == sorted(digests)
    for attachment in entry["signatures"].values():
        assert store_mod.blob_present(store, attachment["digest"], attachment["size"])
        assert attachment["media_type"] == _sigstore.ATTACHMENT_MEDIA_TYPE
        for blob in attachment["blobs"]:
            assert index["blobs"][blob["digest"]] == blob["size"]
    assert store_mod.image_complete(store, index, signed["ref"])
    assert index["images"][unsigned["ref"]]["signatures"] == {}
    assert list(index["images"][single["ref"]]["signatures"]) == [single["digest"]]
    totals = run.summary_signatures()
    assert (totals["signed"], totals["unsigned"], totals["verified"]) == (4, 3, 4)
    # a second run needs no registry: the stored signatures are verified from the store
    again = _run(local_registry, store, [signed["ref"], single["ref"], unsigned["ref"]],
                 _signatures(local_registry, [release_key], [scope], [scope + "/exempt"]))
    assert sorted(again.skipped) == sorted([signed["ref"], single["ref"], unsigned["ref"]]) and not again.signature_failures
    assert again.summary_signatures()["verified"] == 4
    # another trusted key: the stored signatures are refused, naming the image
    other = _run(local_registry, store, [signed["ref"]], _signatures(local_registry, [_signing.generate_private_key()], [scope]))
    assert "cryptographic signature verification failed" in other.signature_failures[signed["ref"]]
    assert signed["ref"] in other.signature_failures[signed["ref"]]


@pytest.mark.parametrize("case, reason", [
    ("unsigned", "A signature was required, but no signature exists"),
    ("other-key", "cryptographic signature verification failed"),
    ("other-repository", "Signature for identity"),
    ("index-only", "A signature was required, but no signature exists"),
])
def test_a_refused_image_fails_before_any_layer_is_copied(local_registry, synthetic_images, release_key, tmp_path, case, reason):
    work = str(tmp_path)
    image = synthetic_images.push(case, "refused/%s" % case, ["amd64", "arm64"], [("r-%s-{arch}" % case, 8 * 1024)])
    if case == "other-key":
        sign_image(local_registry, image, _signing.generate_private_key("ed25519"), work)
    elif case == "other-repository":
        sign_image(local_registry, image, release_key, work, identity="%s/refused/elsewhere:1" % local_registry.host)
    elif case == "index-only":
        sign_image(local_registry, image, release_key, work, only=[image["digest"]])
    store = str(tmp_path / "store")
    offset = local_registry.log_offset()
    run = _run(local_registry, store, [image["ref"]], _signatures(local_registry, [release_key], [local_registry.host + "/refused"]))
    result = run.results[image["ref"]]
    assert result["status"] == "failed" and result.get("signature_refused")
    assert image["ref"] in result["error"] and reason in result["error"]
    # no layer left the registry: the image was refused at planning
    layers = [d for d in image["blobs"] if d != image["digest"]]
    assert not [d for d in local_registry.blob_gets(offset) if d in layers]


def test_upload_pushes_attachments_under_their_tags_and_skips_them_after(local_registry, synthetic_images, release_key, tmp_path):
    work = str(tmp_path)
    image = synthetic_images.push("up", "up/app", ["amd64", "arm64"], [("up-{arch}", 8 * 1024)])
    digests = sign_image(local_registry, image, release_key, work)
    store = str(tmp_path / "store")
    _run(local_registry, store, [image["ref"]], _signatures(local_registry, [release_key]))
    registry = upload_mod.Registry(SKOPEO, local_registry.authfile, True, local_registry.cert_dir, retries=0, direct_reads=True)

    def run_upload():
        images = upload_mod.load_images(store)[0]
        upload_mod.plan_repositories(images, local_registry.host, "mirror")
        up = upload_mod.Upload(registry, images, store=store, parallel=2)
        to_push = up.check_present()
        upload_mod.assign_tags(to_push, "digest", "261124073005")
        up.push_all(to_push)
        pairs = up.check_signatures()
        up.push_signatures(pairs)
        assert up.verify() == [] and up.verify_signatures("all") == []
        up.finish()
        return up, upload_mod.mapping_document(images)

    first, mapping = run_upload()
    assert first.summary(1.0)["signatures_pushed"] == 3
    stored = store_mod.read_index(store)["images"][image["ref"]]["signatures"]
    for digest in digests:
        body, media_type = local_registry.manifest("mirror/up/app", _sigstore.attachment_tag(digest))
        assert "sha256:" + hashlib.sha256(body).hexdigest() == stored[digest]["digest"]
    assert [s["status"] for s in mapping[0]["signatures"]] == ["pushed"] * 3
    first = mapping[0]["signatures"][0]
    assert first["mirror"] == "%s/mirror/up/app:%s" % (local_registry.host, _sigstore.attachment_tag(first["manifest"]))
    second, mapping = run_upload()
    assert second.summary(1.0)["signatures_skipped"] == 3 and second.summary(1.0)["signatures_pushed"] == 0
    # another attachment under the tag (a damaged mirror) is replaced by the store's
    push_attachment(local_registry, "mirror/up/app", digests[1], [_sigstore.make_signature(release_key, "x.io/y@" + digests[1], digests[1])], work)
    third, mapping = run_upload()
    assert third.summary(1.0)["signatures_pushed"] == 1


def test_store_entry_signatures_are_checked(tmp_path):
    digest = "sha256:" + "a" * 64
    entry = {"digest": digest, "media_type": store_mod.MEDIA_OCI_MANIFEST, "manifest_size": 10, "layout": store_mod.layout_path("quay.io/a/b@" + digest),
             "manifests": [{"digest": digest, "size": 10, "media_type": store_mod.MEDIA_OCI_MANIFEST, "blobs": []}]}
    attachment = {"digest": "sha256:" + "b" * 64, "size": 5, "media_type": store_mod.MEDIA_OCI_MANIFEST,
                  "blobs": [{"digest": "sha256:" + "c" * 64, "size": 3, "media_type": "x"}]}
    blobs = {digest: 10, "sha256:" + "b" * 64: 5, "sha256:" + "c" * 64: 3}
    good = {"format": 2, "images": {"quay.io/a/b@" + digest: dict(entry, signatures={digest: attachment})}, "blobs": blobs}
    store_mod.validate_index(good, "store.json")
    assert store_mod.index_format(good) == 2
    for mutate, words in [
        (lambda d: d.update(format=1), "need format 2"),
        (lambda d: d["images"]["quay.io/a/b@" + digest]["signatures"].update({"sha256:" + "d" * 64: attachment}), "is not a manifest of the image"),
        (lambda d: d["blobs"].pop("sha256:" + "c" * 64), "is not listed with that size"),
        (lambda d: d["images"]["quay.io/a/b@" + digest]["signatures"][digest].update(media_type="x"), "not an OCI image manifest"),
        (lambda d: d["images"]["quay.io/a/b@" + digest]["signatures"][digest].update(blobs=[]), "lists no blob"),
    ]:
        doc = json.loads(json.dumps(good))
        mutate(doc)
        with pytest.raises(store_mod.StoreError, match=words):
            store_mod.validate_index(doc, "store.json")
