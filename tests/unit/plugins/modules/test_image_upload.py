# Copyright: airgap.microshift contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""image_upload against real registries: a TLS + htpasswd mirror and a plain source, both
``docker-registry serve`` on 127.0.0.1, and real skopeo.

Images are generated here (random layers, some shared between images, one multi-arch index),
pushed to the source registry, then copied into an image store (``--dest-shared-blob-dir``, as the
download does) or into a ``dir:`` tree (as the manual procedure does). Each test works under its
own repository prefix with its own random blobs, so tests do not see each other's pushes.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import random
import re
import shutil
import subprocess
import sys

import pytest


from ansible_collections.airgap.microshift.plugins.modules import image_upload
from ansible_collections.airgap.microshift.tests.unit.plugins.helpers.images import SyntheticImages
from ansible_collections.airgap.microshift.tests.unit.plugins.helpers.modules import run_main
from ansible_collections.airgap.microshift.tests.unit.plugins.helpers.processes import run as _run
from ansible_collections.airgap.microshift.tests.unit.plugins.helpers.registry import (
    NEEDS_TOOLS, REGISTRY_TOOLS, SKOPEO, LocalRegistry,
)

pytestmark = pytest.mark.skipif(not REGISTRY_TOOLS, reason=NEEDS_TOOLS)

TIMESTAMP_TAG = re.compile(r"^mirror-[0-9]{12}-[0-9]+$")


@pytest.fixture(scope="module")
def upload_registry(tmp_path_factory):
    """The mirror (TLS + htpasswd), with ``source`` (a plain HTTP registry the images come from) and
    ``bad_authfile`` (a wrong password for the mirror)."""
    base = str(tmp_path_factory.mktemp("upload-registries"))
    mirror = LocalRegistry(os.path.join(base, "mirror"), username="mirroruser", password="mirrorpass")
    mirror.source = LocalRegistry(os.path.join(base, "source"), auth=None, tls=False)
    try:
        mirror.start()
        mirror.source.start()
        mirror.bad_authfile = mirror.write_authfile(os.path.join(base, "bad-auth.json"), "wrong-password")
        yield mirror
    finally:
        mirror.source.stop()
        mirror.stop()


def _image_set(registries, tmp_path, prefix):
    unique = "%s-%d" % (prefix, random.SystemRandom().randint(0, 10 ** 9))
    return SyntheticImages(registries.source, str(tmp_path), seed=unique, prefix=unique)


def _small_set(registries, tmp_path, prefix):
    """Three images: a two-arch index, two single-arch images; all share a base layer."""
    images = _image_set(registries, tmp_path, prefix)
    images.add("multi", ["amd64", "arm64"], [("base", 60000)])
    images.add("app", ["amd64"], [("base", 60000), ("lib", 30000)])
    images.add("tool", ["amd64"], [("base", 60000), ("lib", 30000)], by="tag", tag="1.2")
    return images


# --------------------------------------------------------------------------- running the module

def run_module(capsys, args, check_mode=False):
    """main() with ``args``; returns (failed, result)."""
    result = run_main(image_upload, capsys, args, check_mode)[0]
    return bool(result.get("failed")), result


def _args(registries, store, **extra):
    args = {"store": store, "mirror": registries.host, "authfile": registries.authfile, "cert_dir": registries.cert_dir,
            "retry_delay": 0.2}
    args.update(extra)
    return args


def _assert_served_identically(registries, store_index, store, mapping):
    """Every manifest of every image served by digest, and its blobs byte-identical to the store's."""
    for entry in mapping:
        repository, digest = entry["mirror"].split("@")
        stored = store_index["images"][entry["source"]]
        assert digest == stored["digest"]
        assert registries.served(repository, digest) is not None, entry
        for manifest in stored["manifests"]:
            body = registries.served(repository, manifest["digest"])
            assert body is not None and "sha256:" + hashlib.sha256(body).hexdigest() == manifest["digest"]


