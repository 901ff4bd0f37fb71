# Copyright: airgap.microshift contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""Loading images into a container storage: the plan (pure), layer sizes, storage names, and a real
load with skopeo into a throw-away vfs storage."""

from __future__ import annotations

import gzip
import os
import shutil

import pytest

from ansible_collections.airgap.microshift.plugins.module_utils import _containers_storage as cs
from ansible_collections.airgap.microshift.plugins.module_utils import _load
from ansible_collections.airgap.microshift.plugins.module_utils import _store
from ansible_collections.airgap.microshift.tests.unit.plugins.helpers.stores import OCI_LAYER, TAR_BASE, add_tar_image


@pytest.fixture
def store(tmp_path):
    path = str(tmp_path / "store")
    refs = [add_tar_image(path, "quay.io/example/one", TAR_BASE + [("top.bin", b"1" * 500)]),
            add_tar_image(path, "quay.io/example/two", TAR_BASE + [("top.bin", b"2" * 700)]),
            add_tar_image(path, "registry.example.com/app:v1", TAR_BASE[:1] + [("top.bin", b"t" * 300)])]
    return path, refs


def test_plan_reads_each_blob_once_for_the_platform(store):
    path, refs = store
    index = _store.read_index(path)
    plan = _load.plan(index, refs, "linux/amd64", held={})
    assert [image["ref"] for image in plan["to_load"]] == refs
    amd64 = {}
    for image in plan["images"]:
        entry = index["images"][image["ref"]]
        manifest = [m for m in entry["manifests"] if m["platform"] == "linux/amd64"][0]
        amd64[entry["digest"]] = entry["manifest_size"]
        amd64[manifest["digest"]] = manifest["size"]
        amd64.update((b["digest"], b["size"]) for b in manifest["blobs"])
    assert plan["blobs"] == amd64
    assert plan["bytes"] == sum(amd64.values()) == plan["unique_bytes"]
    # 3 indexes, 3 manifests, 3 configs; layers: base (in all three) and middle (in two) once, three tops.
    assert len(plan["blobs"]) == 3 * 3 + 5


def test_plan_skips_held_images_and_their_layers(store):
    path, refs = store
    index = _store.read_index(path)
    one = index["images"][refs[0]]["digest"]
    plan = _load.plan(index, refs, "linux/amd64", held={refs[0]: one})
    assert [image["ref"] for image in plan["present"]] == [refs[0]]
    two = plan["to_load"][0]
    # Only its own top layer is new; base and middle come from image one in the storage.
    assert len(two["new_layers"]) == 1
    assert all(d not in plan["blobs"] for d, _s, _t in plan["images"][0]["layers"])


def test_plan_names_a_tag_ref_twice_and_loads_it_when_only_the_tag_is_missing(store):
    path, refs = store
    index = _store.read_index(path)
    digest = index["images"][refs[2]]["digest"]
    names = cs.storage_names(refs[2], digest)
    assert names == ["registry.example.com/app@" + digest, "registry.example.com/app:v1"]
    plan = _load.plan(index, [refs[2]], "linux/amd64", held={names[0]: digest})
    assert plan["to_load"][0]["missing_names"] == [names[1]]
    # One copy, to the tag: the storage then resolves repo@digest to the same image.
    assert plan["to_load"][0]["load_name"] == names[1]
    # Every layer is held: nothing but the manifests and the config is read.
    assert plan["to_load"][0]["new_layers"] == {}


def test_plan_refuses_an_image_without_the_platform(store):
    path, refs = store
    with pytest.raises(_load.LoadError, match="has no linux/s390x manifest"):
        _load.plan(_store.read_index(path), refs[:1], "linux/s390x", held={})
    with pytest.raises(_load.LoadError, match="is not in the image source"):
        _load.plan(_store.read_index(path), ["quay.io/example/absent@sha256:" + "0" * 64], "linux/amd64", held={})


@pytest.mark.parametrize("driver, factor", [("overlay", 1), ("vfs", None)])
def test_storage_estimate_follows_the_driver(store, driver, factor):
    path, refs = store
    index = _store.read_index(path)
    sizes = {}
    for ref in refs:
        for manifest in index["images"][ref]["manifests"]:
            for blob in manifest["blobs"][1:]:
                sizes[blob["digest"]] = 1000
    plan = _load.plan(index, refs, "linux/amd64", held={}, driver=driver, unpacked=sizes)
    configs = sum(image["blobs"][image["config"]] for image in plan["to_load"])
    layers = plan["storage_bytes"] - configs
    if driver == "overlay":
        # 3 + 1 + 1 distinct chains (base, base+middle, base+middle+top1, base+middle+top2, base+top3) of 1000 bytes each
        assert layers == 5 * 1000
    else:
        # vfs keeps the whole tree below each layer: 1 + 2 + 3 + 3 + 2 thousand
        assert layers == 11 * 1000


def _reader(data):
    return lambda offset, length: data[offset:offset + length]


def test_unpacked_size_reads_the_gzip_trailer():
    data = gzip.compress(os.urandom(5000))
    assert _load.unpacked_size(_reader(data), len(data), OCI_LAYER) == 5000
    assert _load.unpacked_size(_reader(b"x" * 700), 700, "application/vnd.oci.image.layer.v1.tar") == 700
    assert _load.unpacked_size(_reader(b"x" * 700), 700, "application/octet-stream") is None
    # A source that cannot say (the blob is not there yet) leaves the estimate to the caller.
    assert _load.unpacked_size(lambda offset, length: None, len(data), OCI_LAYER) is None


def test_a_store_source_reads_sizes_strictly_and_refuses_a_link(store, tmp_path):
    path, refs = store
    source = _load.open_source([path], str(tmp_path / "staging"))
    index = _store.read_index(path)
    layer = [m for m in index["images"][refs[0]]["manifests"] if m["platform"] == "linux/amd64"][0]["blobs"][1]
    assert _load.unpacked_size(lambda o, n: source.read_range(layer["digest"], layer["size"], o, n), layer["size"], OCI_LAYER) > 0
    # A blob replaced by a symbolic link is not followed: no size is read from it.
    blob = _store.blob_path(path, layer["digest"])
    os.rename(blob, blob + ".real")
    os.symlink(blob + ".real", blob)
    assert source.read_range(layer["digest"], layer["size"], 0, 2) is None


def test_the_record_is_read_strictly_and_written_once(tmp_path):
    path = str(tmp_path / "record.json")
    empty = _load.read_record(path)
    assert empty["storages"] == {}
    empty["storages"]["/var/lib/containers/storage"] = {"quay.io/a/b@sha256:" + "1" * 64: "sha256:" + "1" * 64}
    assert _load.write_record(path, empty) is True
    assert _load.write_record(path, empty) is False
    assert _load.read_record(path) == empty
    with open(path, "w", encoding="utf-8") as handle:
        handle.write('{"kind": "x", "kind": "y"}')
    with pytest.raises(_load.LoadError, match="cannot be read .*twice.*move it away"):
        _load.read_record(path)


def test_check_space_names_the_path_and_the_bytes(tmp_path):
    with pytest.raises(_load.LoadError) as info:
        _load.check_space([(str(tmp_path / "storage"), 10 ** 18)], "loading 3 image(s)")
    message = str(info.value)
    assert str(tmp_path / "storage") in message and "needs %d bytes" % 10 ** 18 in message
    assert info.value.details["needed"] == 10 ** 18


def test_storage_spec_and_conf(tmp_path):
    conf = tmp_path / "storage.conf"
    conf.write_text('[storage]\ndriver = "vfs"  # comment\ngraphroot = "/srv/g"\n[storage.options]\ngraphroot = "/nope"\n')
    found = cs.read_storage_conf(environ={"CONTAINERS_STORAGE_CONF": str(conf)})
    assert found == {"driver": "vfs", "graphroot": "/srv/g"}
    default = cs.Storage(conf=found)
    assert default.spec() == "" and default.graphroot == "/srv/g" and default.driver == "vfs"
    explicit = cs.Storage("/srv/x", "/run/x", "overlay", conf={})
    assert explicit.transport_ref("quay.io/a@sha256:" + "1" * 64) == \
        "containers-storage:[overlay@/srv/x+/run/x]quay.io/a@sha256:" + "1" * 64
    with pytest.raises(cs.StorageError, match="cannot address"):
        cs.Storage("/srv/a:b", conf={})
    assert cs.oci_architecture("x86_64") == "amd64" and cs.oci_architecture("aarch64") == "arm64"


def test_skopeo_runs_against_the_storage_with_a_relaxed_collector_unless_told_otherwise(monkeypatch):
    seen = []

    def runner(argv, env=None):
        seen.append(dict((name, env.get(name)) for name in cs.GO_GC_ENV))
        return 0, b"{}", ""
    storage = cs.Storage("/srv/x", "/run/x", "overlay", conf={})
    monkeypatch.delenv("GOGC", raising=False)
    monkeypatch.delenv("GOMEMLIMIT", raising=False)
    cs.StorageTool("/usr/bin/skopeo", storage, runner=runner).manifest_digest("quay.io/a:b")
    monkeypatch.setenv("GOGC", "50")
    cs.StorageTool("/usr/bin/skopeo", storage, runner=runner).manifest_digest("quay.io/a:b")
    assert seen == [{"GOGC": "1000", "GOMEMLIMIT": "256MiB"}, {"GOGC": "50", "GOMEMLIMIT": "256MiB"}]


needs_skopeo = pytest.mark.skipif(shutil.which("skopeo") is None or os.geteuid() != 0,
                                  reason="a real load needs skopeo and root (containers-storage)")


@needs_skopeo
def test_real_load_into_a_vfs_storage_and_the_second_run_changes_nothing(store, tmp_path):
    path, refs = store
    storage = cs.Storage(str(tmp_path / "graph"), str(tmp_path / "run"), "vfs", conf={})
    tool = cs.StorageTool(shutil.which("skopeo"), storage)
    record = str(tmp_path / "record.json")

    def load(refs, check_mode=False, prune=False, source=None):
        return _load.Loader(tool, source or _load.open_source([path], str(tmp_path / "staging")), refs, "amd64",
                            record_path=record, check_mode=check_mode, prune=prune).run()

    planned = load(refs, check_mode=True)
    assert planned["changed"] and planned["loaded"] == refs and not os.path.exists(str(tmp_path / "graph"))
    first = load(refs)
    assert first["loaded"] == refs and first["verified"] == 3
    # The ref by tag was copied once, to its tag; both of its names resolve to its digest.
    entry = _store.read_index(path)["images"][refs[2]]
    amd64 = [m["digest"] for m in entry["manifests"] if m["platform"] == "linux/amd64"][0]
    by_digest, by_tag = [tool.manifest_digest(name) for name in cs.storage_names(refs[2], entry["digest"])]
    assert by_digest == entry["digest"] and by_tag in (entry["digest"], amd64)
    index = _store.read_index(path)
    for ref in refs:
        digest = index["images"][ref]["digest"]
        assert tool.manifest_digest(cs.storage_names(ref, digest)[0]) == digest
    again = load(refs)
    assert not again["changed"] and again["loaded"] == [] and again["bytes"] == 0
    # Pruning removes only what the record says was loaded and the list no longer names.
    pruned = load(refs[1:], prune=True)
    assert pruned["pruned"] == [refs[0]]
    assert tool.manifest_digest(cs.storage_names(refs[0], index["images"][refs[0]]["digest"])[0]) is None


@needs_skopeo
def test_real_load_fails_before_writing_when_a_blob_is_missing(store, tmp_path):
    path, refs = store
    index = _store.read_index(path)
    manifest = [m for m in index["images"][refs[0]]["manifests"] if m["platform"] == "linux/amd64"][0]
    os.unlink(_store.blob_path(path, manifest["blobs"][-1]["digest"]))
    storage = cs.Storage(str(tmp_path / "graph"), str(tmp_path / "run"), "vfs", conf={})
    loader = _load.Loader(cs.StorageTool(shutil.which("skopeo"), storage), _load.open_source([path], str(tmp_path / "s")),
                          refs, "amd64", record_path=None)
    with pytest.raises(_load.LoadError, match="lacks 1 blob"):
        loader.run()
    assert not os.path.exists(str(tmp_path / "graph"))
