# Copyright: airgap.microshift contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""image_download against a real registry (``local_registry``: docker-registry with TLS and
htpasswd on 127.0.0.1) with real skopeo. Each test pushes its own images under its own namespace."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import subprocess

from ansible_collections.airgap.microshift.plugins.module_utils import _progress as progress
from ansible_collections.airgap.microshift.plugins.module_utils import _store as store_mod
from ansible_collections.airgap.microshift.plugins.modules import image_download
from ansible_collections.airgap.microshift.tests.unit.plugins.helpers.modules import run_main

SKOPEO = shutil.which("skopeo")


def run_module(capsys, args, check_mode=False):
    """main() with ``args``; returns (failed, result)."""
    result = run_main(image_download, capsys, args, check_mode)[0]
    return bool(result.get("failed")), result


def _args(registry, store, images, **extra):
    args = {"images": images, "store": store, "authfile": registry.authfile, "cert_dir": registry.cert_dir,
            "parallel": 4, "retries": 2, "retry_delay": 0.2, "free_space_margin": 0}
    args.update(extra)
    return args


def _store_files(store):
    blobs_dir = os.path.join(store, "blobs", "sha256")
    return dict(("sha256:" + name, os.path.getsize(os.path.join(blobs_dir, name))) for name in os.listdir(blobs_dir))


def _tree(path):
    found = {}
    for root, dummy, files in os.walk(path):
        for name in files:
            full = os.path.join(root, name)
            found[os.path.relpath(full, path)] = os.stat(full).st_mtime_ns
    return found


def _skopeo_inspect_store(store, layout):
    out = subprocess.run([SKOPEO, "inspect", "--raw", "--shared-blob-dir", os.path.join(store, "blobs"),
                          "oci:" + os.path.join(store, layout)], check=True, stdout=subprocess.PIPE).stdout
    return "sha256:" + hashlib.sha256(out).hexdigest()


def test_download_dedups_records_and_is_idempotent(local_registry, synthetic_images, tmp_path, capsys):
    pushed = synthetic_images.push_set("dl-main")
    refs = [image["ref"] for image in pushed] + [pushed[0]["tag_ref"]]
    store = str(tmp_path / "store")
    expected = {}
    for image in pushed:
        expected.update(image["blobs"])

    # check mode: the plan, nothing written
    failed, planned = run_module(capsys, _args(local_registry, store, refs), check_mode=True)
    assert not failed and planned["changed"]
    assert not os.path.exists(store)
    assert planned["plan"]["unique_bytes"] == sum(expected.values())
    assert planned["plan"]["bytes_to_fetch"] == sum(expected.values())
    assert planned["plan"]["logical_bytes"] == sum(sum(i["blobs"].values()) for i in pushed) + sum(pushed[0]["blobs"].values())
    assert [i["status"] for i in planned["images"]] == ["planned"] * 5

    offset = local_registry.log_offset()
    failed, result = run_module(capsys, _args(local_registry, store, refs, verify=True))
    assert not failed, result["msg"] if failed else ""
    assert result["changed"]
    assert [i["status"] for i in result["images"]] == ["fetched"] * 5
    summary = result["summary"]
    assert summary["images_fetched"] == 5 and summary["images_failed"] == 0
    assert summary["unique_bytes"] == sum(expected.values())
    assert summary["dedup_ratio"] > 2

    # every blob exactly once: the store holds exactly the unique blobs, nothing more
    assert _store_files(store) == expected
    # each layer crossed the wire once (configs of docker-format images are read twice: see the docs)
    gets = local_registry.blob_gets(offset, "dl-main/")
    assert len(gets) == len(set(gets)) + 2  # the docker-format image's two configs are read twice
    assert set(gets) <= set(expected)

    index = json.loads((tmp_path / "store" / "store.json").read_text())
    assert index["format"] == 1
    assert set(index["images"]) == set(refs)
    assert index["blobs"] == expected
    for image in pushed:
        entry = index["images"][image["ref"]]
        assert entry["digest"] == image["digest"]
        assert entry["media_type"] == image["media_type"]
        assert entry["size"] == sum(image["blobs"].values())
        assert all(m["platform"] and m["platform"].startswith("linux/") for m in entry["manifests"])
        # skopeo reads every image back from the store with its original digest
        assert _skopeo_inspect_store(store, entry["layout"]) == image["digest"]
    tag_entry = index["images"][pushed[0]["tag_ref"]]
    assert tag_entry["digest"] == pushed[0]["digest"] and tag_entry["layout"].endswith("/tag-v1")

    # copy the docker-format image back to a new repository: the digest is preserved
    docker_image = [i for i in pushed if "docker" in i["media_type"]][0]
    entry = index["images"][docker_image["ref"]]
    subprocess.run([SKOPEO, "copy", "--all", "--preserve-digests", "--quiet", "--src-shared-blob-dir", os.path.join(store, "blobs"),
                    "--dest-authfile", local_registry.authfile, "--dest-cert-dir", local_registry.cert_dir,
                    "oci:" + os.path.join(store, entry["layout"]), "docker://%s/dl-main-back/router:v1" % local_registry.host], check=True)
    body, media_type = local_registry.manifest("dl-main-back/router", "v1")
    assert "sha256:" + hashlib.sha256(body).hexdigest() == docker_image["digest"]

    # second run: nothing fetched, nothing touched
    before = _tree(store)
    offset = local_registry.log_offset()
    failed, again = run_module(capsys, _args(local_registry, store, refs))
    assert not failed and not again["changed"]
    assert [i["status"] for i in again["images"]] == ["skipped"] * 5
    assert again["summary"]["bytes_fetched"] == 0
    assert local_registry.requests_since(offset, path_contains="/dl-main/") == []
    assert _tree(store) == before

    # check mode again: nothing to do
    failed, planned = run_module(capsys, _args(local_registry, store, refs), check_mode=True)
    assert not failed and not planned["changed"] and planned["plan"]["bytes_to_fetch"] == 0


