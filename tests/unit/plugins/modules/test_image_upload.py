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

import base64
import gzip
import hashlib
import importlib.util
import io
import json
import os
import random
import re
import shutil
import socket
import subprocess
import sys
import tarfile
import time

import pytest


from ansible_collections.airgap.microshift.plugins.modules import image_upload
from ansible_collections.airgap.microshift.tests.unit.plugins.helpers import (
    die_with_parent,
    free_port,
    make_server_cert,
    make_test_ca,
    run_main,
)

SKOPEO = shutil.which("skopeo")
REGISTRY = shutil.which("docker-registry") or shutil.which("registry")
OPENSSL = shutil.which("openssl")
HTPASSWD = shutil.which("htpasswd")

pytestmark = pytest.mark.skipif(
    not (SKOPEO and REGISTRY and OPENSSL and HTPASSWD),
    reason="needs skopeo, docker-registry, openssl and htpasswd (the test command installs them)",
)

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
TIMESTAMP_TAG = re.compile(r"^mirror-[0-9]{12}-[0-9]+$")


# --------------------------------------------------------------------------- registries

def _wait_listening(port, process, log_path):
    for dummy in range(200):
        if process.poll() is not None:
            with open(log_path) as handle:
                raise RuntimeError("registry exited: %s" % handle.read()[-2000:])
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("registry on port %d did not start" % port)


def _run(args, **kwargs):
    result = subprocess.run(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True, check=False, **kwargs)
    if result.returncode != 0:
        raise AssertionError("%s failed (%d): %s" % (" ".join(args), result.returncode, result.stderr[-2000:]))
    return result.stdout


