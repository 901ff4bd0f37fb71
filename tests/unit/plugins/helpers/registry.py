# Copyright: airgap.microshift contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""A real registry for the tests: ``docker-registry serve`` on loopback.

TLS from a test CA made with openssl (or plain HTTP), htpasswd logins, token logins (a
:class:`TokenServer` realm, the protocol Quay and Harbor speak) or none; on the machine's
loopback, or on the loopback of a private network namespace (``netns``), where a lookup of any
other registry fails at once and no packet leaves the machine.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import http.server
import json
import os
import re
import shutil
import ssl
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request

from ansible_collections.airgap.microshift.tests.unit.plugins.helpers.processes import die_with_parent, free_port, run, stop, wait_until

SKOPEO = shutil.which("skopeo")
REGISTRY_BIN = shutil.which("docker-registry") or shutil.which("registry")
OPENSSL = shutil.which("openssl")
HTPASSWD = shutil.which("htpasswd")
NSENTER = shutil.which("nsenter")
UNSHARE = shutil.which("unshare")
REGISTRY_TOOLS = bool(SKOPEO and REGISTRY_BIN and OPENSSL and HTPASSWD)
NEEDS_TOOLS = "needs skopeo, docker-registry, openssl and htpasswd (the test command installs them)"

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
ACCEPT = ", ".join([OCI_INDEX, OCI_MANIFEST, "application/vnd.docker.distribution.manifest.list.v2+json",
                    "application/vnd.docker.distribution.manifest.v2+json"])


def make_test_ca(pki, name="ca", cn="airgap test CA"):
    """A self-signed CA made with openssl: ``(key path, certificate path)`` in ``pki``."""
    key, crt = os.path.join(pki, name + ".key"), os.path.join(pki, name + ".crt")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", crt, "-days", "2",
                    "-subj", "/CN=" + cn, "-addext", "basicConstraints=critical,CA:TRUE",
                    "-addext", "keyUsage=critical,keyCertSign,cRLSign"], check=True, capture_output=True)
    return key, crt