def test_store_upload_check_apply_apply_check(upload_registry, tmp_path, capsys):
    images = _small_set(upload_registry, tmp_path, "rhythm")
    store = images.build_store(str(tmp_path / "store"))
    mapping_file = str(tmp_path / "mapping.json")
    args = _args(upload_registry, store, mapping_file=mapping_file)
    prefix = "%s/%s" % (upload_registry.host, images.prefix)

    # Check mode: a plan with tags, and no write of any kind to the registry.
    offset = upload_registry.log_offset()
    failed, planned = run_module(capsys, args, check_mode=True)
    assert not failed and planned["changed"]
    assert upload_registry.writes_since(offset) == []
    assert not os.path.exists(mapping_file)
    assert [entry["status"] for entry in planned["mapping"]] == ["pushed"] * 3
    planned_tags = [entry["tag"] for entry in planned["mapping"]]
    assert all(TIMESTAMP_TAG.match(tag) for tag in planned_tags)
    assert sorted(int(tag.rsplit("-", 1)[1]) for tag in planned_tags) == [1, 2, 3]
    for name in ("multi", "app", "tool"):
        assert upload_registry.tags("%s/%s" % (prefix, name)) == []

    # Apply: every image pushed under one time stamp, counters in source order.
    failed, result = run_module(capsys, args)
    assert not failed, result["msg"]
    assert result["changed"] and result["source_format"] == "store"
    assert result["summary"]["pushed"] == 3 and result["summary"]["skipped"] == 0 and result["summary"]["failed"] == 0
    assert result["summary"]["bytes"] > 0
    mapping = result["mapping"]
    assert [entry["source"] for entry in mapping] == sorted(images.refs.values())
    stamps = set(entry["tag"].rsplit("-", 1)[0] for entry in mapping)
    assert len(stamps) == 1
    assert [entry["tag"].rsplit("-", 1)[1] for entry in mapping] == ["1", "2", "3"]
    for entry in mapping:
        name = entry["source"].split("/")[2].split(":")[0].split("@")[0]
        assert entry["mirror"] == "%s/%s@%s" % (prefix, name, images.store_index["images"][entry["source"]]["digest"])
        assert upload_registry.tags("%s/%s" % (prefix, name)) == [entry["tag"]]
    _assert_served_identically(upload_registry, images.store_index, store, mapping)
    with open(mapping_file) as handle:
        assert json.load(handle) == mapping
    assert oct(os.stat(mapping_file).st_mode & 0o777) == "0o644"

    # Blobs byte-identical: copy the multi-arch image back from the mirror and compare with the store.
    back = str(tmp_path / "back")
    multi = [entry for entry in mapping if "/multi@" in entry["source"]][0]
    _run([SKOPEO, "copy", "--quiet", "--all", "--preserve-digests", "--src-authfile", upload_registry.authfile,
          "--src-cert-dir", upload_registry.cert_dir, "docker://%s" % multi["mirror"], "dir:%s" % back])
    compared = 0
    for name in os.listdir(back):
        if re.match(r"^[0-9a-f]{64}$", name):
            with open(os.path.join(back, name), "rb") as fetched, open(os.path.join(store, "blobs", "sha256", name), "rb") as kept:
                assert fetched.read() == kept.read()
            compared += 1
    assert compared == 5  # the shared base layer, and an own layer and a config per architecture

    # Apply again: nothing pushed, no new tag, no registry write.
    offset = upload_registry.log_offset()
    failed, again = run_module(capsys, args)
    assert not failed and not again["changed"]
    assert [entry["status"] for entry in again["mapping"]] == ["skipped"] * 3
    assert [entry["tag"] for entry in again["mapping"]] == [None] * 3
    assert upload_registry.writes_since(offset) == []
    for entry in mapping:
        name = entry["source"].split("/")[2].split(":")[0].split("@")[0]
        assert upload_registry.tags("%s/%s" % (prefix, name)) == [entry["tag"]]
    with open(mapping_file) as handle:
        assert [entry["status"] for entry in json.load(handle)] == ["skipped"] * 3

    # Check mode again: nothing to do.
    failed, final = run_module(capsys, args, check_mode=True)
    assert not failed and not final["changed"] and final["summary"]["skipped"] == 3