class UploadRegistries:
    """A TLS + htpasswd mirror and a plain HTTP source registry on loopback."""

    def __init__(self, base):
        self.base = base
        self.processes = []
        self.cert_dir = os.path.join(base, "certs")
        self.authfile = os.path.join(base, "auth.json")
        self.bad_authfile = os.path.join(base, "bad-auth.json")

    def start(self):
        pki = os.path.join(self.base, "pki")
        os.makedirs(pki)
        os.makedirs(self.cert_dir)
        ca = make_test_ca(pki, cn="upload test CA")
        make_server_cert(pki, ca)
        shutil.copy(os.path.join(pki, "ca.crt"), os.path.join(self.cert_dir, "ca.crt"))
        with open(os.path.join(pki, "htpasswd"), "w") as handle:
            handle.write(_run([HTPASSWD, "-Bbn", "mirroruser", "mirrorpass"]))

        mirror_port = free_port()
        self.mirror = "127.0.0.1:%d" % mirror_port
        self.mirror_log = os.path.join(self.base, "mirror.log")
        self.mirror_data = os.path.join(self.base, "mirror-data")
        self._serve("mirror", mirror_port, self.mirror_log, self.mirror_data, [
            "  tls:",
            "    certificate: %s" % os.path.join(pki, "server.crt"),
            "    key: %s" % os.path.join(pki, "server.key"),
            "auth:",
            "  htpasswd:",
            "    realm: upload-test",
            "    path: %s" % os.path.join(pki, "htpasswd"),
        ])
        source_port = free_port()
        self.source = "127.0.0.1:%d" % source_port
        self._serve("source", source_port, os.path.join(self.base, "source.log"), os.path.join(self.base, "source-data"), [])

        for path, password in ((self.authfile, "mirrorpass"), (self.bad_authfile, "wrong-password")):
            token = base64.b64encode(("mirroruser:%s" % password).encode()).decode()
            with open(path, "w") as handle:
                json.dump({"auths": {self.mirror: {"auth": token}}}, handle)

    def _serve(self, name, port, log_path, data, extra):
        config = os.path.join(self.base, "%s.yml" % name)
        with open(config, "w") as handle:
            handle.write("\n".join([
                "version: 0.1",
                "log:",
                "  level: info",
                "  accesslog:",
                "    disabled: false",
                "storage:",
                "  filesystem:",
                "    rootdirectory: %s" % data,
                "http:",
                "  addr: 127.0.0.1:%d" % port,
                "  secret: upload-test-%s" % name,
            ] + extra) + "\n")
        log = open(log_path, "w")
        process = subprocess.Popen([REGISTRY, "serve", config], stdout=log, stderr=subprocess.STDOUT, preexec_fn=die_with_parent)
        log.close()
        self.processes.append(process)
        _wait_listening(port, process, log_path)

    def stop(self):
        for process in self.processes:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    # ---- what the mirror serves

    def _access(self):
        return ["--authfile", self.authfile, "--cert-dir", self.cert_dir]

    def manifest(self, repository, digest):
        """The manifest bytes the mirror serves for repository@digest, or None."""
        result = subprocess.run([SKOPEO, "inspect", "--raw"] + self._access() + ["docker://%s@%s" % (repository, digest)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, check=False)
        return result.stdout if result.returncode == 0 else None

    def tags(self, repository):
        result = subprocess.run([SKOPEO, "list-tags"] + self._access() + ["docker://%s" % repository],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True, check=False)
        if result.returncode != 0:
            assert "404" in result.stderr or "unknown" in result.stderr, result.stderr
            return []
        return sorted(json.loads(result.stdout)["Tags"] or [])

    def log_size(self):
        return os.path.getsize(self.mirror_log)

    def requests_since(self, offset):
        """``(method, path)`` of every request the mirror logged after ``offset``."""
        with open(self.mirror_log) as handle:
            handle.seek(offset)
            text = handle.read()
        return re.findall(r'"(GET|HEAD|POST|PUT|PATCH|DELETE) (/v2/[^ "]*) HTTP', text)


@pytest.fixture(scope="module")
def upload_registry(tmp_path_factory):
    registries = UploadRegistries(str(tmp_path_factory.mktemp("upload-registries")))
    try:
        registries.start()
    except Exception:
        registries.stop()
        raise
    yield registries
    registries.stop()


# --------------------------------------------------------------------------- images

class ImageSet:
    """Generated images, pushed to the source registry under ``<source>/<prefix>/<name>``."""

    def __init__(self, registries, work, prefix):
        self.registries = registries
        self.work = work
        self.prefix = prefix
        self.layers = {}
        self.blob_sizes = {}
        self.refs = {}  # name -> source ref

    def _blob(self, layout, data):
        digest = hashlib.sha256(data).hexdigest()
        directory = os.path.join(layout, "blobs", "sha256")
        if not os.path.isdir(directory):
            os.makedirs(directory)
        with open(os.path.join(directory, digest), "wb") as handle:
            handle.write(data)
        self.blob_sizes["sha256:" + digest] = len(data)
        return {"digest": "sha256:" + digest, "size": len(data)}

    def _layer(self, key, size):
        if key not in self.layers:
            rnd = random.Random("%s/%s/%d" % (self.prefix, key, os.getpid()))
            payload = bytes(bytearray(rnd.getrandbits(8) for dummy in range(size)))
            tarred = io.BytesIO()
            with tarfile.open(fileobj=tarred, mode="w") as tar:
                info = tarfile.TarInfo("data/%s" % key)
                info.size = len(payload)
                tar.addfile(info, io.BytesIO(payload))
            raw = tarred.getvalue()
            self.layers[key] = (gzip.compress(raw, mtime=0), "sha256:" + hashlib.sha256(raw).hexdigest())
        return self.layers[key]

    def _manifest(self, layout, arch, layers):
        descriptors, diff_ids = [], []
        for key, size in layers:
            compressed, diff_id = self._layer(key, size)
            descriptors.append(dict(self._blob(layout, compressed), mediaType=OCI_LAYER))
            diff_ids.append(diff_id)
        config = json.dumps({"architecture": arch, "os": "linux", "config": {"Labels": {"set": self.prefix}},
                             "rootfs": {"type": "layers", "diff_ids": diff_ids}}, sort_keys=True).encode()
        manifest = json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                               "config": dict(self._blob(layout, config), mediaType=OCI_CONFIG),
                               "layers": descriptors}).encode()
        return dict(self._blob(layout, manifest), mediaType=OCI_MANIFEST, platform={"architecture": arch, "os": "linux"})

    def add(self, name, arches, layers, by="digest", tag="v1"):
        """Generate image ``name`` (an index when several ``arches``), push it, and record its ref."""
        layout = os.path.join(self.work, "generated", name)
        os.makedirs(layout)
        manifests = [self._manifest(layout, arch, layers + [("%s-%s" % (name, arch), 20000)]) for arch in arches]
        if len(manifests) == 1:
            top = dict(manifests[0])
            top.pop("platform")
        else:
            index = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": manifests}).encode()
            top = dict(self._blob(layout, index), mediaType=OCI_INDEX)
        with open(os.path.join(layout, "oci-layout"), "w") as handle:
            json.dump({"imageLayoutVersion": "1.0.0"}, handle)
        with open(os.path.join(layout, "index.json"), "w") as handle:
            json.dump({"schemaVersion": 2, "manifests": [top]}, handle)
        repository = "%s/%s/%s" % (self.registries.source, self.prefix, name)
        _run([SKOPEO, "copy", "--quiet", "--all", "--preserve-digests", "--dest-tls-verify=false",
              "oci:%s" % layout, "docker://%s:%s" % (repository, tag)])
        if by == "digest":
            ref = "%s@%s" % (repository, top["digest"])
        elif by == "both":
            ref = "%s:%s@%s" % (repository, tag, top["digest"])
        else:
            ref = "%s:%s" % (repository, tag)
        self.refs[name] = ref
        return ref, top["digest"]

    def digest(self, name):
        return self.store_index["images"][self.refs[name]]["digest"] if hasattr(self, "store_index") else None

    def build_store(self, store):
        """Copy every image into an image store laid out as docs/store-format.md describes."""
        blobs = os.path.join(store, "blobs")
        os.makedirs(blobs)
        images = {}
        for name in sorted(self.refs):
            ref = self.refs[name]
            registry, rest = ref.split("/", 1)
            repository = re.split(r"[:@]", rest, maxsplit=1)[0]
            leaf = "sha256-" + ref.rsplit(":", 1)[1] if "@" in ref else "tag-" + ref.rsplit(":", 1)[1]
            layout = os.path.join("images", registry.replace(":", "_"), repository, leaf)
            os.makedirs(os.path.join(store, layout))
            # skopeo cannot fetch a reference with both a tag and a digest: the digest is what counts.
            fetch = "%s/%s@%s" % (registry, repository, ref.rsplit("@", 1)[1]) if "@" in ref else ref
            _run([SKOPEO, "copy", "--quiet", "--all", "--preserve-digests", "--src-tls-verify=false",
                  "--dest-shared-blob-dir", blobs, "docker://%s" % fetch, "oci:%s" % os.path.join(store, layout)])
            with open(os.path.join(store, layout, "index.json")) as handle:
                top = json.load(handle)["manifests"][0]
            images[ref] = self._store_entry(store, layout, top)
        blob_sizes = {}
        for name in os.listdir(os.path.join(blobs, "sha256")):
            blob_sizes["sha256:" + name] = os.path.getsize(os.path.join(blobs, "sha256", name))
        self.store_index = {"format": 1, "images": images, "blobs": blob_sizes}
        with open(os.path.join(store, "store.json"), "w") as handle:
            json.dump(self.store_index, handle, indent=2, sort_keys=True)
        return store

    @staticmethod
    def _store_entry(store, layout, top):
        def read(digest):
            with open(os.path.join(store, "blobs", "sha256", digest.split(":")[1]), "rb") as handle:
                return json.loads(handle.read().decode())

        document = read(top["digest"])
        children = document.get("manifests") or [dict(top, platform={"os": "linux", "architecture": "amd64"})]
        manifests = []
        size = top["size"]
        for child in children:
            manifest = read(child["digest"]) if child is not top else document
            blobs = [{"digest": d["digest"], "size": d["size"], "media_type": d["mediaType"]}
                     for d in [manifest["config"]] + manifest["layers"]]
            platform = child.get("platform") or {}
            manifests.append({"digest": child["digest"], "size": child["size"], "blobs": blobs,
                              "platform": "%s/%s" % (platform.get("os"), platform.get("architecture"))})
            size += sum(b["size"] for b in blobs) + (child["size"] if child["digest"] != top["digest"] else 0)
        return {"digest": top["digest"], "media_type": top["mediaType"], "manifest_size": top["size"], "layout": layout,
                "manifests": manifests,
                "size": size, "fetched": "2026-01-01T00:00:00Z"}

    def build_dir_tree(self, root):
        """What the manual procedure's download loop makes: ``<root>/<ref without registry>`` via ``dir:``."""
        for name in sorted(self.refs):
            ref = self.refs[name]
            path = os.path.join(root, ref.split("/", 1)[1])
            os.makedirs(path)
            _run([SKOPEO, "copy", "--all", "--quiet", "--preserve-digests", "--src-tls-verify=false",
                  "docker://%s" % ref, "dir://%s" % path])
        return root


