# Copyright: airgap.microshift contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""Shared fixtures: a real registry on loopback and synthetic images pushed into it.

``local_registry`` starts ``docker-registry serve`` on 127.0.0.1:<free port> with TLS (a test
CA made with openssl) and htpasswd auth, and stops it at the end of the session.
``synthetic_images`` builds OCI layouts in Python (random layers, shared between images and
between architectures) and pushes them with ``skopeo copy --all``: use a fresh namespace per
test so tests do not see each other's pushes.
"""

from __future__ import annotations

import base64
import datetime
import gzip
import hashlib
import http.server
import io
import json
import os
import random
import re
import shutil
import ssl
import subprocess
import tarfile
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request

import pytest

from ansible_collections.airgap.microshift.tests.unit.plugins.helpers import die_with_parent, free_port, make_server_cert, make_test_ca

SKOPEO = shutil.which("skopeo")
REGISTRY_BIN = shutil.which("docker-registry") or shutil.which("registry")
OPENSSL = shutil.which("openssl")
HTPASSWD = shutil.which("htpasswd")
REGISTRY_TOOLS = bool(SKOPEO and REGISTRY_BIN and OPENSSL and HTPASSWD)

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
ACCEPT = ", ".join([OCI_INDEX, OCI_MANIFEST, "application/vnd.docker.distribution.manifest.list.v2+json",
                    "application/vnd.docker.distribution.manifest.v2+json"])


def _run(argv, **kwargs):
    return subprocess.run(argv, check=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kwargs)


class TokenServer(object):
    """The token service of the distribution token protocol (what Quay and Harbor speak), over TLS.

    ``GET /token?service=...&scope=repository:<name>:<actions>`` with the right Basic login gets a
    JWT (RS256, signed by a key whose self-signed certificate the registry trusts via its
    ``rootcertbundle``) granting what the scopes ask. ``issued`` counts the tokens given out.
    """

    SERVICE = "airgap-test-registry"
    ISSUER = "airgap-test-issuer"

    def __init__(self, work, username, password, tls_cert, tls_key):
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import rsa
        from cryptography.x509.oid import NameOID

        self.username, self.password = username, password
        self.issued = 0
        self._key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "airgap test token signer")])
        now = datetime.datetime.now(datetime.timezone.utc)
        cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(self._key.public_key())
                .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
                .not_valid_after(now + datetime.timedelta(days=1))
                .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                .sign(self._key, hashes.SHA256()))
        self._cert_der = cert.public_bytes(serialization.Encoding.DER)
        self.bundle = os.path.join(work, "token-signer.crt")
        with open(self.bundle, "wb") as handle:
            handle.write(cert.public_bytes(serialization.Encoding.PEM))
        self.port = free_port()
        self.realm = "https://127.0.0.1:%d/token" % self.port
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def do_GET(self):  # noqa: N802  (the name http.server calls)
                url = urllib.parse.urlsplit(self.path)
                expected = "Basic " + base64.b64encode(("%s:%s" % (server.username, server.password)).encode()).decode()
                if url.path != "/token" or self.headers.get("Authorization") != expected:
                    self.send_response(401)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                query = urllib.parse.parse_qs(url.query)
                body = json.dumps({"token": server.token(query.get("scope", [])), "expires_in": 300}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self._httpd = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(tls_cert, tls_key)
        self._httpd.socket = context.wrap_socket(self._httpd.socket, server_side=True)
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    def token(self, scopes):
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import padding

        access = []
        for scope in scopes:
            kind, dummy, rest = scope.partition(":")
            name, dummy, actions = rest.rpartition(":")
            access.append({"type": kind, "name": name, "actions": [a for a in actions.split(",") if a]})
        now = int(time.time())
        claims = {"iss": self.ISSUER, "sub": self.username, "aud": self.SERVICE, "exp": now + 300, "nbf": now - 10,
                  "iat": now, "jti": base64.b16encode(os.urandom(8)).decode(), "access": access}
        header = {"typ": "JWT", "alg": "RS256", "x5c": [base64.b64encode(self._cert_der).decode()]}

        def encode(data):
            return base64.urlsafe_b64encode(json.dumps(data, separators=(",", ":")).encode()).rstrip(b"=")

        signing_input = encode(header) + b"." + encode(claims)
        signature = self._key.sign(signing_input, padding.PKCS1v15(), hashes.SHA256())
        self.issued += 1
        return (signing_input + b"." + base64.urlsafe_b64encode(signature).rstrip(b"=")).decode()

    def start(self):
        self._thread.start()

    def stop(self):
        self._httpd.shutdown()
        self._httpd.server_close()


class LocalRegistry(object):
    """A distribution registry with TLS on 127.0.0.1, and htpasswd (Basic) or token logins."""

    def __init__(self, work, username="mirror", password="s3cret-Pass", auth="htpasswd"):
        self.work = work
        self.auth = auth
        self.token_server = None
        self.username = username
        self.password = password
        self.port = free_port()
        self.host = "127.0.0.1:%d" % self.port
        self.cert_dir = os.path.join(work, "certs.d")
        self.ca_path = os.path.join(self.cert_dir, "ca.crt")
        self.authfile = os.path.join(work, "auth.json")
        self.log_path = os.path.join(work, "registry.log")
        self.process = None
        self._log = None

    # setup ---------------------------------------------------------------------------

    def _make_tls(self):
        pki = os.path.join(self.work, "pki")
        os.makedirs(pki)
        os.makedirs(self.cert_dir)
        ca = make_test_ca(pki)
        key, crt = make_server_cert(pki, ca)
        shutil.copy(ca[1], self.ca_path)
        return key, crt

    def start(self):
        key, crt = self._make_tls()
        htpasswd = os.path.join(self.work, "htpasswd")
        with open(htpasswd, "wb") as handle:
            handle.write(_run([HTPASSWD, "-Bbn", self.username, self.password]).stdout)
        if self.auth == "token":
            self.token_server = TokenServer(self.work, self.username, self.password, crt, key)
            self.token_server.start()
            auth = ("auth:\n  token:\n    realm: %s\n    service: %s\n    issuer: %s\n    rootcertbundle: %s\n"
                    % (self.token_server.realm, TokenServer.SERVICE, TokenServer.ISSUER, self.token_server.bundle))
        else:
            auth = "auth:\n  htpasswd:\n    realm: airgap-test\n    path: %s\n" % htpasswd
        config = os.path.join(self.work, "config.yml")
        with open(config, "w") as handle:
            handle.write(
                "version: 0.1\n"
                "log:\n  level: info\n  formatter: json\n  accesslog:\n    disabled: true\n"
                "storage:\n  filesystem:\n    rootdirectory: %s\n  delete:\n    enabled: true\n"
                "http:\n  addr: %s\n  secret: airgap-test-secret\n  tls:\n    certificate: %s\n    key: %s\n"
                % (os.path.join(self.work, "data"), self.host, crt, key) + auth)
        self.write_authfile(self.authfile, self.password)
        self._log = open(self.log_path, "ab")
        self.process = subprocess.Popen([REGISTRY_BIN, "serve", config], stdout=self._log, stderr=subprocess.STDOUT,
                                        preexec_fn=die_with_parent)
        deadline = time.monotonic() + 30
        while True:
            if self.process.poll() is not None:
                raise RuntimeError("docker-registry exited: %s" % open(self.log_path).read()[-2000:])
            try:
                self.request("/v2/")
                return self
            except (OSError, urllib.error.URLError):
                if time.monotonic() > deadline:
                    raise RuntimeError("docker-registry did not answer on %s" % self.host)
                time.sleep(0.1)

    def stop(self):
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        if self._log is not None:
            self._log.close()
        if self.token_server is not None:
            self.token_server.stop()

    # helpers -------------------------------------------------------------------------

    def write_authfile(self, path, password, username=None):
        token = base64.b64encode(("%s:%s" % (username or self.username, password)).encode()).decode()
        with open(path, "w") as handle:
            json.dump({"auths": {self.host: {"auth": token}}}, handle)
        os.chmod(path, 0o600)
        return path

    def request(self, path, accept=None, method="GET"):
        """``(status, headers, body)`` of an authenticated HTTPS request to the registry."""
        context = ssl.create_default_context(cafile=self.ca_path)
        req = urllib.request.Request("https://%s%s" % (self.host, path), method=method)
        if self.token_server is not None:
            parts = path.split("/")
            # /v2/<name>/manifests/<ref>: a token for <name>; /v2/: one with no access
            scopes = ["repository:%s:pull,push" % "/".join(parts[2:-2])] if len(parts) > 4 else []
            req.add_header("Authorization", "Bearer " + self.token_server.token(scopes))
        else:
            req.add_header("Authorization", "Basic " + base64.b64encode(("%s:%s" % (self.username, self.password)).encode()).decode())
        if accept:
            req.add_header("Accept", accept)
        with urllib.request.urlopen(req, context=context, timeout=10) as resp:
            return resp.status, dict(resp.headers), resp.read()

    def manifest(self, repository, reference):
        """Raw manifest bytes and media type, read over HTTPS (independently of skopeo)."""
        dummy, headers, body = self.request("/v2/%s/manifests/%s" % (repository, reference), accept=ACCEPT)
        return body, headers.get("Content-Type")

    def image_blobs(self, repository, reference):
        """``{digest: size}`` of every manifest, config and layer of an image, read over HTTPS."""
        body, dummy = self.manifest(repository, reference)
        blobs = {"sha256:" + hashlib.sha256(body).hexdigest(): len(body)}
        doc = json.loads(body)
        children = [m["digest"] for m in doc.get("manifests", [])]
        manifests = [doc] if not children else []
        for child in children:
            child_body, dummy = self.manifest(repository, child)
            blobs[child] = len(child_body)
            manifests.append(json.loads(child_body))
        for manifest in manifests:
            for blob in [manifest["config"]] + manifest["layers"]:
                blobs[blob["digest"]] = blob["size"]
        return blobs

    def log_offset(self):
        self._log.flush()
        return os.path.getsize(self.log_path)

    def requests_since(self, offset, method=None, path_contains="", message="response completed"):
        """``(method, uri)`` of the requests the registry logged after ``offset`` (``message``
        selects the log entry: ``response completed``, or ``error authenticating user`` for 401s)."""
        found = []
        with open(self.log_path, "rb") as handle:
            handle.seek(offset)
            for line in handle.read().decode("utf-8", "replace").splitlines():
                try:
                    entry = json.loads(line)
                except ValueError:
                    continue
                if not str(entry.get("msg", "")).startswith(message):
                    continue
                verb, uri = entry.get("http.request.method"), entry.get("http.request.uri", "")
                if (method is None or verb == method) and path_contains in uri:
                    found.append((verb, uri))
        return found

    def blob_gets(self, offset, repository_prefix=""):
        """Successful blob downloads (GET .../blobs/sha256:...) logged after ``offset``."""
        pattern = re.compile(r"^/v2/%s.*/blobs/sha256:[0-9a-f]{64}$" % re.escape(repository_prefix))
        found = []
        with open(self.log_path, "rb") as handle:
            handle.seek(offset)
            for line in handle.read().decode("utf-8", "replace").splitlines():
                try:
                    entry = json.loads(line)
                except ValueError:
                    continue
                if (entry.get("msg") == "response completed" and entry.get("http.request.method") == "GET"
                        and entry.get("http.response.status") == 200 and pattern.match(entry.get("http.request.uri", ""))):
                    found.append(entry["http.request.uri"].rsplit("/", 1)[1])
        return found


@pytest.fixture(autouse=True)
def _fresh_module_warnings():
    """Module warnings are process-wide: a test that runs main() in-process must not see the
    warnings of an earlier one (ansible-test forks per test, plain pytest does not)."""
    from ansible.module_utils.common import warnings as module_warnings
    for name in ("_global_warnings", "_global_deprecations"):
        store = getattr(module_warnings, name, None)
        if store is not None:
            store.clear()
    yield


def _registry_fixture(tmp_path_factory, auth):
    if not REGISTRY_TOOLS:
        pytest.skip("needs skopeo, docker-registry, openssl and htpasswd (the test command installs them)")
    registry = LocalRegistry(str(tmp_path_factory.mktemp("registry")), auth=auth)
    try:
        registry.start()
        yield registry
    finally:
        registry.stop()


@pytest.fixture
def token_registry(tmp_path_factory):
    """Like ``local_registry``, with token logins (a :class:`TokenServer` realm) instead of htpasswd."""
    yield from _registry_fixture(tmp_path_factory, "token")


@pytest.fixture
def local_registry(tmp_path_factory):
    """A TLS + htpasswd ``docker-registry serve`` on 127.0.0.1 (attributes: host, ca_path, cert_dir,
    username, password, authfile, log_path; helpers: manifest, image_blobs, blob_gets...).

    One registry per test: ansible-test forks every test and never runs the finalizers of
    wider-scoped fixtures, so a session registry would be left running."""
    yield from _registry_fixture(tmp_path_factory, "htpasswd")


# ------------------------------------------------------------------------------ images

class SyntheticImages(object):
    """Builds OCI images with random layers and pushes them to a registry.

    Layers are keyed by name: two images (or two architectures) naming the same key share
    that layer, byte for byte.
    """

    def __init__(self, registry, work, seed):
        self.registry = registry
        self.work = work
        self.seed = seed
        self._layers = {}
        self.pushed = {}  # name -> dict(ref_digest, ref_tag, repository, digest)

    def layer(self, key, size):
        if key not in self._layers:
            rng = random.Random("%s/%s" % (self.seed, key))
            payload = rng.getrandbits(8 * size).to_bytes(size, "little") if size else b""
            tarred = io.BytesIO()
            with tarfile.open(fileobj=tarred, mode="w") as tar:
                info = tarfile.TarInfo("data/%s" % key)
                info.size = len(payload)
                tar.addfile(info, io.BytesIO(payload))
            raw = tarred.getvalue()
            self._layers[key] = (gzip.compress(raw, compresslevel=1, mtime=0), "sha256:" + hashlib.sha256(raw).hexdigest())
        return self._layers[key]

    @staticmethod
    def _put(layout, data):
        digest = hashlib.sha256(data).hexdigest()
        path = os.path.join(layout, "blobs", "sha256", digest)
        if not os.path.exists(path):
            with open(path, "wb") as handle:
                handle.write(data)
        return "sha256:" + digest, len(data)

    def build(self, name, arches, layers):
        """OCI layout of one image; ``layers`` is a list of ``(key, size)``; keys may use ``{arch}``."""
        layout = os.path.join(self.work, "layouts", name)
        os.makedirs(os.path.join(layout, "blobs", "sha256"))
        descriptors = []
        for arch in arches:
            layer_descs, diff_ids = [], []
            for key, size in layers:
                data, diff_id = self.layer(key.format(arch=arch), size)
                digest, length = self._put(layout, data)
                layer_descs.append({"mediaType": OCI_LAYER, "digest": digest, "size": length})
                diff_ids.append(diff_id)
            config = json.dumps({"architecture": arch, "os": "linux", "config": {"Labels": {"name": name}},
                                 "rootfs": {"type": "layers", "diff_ids": diff_ids}}, sort_keys=True).encode()
            cdigest, clen = self._put(layout, config)
            manifest = json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                                   "config": {"mediaType": OCI_CONFIG, "digest": cdigest, "size": clen},
                                   "layers": layer_descs}).encode()
            mdigest, mlen = self._put(layout, manifest)
            descriptors.append({"mediaType": OCI_MANIFEST, "digest": mdigest, "size": mlen,
                                "platform": {"architecture": arch, "os": "linux"}})
        if len(arches) == 1:
            top = dict(descriptors[0])
            del top["platform"]
        else:
            index = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": descriptors}).encode()
            idigest, ilen = self._put(layout, index)
            top = {"mediaType": OCI_INDEX, "digest": idigest, "size": ilen}
        with open(os.path.join(layout, "oci-layout"), "w") as handle:
            json.dump({"imageLayoutVersion": "1.0.0"}, handle)
        with open(os.path.join(layout, "index.json"), "w") as handle:
            json.dump({"schemaVersion": 2, "manifests": [top]}, handle)
        return layout

    def push(self, name, repository, arches, layers, tag="v1", docker_format=False):
        """Build and push one image; returns its digest ref (and records a tag ref)."""
        layout = self.build(name, arches, layers)
        dest = "docker://%s/%s:%s" % (self.registry.host, repository, tag)
        argv = [SKOPEO, "copy", "--all", "--quiet", "--dest-cert-dir", self.registry.cert_dir,
                "--dest-authfile", self.registry.authfile]
        argv += ["--format", "v2s2"] if docker_format else ["--preserve-digests"]
        _run(argv + ["oci:" + layout, dest])
        body, media_type = self.registry.manifest(repository, tag)
        digest = "sha256:" + hashlib.sha256(body).hexdigest()
        info = {"name": name, "repository": repository, "digest": digest, "media_type": media_type,
                "ref": "%s/%s@%s" % (self.registry.host, repository, digest),
                "tag_ref": "%s/%s:%s" % (self.registry.host, repository, tag),
                "blobs": self.registry.image_blobs(repository, digest)}
        self.pushed[name] = info
        return info

    def push_set(self, namespace, scale=1):
        """A small release-like set under ``namespace``: a shared base layer per arch, a shared
        middle layer, a docker-format list, a single-arch image; sizes multiplied by ``scale``."""
        kib = 1024 * scale
        base = [("base-{arch}", 96 * kib), ("runtime-{arch}", 48 * kib)]
        specs = [
            ("api", ["amd64", "arm64"], base + [("api-{arch}", 32 * kib)], False),
            ("dns", ["amd64", "arm64"], base + [("dns-{arch}", 24 * kib)], False),
            ("router", ["amd64", "arm64"], base + [("router-{arch}", 40 * kib)], True),
            ("tool", ["amd64"], [("base-{arch}", 96 * kib), ("tool", 16 * kib)], False),
        ]
        return [self.push(name, "%s/%s" % (namespace, name), arches, layers, docker_format=docker)
                for name, arches, layers, docker in specs]


@pytest.fixture
def synthetic_images(local_registry, tmp_path):
    """A :class:`SyntheticImages` bound to ``local_registry``, with a seed unique to the test."""
    return SyntheticImages(local_registry, str(tmp_path / "synthetic"), seed="%s-%d" % (tmp_path.name, os.getpid()))


# -- the fuzzing count, printed at the end of the session ----------------------------------------
# Tests may run in forked children (ansible-test's ansible_forked) on xdist workers: each example
# is counted as one line in a file the whole session shares, named in the environment.

FUZZ_COUNTS_ENV = "AIRGAP_FUZZ_COUNTS"


def pytest_configure(config):
    if not hasattr(config, "workerinput") and FUZZ_COUNTS_ENV not in os.environ:
        fd, path = tempfile.mkstemp(prefix="airgap-fuzz-", suffix=".counts")
        os.close(fd)
        os.environ[FUZZ_COUNTS_ENV] = path
        config.airgap_fuzz_counts = path


def pytest_terminal_summary(terminalreporter):
    path = getattr(terminalreporter.config, "airgap_fuzz_counts", None)
    if not path:
        return
    try:
        with open(path, encoding="utf-8") as handle:
            lines = [line.strip() for line in handle if line.strip()]
    finally:
        os.unlink(path)
    if lines:
        totals = {}
        for reader in lines:
            totals[reader] = totals.get(reader, 0) + 1
        terminalreporter.write_line("fuzzing of outside data: %d examples over %d readers (%s), no traceback" % (
            len(lines), len(totals), ", ".join("%s %d" % (reader, number) for reader, number in sorted(totals.items()))))