def make_server_cert(pki, ca, san="IP:127.0.0.1,DNS:localhost", cn="127.0.0.1"):
    """A server key and certificate for ``san`` signed by ``ca`` (from :func:`make_test_ca`).

    With ``san`` None the certificate names its host only in the legacy Common Name ``cn``.
    """
    key, csr, crt, ext = (os.path.join(pki, name) for name in ("server.key", "server.csr", "server.crt", "server.ext"))
    with open(ext, "w") as handle:
        handle.write(("subjectAltName=%s\n" % san if san else "") + "extendedKeyUsage=serverAuth\n")
    subprocess.run(["openssl", "req", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", csr, "-subj", "/CN=" + cn],
                   check=True, capture_output=True)
    subprocess.run(["openssl", "x509", "-req", "-in", csr, "-CA", ca[1], "-CAkey", ca[0], "-CAcreateserial", "-out", crt,
                    "-days", "2", "-extfile", ext], check=True, capture_output=True)
    return key, crt


class TokenServer:
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


class LocalRegistry:
    """A distribution registry on 127.0.0.1.

    ``tls`` (a test CA, its certificate in ``cert_dir``) or plain HTTP; ``auth`` is ``htpasswd``,
    ``token`` or None (anonymous); ``server_san`` and ``server_cn`` name the server certificate's
    host (``server_san`` None: only its legacy Common Name). With ``netns`` (the path of a network
    namespace, such as ``/proc/<pid>/ns/net``) it listens on that namespace's loopback; :attr:`skopeo` then names a
    wrapper that runs skopeo in there too. Attributes: host, cert_dir, ca_path, username, password,
    authfile (the right login), data_dir, log_path.
    """

    def __init__(self, work, username="mirror", password="s3cret-Pass", auth="htpasswd", tls=True, netns=None, port=None,
                 server_san="IP:127.0.0.1,DNS:localhost", server_cn="127.0.0.1"):
        self.work = work
        self.server_san = server_san
        self.server_cn = server_cn
        self.auth = auth
        self.tls = tls
        self.netns = netns
        self.token_server = None
        self.username = username
        self.password = password
        self.port = port or free_port()
        self.host = "127.0.0.1:%d" % self.port
        self.cert_dir = os.path.join(work, "certs.d")
        self.ca_path = os.path.join(self.cert_dir, "ca.crt")
        self.authfile = os.path.join(work, "auth.json")
        self.data_dir = os.path.join(work, "data")
        self.log_path = os.path.join(work, "registry.log")
        self.skopeo = SKOPEO
        self.process = None
        self._log = None

    def _prefix(self):
        return [NSENTER, "--net=%s" % self.netns, "--"] if self.netns else []

    def _make_tls(self):
        pki = os.path.join(self.work, "pki")
        os.makedirs(pki)
        os.makedirs(self.cert_dir)
        ca = make_test_ca(pki)
        key, crt = make_server_cert(pki, ca, self.server_san, self.server_cn)
        shutil.copy(ca[1], self.ca_path)
        return key, crt

    def start(self):
        os.makedirs(self.work, exist_ok=True)
        http_conf = "http:\n  addr: %s\n  secret: airgap-test-secret\n" % self.host
        auth = ""
        if self.tls:
            key, crt = self._make_tls()
            http_conf += "  tls:\n    certificate: %s\n    key: %s\n" % (crt, key)
        if self.auth == "token":
            self.token_server = TokenServer(self.work, self.username, self.password, crt, key)
            self.token_server.start()
            auth = ("auth:\n  token:\n    realm: %s\n    service: %s\n    issuer: %s\n    rootcertbundle: %s\n"
                    % (self.token_server.realm, TokenServer.SERVICE, TokenServer.ISSUER, self.token_server.bundle))
        elif self.auth == "htpasswd":
            htpasswd = os.path.join(self.work, "htpasswd")
            with open(htpasswd, "w") as handle:
                handle.write(run([HTPASSWD, "-Bbn", self.username, self.password]))
            auth = "auth:\n  htpasswd:\n    realm: airgap-test\n    path: %s\n" % htpasswd
        config = os.path.join(self.work, "config.yml")
        with open(config, "w") as handle:
            handle.write(
                "version: 0.1\n"
                "log:\n  level: info\n  formatter: json\n  accesslog:\n    disabled: true\n"
                "storage:\n  filesystem:\n    rootdirectory: %s\n  delete:\n    enabled: true\n" % self.data_dir
                + http_conf + auth)
        self.write_authfile(self.authfile, self.password)
        if self.netns:
            self.skopeo = os.path.join(self.work, "skopeo-in-netns")
            with open(self.skopeo, "w") as handle:
                handle.write("#!/bin/sh\nexec %s \"$@\"\n" % " ".join(self._prefix() + [SKOPEO]))
            os.chmod(self.skopeo, 0o700)
        self._log = open(self.log_path, "ab")
        self.process = subprocess.Popen(self._prefix() + [REGISTRY_BIN, "serve", config], stdout=self._log,
                                        stderr=subprocess.STDOUT, preexec_fn=die_with_parent)
        wait_until(self._answers, self.process, self.log_path, "docker-registry on %s" % self.host)
        return self

    def _answers(self):
        if self.netns:
            probe = subprocess.run(self._prefix() + ["bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/%d" % self.port],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
            return probe.returncode == 0
        try:
            self.request("/v2/")
            return True
        except urllib.error.HTTPError:
            return True
        except (OSError, urllib.error.URLError):
            return False

    def stop(self):
        stop(self.process)
        if self._log is not None:
            self._log.close()
        if self.token_server is not None:
            self.token_server.stop()

    # access ------------------------------------------------------------------------------

    def write_authfile(self, path, password, username=None):
        token = base64.b64encode(("%s:%s" % (username or self.username, password)).encode()).decode()
        with open(path, "w") as handle:
            json.dump({"auths": {self.host: {"auth": token}}}, handle)
        os.chmod(path, 0o600)
        return path

    def skopeo_args(self, prefix=""):
        """skopeo's flags to reach this registry (``prefix`` is ``src-`` or ``dest-`` for a copy)."""
        if not self.tls:
            return ["--%stls-verify=false" % prefix]
        return ["--%sauthfile=%s" % (prefix, self.authfile), "--%scert-dir=%s" % (prefix, self.cert_dir)]

    def request(self, path, accept=None, method="GET"):
        """``(status, headers, body)`` of an authenticated request to the registry (not in a namespace)."""
        scheme = "https" if self.tls else "http"
        context = ssl.create_default_context(cafile=self.ca_path) if self.tls else None
        req = urllib.request.Request("%s://%s%s" % (scheme, self.host, path), method=method)
        if self.token_server is not None:
            parts = path.split("/")
            # /v2/<name>/manifests/<ref>: a token for <name>; /v2/: one with no access
            scopes = ["repository:%s:pull,push" % "/".join(parts[2:-2])] if len(parts) > 4 else []
            req.add_header("Authorization", "Bearer " + self.token_server.token(scopes))
        elif self.auth == "htpasswd":
            req.add_header("Authorization", "Basic " + base64.b64encode(("%s:%s" % (self.username, self.password)).encode()).decode())
        if accept:
            req.add_header("Accept", accept)
        with urllib.request.urlopen(req, context=context, timeout=10) as resp:
            return resp.status, dict(resp.headers), resp.read()

    def manifest(self, repository, reference):
        """Raw manifest bytes and media type, read over HTTP(S) (independently of skopeo)."""
        dummy, headers, body = self.request("/v2/%s/manifests/%s" % (repository, reference), accept=ACCEPT)
        return body, headers.get("Content-Type")

    def _name(self, repository):
        """``host/repository`` for a repository given with or without this registry's host."""
        return repository if repository.startswith(self.host + "/") else "%s/%s" % (self.host, repository)

    def served(self, repository, reference):
        """The manifest bytes the registry serves for ``repository@reference`` (or ``:tag``), or None;
        ``repository`` with or without this registry's host."""
        separator = "@" if reference.startswith("sha256:") else ":"
        result = subprocess.run([self.skopeo, "inspect", "--raw"] + self.skopeo_args()
                                + ["docker://%s%s%s" % (self._name(repository), separator, reference)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, check=False)
        return result.stdout if result.returncode == 0 else None

    def tags(self, repository):
        """The tags of ``repository`` (with or without this registry's host; empty when it does not exist)."""
        result = subprocess.run([self.skopeo, "list-tags"] + self.skopeo_args() + ["docker://%s" % self._name(repository)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True, check=False)
        if result.returncode != 0:
            assert "404" in result.stderr or "unknown" in result.stderr, result.stderr
            return []
        return sorted(json.loads(result.stdout)["Tags"] or [])

    def image_blobs(self, repository, reference):
        """``{digest: size}`` of every manifest, config and layer of an image, read over HTTP(S)."""
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

    # its log -----------------------------------------------------------------------------

    def log_offset(self):
        self._log.flush()
        return os.path.getsize(self.log_path)

    def _entries(self, offset):
        with open(self.log_path, "rb") as handle:
            handle.seek(offset)
            for line in handle.read().decode("utf-8", "replace").splitlines():
                try:
                    yield json.loads(line)
                except ValueError:
                    continue

    def requests_since(self, offset, method=None, path_contains="", message="response completed"):
        """``(method, uri)`` of the requests the registry logged after ``offset`` (``message``
        selects the log entry: ``response completed``, or ``error authenticating user`` for 401s)."""
        found = []
        for entry in self._entries(offset):
            if not str(entry.get("msg", "")).startswith(message):
                continue
            verb, uri = entry.get("http.request.method"), entry.get("http.request.uri", "")
            if (method is None or verb == method) and path_contains in uri:
                found.append((verb, uri))
        return found

    def writes_since(self, offset):
        """The requests after ``offset`` that write (POST, PUT, PATCH, DELETE)."""
        return [(verb, uri) for verb, uri in self.requests_since(offset) if verb in ("POST", "PUT", "PATCH", "DELETE")]

    def blob_gets(self, offset, repository_prefix=""):
        """Successful blob downloads (GET .../blobs/sha256:...) logged after ``offset``."""
        pattern = re.compile(r"^/v2/%s.*/blobs/sha256:[0-9a-f]{64}$" % re.escape(repository_prefix))
        return [entry["http.request.uri"].rsplit("/", 1)[1] for entry in self._entries(offset)
                if entry.get("msg") == "response completed" and entry.get("http.request.method") == "GET"
                and entry.get("http.response.status") == 200 and pattern.match(entry.get("http.request.uri", ""))]


class Namespace:
    """A private network namespace with only its loopback up, held by a child process of the test."""

    def __init__(self):
        self.holder = subprocess.Popen([UNSHARE, "--net", "--", "sh", "-c", "ip link set lo up && exec sleep 3600"],
                                       preexec_fn=die_with_parent)
        self.path = "/proc/%d/ns/net" % self.holder.pid
        for dummy in range(100):
            if os.readlink(self.path) != os.readlink("/proc/self/ns/net"):
                break
            time.sleep(0.05)

    def close(self):
        stop(self.holder)


def registry_fixture(tmp_path_factory, name="registry", **options):
    """A generator for a pytest fixture: a started :class:`LocalRegistry`, stopped after the test."""
    registry = LocalRegistry(str(tmp_path_factory.mktemp(name)), **options)
    try:
        registry.start()
        yield registry
    finally:
        registry.stop()
