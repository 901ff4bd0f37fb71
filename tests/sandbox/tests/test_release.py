# Copyright: airgap.microshift contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The synthetic release generator: valid digests and layers, sharing as configured, exact byte accounting."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import shutil
import subprocess
import tarfile

import pytest

from tests.sandbox import release


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("rel") / "tiny")
    meta = release.generate(out, size="tiny", seed=7)
    return out, meta


def _v2(out, registry):
    return os.path.join(out, "storage", registry, "docker", "registry", "v2")


def _blob(out, registry, digest):
    hexd = digest.split(":", 1)[1]
    with open(os.path.join(_v2(out, registry), "blobs", "sha256", hexd[:2], hexd, "data"), "rb") as f:
        return f.read()


def _link(path):
    with open(path, encoding="ascii") as f:
        return f.read()


def test_every_blob_matches_its_digest(tiny):
    out, unused = tiny
    count = 0
    for registry in release.REGISTRIES:
        root = os.path.join(_v2(out, registry), "blobs", "sha256")
        if not os.path.isdir(root):
            continue
        for prefix in os.listdir(root):
            for hexd in os.listdir(os.path.join(root, prefix)):
                assert hexd[:2] == prefix
                with open(os.path.join(root, prefix, hexd, "data"), "rb") as f:
                    assert hashlib.sha256(f.read()).hexdigest() == hexd
                count += 1
    assert count > 100


def test_indexes_manifests_and_links_are_consistent(tiny):
    out, meta = tiny
    for img in meta["images"]:
        for registry, repo in img["locations"]:
            repo_dir = os.path.join(_v2(out, registry), "repositories", repo)
            index = json.loads(_blob(out, registry, img["index"]))
            assert index["mediaType"] == release.MT_INDEX
            assert _link(os.path.join(repo_dir, "_manifests", "revisions", "sha256", img["index"][7:], "link")) == img["index"]
            assert sorted(m["platform"]["architecture"] for m in index["manifests"]) == ["amd64", "arm64"]
            for desc in index["manifests"]:
                raw = _blob(out, registry, desc["digest"])
                assert len(raw) == desc["size"]
                manifest = json.loads(raw)
                assert _link(os.path.join(repo_dir, "_manifests", "revisions", "sha256", desc["digest"][7:], "link")) == desc["digest"]
                config = json.loads(_blob(out, registry, manifest["config"]["digest"]))
                assert config["architecture"] == desc["platform"]["architecture"]
                assert len(config["rootfs"]["diff_ids"]) == len(manifest["layers"])
                for layer in manifest["layers"] + [manifest["config"]]:
                    assert _link(os.path.join(repo_dir, "_layers", "sha256", layer["digest"][7:], "link")) == layer["digest"]
            for ref in img["tags"]:
                tag = ref.rsplit(":", 1)[1]
                assert _link(os.path.join(repo_dir, "_manifests", "tags", tag, "current", "link")) == img["index"]
                assert _link(os.path.join(repo_dir, "_manifests", "tags", tag, "index", "sha256", img["index"][7:], "link")) == img["index"]


def test_layers_are_valid_tar_gzip_with_matching_diff_ids(tiny):
    out, meta = tiny
    img = meta["images"][0]
    registry = img["locations"][0][0]
    index = json.loads(_blob(out, registry, img["index"]))
    manifest = json.loads(_blob(out, registry, index["manifests"][0]["digest"]))
    config = json.loads(_blob(out, registry, manifest["config"]["digest"]))
    for layer, diff_id in zip(manifest["layers"], config["rootfs"]["diff_ids"]):
        raw = gzip.decompress(_blob(out, registry, layer["digest"]))
        assert "sha256:" + hashlib.sha256(raw).hexdigest() == diff_id
        with tarfile.open(fileobj=io.BytesIO(raw)) as tar:
            files = [m for m in tar.getmembers() if m.isfile()]
            assert len(files) == 1 and files[0].size > 0
            payload = tar.extractfile(files[0]).read()
        # Random payload: zlib cannot shrink it.
        assert len(gzip.compress(payload)) >= len(payload)


