# Copyright: airgap.microshift contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Bad input: each case fails with one sentence naming its cause, and leaves nothing half-written.

Every case is one ansible-playbook run on the sandbox (a module task or a role, as a user writes
it). The runs are independent, so a module-scoped fixture runs them four at a time and each
parametrized test then checks its own case: non-zero exit, the failure message names the file,
image or option at fault, and the target is absent or unchanged.
"""

from __future__ import annotations

import base64
import concurrent.futures
import json
import os
import shutil

import pytest

from conftest import record, tree_state

MISSING_DIGEST = "sha256:" + "0" * 64
WRONG_NAME = "wrong-name.airgap.test"


def _module(name, args, hosts="connected", environment=None):
    task = {"name": "Run %s" % name, "airgap.microshift." + name: args}
    if environment:
        task["environment"] = environment
    return [{"name": "Bad input", "hosts": hosts, "gather_facts": False, "tasks": [task]}]


def _role(name, role_vars, hosts="connected", pre=None):
    tasks = list(pre or []) + [{"name": "Run the %s role" % name, "ansible.builtin.include_role": {"name": "airgap.microshift." + name}}]
    return [{"name": "Bad input", "hosts": hosts, "gather_facts": False, "vars": role_vars, "tasks": tasks}]


class Context:
    """Files and stores the cases share, made once."""

    def __init__(self, bed, reference):
        self.bed = bed
        self.ref = reference
        self.root = os.path.join(bed.work, "bad-input")
        os.makedirs(self.root)
        self.good_ref = bed.digest_refs(components=["core"])[0]
        self.repo = self.good_ref.split("@", 1)[0]
        self.pull_secret = bed.state["pull_secret"]
        self.mirror = bed.mirror

        with open(self.pull_secret, encoding="utf-8") as handle:
            auths = json.load(handle)
        for entry in auths["auths"].values():
            user = base64.b64decode(entry["auth"]).decode().split(":", 1)[0]
            entry["auth"] = base64.b64encode(("%s:not-the-password" % user).encode()).decode()
        self.wrong_auth = self.write("wrong-auth.json", json.dumps(auths))
        self.invalid_auth = self.write("invalid-auth.json", "{\"auths\": {\"quay.io\": ")
        self.dir_auth = self.path("auth-dir")
        os.makedirs(self.dir_auth)
        self.not_a_dir = self.write("store-is-a-file", "this is a file, not a store\n")

        release = self.path("bad-release")
        os.makedirs(release)
        self.write(os.path.join("bad-release", "release-x86_64.json"), "{\"release\": {\"base\": \"5.0.0\"}, \"images\": {\"a\": ")
        self.bad_release = release

        # The public CA only: the wrong CA for the site mirror.
        self.wrong_ca_dir = self.path("wrong-ca")
        os.makedirs(self.wrong_ca_dir)
        shutil.copy(bed.state["public_ca"], os.path.join(self.wrong_ca_dir, "ca.crt"))

        # A store with one layer blob corrupted (same size, other bytes).
        self.corrupt_store = self.path("corrupt-store")
        shutil.copytree(reference["store"], self.corrupt_store)
        entry = reference["index"]["images"][self.good_ref]
        layer = entry["manifests"][0]["blobs"][-1]["digest"]
        blob = os.path.join(self.corrupt_store, "blobs", "sha256", layer.split(":", 1)[1])
        with open(blob, "r+b") as handle:
            data = bytearray(handle.read())
            data[len(data) // 2] ^= 0xFF
            handle.seek(0)
            handle.write(bytes(data))
        self.corrupt_layer = layer
        # A store whose top-level manifest was changed (one byte more): it no longer matches its digest.
        self.corrupt_manifest_store = self.path("corrupt-manifest-store")
        shutil.copytree(reference["store"], self.corrupt_manifest_store)
        manifest = os.path.join(self.corrupt_manifest_store, "blobs", "sha256", entry["digest"].split(":", 1)[1])
        with open(manifest, "rb") as handle:
            data = handle.read()
        with open(manifest, "wb") as handle:
            handle.write(data.replace(b"{", b"{ ", 1))

        # Two bundles of two volumes each, and a medium mixing their volumes.
        self.media_a, self.media_b = self.path("media-a"), self.path("media-b")
        os.makedirs(self.media_a)
        os.makedirs(self.media_b)
        half = str(max(reference["unique_bytes"] // 2 + 65536, 1 << 20))
        for media, store, release_name in ((self.media_a, reference["store"], "5.0-a"), (self.media_b, self.corrupt_store, "5.0-b")):
            if store == self.corrupt_store:
                # Another release: the same store without its first image.
                store = self.path("other-release-store")
                shutil.copytree(reference["store"], store)
                index_path = os.path.join(store, "store.json")
                with open(index_path, encoding="utf-8") as handle:
                    index = json.load(handle)
                index["images"].pop(sorted(index["images"])[0])
                with open(index_path, "w", encoding="utf-8") as handle:
                    json.dump(index, handle)
            result, dummy = bed.module("image_bundle", bed.sign({"state": "pack", "store": store, "dest": media, "volume_size": half,
                                                                 "release": release_name}))
            assert result.rc == 0, result
        vols_a = sorted(v for v in os.listdir(self.media_a) if v.startswith("vol-"))
        vols_b = sorted(v for v in os.listdir(self.media_b) if v.startswith("vol-"))
        assert len(vols_a) >= 2 and len(vols_b) >= 2, (vols_a, vols_b)
        self.mixed_media = self.path("media-mixed")
        os.makedirs(self.mixed_media)
        shutil.copytree(os.path.join(self.media_a, vols_a[0]), os.path.join(self.mixed_media, vols_a[0]))
        shutil.copytree(os.path.join(self.media_b, vols_b[1]), os.path.join(self.mixed_media, vols_b[1]))
        self.incomplete_media = self.path("media-incomplete")
        os.makedirs(self.incomplete_media)
        shutil.copytree(os.path.join(self.media_a, vols_a[1]), os.path.join(self.incomplete_media, vols_a[1]))
        # A medium whose first volume holds a corrupted file.
        self.corrupt_media = self.path("media-corrupt")
        shutil.copytree(self.media_a, self.corrupt_media)
        biggest = None
        for top, dummy, files in os.walk(os.path.join(self.corrupt_media, vols_a[0])):
            for name in files:
                full = os.path.join(top, name)
                if biggest is None or os.path.getsize(full) > os.path.getsize(biggest):
                    biggest = full
        with open(biggest, "r+b") as handle:
            handle.seek(os.path.getsize(biggest) // 2)
            byte = handle.read(1)
            handle.seek(-1, 1)
            handle.write(bytes([byte[0] ^ 0xFF]))
        self.corrupt_file = os.path.relpath(biggest, self.corrupt_media)

        # A passphrase-protected signing key, and a public key file that is not a key.
        from ansible_collections.airgap.microshift.plugins.module_utils import _signing  # pylint: disable=import-outside-toplevel
        self.locked_key = self.path("locked.key")
        with open(self.locked_key, "wb") as handle:
            handle.write(_signing.private_key_pem(_signing.generate_private_key(), "the-right-passphrase"))
        self.not_a_key = self.write("not-a-key.pub", "this is not a PEM public key\n")
        # The test release's public key, and host policies: a good one and one the containers tools refuse.
        self.release_key = bed.state["release"]["public_key"]
        self.policy = self.write("policy.json", json.dumps({"default": [{"type": "insecureAcceptAnything"}]}, indent=4) + "\n")
        self.broken_policy = self.write("broken-policy.json", "{\"default\": []}\n")

    def path(self, name):
        return os.path.join(self.root, name)

    def write(self, name, text):
        path = self.path(name)
        with open(path, "w", encoding="utf-8") as handle:
            handle.write(text)
        return path

    def target(self, name):
        """A fresh path for a case's output (a store, a file, a medium)."""
        return self.path("out-" + name)


