# Copyright: airgap.microshift contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Hostile media: crafted transfer sets and dir: trees are refused through the public modules.

Whoever can write to the medium decides what the air-gapped side reads. Each case here is a
transfer set (signed by the test bed's key, re-signed after a change as a compromised connected
side would, or signed by a stranger) or a dir: tree crafted as an attacker would, run through
``image_bundle`` (verify, unpack, or the transfer role) or ``image_upload`` on the bastion. Every
case must fail with one sentence naming the file and the problem, without a traceback, within a
bounded time (the playbook's timeout), create or grow nothing outside its destination, and leave
an existing store valid and unchanged.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import json
import os
import shutil
import subprocess
import time

import pytest

from conftest import record, tree_state, verify_store

from ansible_collections.airgap.microshift.plugins.module_utils import _bundle, _signing  # noqa: E402

CASE_TIMEOUT = 300


def _vol(medium, name="vol-001"):
    return os.path.join(medium, name)


def _manifest(medium):
    with open(os.path.join(_vol(medium), "bundle.json"), "rb") as handle:
        return json.loads(handle.read())


def _write(path, data):
    with open(path, "wb") as handle:
        handle.write(data)


def resign(medium, key, change_manifest=None, files=None, keep_id=False):
    """Rewrite every volume's bundle.json (and SHA256SUMS, signature) after changes, as a signer would.

    ``files`` maps vol-001 relative paths (store.json, layouts/NNNN/...) to new bytes; their records
    in the manifest follow. ``change_manifest(manifest)`` edits the manifest afterwards; the
    bundle_id is recomputed unless ``keep_id``.
    """
    manifest = _manifest(medium)
    for rel, data in (files or {}).items():
        _write(os.path.join(_vol(medium), rel), data)
        record = {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
        if rel == "store.json":
            manifest["store_json"].update(record)
        else:
            for image in manifest["images"].values():
                if rel.startswith(image["bundle_path"] + "/"):
                    image["files"][rel.rsplit("/", 1)[1]] = record
    if change_manifest:
        manifest = change_manifest(manifest) or manifest
    if not keep_id:
        try:
            manifest["bundle_id"] = _bundle.bundle_id(manifest)
        except (KeyError, TypeError, AttributeError):
            pass
    data = manifest if isinstance(manifest, bytes) else _bundle.canonical_json(manifest)
    for name in sorted(os.listdir(medium)):
        if not name.startswith("vol-"):
            continue
        vol = _vol(medium, name)
        try:
            sums = _bundle.expected_files(manifest, name, data)
            records = [(rel, sha) for rel, (dummy, sha) in sums.items() if rel not in ("SHA256SUMS", "bundle.json.sig", "bundle.json")]
            records.append(("bundle.json", hashlib.sha256(data).hexdigest()))
            files_listed = "".join("%s  %s\n" % (sha, rel) for rel, sha in sorted(records))
            _write(os.path.join(vol, "SHA256SUMS"), files_listed.encode())
        except (KeyError, TypeError, AttributeError, ValueError):
            pass
        _write(os.path.join(vol, "bundle.json"), data)
        _write(os.path.join(vol, "bundle.json.sig"), _signing.encode_signature(_signing.sign(key, data)))


def _first_blob(medium, volume="vol-002"):
    manifest = _manifest(medium)
    for digest, record_ in sorted(manifest["blobs"].items()):
        if record_.get("volume") == volume:
            return digest, record_["path"]
    raise AssertionError("no whole blob in %s" % volume)


class Context:
    def __init__(self, bed, reference):
        self.bed = bed
        self.ref = reference
        self.root = os.path.join(bed.work, "hostile")
        os.makedirs(self.root)
        self.key = bed.keys["key"]
        self.stranger = _signing.generate_private_key()
        self.good = self.path("good")
        half = str(max(reference["unique_bytes"] // 2 + 65536, 1 << 20))
        result, dummy = bed.module("image_bundle", bed.sign({"state": "pack", "store": reference["store"], "dest": self.good,
                                                             "volume_size": half, "release": "hostile"}))
        assert result.rc == 0, result
        assert len([v for v in os.listdir(self.good) if v.startswith("vol-")]) >= 2
        # Another genuine signed set (another release: one image less), for a volume swap.
        other_store = self.path("other-store")
        shutil.copytree(reference["store"], other_store)
        with open(os.path.join(other_store, "store.json"), encoding="utf-8") as handle:
            index = json.load(handle)
        index["images"].pop(sorted(index["images"])[0])
        with open(os.path.join(other_store, "store.json"), "w", encoding="utf-8") as handle:
            json.dump(index, handle)
        self.other = self.path("other")
        result, dummy = bed.module("image_bundle", bed.sign({"state": "pack", "store": other_store, "dest": self.other,
                                                             "volume_size": half, "release": "other"}))
        assert result.rc == 0, result
        # A store on the air-gapped side that already holds the set, to check it is left valid and unchanged.
        self.site_store = self.path("site-store")
        result, dummy = bed.module("image_bundle", bed.sign({"state": "unpack", "src": [self.good], "store": self.site_store}),
                                   hosts="airgapped")
        assert result.rc == 0, result
        # A victim outside every destination: nothing may create or change files here.
        self.victim = self.path("victim")
        os.makedirs(self.victim)
        _write(os.path.join(self.victim, "secret"), b"not for the medium\n")
        # A dir: tree of one multi-arch image, made by skopeo from the reference store.
        self.good_ref = sorted(r for r in reference["refs"] if "@sha256:" in r)[0]
        entry = reference["index"]["images"][self.good_ref]
        self.tree = self.path("tree")
        # Named by a tag, so a changed manifest.json is judged by its content, not refused for its pinned digest.
        self.image_rel = self.good_ref.split("/", 1)[1].split("@", 1)[0] + ":hostile"
        os.makedirs(os.path.dirname(os.path.join(self.tree, self.image_rel)))
        subprocess.run(["skopeo", "copy", "--quiet", "--all", "--preserve-digests", "--src-shared-blob-dir",
                        os.path.join(reference["store"], "blobs"), "oci:" + os.path.join(reference["store"], entry["layout"]),
                        "dir:" + os.path.join(self.tree, self.image_rel)], check=True)
        self.arch_manifest = entry["manifests"][0]["digest"]
        self.layer = entry["manifests"][0]["blobs"][-1]["digest"]

    def path(self, name):
        return os.path.join(self.root, name)

    def medium(self, name, source=None):
        """A copy of the good set (or ``source``) for one case."""
        target = self.path("case-" + name)
        shutil.copytree(source or self.good, target, symlinks=True)
        return target

    def tree_copy(self, name):
        target = self.path("tree-" + name)
        shutil.copytree(self.tree, target, symlinks=True)
        return target, os.path.join(target, self.image_rel)


def _unpack(c, medium, out, **extra):
    return [{"name": "Hostile", "hosts": "airgapped", "gather_facts": False, "tasks": [
        {"name": "Run image_bundle",
         "airgap.microshift.image_bundle": c.bed.sign(dict({"state": "unpack", "src": [medium], "store": out}, **extra))}]}]


def _verify(c, medium):
    return [{"name": "Hostile", "hosts": "airgapped", "gather_facts": False, "tasks": [
        {"name": "Run image_bundle", "airgap.microshift.image_bundle": c.bed.sign({"state": "verify", "src": [medium]})}]}]


def _role(c, medium, out):
    return [{"name": "Hostile", "hosts": "airgapped", "gather_facts": False, "tasks": [
        {"name": "Run the transfer role", "ansible.builtin.include_role": {"name": "airgap.microshift.transfer"},
         "vars": {"transfer_side": "airgapped", "transfer_store": out, "transfer_media_paths": [medium],
                  "transfer_trusted_keys": [c.bed.keys["public"]], "transfer_write_receipt": False}}]}]


def _upload(c, source, namespace):
    return [{"name": "Hostile", "hosts": "airgapped", "gather_facts": False, "tasks": [
        {"name": "Run image_upload", "airgap.microshift.image_upload": {
            "store": source, "source_format": "dir" if "tree-" in source else "store", "mirror": c.bed.mirror["hostport"],
            "namespace": namespace, "authfile": c.bed.mirror["auth_file"]}}]}]


def _flip(path, offset=None):
    with open(path, "r+b") as handle:
        data = bytearray(handle.read())
        at = len(data) // 2 if offset is None else offset
        data[at] ^= 0x01
        handle.seek(0)
        handle.write(bytes(data))


def _json_edit(path, change):
    with open(path, encoding="utf-8") as handle:
        doc = json.load(handle)
    doc = change(doc) or doc
    return json.dumps(doc).encode()


# --- the cases: id -> builder(ctx, out) returning {"play", "expect", "absent", "unchanged"} ---------


def case_blob_byte(c, out):
    medium = c.medium("blob-byte")
    dummy, rel = _first_blob(medium)
    _flip(os.path.join(_vol(medium, "vol-002"), rel))
    return dict(play=_role(c, medium, out), expect=["vol-002/" + rel, "corrupt"], absent=[out])


def case_manifest_byte(c, out):
    medium = c.medium("manifest-byte")
    path = os.path.join(_vol(medium), "bundle.json")
    with open(path, "rb") as handle:
        data = handle.read()
    _write(path, data.replace(b'"release": "hostile"', b'"release": "hostilE"'))
    return dict(play=_unpack(c, medium, out), expect=["vol-001/bundle.json", "does not match its signature"], absent=[out])


def case_file_added(c, out):
    medium = c.medium("file-added")
    _write(os.path.join(_vol(medium, "vol-002"), "blobs", "sha256", "README.txt"), b"hello\n")
    return dict(play=_unpack(c, medium, out), expect=["vol-002/blobs/sha256/README.txt", "not part of the set"], absent=[out])


def case_volume_swapped(c, out):
    medium = c.medium("volume-swapped")
    shutil.rmtree(_vol(medium, "vol-002"))
    shutil.copytree(_vol(c.other, "vol-002"), _vol(medium, "vol-002"))
    return dict(play=_unpack(c, medium, out), expect=["vol-002", "different bundles"], absent=[out])


def case_unsigned(c, out):
    medium = c.medium("unsigned")
    for name in os.listdir(medium):
        os.unlink(os.path.join(_vol(medium, name), "bundle.json.sig"))
    return dict(play=_unpack(c, medium, out), expect=["bundle.json.sig", "not signed", "allow_unsigned"], absent=[out])


def case_stranger_key(c, out):
    medium = c.medium("stranger-key")
    resign(medium, c.stranger, change_manifest=lambda m: m.update(release="evil"))
    return dict(play=_unpack(c, medium, out), expect=["vol-001/bundle.json", "trusted key"], absent=[out])


def case_signature_garbage(c, out):
    medium = c.medium("signature-garbage")
    _write(os.path.join(_vol(medium), "bundle.json.sig"), b"%%% not base64 %%%\n")
    return dict(play=_unpack(c, medium, out), expect=["vol-001/bundle.json.sig", "not base64"], absent=[out])


def case_manifest_symlink(c, out):
    medium = c.medium("manifest-symlink")
    os.unlink(os.path.join(_vol(medium), "bundle.json"))
    os.symlink(os.path.join(c.victim, "secret"), os.path.join(_vol(medium), "bundle.json"))
    return dict(play=_unpack(c, medium, out), expect=["vol-001/bundle.json", "symbolic link"], absent=[out], unchanged=[c.victim])


def case_blob_symlink_dev_zero(c, out):
    medium = c.medium("blob-dev-zero")
    dummy, rel = _first_blob(medium)
    os.unlink(os.path.join(_vol(medium, "vol-002"), rel))
    os.symlink("/dev/zero", os.path.join(_vol(medium, "vol-002"), rel))
    return dict(play=_unpack(c, medium, out), expect=["vol-002/" + rel, "not part of the set"], absent=[out])


def case_blob_fifo(c, out):
    medium = c.medium("blob-fifo")
    dummy, rel = _first_blob(medium)
    os.unlink(os.path.join(_vol(medium, "vol-002"), rel))
    os.mkfifo(os.path.join(_vol(medium, "vol-002"), rel))
    return dict(play=_verify(c, medium), expect=["vol-002/" + rel, "not part of the set"])


def case_volume_dir_symlink(c, out):
    medium = c.medium("volume-symlink")
    shutil.rmtree(_vol(medium, "vol-002"))
    os.symlink(_vol(c.good, "vol-002"), _vol(medium, "vol-002"))
    return dict(play=_unpack(c, medium, out), expect=["vol-002", "symbolic link"], absent=[out])


def case_blob_grown(c, out):
    medium = c.medium("blob-grown")
    dummy, rel = _first_blob(medium)
    with open(os.path.join(_vol(medium, "vol-002"), rel), "ab") as handle:
        handle.write(b"\0" * 4096)
    return dict(play=_unpack(c, medium, out), expect=["vol-002/" + rel, "oversized"], absent=[out])


def case_blob_truncated(c, out):
    medium = c.medium("blob-truncated")
    dummy, rel = _first_blob(medium)
    os.truncate(os.path.join(_vol(medium, "vol-002"), rel), 10)
    return dict(play=_unpack(c, medium, out), expect=["vol-002/" + rel, "short"], absent=[out])


def case_sums_point_at_host_files(c, out):
    medium = c.medium("sums-host-files")
    with open(os.path.join(_vol(medium), "SHA256SUMS"), "ab") as handle:
        handle.write(("%s  ../../../../%s\n" % ("0" * 64, os.path.join(c.victim, "secret").lstrip("/"))).encode())
    return dict(play=_verify(c, medium), expect=["vol-001/SHA256SUMS", "corrupt"], unchanged=[c.victim])


def case_huge_manifest(c, out):
    medium = c.medium("huge-manifest")
    path = os.path.join(_vol(medium), "bundle.json")
    os.truncate(path, 200 * 1024 * 1024)  # sparse: costs no disk, would cost memory if it were read
    return dict(play=_unpack(c, medium, out), expect=["vol-001/bundle.json", "more than"], absent=[out])


def case_store_json_bad_blob_key(c, out):
    medium = c.medium("store-json-blob-key")
    data = _json_edit(os.path.join(_vol(medium), "store.json"), lambda d: d["blobs"].update({"sha256:../../../victim": 1}))
    resign(medium, c.key, files={"store.json": data})
    return dict(play=_unpack(c, medium, out), expect=["store.json", "not a sha256 digest"], absent=[out])


def case_store_json_layout_outside(c, out):
    medium = c.medium("store-json-layout")

    def change(doc):
        entry = doc["images"][sorted(doc["images"])[0]]
        entry["layout"] = "../../../" + c.victim.lstrip("/")
    data = _json_edit(os.path.join(_vol(medium), "store.json"), change)
    resign(medium, c.key, files={"store.json": data})
    return dict(play=_unpack(c, medium, out), expect=["store.json", "is not the image's own"], absent=[out], unchanged=[c.victim])


def case_store_json_pinned_digest(c, out):
    medium = c.medium("store-json-pinned")

    def change(doc):
        ref = [r for r in sorted(doc["images"]) if "@sha256:" in r][0]
        doc["images"][ref]["digest"] = "sha256:" + "e" * 64
    data = _json_edit(os.path.join(_vol(medium), "store.json"), change)
    resign(medium, c.key, files={"store.json": data})
    return dict(play=_unpack(c, medium, out), expect=["store.json", "pins"], absent=[out])


def case_store_json_disagrees(c, out):
    medium = c.medium("store-json-disagrees")

    def change(doc):
        del doc["images"][sorted(doc["images"])[-1]]
    data = _json_edit(os.path.join(_vol(medium), "store.json"), change)
    resign(medium, c.key, files={"store.json": data})
    return dict(play=_unpack(c, medium, out), expect=["vol-001/store.json", "different images"], absent=[out])


def case_manifest_path_traversal(c, out):
    medium = c.medium("manifest-traversal")

    def change(manifest):
        digest = sorted(d for d, r in manifest["blobs"].items() if "path" in r)[0]
        manifest["blobs"][digest]["path"] = "../../../" + c.victim.lstrip("/") + "/secret"
    resign(medium, c.key, change_manifest=change)
    return dict(play=_unpack(c, medium, out), expect=["bundle.json", "blobs/sha256"], absent=[out], unchanged=[c.victim])


def case_manifest_not_json(c, out):
    medium = c.medium("manifest-not-json")
    resign(medium, c.key, change_manifest=lambda m: b'{"format": 2, "kind": ')
    return dict(play=_unpack(c, medium, out), expect=["vol-001/bundle.json", "not valid JSON"], absent=[out])


def case_manifest_deep(c, out):
    medium = c.medium("manifest-deep")
    resign(medium, c.key, change_manifest=lambda m: b"[" * 100000 + b"]" * 100000)
    return dict(play=_unpack(c, medium, out), expect=["vol-001/bundle.json", "nests deeper"], absent=[out])


def case_manifest_missing_key(c, out):
    medium = c.medium("manifest-missing-key")

    def change(manifest):
        del manifest["store_json"]
    resign(medium, c.key, change_manifest=change)
    return dict(play=_unpack(c, medium, out), expect=["vol-001/bundle.json", "lacks the key 'store_json'"], absent=[out])


def case_manifest_old_format(c, out):
    medium = c.medium("manifest-format-1")
    resign(medium, c.key, change_manifest=lambda m: m.update(format=1))
    return dict(play=_unpack(c, medium, out), expect=["vol-001/bundle.json", "format 1"], absent=[out])


def case_layout_names_another_digest(c, out):
    medium = c.medium("layout-other-digest")
    manifest = _manifest(medium)
    image = manifest["images"][sorted(manifest["images"])[0]]
    rel = image["bundle_path"] + "/index.json"

    def change(doc):
        doc["manifests"][0]["digest"] = "sha256:" + "d" * 64
    data = _json_edit(os.path.join(_vol(medium), rel), change)
    resign(medium, c.key, files={rel: data})
    return dict(play=_unpack(c, medium, out), expect=[image["bundle_path"], "index.json names"], absent=[out])


def case_replaces_an_image(c, out):
    """A set that records an image the store holds under another digest (a moved tag; for a digest ref, a lie)."""
    medium = c.medium("replaces-image")
    tags = sorted(r for r in c.ref["refs"] if "@" not in r)
    ref = (tags or sorted(c.ref["refs"]))[0]

    def change(doc):
        entry = doc["images"][ref]
        other = [e for r, e in sorted(doc["images"].items()) if r != ref and e["media_type"] == entry["media_type"]][0]
        doc["images"][ref] = dict(other, layout=entry["layout"])
    data = _json_edit(os.path.join(_vol(medium), "store.json"), change)

    def manifest_change(manifest):
        new_entry = json.loads(data)["images"][ref]
        image = manifest["images"][ref]
        image["digest"] = new_entry["digest"]
        layout_index = json.dumps({"schemaVersion": 2, "manifests": [{"mediaType": new_entry["media_type"], "digest": new_entry["digest"],
                                                                     "size": new_entry["manifest_size"]}]}).encode()
        _write(os.path.join(_vol(medium), image["bundle_path"], "index.json"), layout_index)
        image["files"]["index.json"] = {"size": len(layout_index), "sha256": hashlib.sha256(layout_index).hexdigest()}
    resign(medium, c.key, files={"store.json": data}, change_manifest=manifest_change)
    return dict(play=_unpack(c, medium, c.site_store), expect=[ref, "never replaced" if tags else "pins"])


def case_tree_manifest_traversal(c, out):
    root, image = c.tree_copy("traversal")
    path = os.path.join(image, "manifest.json")
    data = _json_edit(path, lambda d: d["manifests"][0].update(digest="sha256:../../../../" + c.victim.lstrip("/")))
    _write(path, data)
    return dict(play=_upload(c, root, "hostile-traversal"), expect=["manifest.json", "not a sha256 digest"], unchanged=[c.victim],
                mirror_absent=["hostile-traversal"])


def case_tree_manifest_symlink(c, out):
    root, image = c.tree_copy("manifest-symlink")
    os.unlink(os.path.join(image, "manifest.json"))
    os.symlink(os.path.join(c.victim, "secret"), os.path.join(image, "manifest.json"))
    return dict(play=_upload(c, root, "hostile-link"), expect=["manifest.json", "symbolic link"], mirror_absent=["hostile-link"])


def case_tree_blob_dev_zero(c, out):
    root, image = c.tree_copy("blob-dev-zero")
    os.unlink(os.path.join(image, c.layer[7:]))
    os.symlink("/dev/zero", os.path.join(image, c.layer[7:]))
    return dict(play=_upload(c, root, "hostile-zero"), expect=[c.layer[7:], "symbolic link"], mirror_absent=["hostile-zero"])


def case_tree_arch_manifest_changed(c, out):
    root, image = c.tree_copy("arch-changed")
    path = os.path.join(image, c.arch_manifest[7:] + ".manifest.json")
    with open(path, "rb") as handle:
        data = handle.read()
    _write(path, data.replace(b"{", b"{ ", 1))
    return dict(play=_upload(c, root, "hostile-arch"), expect=[c.arch_manifest[7:] + ".manifest.json"], mirror_absent=["hostile-arch"])


def case_tree_nested_index(c, out):
    root, image = c.tree_copy("nested-index")
    top = os.path.join(image, "manifest.json")
    with open(top, "rb") as handle:
        index = handle.read()
    # The per-arch manifest named by the index becomes an index listing the index itself.
    child = c.arch_manifest[7:] + ".manifest.json"
    nested = index
    digest = "sha256:" + hashlib.sha256(nested).hexdigest()
    doc = json.loads(index)
    doc["manifests"][0].update(digest=digest, size=len(nested))
    _write(top, json.dumps(doc).encode())
    os.unlink(os.path.join(image, child))
    _write(os.path.join(image, digest[7:] + ".manifest.json"), nested)
    return dict(play=_upload(c, root, "hostile-nested"), expect=["nested index"], mirror_absent=["hostile-nested"])


def case_tree_huge_manifest(c, out):
    root, image = c.tree_copy("huge-manifest")
    os.truncate(os.path.join(image, "manifest.json"), 100 * 1024 * 1024)
    return dict(play=_upload(c, root, "hostile-huge"), expect=["manifest.json", "more than"], mirror_absent=["hostile-huge"])


CASES = dict((name[5:].replace("_", "-"), builder) for name, builder in sorted(globals().items()) if name.startswith("case_"))


@pytest.fixture(scope="module")
def outcomes(bed, reference_store):
    bed.wan_calm()
    ctx = Context(bed, reference_store)
    cases = {}
    for case_id, build in CASES.items():
        cases[case_id] = build(ctx, ctx.path("out-" + case_id))
    watched = [ctx.victim, ctx.site_store]
    before = dict((path, tree_state(path)) for path in watched)
    site_index = open(os.path.join(ctx.site_store, "store.json"), "rb").read()

    def run(case_id):
        started = time.monotonic()
        result = bed.playbook(cases[case_id]["play"], timeout=CASE_TIMEOUT)
        return case_id, (result, time.monotonic() - started)

    with concurrent.futures.ThreadPoolExecutor(max_workers=4) as pool:
        results = dict(pool.map(run, sorted(cases)))
    record("hostile_media", {"cases": len(cases), "slowest_seconds": round(max(t for dummy, t in results.values()), 1)})
    return dict((case_id, (results[case_id][0], results[case_id][1], cases[case_id], ctx, before, site_index)) for case_id in cases)


def test_enough_cases():
    assert len(CASES) >= 25


@pytest.mark.parametrize("case_id", sorted(CASES))
def test_hostile_media(outcomes, case_id):
    result, seconds, case, ctx, before, site_index = outcomes[case_id]
    assert result.rc != 0, "the run succeeded: %r" % result
    failure = result.failure()
    assert failure is not None, result
    msg = failure.get("msg") or ""
    assert "Traceback" not in msg and "Traceback" not in result.stdout and "\n" not in msg.strip(), msg
    assert len(msg) < 1500, msg
    for expected in case["expect"]:
        assert expected.lower() in msg.lower(), "%r not in %r" % (expected, msg)
    assert seconds < CASE_TIMEOUT
    for path in case.get("absent", []):
        assert not os.path.exists(path) or not [n for n in os.listdir(path) if not n.startswith(".")], "%s was written" % path
    # Nothing outside the destination was created or changed; the existing store is still valid and the same.
    for path, state in before.items():
        assert tree_state(path) == state, "%s changed" % path
    with open(os.path.join(ctx.site_store, "store.json"), "rb") as handle:
        assert handle.read() == site_index
    problems, dummy = verify_store(ctx.site_store)
    assert problems == [], problems
    for namespace in case.get("mirror_absent", []):
        repository = "%s/%s" % (namespace, ctx.image_rel.split("@", 1)[0].split(":", 1)[0])
        assert ctx.bed.mirror_tags(repository) == [], "%s was pushed" % repository