def _image_set(registries, tmp_path, prefix):
    return ImageSet(registries, str(tmp_path), "%s-%d" % (prefix, random.SystemRandom().randint(0, 10 ** 9)))


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
    args = {"store": store, "mirror": registries.mirror, "authfile": registries.authfile, "cert_dir": registries.cert_dir,
            "retry_delay": 0.2}
    args.update(extra)
    return args


def _assert_served_identically(registries, store_index, store, mapping):
    """Every manifest of every image served by digest, and its blobs byte-identical to the store's."""
    for entry in mapping:
        repository, digest = entry["mirror"].split("@")
        stored = store_index["images"][entry["source"]]
        assert digest == stored["digest"]
        assert registries.manifest(repository, digest) is not None, entry
        for manifest in stored["manifests"]:
            body = registries.manifest(repository, manifest["digest"])
            assert body is not None and "sha256:" + hashlib.sha256(body).hexdigest() == manifest["digest"]


def _mirror_writes(requests):
    return [(method, path) for method, path in requests if method in ("POST", "PUT", "PATCH", "DELETE")]


# --------------------------------------------------------------------------- tests

def test_store_upload_check_apply_apply_check(upload_registry, tmp_path, capsys):
    images = _small_set(upload_registry, tmp_path, "rhythm")
    store = images.build_store(str(tmp_path / "store"))
    mapping_file = str(tmp_path / "mapping.json")
    args = _args(upload_registry, store, mapping_file=mapping_file)
    prefix = "%s/%s" % (upload_registry.mirror, images.prefix)

    # Check mode: a plan with tags, and no write of any kind to the registry.
    offset = upload_registry.log_size()
    failed, planned = run_module(capsys, args, check_mode=True)
    assert not failed and planned["changed"]
    assert _mirror_writes(upload_registry.requests_since(offset)) == []
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
    offset = upload_registry.log_size()
    failed, again = run_module(capsys, args)
    assert not failed and not again["changed"]
    assert [entry["status"] for entry in again["mapping"]] == ["skipped"] * 3
    assert [entry["tag"] for entry in again["mapping"]] == [None] * 3
    assert _mirror_writes(upload_registry.requests_since(offset)) == []
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
        assert upload_registry.manifest(repository, digest) is not None
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
        assert repository.startswith("%s/edge/site1/%s/" % (upload_registry.mirror, images.prefix))
        assert upload_registry.manifest(repository, digest) is not None
        # Nothing lands outside the namespace.
        assert upload_registry.manifest(repository.replace("/edge/site1", ""), digest) is None
    assert upload_registry.tags("%s/edge/site1/%s/tool" % (upload_registry.mirror, images.prefix)) == []

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
    translated = [dict(entry, source="%s/%s" % (upload_registry.source, entry["source"])) for entry in result["mapping"]]
    _assert_served_identically(upload_registry, images.store_index, store, translated)
    assert by_source[images.refs["tool"].split("/", 1)[1]]["tag"] == "1.2"

    # The same images from the store are now skipped: both sources agree on the mirror repos.
    failed, again = run_module(capsys, _args(upload_registry, store, source_format="auto"))
    assert not failed and not again["changed"] and again["source_format"] == "store"