def test_sharing_as_configured(tiny):
    unused, meta = tiny
    images = meta["images"]
    users = {}
    for img in images:
        for digest in meta["image_blobs"][img["id"]]:
            users.setdefault(digest, set()).add(img["id"])
    sharing = [img for img in images if img["shares_base"]]
    assert len(sharing) == round(release.BASE_SHARE * len(images))
    assert not any(img["shares_base"] for img in images if any(loc[0] == "ghcr.io" for loc in img["locations"]))
    # The base family: len(base) layers per arch, each used by exactly the sharing images.
    share_count = len(sharing)
    base_layers = [d for d, u in users.items() if len(u) == share_count and share_count > 1]
    assert len(base_layers) == 2 * len(release.SIZES["tiny"]["base"])
    # Middle layers: one per (group, arch), used by every image of that group.
    groups = {}
    for img in images:
        groups.setdefault(img["group"], set()).add(img["id"])
    for group, members in groups.items():
        assert sum(1 for u in users.values() if u == members) >= 2, group
    # Every image has top layers nobody else has (one per arch).
    for img in images:
        own = [d for d in meta["image_blobs"][img["id"]] if users[d] == {img["id"]}]
        assert len(own) >= 2


def test_byte_accounting(tiny):
    out, meta = tiny
    sizes = {}
    logical = 0
    for img in meta["images"]:
        registry = img["locations"][0][0]
        index = json.loads(_blob(out, registry, img["index"]))
        for desc in index["manifests"]:
            manifest = json.loads(_blob(out, registry, desc["digest"]))
            for d in manifest["layers"] + [manifest["config"]]:
                assert len(_blob(out, registry, d["digest"])) == d["size"]
                logical += d["size"]
                sizes[d["digest"]] = d["size"]
    assert meta["logical_bytes"] == logical
    assert meta["unique_bytes"] == sum(sizes.values())
    assert meta["logical_bytes"] > 3 * meta["unique_bytes"]
    assert 1_000_000 < meta["unique_bytes"] < 8_000_000


def test_release_files_keep_the_real_shape(tiny):
    out, meta = tiny
    shape = release.load_shape(release.DEFAULT_VERSION)
    digests = {img["index"] for img in meta["images"]}
    for fname, data in shape.items():
        with open(os.path.join(out, "release", fname), encoding="utf-8") as f:
            synthetic = json.load(f)
        assert synthetic["release"] == data["release"]
        assert list(synthetic["images"]) == list(data["images"])
        for key, ref in data["images"].items():
            new = synthetic["images"][key]
            reg, repo, tag, digest = release.split_ref(ref)
            nreg, nrepo, ntag, ndigest = release.split_ref(new)
            assert (nreg, nrepo, ntag) == (reg, repo, tag)
            assert (ndigest in digests) if digest else (new == ref)


def test_rpm_carries_the_release_files(tiny):
    unused, meta = tiny
    listing = subprocess.run(["rpm", "-qpl", meta["rpm"]], capture_output=True, text=True, check=True).stdout.split()
    assert "/usr/share/microshift/release/release-x86_64.json" in listing
    info = subprocess.run(["rpm", "-qp", "--qf", "%{NAME} %{ARCH}", meta["rpm"]], capture_output=True, text=True, check=True).stdout
    assert info == "microshift-release-info noarch"


def test_deterministic_for_a_seed(tmp_path, tiny):
    unused, meta = tiny
    again = release.generate(str(tmp_path / "again"), size="tiny", seed=7, build_rpm_file=False)
    other = release.generate(str(tmp_path / "other"), size="tiny", seed=8, build_rpm_file=False)
    assert [i["index"] for i in again["images"]] == [i["index"] for i in meta["images"]]
    assert not {i["index"] for i in other["images"]} & {i["index"] for i in meta["images"]}