@pytest.mark.parametrize("policy", ["digest", "source", "none"])
def test_tag_policies(upload_registry, tmp_path, capsys, policy):
    images = _image_set(upload_registry, tmp_path, "policy-" + policy)
    by_digest, digest_a = images.add("bydigest", ["amd64"], [("base", 20000)])
    by_tag, digest_b = images.add("bytag", ["amd64"], [("base", 20000)], by="tag", tag="4.18.0")
    both, digest_c = images.add("both", ["amd64", "arm64"], [("base", 20000)], by="both", tag="v2")
    store = images.build_store(str(tmp_path / "store"))
    failed, result = run_module(capsys, _args(upload_registry, store, tag_policy=policy, parallel=2))
    assert not failed, result["msg"]
    tags = dict((entry["source"], entry["tag"]) for entry in result["mapping"])
    expected = {
        "digest": {by_digest: "sha256-" + digest_a[7:], by_tag: "sha256-" + digest_b[7:], both: "sha256-" + digest_c[7:]},
        "source": {by_digest: "sha256-" + digest_a[7:], by_tag: "4.18.0", both: "v2"},
        "none": {by_digest: None, by_tag: None, both: None},
    }[policy]
    assert tags == expected
    for entry in result["mapping"]:
        repository, digest = entry["mirror"].split("@")
        assert upload_registry.served(repository, digest) is not None
        assert upload_registry.tags(repository) == ([entry["tag"]] if entry["tag"] else [])

    # A digest policy is idempotent in tags too: the second run skips everything.
    failed, again = run_module(capsys, _args(upload_registry, store, tag_policy=policy))
    assert not failed and not again["changed"]


def test_namespace_and_images_filter(upload_registry, tmp_path, capsys):
    images = _small_set(upload_registry, tmp_path, "namespace")
    store = images.build_store(str(tmp_path / "store"))
    wanted = [images.refs["app"], images.refs["multi"]]
    failed, result = run_module(capsys, _args(upload_registry, store, namespace="/edge/site1/", images=wanted))
    assert not failed, result["msg"]
    assert [entry["source"] for entry in result["mapping"]] == sorted(wanted)
    for entry in result["mapping"]:
        repository, digest = entry["mirror"].split("@")
        assert repository.startswith("%s/edge/site1/%s/" % (upload_registry.host, images.prefix))
        assert upload_registry.served(repository, digest) is not None
        # Nothing lands outside the namespace.
        assert upload_registry.served(repository.replace("/edge/site1", ""), digest) is None
    assert upload_registry.tags("%s/edge/site1/%s/tool" % (upload_registry.host, images.prefix)) == []

    failed, result = run_module(capsys, _args(upload_registry, store, images=["quay.io/not/there:1"]))
    assert failed and "quay.io/not/there:1" in result["msg"]


def test_dir_tree_from_the_manual_procedure(upload_registry, tmp_path, capsys):
    images = _small_set(upload_registry, tmp_path, "dirtree")
    tree = images.build_dir_tree(str(tmp_path / "microshift-containers"))
    store = images.build_store(str(tmp_path / "store"))  # only to know the digests and manifests
    multi_dir = os.path.join(tree, images.refs["multi"].split("/", 1)[1])
    assert sorted(name for name in os.listdir(multi_dir) if name.endswith(".manifest.json")) != []

    failed, result = run_module(capsys, _args(upload_registry, tree, tag_policy="source"))
    assert not failed, result["msg"]
    assert result["source_format"] == "dir"
    by_source = dict((entry["source"], entry) for entry in result["mapping"])
    assert sorted(by_source) == sorted(ref.split("/", 1)[1] for ref in images.refs.values())
    translated = [dict(entry, source="%s/%s" % (upload_registry.source.host, entry["source"])) for entry in result["mapping"]]
    _assert_served_identically(upload_registry, images.store_index, store, translated)
    assert by_source[images.refs["tool"].split("/", 1)[1]]["tag"] == "1.2"

    # The same images from the store are now skipped: both sources agree on the mirror repos.
    failed, again = run_module(capsys, _args(upload_registry, store, source_format="auto"))
    assert not failed and not again["changed"] and again["source_format"] == "store"