def test_wrong_password_fails_at_once_naming_the_image(upload_registry, tmp_path, capsys):
    images = _image_set(upload_registry, tmp_path, "badauth")
    ref, dummy = images.add("only", ["amd64"], [("base", 10000)])
    store = images.build_store(str(tmp_path / "store"))
    offset = upload_registry.log_size()
    args = _args(upload_registry, store, authfile=upload_registry.bad_authfile, retries=5, retry_delay=30,
                 mapping_file=str(tmp_path / "mapping.json"))
    failed, result = run_module(capsys, args)
    assert failed
    assert ref in result["msg"] and "unauthorized" in result["msg"].lower()
    assert "attempts" not in result["msg"]
    assert [entry["status"] for entry in result["mapping"]] == ["failed"]
    assert _mirror_writes(upload_registry.requests_since(offset)) == []
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
    link = os.path.join(upload_registry.mirror_data, "docker", "registry", "v2", "repositories",
                        repository.split("/", 1)[1], "_manifests", "revisions", "sha256", arm64[7:])
    shutil.rmtree(link)
    assert upload_registry.manifest(repository, arm64) is None

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
    offset = upload_registry.log_size()
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


def test_bad_options_fail_clearly(upload_registry, tmp_path, capsys):
    failed, result = run_module(capsys, {"store": str(tmp_path), "mirror": "not a host"})
    assert failed and "mirror" in result["msg"]
    failed, result = run_module(capsys, {"store": str(tmp_path / "nowhere"), "mirror": upload_registry.mirror})
    assert failed and "nowhere" in result["msg"]
    failed, result = run_module(capsys, {"store": str(tmp_path), "mirror": upload_registry.mirror})
    assert failed and "No image directory" in result["msg"]
    failed, result = run_module(capsys, {"store": str(tmp_path), "mirror": upload_registry.mirror,
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
    play_vars = {"upload_store": store, "upload_mirror": upload_registry.mirror, "upload_namespace": "role",
                 "upload_authfile": upload_registry.authfile, "upload_cert_dir": upload_registry.cert_dir,
                 "upload_tag_policy": "digest", "upload_parallel": 2,
                 "upload_mapping_file": str(tmp_path / "mapping.json")}
    rc, out = _run_playbook(tmp_path, "first", play_vars)
    assert rc == 0, out
    assert "3 pushed, 0 already there, 0 failed" in out
    with open(str(tmp_path / "first-fact.json")) as handle:
        fact = json.load(handle)
    with open(str(tmp_path / "mapping.json")) as handle:
        assert [dict(entry, status="pushed") for entry in json.load(handle)] == fact
    assert [entry["status"] for entry in fact] == ["pushed"] * 3
    for entry in fact:
        repository, digest = entry["mirror"].split("@")
        assert repository.startswith("%s/role/" % upload_registry.mirror)
        assert upload_registry.tags(repository) == ["sha256-" + digest[7:]]

    rc, out = _run_playbook(tmp_path, "second", play_vars)
    assert rc == 0, out
    assert "0 pushed, 3 already there, 0 failed" in out
    assert re.search(r"localhost\s*: ok=\d+\s+changed=1\s", out), out  # only the copy of the fact file changed

    # Argument specs reject a bad tag policy before any task runs.
    rc, out = _run_playbook(tmp_path, "bad", dict(play_vars, upload_tag_policy="latest"))
    assert rc != 0 and "upload_tag_policy" in out