def _drop_in(ctx, host="microshift-1"):
    return ctx.bed.node_file(host, "/etc/containers/registries.conf.d/999-microshift-mirror.conf")


def _mirror_repo(ctx, namespace):
    return "%s/%s/%s" % (ctx.mirror["hostport"], namespace, ctx.repo.split("/", 1)[1])


# id -> builder(ctx, out) returning {"play", "expect": [substrings of the message], "absent": [paths],
# "unchanged": [paths], "mirror_absent": [repositories]}
CASES = {
    # Credentials, trust and names.
    "download-wrong-credentials": lambda c, o: dict(
        play=_module("image_download", {"images": [c.good_ref], "store": o, "authfile": c.wrong_auth, "free_space_margin": 0}),
        expect=[c.good_ref, "authentication failed"], absent=[os.path.join(o, "store.json")]),
    "upload-wrong-mirror-credentials": lambda c, o: dict(
        play=_module("image_upload", {"store": c.ref["store"], "mirror": c.mirror["hostport"], "namespace": "bad-creds",
                                      "authfile": c.wrong_auth}, hosts="airgapped"),
        expect=["authentication failed"], mirror_absent=[_mirror_repo(c, "bad-creds")]),
    "upload-missing-ca": lambda c, o: dict(
        play=_module("image_upload", {"store": c.ref["store"], "mirror": c.mirror["hostport"], "namespace": "missing-ca",
                                      "authfile": c.mirror["auth_file"]}, hosts="microshift"),
        expect=["TLS certificate verification failed", c.mirror["hostport"]], mirror_absent=[_mirror_repo(c, "missing-ca")]),
    "upload-wrong-ca": lambda c, o: dict(
        play=_module("image_upload", {"store": c.ref["store"], "mirror": c.mirror["hostport"], "namespace": "wrong-ca",
                                      "authfile": c.mirror["auth_file"], "cert_dir": c.wrong_ca_dir}, hosts="microshift"),
        expect=["TLS certificate verification failed", c.mirror["hostport"]], mirror_absent=[_mirror_repo(c, "wrong-ca")]),
    "upload-hostname-not-in-certificate": lambda c, o: dict(
        play=_module("image_upload", {"store": c.ref["store"], "mirror": "%s:%d" % (WRONG_NAME, c.mirror["port"]),
                                      "namespace": "wrong-name", "authfile": c.mirror["auth_file"]}, hosts="airgapped"),
        expect=["TLS certificate verification failed", WRONG_NAME], mirror_absent=[_mirror_repo(c, "wrong-name")]),
    "mirror-check-untrusted-mirror": lambda c, o: dict(
        play=_module("mirror_check", {"images": [c.good_ref], "registries_conf": c.write("mirror-check.conf", (
            "[[registry]]\nprefix = \"quay.io\"\nlocation = \"quay.io\"\n[[registry.mirror]]\nlocation = \"%s\"\n"
            "pull-from-mirror = \"digest-only\"\n") % c.mirror["hostport"]), "retries": 0}, hosts="microshift"),
        expect=[c.good_ref, "TLS"]),
    # Images and digests.
    "download-image-does-not-exist": lambda c, o: dict(
        play=_module("image_download", {"images": ["quay.io/openshift-release-dev/no-such-image@" + MISSING_DIGEST], "store": o,
                                        "authfile": c.pull_secret, "free_space_margin": 0}),
        expect=["quay.io/openshift-release-dev/no-such-image@", "unknown"], absent=[os.path.join(o, "store.json")]),
    "download-digest-not-in-registry": lambda c, o: dict(
        play=_module("image_download", {"images": [c.repo + "@" + MISSING_DIGEST], "store": o, "authfile": c.pull_secret,
                                        "free_space_margin": 0}),
        expect=[c.repo + "@" + MISSING_DIGEST, "manifest unknown"], absent=[os.path.join(o, "store.json")]),
    "upload-corrupted-store-manifest": lambda c, o: dict(
        play=_module("image_upload", {"store": c.corrupt_manifest_store, "mirror": c.mirror["hostport"], "namespace": "corrupt",
                                      "authfile": c.mirror["auth_file"], "images": [c.good_ref]}, hosts="airgapped"),
        expect=[c.good_ref, "does not match its digest"], mirror_absent=[_mirror_repo(c, "corrupt")],
        unchanged=[c.corrupt_manifest_store]),
    "pack-corrupted-store-blob": lambda c, o: dict(
        play=_module("image_bundle", c.bed.sign({"state": "pack", "store": c.corrupt_store, "dest": o})),
        expect=[c.corrupt_layer.split(":", 1)[1], "corrupt"], absent=[os.path.join(o, "vol-001", "bundle.json")]),
    "verify-corrupted-volume-file": lambda c, o: dict(
        play=_module("image_bundle", c.bed.sign({"state": "verify", "src": [c.corrupt_media]}), hosts="airgapped"),
        expect=[os.path.basename(c.corrupt_file)], unchanged=[c.corrupt_media]),
    # Release files and image lists.
    "release-malformed-json": lambda c, o: dict(
        play=_module("release_images", {"path": [c.bad_release], "arch": ["x86_64"], "dest": o}),
        expect=["release-x86_64.json"], absent=[o]),
    "release-path-missing": lambda c, o: dict(
        play=_module("release_images", {"path": [c.path("no-such-release")], "arch": ["x86_64"], "dest": o}),
        expect=["no-such-release"], absent=[o]),
    "release-unknown-component": lambda c, o: dict(
        play=_module("release_images", {"path": [c.bed.release_dir], "arch": ["x86_64"], "components": ["no-such-component"], "dest": o}),
        expect=["no-such-component"], absent=[o]),
    "release-unknown-arch": lambda c, o: dict(
        play=_module("release_images", {"path": [c.bed.release_dir], "arch": ["sparc"], "dest": o}),
        expect=["sparc"], absent=[o]),
    "download-empty-image-list": lambda c, o: dict(
        play=_role("download", {"download_images": [], "download_store": o}),
        expect=["download_images"], absent=[o]),
    "download-invalid-reference": lambda c, o: dict(
        play=_module("image_download", {"images": ["not a reference"], "store": o}),
        expect=["not a reference"], absent=[o]),
    "host-config-tag-ref-under-digest-only": lambda c, o: dict(
        play=_role("host_config", {"host_config_mirror": c.mirror["hostport"], "host_config_images": [c.good_ref, "quay.io/opendatahub/vllm:fast"]},
                   hosts="microshift"),
        expect=["quay.io/opendatahub/vllm:fast"], absent=[_drop_in(c)]),
    "host-config-every-problem-at-once": lambda c, o: dict(
        play=_role("host_config", {"host_config_mirror": c.mirror["hostport"] + "/path", "host_config_mirror_username": "mirror",
                                   "host_config_mirror_ca_content": "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
                                   "host_config_images": [c.good_ref, "quay.io/opendatahub/vllm:fast"]}, hosts="microshift"),
        expect=["host_config_mirror must be set", "host_config_mirror_password", "quay.io/opendatahub/vllm:fast",
                "host_config_mirror_ca_content is not a PEM certificate", "nothing was changed"], absent=[_drop_in(c)]),
    # Options: sizes, paths, tools, types.
    "pack-invalid-volume-size": lambda c, o: dict(
        play=_module("image_bundle", c.bed.sign({"state": "pack", "store": c.ref["store"], "dest": o, "volume_size": "12XB"})),
        expect=["volume_size", "12XB"], absent=[os.path.join(o, "vol-001")]),
    "pack-volume-smaller-than-manifest": lambda c, o: dict(
        play=_module("image_bundle", c.bed.sign({"state": "pack", "store": c.ref["store"], "dest": o, "volume_size": "4KiB"})),
        expect=["volume_size"], absent=[os.path.join(o, "vol-001")]),
    "transfer-invalid-volume-size": lambda c, o: dict(
        play=_role("transfer", {"transfer_side": "connected", "transfer_store": c.ref["store"], "transfer_media_path": o,
                                "transfer_volume_size": "a lot", "transfer_signing_key": c.bed.keys["private"]}),
        expect=["a lot"], absent=[os.path.join(o, "vol-001")]),
    "download-skopeo-path-missing": lambda c, o: dict(
        play=_module("image_download", {"images": [c.good_ref], "store": o, "executable": "/nonexistent/bin/skopeo"}),
        expect=["executable", "/nonexistent/bin/skopeo"], absent=[o]),
    "download-skopeo-not-in-path": lambda c, o: dict(
        play=_module("image_download", {"images": [c.good_ref], "store": o}, environment={"PATH": "/nonexistent"}),
        expect=["skopeo"], absent=[o]),
    "upload-skopeo-path-missing": lambda c, o: dict(
        play=_module("image_upload", {"store": c.ref["store"], "mirror": c.mirror["hostport"], "namespace": "no-skopeo",
                                      "skopeo_path": "/nonexistent/bin/skopeo"}, hosts="airgapped"),
        expect=["executable", "/nonexistent/bin/skopeo"], mirror_absent=[_mirror_repo(c, "no-skopeo")]),
    "download-authfile-is-a-directory": lambda c, o: dict(
        play=_module("image_download", {"images": [c.good_ref], "store": o, "authfile": c.dir_auth}),
        expect=["authfile", c.dir_auth], absent=[o]),
    "upload-authfile-is-a-directory": lambda c, o: dict(
        play=_module("image_upload", {"store": c.ref["store"], "mirror": c.mirror["hostport"], "namespace": "dir-auth",
                                      "authfile": c.dir_auth}, hosts="airgapped"),
        expect=["authfile", c.dir_auth], mirror_absent=[_mirror_repo(c, "dir-auth")]),
    "registry-auth-invalid-json": lambda c, o: dict(
        play=_module("registry_auth", {"path": c.invalid_auth, "registry": "quay.io", "username": "user-a", "password": "secret-5c0ffee"}),
        expect=[c.invalid_auth], unchanged=[c.invalid_auth]),
    "download-authfile-invalid-json": lambda c, o: dict(
        play=_module("image_download", {"images": [c.good_ref], "store": o, "authfile": c.invalid_auth, "free_space_margin": 0}),
        expect=[c.invalid_auth], absent=[os.path.join(o, "store.json")]),
    "registry-auth-missing-directory": lambda c, o: dict(
        play=_module("registry_auth", {"path": os.path.join(o, "sub", "auth.json"), "registry": "quay.io", "username": "user-a",
                                       "password": "secret-5c0ffee"}),
        expect=[os.path.join(o, "sub")], absent=[o]),
    "download-role-wrong-type": lambda c, o: dict(
        play=_role("download", {"download_images": [c.good_ref], "download_store": o, "download_parallel": "many"}),
        expect=["download_parallel"], absent=[o]),
    "upload-role-wrong-type": lambda c, o: dict(
        play=_role("upload", {"upload_store": c.ref["store"], "upload_mirror": c.mirror["hostport"], "upload_namespace": "role-type",
                              "upload_retries": "often"}, hosts="airgapped"),
        expect=["upload_retries"], mirror_absent=[_mirror_repo(c, "role-type")]),
    "host-config-role-wrong-type": lambda c, o: dict(
        play=_role("host_config", {"host_config_mirror": c.mirror["hostport"], "host_config_images": [c.good_ref],
                                   "host_config_digest_only": "sometimes"}, hosts="microshift"),
        expect=["host_config_digest_only"], absent=[_drop_in(c)]),
    "transfer-role-unknown-method": lambda c, o: dict(
        play=_role("transfer", {"transfer_method": "carrier-pigeon", "transfer_store": c.ref["store"], "transfer_media_path": o}),
        expect=["transfer_method"], absent=[o]),
    "download-store-is-a-file": lambda c, o: dict(
        play=_module("image_download", {"images": [c.good_ref], "store": c.not_a_dir}),
        expect=["store", c.not_a_dir], unchanged=[c.not_a_dir]),
    "download-parallel-zero": lambda c, o: dict(
        play=_module("image_download", {"images": [c.good_ref], "store": o, "parallel": 0}),
        expect=["parallel"], absent=[o]),
    "download-cert-dir-missing": lambda c, o: dict(
        play=_module("image_download", {"images": [c.good_ref], "store": o, "cert_dir": c.path("no-such-certs")}),
        expect=["cert_dir", "no-such-certs"], absent=[o]),
    "upload-mirror-with-a-path": lambda c, o: dict(
        play=_module("image_upload", {"store": c.ref["store"], "mirror": c.mirror["hostport"] + "/some/path",
                                      "authfile": c.mirror["auth_file"]}, hosts="airgapped"),
        expect=["mirror", "/some/path"], mirror_absent=["%s/some/path/%s" % (c.mirror["hostport"], c.repo.split("/", 1)[1])]),
    "upload-namespace-invalid-characters": lambda c, o: dict(
        play=_module("image_upload", {"store": c.ref["store"], "mirror": c.mirror["hostport"], "namespace": "Bad Name!",
                                      "authfile": c.mirror["auth_file"]}, hosts="airgapped"),
        expect=["namespace", "Bad Name!"]),
    "upload-store-missing": lambda c, o: dict(
        play=_module("image_upload", {"store": o, "mirror": c.mirror["hostport"], "authfile": c.mirror["auth_file"]}, hosts="airgapped"),
        expect=[o], absent=[o]),
    "registries-conf-mirror-with-scheme": lambda c, o: dict(
        play=_module("registries_conf", {"path": o, "mirror": "https://" + c.mirror["hostport"]}),
        expect=["mirror", "https://"], absent=[o]),
    "unpack-bundle-from-another-release": lambda c, o: dict(
        play=_module("image_bundle", c.bed.sign({"state": "unpack", "src": [c.mixed_media], "store": o}), hosts="airgapped"),
        expect=["bundle"], absent=[o], unchanged=[c.mixed_media]),
    "pack-signing-key-wrong-passphrase": lambda c, o: dict(
        play=_module("image_bundle", {"state": "pack", "store": c.ref["store"], "dest": o, "signing_key": c.locked_key,
                                      "signing_key_passphrase": "n0t-the-r1ght-0ne"}),
        expect=[c.locked_key, "passphrase"], absent=[o]),
    "pack-without-signing-key": lambda c, o: dict(
        play=_module("image_bundle", {"state": "pack", "store": c.ref["store"], "dest": o}),
        expect=["signing_key", "allow_unsigned"], absent=[o]),
    "verify-trusted-key-not-a-key": lambda c, o: dict(
        play=_module("image_bundle", {"state": "verify", "src": [c.media_a], "trusted_keys": [c.not_a_key]}, hosts="airgapped"),
        expect=[c.not_a_key, "PEM"], unchanged=[c.media_a]),
    "signing-key-missing-directory": lambda c, o: dict(
        play=_module("signing_key", {"path": os.path.join(o, "keys", "transfer.key")}),
        expect=[os.path.join(o, "keys")], absent=[o]),
    # Signatures: download options, the host modules and the host_config variables.
    "download-signature-scopes-without-keys": lambda c, o: dict(
        play=_module("image_download", {"images": [c.good_ref], "store": o, "authfile": c.pull_secret,
                                        "signature_scopes": ["quay.io/openshift-release-dev"]}),
        expect=["signature_keys"], absent=[o]),
    "download-signature-key-not-a-key": lambda c, o: dict(
        play=_module("image_download", {"images": [c.good_ref], "store": o, "authfile": c.pull_secret,
                                        "signature_scopes": ["quay.io/openshift-release-dev"], "signature_keys": [c.not_a_key]}),
        expect=["signature_keys", c.not_a_key, "PEM"], absent=[o]),
    "download-signature-scope-with-scheme": lambda c, o: dict(
        play=_module("image_download", {"images": [c.good_ref], "store": o, "signature_scopes": ["https://quay.io"],
                                        "signature_keys": [c.release_key]}),
        expect=["signature_scopes", "https://quay.io"], absent=[o]),
    "download-signature-exceptions-without-scopes": lambda c, o: dict(
        play=_module("image_download", {"images": [c.good_ref], "store": o, "signature_exceptions": ["registry.redhat.io/x"]}),
        expect=["signature_exceptions"], absent=[o]),
    "download-signature-scopes-without-fetching": lambda c, o: dict(
        play=_module("image_download", {"images": [c.good_ref], "store": o, "signatures": False,
                                        "signature_scopes": ["quay.io/openshift-release-dev"], "signature_keys": [c.release_key]}),
        expect=["signatures: true"], absent=[o]),
    "download-role-signatures-wrong-type": lambda c, o: dict(
        play=_role("download", {"download_images": [c.good_ref], "download_store": o, "download_signatures": "sometimes"}),
        expect=["download_signatures"], absent=[o]),
    "containers-policy-key-not-a-key": lambda c, o: dict(
        play=_module("containers_policy", {"path": c.policy, "scopes": ["quay.io/openshift-release-dev"], "keys": [c.not_a_key]}),
        expect=[c.not_a_key, "not changed"], unchanged=[c.policy]),
    "containers-policy-broken-policy": lambda c, o: dict(
        play=_module("containers_policy", {"path": c.broken_policy, "scopes": ["quay.io/openshift-release-dev"], "keys": [c.release_key]}),
        expect=[c.broken_policy, "empty list of requirements"], unchanged=[c.broken_policy]),
    "containers-policy-scope-not-lowercase": lambda c, o: dict(
        play=_module("containers_policy", {"path": c.policy, "scopes": ["quay.io/OpenShift"], "keys": [c.release_key]}),
        expect=["quay.io/OpenShift", "not a registry scope"], unchanged=[c.policy]),
    "containers-policy-unknown-identity": lambda c, o: dict(
        play=_module("containers_policy", {"path": c.policy, "scopes": ["quay.io/openshift-release-dev"], "keys": [c.release_key],
                                           "signed_identity": "matchAnything"}),
        expect=["signed_identity", "matchAnything"], unchanged=[c.policy]),
    "registries-d-namespace-with-scheme": lambda c, o: dict(
        play=_module("registries_d", {"path": o + ".yaml", "namespaces": ["https://" + c.mirror["hostport"]]}),
        expect=["https://" + c.mirror["hostport"], "namespace"], absent=[o + ".yaml"]),
    "registries-d-path-not-yaml": lambda c, o: dict(
        play=_module("registries_d", {"path": o + ".yml", "namespaces": [c.mirror["hostport"]]}),
        expect=[o + ".yml", ".yaml"], absent=[o + ".yml"]),
    "signature-check-broken-policy": lambda c, o: dict(
        play=_module("signature_check", {"images": [c.good_ref], "policy": c.broken_policy}, hosts="microshift"),
        expect=[c.broken_policy, "empty list of requirements"], unchanged=[c.broken_policy]),
    "host-config-signature-policy-without-keys": lambda c, o: dict(
        play=_role("host_config", {"host_config_mirror": c.mirror["hostport"], "host_config_images": [c.good_ref],
                                   "host_config_signature_policy": True}, hosts="microshift"),
        expect=["host_config_signature_keys"], absent=[_drop_in(c)]),
    "host-config-signature-key-not-a-key": lambda c, o: dict(
        play=_role("host_config", {"host_config_mirror": c.mirror["hostport"], "host_config_images": [c.good_ref],
                                   "host_config_signature_policy": True,
                                   "host_config_signature_keys": [{"name": "release.pub", "content": "not a key"}]}, hosts="microshift"),
        expect=["the content of release.pub", "not a PEM public key"], absent=[_drop_in(c)]),
    "host-config-signature-default-policy-unknown": lambda c, o: dict(
        play=_role("host_config", {"host_config_mirror": c.mirror["hostport"], "host_config_images": [c.good_ref],
                                   "host_config_signature_default_policy": "sometimes"}, hosts="microshift"),
        expect=["host_config_signature_default_policy"], absent=[_drop_in(c)]),
    "unpack-missing-volume": lambda c, o: dict(
        play=_module("image_bundle", c.bed.sign({"state": "unpack", "src": [c.incomplete_media], "store": o}), hosts="airgapped"),
        expect=["vol-001"], absent=[o]),
}