def test_wrong_password_fails_at_once_naming_the_image(upload_registry, tmp_path, capsys):
    images = _image_set(upload_registry, tmp_path, "badauth")
    ref, dummy = images.add("only", ["amd64"], [("base", 10000)])
    store = images.build_store(str(tmp_path / "store"))
    offset = upload_registry.log_offset()
    args = _args(upload_registry, store, authfile=upload_registry.bad_authfile, retries=5, retry_delay=30,
                 mapping_file=str(tmp_path / "mapping.json"))
    failed, result = run_module(capsys, args)
    assert failed
    assert ref in result["msg"] and "unauthorized" in result["msg"].lower()
    assert "attempts" not in result["msg"]
    assert [entry["status"] for entry in result["mapping"]] == ["failed"]
    assert upload_registry.writes_since(offset) == []
    with open(str(tmp_path / "mapping.json")) as handle:
        assert json.load(handle)[0]["status"] == "failed"


def test_untrusted_certificate_fails_clearly(upload_registry, tmp_path, capsys):
    images = _image_set(upload_registry, tmp_path, "x509")
    ref, dummy = images.add("only", ["amd64"], [("base", 10000)])
    store = images.build_store(str(tmp_path / "store"))
    args = _args(upload_registry, store, retries=5, retry_delay=30)
    del args["cert_dir"]
    failed, result = run_module(capsys, args)
    assert failed and ref in result["msg"] and "x509" in result["msg"]


def test_verify_lists_manifests_the_mirror_does_not_serve(upload_registry, tmp_path, capsys):
    images = _image_set(upload_registry, tmp_path, "verify")
    images.add("multi", ["amd64", "arm64"], [("base", 10000)])
    store = images.build_store(str(tmp_path / "store"))
    failed, result = run_module(capsys, _args(upload_registry, store))
    assert not failed, result["msg"]
    entry = result["mapping"][0]
    repository = entry["mirror"].split("@")[0]
    arm64 = [m["digest"] for m in images.store_index["images"][entry["source"]]["manifests"] if m["platform"] == "linux/arm64"][0]
    # Make the registry forget one per-arch manifest (as a partial garbage collection would).
    link = os.path.join(upload_registry.data_dir, "docker", "registry", "v2", "repositories",
                        repository.split("/", 1)[1], "_manifests", "revisions", "sha256", arm64[7:])
    shutil.rmtree(link)
    assert upload_registry.served(repository, arm64) is None

    # A rerun trusts the top-level digest of images already there...
    failed, result = run_module(capsys, _args(upload_registry, store))
    assert not failed and not result["changed"], result.get("msg")
    # ...and verify=all checks every manifest of them.
    failed, result = run_module(capsys, dict(_args(upload_registry, store), verify="all"))
    assert failed
    assert result["missing_manifests"] == ["%s@%s" % (repository, arm64)]
    assert "%s@%s" % (repository, arm64) in result["msg"]


def test_shared_blobs_are_sent_once_with_parallel_pushes(upload_registry, tmp_path, capsys):
    """Eight images, four of them multi-arch, all sharing a big base layer, half of them a middle layer."""
    images = _image_set(upload_registry, tmp_path, "sharing")
    for number in range(8):
        layers = [("base", 400000)] + ([("middle", 200000)] if number % 2 else [])
        images.add("img%d" % number, ["amd64", "arm64"] if number < 4 else ["amd64"], layers)
    store = images.build_store(str(tmp_path / "store"))
    offset = upload_registry.log_offset()
    failed, result = run_module(capsys, _args(upload_registry, store, parallel=4))
    assert not failed, result["msg"]
    assert result["summary"]["pushed"] == 8

    # Every finished blob upload is a PUT .../blobs/uploads/<id>?...digest=sha256%3A<hex>.
    uploads = {}
    mounts = 0
    for method, path in upload_registry.requests_since(offset):
        match = re.search(r"/blobs/uploads/[^?]+\?.*digest=sha256%3A([0-9a-f]{64})", path)
        if method == "PUT" and match:
            uploads["sha256:" + match.group(1)] = uploads.get("sha256:" + match.group(1), 0) + 1
        if method == "POST" and "mount=" in path:
            mounts += 1
    assert uploads and max(uploads.values()) == 1, uploads
    sent = sum(images.blob_sizes[digest] for digest in uploads)
    logical = sum(entry["size"] for entry in images.store_index["images"].values())
    unique = sum(images.store_index["blobs"].values())
    assert result["summary"]["bytes"] == sent
    assert sent <= unique < logical
    assert mounts > 0
    print("\nshared-blob upload: %d images, logical %d bytes, unique %d bytes, sent %d bytes in %d blob uploads, %d mounts"
          % (len(images.refs), logical, unique, sent, len(uploads), mounts))