def test_missing_image_with_keep_going_stores_the_others(local_registry, synthetic_images, tmp_path, capsys):
    good = synthetic_images.push("good", "dl-keep/good", ["amd64"], [("g1", 4096)])
    other = synthetic_images.push("other", "dl-keep/other", ["amd64", "arm64"], [("o-{arch}", 4096)])
    missing = "%s/dl-keep/absent@sha256:%s" % (local_registry.host, "0" * 64)
    store = str(tmp_path / "store")
    failed, result = run_module(capsys, _args(local_registry, store, [good["ref"], missing, other["ref"]], keep_going=True))
    assert failed and result["changed"]
    assert [i["status"] for i in result["images"]] == ["fetched", "failed", "fetched"]
    assert missing in result["msg"] and "manifest unknown" in result["msg"]
    assert result["images"][1]["error"].startswith(missing)
    index = store_mod.read_index(store)
    assert set(index["images"]) == {good["ref"], other["ref"]}


def test_wrong_password_fails_at_once_naming_the_image(local_registry, synthetic_images, tmp_path, capsys):
    image = synthetic_images.push("secret", "dl-auth/secret", ["amd64"], [("s1", 2048)])
    bad = local_registry.write_authfile(str(tmp_path / "bad.json"), "wrong-password")
    store = str(tmp_path / "store")
    offset = local_registry.log_offset()
    failed, result = run_module(capsys, _args(local_registry, store, [image["ref"]], authfile=bad, retries=5, retry_delay=5))
    assert failed and not result["changed"]
    assert image["ref"] in result["msg"] and "401" in result["msg"]
    # a permanent error is not retried: the registry refused the credentials for one manifest request
    refused = local_registry.requests_since(offset, path_contains="dl-auth/secret/manifests", message="error authenticating user")
    assert len(refused) == 1
    assert not os.path.exists(store)


def test_untrusted_certificate_is_named(local_registry, synthetic_images, tmp_path, capsys):
    image = synthetic_images.push("tls", "dl-tls/tls", ["amd64"], [("t1", 2048)])
    args = _args(local_registry, str(tmp_path / "store"), [image["ref"]])
    del args["cert_dir"]
    failed, result = run_module(capsys, args)
    assert failed and "x509" in result["msg"] and image["ref"] in result["msg"]


def test_free_space_failure_writes_nothing(local_registry, synthetic_images, tmp_path, capsys):
    image = synthetic_images.push("big", "dl-space/big", ["amd64"], [("b1", 4096)])
    store = str(tmp_path / "store")
    failed, result = run_module(capsys, _args(local_registry, store, [image["ref"]], free_space_margin=2 ** 62))
    assert failed
    assert "not enough free space for store %s" % store in result["msg"] and "free" in result["msg"]
    assert not os.path.exists(store)