def test_arch_ref_mode_points_at_per_arch_manifests(tmp_path):
    meta = release.generate(str(tmp_path / "arch"), size="tiny", seed=3, ref_mode="arch", build_rpm_file=False)
    by_digest = {}
    for img in meta["images"]:
        for uname, digest in img["manifests"].items():
            by_digest[digest] = uname
    with open(os.path.join(meta["release_dir"], "release-aarch64.json"), encoding="utf-8") as f:
        refs = json.load(f)["images"].values()
    assert all(by_digest[r.split("@", 1)[1]] == "aarch64" for r in refs if "@" in r)


def test_cache_reuses_a_generated_release(tmp_path):
    first = release.ensure_release(str(tmp_path), size="tiny", seed=5)
    stamp = os.stat(first["release_dir"]).st_mtime_ns
    second = release.ensure_release(str(tmp_path), size="tiny", seed=5)
    assert second == first and os.stat(second["release_dir"]).st_mtime_ns == stamp
    assert first["release_dir"].startswith(str(tmp_path) + "/")
    shutil.rmtree(str(tmp_path))


def test_release_update_changes_exactly_the_top_layer_of_n_images(tmp_path, tiny):
    unused, meta = tiny
    out = str(tmp_path / "update")
    upd = release.generate(out, size="tiny", seed=7, changed=2, build_rpm_file=False)
    before = {img["id"]: img for img in meta["images"]}
    after = {img["id"]: img for img in upd["images"]}
    assert upd["changed"] == 2 and len(upd["changed_images"]) == 2
    changed = {c["id"] for c in upd["changed_images"]}
    assert {i for i in after if after[i]["index"] != before[i]["index"]} == changed
    for cid in changed:
        assert not after[cid]["tags"]
        registry = after[cid]["locations"][0][0]
        for uname in ("x86_64", "aarch64"):
            old = json.loads(_blob(out, registry, before[cid]["manifests"][uname]))
            new = json.loads(_blob(out, registry, after[cid]["manifests"][uname]))
            # Same base and middle layers, a new top layer (and so a new config).
            assert old["layers"][:-1] == new["layers"][:-1]
            assert old["layers"][-1]["digest"] != new["layers"][-1]["digest"]
        # The storage still serves the previous release's manifests, and the new ones.
        for registry, repo in after[cid]["locations"]:
            revs = os.path.join(_v2(out, registry), "repositories", repo, "_manifests", "revisions", "sha256")
            assert os.path.exists(os.path.join(revs, before[cid]["index"][7:], "link"))
            assert os.path.exists(os.path.join(revs, after[cid]["index"][7:], "link"))
    # Per changed image: a new top layer and config per architecture, two manifests and an index.
    new_blobs = {d: s for c in upd["changed_images"] for d, s in c["new_blobs"].items()}
    assert len(new_blobs) == 2 * (2 * 2)
    old_blobs = {d for blobs in meta["image_blobs"].values() for d in blobs}
    assert not set(new_blobs) & old_blobs
    # The release files differ only in the refs of the changed images.
    for fname in os.listdir(meta["release_dir"]):
        with open(os.path.join(meta["release_dir"], fname), encoding="utf-8") as f:
            old_refs = json.load(f)["images"]
        with open(os.path.join(upd["release_dir"], fname), encoding="utf-8") as f:
            new_refs = json.load(f)["images"]
        moved = {old_refs[k]: new_refs[k] for k in old_refs if old_refs[k] != new_refs[k]}
        for old_ref, new_ref in moved.items():
            entry = [c for c in upd["changed_images"] if new_ref in c["refs_after"]][0]
            assert old_ref in entry["refs_before"]


def test_release_update_is_cached_apart(tmp_path):
    base = release.ensure_release(str(tmp_path), size="tiny", seed=5)
    upd = release.ensure_release(str(tmp_path), size="tiny", seed=5, changed=2)
    assert upd["release_dir"] != base["release_dir"]
    assert release.cache_key("5.0", "tiny", 5, "index", 2).endswith("-u2")
    assert upd["rpm"] != base["rpm"] and os.path.basename(upd["rpm"]).startswith("microshift-release-info-5.0.0-2.amsb5")
    with pytest.raises(release.ReleaseError):
        release.generate(str(tmp_path / "toomany"), size="tiny", seed=5, changed=1000, build_rpm_file=False)
    shutil.rmtree(str(tmp_path))