def _corrupt_largest_layer(images, store, ref):
    """Flip one byte of the image's largest layer in the store (same size): a medium that went bad."""
    blobs = [blob for manifest in images.store_index["images"][ref]["manifests"] for blob in manifest["blobs"]]
    layer = max(blobs, key=lambda blob: blob["size"])["digest"]
    path = os.path.join(store, "blobs", "sha256", layer[7:])
    with open(path, "r+b") as handle:
        handle.seek(1000)
        byte = handle.read(1)
        handle.seek(1000)
        handle.write(bytes([byte[0] ^ 0xFF]))
    return layer


def test_a_corrupt_blob_names_the_blob_and_why(upload_registry, tmp_path, capsys):
    images = _image_set(upload_registry, tmp_path, "corrupt")
    ref, dummy = images.add("only", ["amd64"], [("big", 300000)])
    store = images.build_store(str(tmp_path / "store"))
    layer = _corrupt_largest_layer(images, store, ref)
    failed, result = run_module(capsys, _args(upload_registry, store, retries=2, retry_delay=0.01))
    assert failed
    # skopeo's reason survives: which blob, that it does not match its digest, what it hashes to...
    assert result["msg"].startswith("Pushing %s to " % ref)
    assert "blob %s does not match its digest (its content hashes to sha256:" % layer in result["msg"]
    assert "Digest did not match" in result["msg"]
    # ...while the upload URL's state token is cut away
    assert "_state" not in result["msg"] and "?" not in result["msg"]
    assert result["failures"] == [result["msg"]]


def test_keep_going_false_names_the_image_that_failed_first(upload_registry, tmp_path, capsys):
    images = _image_set(upload_registry, tmp_path, "culprit")
    # Nothing shared: the largest push goes first, so with one push at a time the corrupt image
    # fails before the small one (whose name sorts first) is ever tried.
    small, dummy = images.add("aaa", ["amd64"], [("small", 1000)])
    big, dummy = images.add("zzz", ["amd64"], [("big", 300000)])
    store = images.build_store(str(tmp_path / "store"))
    layer = _corrupt_largest_layer(images, store, big)
    offset = upload_registry.log_offset()
    failed, result = run_module(capsys, _args(upload_registry, store, parallel=1, keep_going=False))
    assert failed
    statuses = dict((entry["source"], entry["status"]) for entry in result["mapping"])
    assert statuses == {small: "not_started", big: "failed"}
    # The culprit and its own error come first; the image never tried is not called a failure.
    assert result["msg"].startswith("Pushing %s to " % big)
    assert layer in result["msg"]
    assert result["msg"].endswith("1 image(s) were not started (keep_going is false): %s." % small)
    assert len(result["failures"]) == 1 and result["failures"][0].startswith("Pushing %s to " % big)
    assert result["summary"]["failed"] == 1 and result["summary"]["not_started"] == 1 and result["summary"]["pushed"] == 0
    # and it really was never tried
    assert not [path for method, path in upload_registry.requests_since(offset) if "/aaa/" in path and method != "GET"]


def test_bad_options_fail_clearly(upload_registry, tmp_path, capsys):
    failed, result = run_module(capsys, {"store": str(tmp_path), "mirror": "not a host"})
    assert failed and "mirror" in result["msg"]
    failed, result = run_module(capsys, {"store": str(tmp_path / "nowhere"), "mirror": upload_registry.host})
    assert failed and "nowhere" in result["msg"]
    failed, result = run_module(capsys, {"store": str(tmp_path), "mirror": upload_registry.host})
    assert failed and "No image directory" in result["msg"]
    failed, result = run_module(capsys, {"store": str(tmp_path), "mirror": upload_registry.host,
                                         "authfile": str(tmp_path / "missing.json")})
    assert failed and "missing.json" in result["msg"]