def test_the_default_store_path_on_a_fresh_host(local_registry, synthetic_images, tmp_path, capsys):
    # The role's default, /var/lib/airgap-microshift/store, under a root where not even var/ exists yet.
    image = synthetic_images.push("fresh", "dl-fresh/fresh", ["amd64"], [("f1", 4096)])
    root = tmp_path / "fresh-host"
    root.mkdir()
    store = str(root / "var" / "lib" / "airgap-microshift" / "store")
    failed, planned = run_module(capsys, _args(local_registry, store, [image["ref"]]), check_mode=True)
    assert not failed and planned["changed"] and os.listdir(str(root)) == []
    failed, result = run_module(capsys, _args(local_registry, store, [image["ref"]]))
    assert not failed, result.get("msg")
    assert result["images"][0]["status"] == "fetched" and _store_files(store) == image["blobs"]
    modes = dict((path, stat.S_IMODE(os.stat(str(root / path)).st_mode))
                 for path in ("var", "var/lib", "var/lib/airgap-microshift", "var/lib/airgap-microshift/store"))
    assert modes == {"var": 0o755, "var/lib": 0o755, "var/lib/airgap-microshift": 0o755, "var/lib/airgap-microshift/store": 0o750}
    # a parent that is a file is named, and nothing is made
    (root / "blocked").write_text("")
    failed, result = run_module(capsys, _args(local_registry, str(root / "blocked" / "store"), [image["ref"]]))
    assert failed and result["msg"] == "Option store names %s, which cannot be created: %s is not a directory." % (
        root / "blocked" / "store", root / "blocked")


def test_bad_reference_and_missing_skopeo_fail_clearly(local_registry, tmp_path, capsys):
    failed, result = run_module(capsys, _args(local_registry, str(tmp_path / "s"), ["not a ref"]))
    assert failed and result["msg"].startswith("Option images: ")
    failed, result = run_module(capsys, _args(local_registry, str(tmp_path / "s"), ["quay.io/a/b:1"],
                                              skopeo_path=str(tmp_path / "nope")))
    assert failed and result["msg"] == "Option executable names %s, which is not an executable file." % (tmp_path / "nope")
    # skopeo would read everything after the ':' of oci:<path>:<ref> as the image name.
    failed, result = run_module(capsys, _args(local_registry, str(tmp_path / "a:b"), ["quay.io/a/b:1"]))
    assert failed and "contains ':'" in result["msg"] and not os.path.exists(str(tmp_path / "a:b"))


def test_interrupted_image_is_completed_by_the_next_run(local_registry, synthetic_images, tmp_path, capsys):
    image = synthetic_images.push("resume", "dl-resume/resume", ["amd64", "arm64"], [("r-{arch}", 8192), ("r2", 4096)])
    store = str(tmp_path / "store")
    failed, result = run_module(capsys, _args(local_registry, store, [image["ref"]]))
    assert not failed
    # simulate a crash: one layer gone, the index still lists the image
    layer = sorted(d for d, s in image["blobs"].items() if s > 4000)[0]
    os.unlink(store_mod.blob_path(store, layer))
    failed, result = run_module(capsys, _args(local_registry, store, [image["ref"]]))
    assert not failed and result["changed"] and result["images"][0]["status"] == "fetched"
    assert result["summary"]["bytes_fetched"] == image["blobs"][layer]
    assert _store_files(store) == image["blobs"]


def test_progress_file_names_every_image_then_the_end(local_registry, synthetic_images, tmp_path, capsys):
    pushed = synthetic_images.push_set("dl-progress")
    refs = [image["ref"] for image in pushed]
    store = str(tmp_path / "store")
    path = str(tmp_path / "store" / ".progress")
    failed, result = run_module(capsys, _args(local_registry, store, refs[:2], progress_file=path))
    assert not failed
    start, items, end = progress.parse(open(path).read())
    assert start == {"count": 2, "asked": 2} and end == {"ok": True, "message": ""}
    assert sorted(i["name"] for i in items) == sorted(refs[:2]) and [i["count"] for i in items] == [1, 2]
    assert {i["status"] for i in items} == {"fetched"}
    assert sum(i["bytes"] for i in items) == result["summary"]["bytes_fetched"]
    # the images already complete have no line; a bad ref ends the file with the module's message
    ghost = refs[0].rsplit("@", 1)[0] + "@sha256:" + "d" * 64
    failed, result = run_module(capsys, _args(local_registry, store, refs + [ghost], progress_file=path))
    assert failed
    start, items, end = progress.parse(open(path).read())
    assert start == {"count": 3, "asked": 5}
    assert {i["name"]: i["status"] for i in items}[ghost] == "failed" and len(items) == 3
    assert end == {"ok": False, "message": result["msg"]}
    # argument errors end the file too
    failed, result = run_module(capsys, _args(local_registry, store, ["not a ref"], progress_file=path))
    assert failed and progress.parse(open(path).read()) == (None, [], {"ok": False, "message": result["msg"]})
    # check mode writes no progress file
    os.unlink(path)
    failed, result = run_module(capsys, _args(local_registry, store, refs, progress_file=path), check_mode=True)
    assert not failed and not os.path.exists(path)