@pytest.fixture(scope="module")
def outcomes(bed, reference_store):
    """Runs every case (four at a time) and returns ``{id: (result, before, case)}``."""
    bed.wan_calm()
    ctx = Context(bed, reference_store)
    bed.set_hosts_entry("airgap-bastion", WRONG_NAME, bed.mirror["address"])
    cases = {}
    for case_id, build in CASES.items():
        cases[case_id] = build(ctx, ctx.target(case_id))
    before = dict((case_id, dict((p, tree_state(p)) for p in case.get("unchanged", []))) for case_id, case in cases.items())

    def run(case_id):
        return case_id, bed.playbook(cases[case_id]["play"])

    try:
        with concurrent.futures.ThreadPoolExecutor(max_workers=4) as pool:
            results = dict(pool.map(run, sorted(cases)))
    finally:
        bed.restore_hosts()
    record("bad_input", {"cases": len(cases)})
    return dict((case_id, (results[case_id], before[case_id], cases[case_id], ctx)) for case_id in cases)


@pytest.mark.parametrize("case_id", sorted(CASES))
def test_bad_input(outcomes, case_id):
    result, before, case, ctx = outcomes[case_id]
    assert result.rc != 0, "the run succeeded: %r" % result
    failure = result.failure()
    assert failure is not None, result
    msg = failure.get("msg") or ""
    # A role's argument_specs are checked by ansible-core itself, which puts a header line first.
    msg = msg.replace("Validation of arguments failed:\n", "", 1)
    # One sentence, no traceback, no dump of a command's output.
    assert "Traceback" not in msg and "\n" not in msg.strip(), msg
    assert len(msg) < 1200, msg
    for expected in case["expect"]:
        assert expected.lower() in msg.lower(), "%r not in %r" % (expected, msg)
    for path in case.get("absent", []):
        assert not os.path.exists(path) or (os.path.isdir(path) and not os.listdir(path)), "%s was written" % path
    for path, state in before.items():
        assert tree_state(path) == state, "%s changed" % path
    for repository in case.get("mirror_absent", []):
        assert ctx.bed.mirror_tags(repository.split("/", 1)[1]) == [], "%s was pushed" % repository