# --------------------------------------------------------------------------- the role

def _collections_path():
    # .../ansible_collections/airgap/microshift/plugins/modules/image_upload.py -> the folder holding ansible_collections
    path = os.path.abspath(image_upload.__file__)
    for dummy in range(6):
        path = os.path.dirname(path)
    return path


def _run_playbook(tmp_path, name, play_vars):
    playbook = tmp_path / ("%s.yml" % name)
    playbook.write_text(json.dumps([{
        "name": "Upload the store",
        "hosts": "localhost",
        "gather_facts": False,
        "vars": play_vars,
        "tasks": [
            {"name": "Run the upload role", "ansible.builtin.include_role": {"name": "airgap.microshift.upload"}},
            {"name": "Save the mapping fact", "ansible.builtin.copy": {
                "content": "{{ upload_mapping | to_json }}", "dest": str(tmp_path / ("%s-fact.json" % name)), "mode": "0644"}},
        ],
    }]))
    env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=_collections_path(), ANSIBLE_NOCOLOR="1", ANSIBLE_FORCE_COLOR="0",
               ANSIBLE_LOCAL_TEMP=str(tmp_path / "ansible-tmp"), ANSIBLE_HOME=str(tmp_path / "ansible-home"))
    result = subprocess.run(
        [sys.executable, "-m", "ansible", "playbook", "-i", "localhost,", "-c", "local",
         "-e", "ansible_python_interpreter=%s" % sys.executable, str(playbook)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, universal_newlines=True, env=env, check=False)
    return result.returncode, result.stdout


def _controller_available():
    try:
        return importlib.util.find_spec("ansible.cli") is not None and importlib.util.find_spec("ansible.__main__") is not None
    except ImportError:
        return False


# The module-code run on Python 3.9 only has ansible's module_utils: the controller needs a newer Python.
@pytest.mark.skipif(not _controller_available(), reason="the ansible-core controller does not run on this Python")
def test_role_upload(upload_registry, tmp_path):
    images = _small_set(upload_registry, tmp_path, "role")
    store = images.build_store(str(tmp_path / "store"))
    play_vars = {"upload_store": store, "upload_mirror": upload_registry.host, "upload_namespace": "role",
                 "upload_authfile": upload_registry.authfile, "upload_cert_dir": upload_registry.cert_dir,
                 "upload_tag_policy": "digest", "upload_parallel": 2,
                 "upload_mapping_file": str(tmp_path / "mapping.json")}
    rc, out = _run_playbook(tmp_path, "first", play_vars)
    assert rc == 0, out
    assert "3 pushed, 0 already there, 0 failed" in out
    # one [k/3] line per image as its push ends, as the download role shows its copies
    progress = re.findall(r"\(item=\[(\d)/3\] (\S+) pushed, [0-9.]+ [KMG]?i?B sent\)", out)
    assert sorted(k for k, ref in progress) == ["1", "2", "3"], out
    assert sorted(ref for k, ref in progress) == sorted(images.refs.values())
    with open(str(tmp_path / "first-fact.json")) as handle:
        fact = json.load(handle)
    with open(str(tmp_path / "mapping.json")) as handle:
        assert [dict(entry, status="pushed") for entry in json.load(handle)] == fact
    assert [entry["status"] for entry in fact] == ["pushed"] * 3
    for entry in fact:
        repository, digest = entry["mirror"].split("@")
        assert repository.startswith("%s/role/" % upload_registry.host)
        assert upload_registry.tags(repository) == ["sha256-" + digest[7:]]

    rc, out = _run_playbook(tmp_path, "second", play_vars)
    assert rc == 0, out
    assert "0 pushed, 3 already there, 0 failed" in out
    assert "(item=[" not in out  # nothing to push: no background run, no progress
    assert re.search(r"localhost\s*: ok=\d+\s+changed=1\s", out), out  # only the copy of the fact file changed

    # Argument specs reject a bad tag policy before any task runs.
    rc, out = _run_playbook(tmp_path, "bad", dict(play_vars, upload_tag_policy="latest"))
    assert rc != 0 and "upload_tag_policy" in out
