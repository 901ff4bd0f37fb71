# Copyright: airgap.microshift contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""Read manifests from a registry over HTTPS, many per connection, for the checks of an upload.

Checking that a mirror serves a manifest is one small GET; running one ``skopeo inspect`` per
manifest costs a process, a TLS handshake and a login each, which is most of a rerun's time.
:class:`ManifestReader` keeps one HTTPS connection per thread and answers :meth:`~ManifestReader.served`
with ``True`` (the registry returned exactly those bytes), ``False`` (it does not have them) or
``None`` when it cannot tell for sure: anything it does not handle (a proxy, a credential
helper, a certificate it cannot verify, a login refused, an unexpected status) makes it step
aside for good, and the caller asks skopeo instead, which then gives the error its full message.

Logins: HTTP Basic, and bearer tokens (the distribution token protocol that Quay, Harbor and
the distribution registry's token mode speak): the token realm is asked, with the auth file's
user and password when there are some, for a ``repository:<name>:pull`` token, which is kept
per repository until shortly before it expires.

Credentials come from a containers auth file (containers-auth.json(5): ``auths`` entries with a
base64 ``user:password`` ``auth``), looked up the way containers/image does for a repository: the
most specific ``host/path`` key first, then ``host``. Certificates: the system trust store, and
the ``*.crt`` (CAs) and ``*.cert``/``*.key`` (client) files of ``cert_dir``, or when none is given
of ``/etc/containers/certs.d/<host>`` and ``/etc/docker/certs.d/<host>``.
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import json
import os
import re
import ssl
import threading
import time
import urllib.parse

from ansible_collections.airgap.microshift.plugins.module_utils import _authfile

MANIFEST_ACCEPT = ", ".join([
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.docker.distribution.manifest.v2+json",
])
CERT_DIRS = ("/etc/containers/certs.d", "/etc/docker/certs.d")
# The most a manifest or a small blob read through the reader may have.
MAX_BODY = 8 * 1024 * 1024
_PROXY_VARIABLES = ("https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY")
_CHALLENGE_PARAM = re.compile(r'(\w+)="([^"]*)"')


class CannotTell(Exception):
    """The reader cannot answer for sure; skopeo must."""


def credentials_for(auths, registry, repository):
    """``(user, password)`` of the most specific entry of an ``auths`` map for ``registry/repository``.

    ``None`` when no entry matches. Raises :class:`CannotTell` for an entry without a usable
    ``auth`` (an identity token, or a malformed value).
    """
    found = _authfile.lookup({"auths": auths or {}}, registry, repository)
    if found is None:
        return None
    key, entry = found
    if not isinstance(entry, dict) or not entry.get("auth") or entry.get("identitytoken"):
        raise CannotTell("the auth file entry %s holds no user and password" % key)
    try:
        user, password = _authfile.decode_auth(entry["auth"])
    except ValueError:
        raise CannotTell("the auth file entry %s is not base64 user:password" % key)
    return user, password


def tls_context(registry, tls_verify=True, cert_dir=None):
    """An SSL context trusting the system store plus the registry's certificate directory."""
    if not tls_verify:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        return context
    context = ssl.create_default_context()
    if getattr(ssl, "HAS_NEVER_CHECK_COMMON_NAME", False):
        # as Go's crypto/tls, which the containers tools use: the host name must be in subjectAltName
        context.hostname_checks_common_name = False
    directories = [cert_dir] if cert_dir else [os.path.join(base, registry) for base in CERT_DIRS]
    for directory in directories:
        if not os.path.isdir(directory):
            continue
        for name in sorted(os.listdir(directory)):
            path = os.path.join(directory, name)
            if name.endswith(".crt"):
                context.load_verify_locations(cafile=path)
            elif name.endswith(".cert"):
                key = path[:-len(".cert")] + ".key"
                if os.path.isfile(key):
                    context.load_cert_chain(path, key)
    return context


class ManifestReader:
    """GETs manifests by digest from one registry (``host[:port]``), thread safe.

    ``authfile`` None means anonymous access (a registry that asks for a login then makes the
    reader step aside). After the first :class:`CannotTell` every call raises it at once.
    """

    def __init__(self, registry, authfile=None, tls_verify=True, cert_dir=None, timeout=30.0):
        self.registry = registry
        self.timeout = timeout
        self._local = threading.local()
        self._disabled = None
        self._scheme = None             # None, "basic", or the Bearer challenge to answer
        self._tokens = {}               # repository -> (Authorization header, expiry on the monotonic clock)
        self._tokens_lock = threading.Lock()
        self._auths = {}
        self._context = None
        self._init_error = None
        try:
            if any(os.environ.get(name) for name in _PROXY_VARIABLES):
                raise CannotTell("an HTTPS proxy is configured")
            if authfile:
                document = _authfile.read_authfile(authfile)
                if _authfile.uses_helper(document):
                    raise CannotTell("the auth file %s uses a credential helper" % authfile)
                self._auths = document.get("auths") or {}
            self._context = tls_context(registry, tls_verify, cert_dir)
        except (OSError, ValueError, ssl.SSLError, CannotTell, _authfile.AuthFileError) as exc:
            self._disabled = str(exc)

    @property
    def disabled(self):
        """Why the reader stepped aside, or None while it works."""
        return self._disabled

    def _disable(self, why):
        self._disabled = why
        raise CannotTell(why)

    def _connection(self):
        conn = getattr(self._local, "conn", None)
        if conn is None:
            host, dummy, port = self.registry.partition(":")
            conn = http.client.HTTPSConnection(host, int(port) if port else 443, timeout=self.timeout, context=self._context)
            self._local.conn = conn
        return conn

    def _request(self, path, headers, limit=MAX_BODY):
        """``(status, headers, body)``; one reconnect when a kept-alive connection was closed.

        A body longer than ``limit`` bytes is not read: the reader steps aside.
        """
        for attempt in (1, 2):
            conn = self._connection()
            try:
                conn.request("GET", path, headers=headers)
                response = conn.getresponse()
                body = response.read(limit + 1)
                if len(body) > limit:
                    conn.close()
                    self._local.conn = None
                    self._disable("%s sent more than %d bytes for %s" % (self.registry, limit, path))
                if (response.getheader("Connection") or "").lower() == "close" or not response.isclosed():
                    conn.close()
                    self._local.conn = None
                return response.status, response, body
            except (http.client.HTTPException, OSError) as exc:
                conn.close()
                self._local.conn = None
                if attempt == 2 or isinstance(exc, ssl.SSLError):
                    self._disable("cannot reach %s over HTTPS (%s)" % (self.registry, exc))
        return None  # not reached

    def _basic_header(self, repository, required=True):
        try:
            creds = credentials_for(self._auths, self.registry, repository)
        except CannotTell as exc:
            self._disable(str(exc))
        if creds is None:
            if required:
                self._disable("no credentials for %s in the auth file" % self.registry)
            return None
        return "Basic " + base64.b64encode(("%s:%s" % creds).encode("utf-8")).decode("ascii")

    def _bearer_header(self, repository, challenge, stale=None):
        """A bearer token for pulling ``repository``, from the realm the challenge names (cached)."""
        with self._tokens_lock:
            cached = self._tokens.get(repository)
            if cached and cached[0] != stale and cached[1] > time.monotonic():
                return cached[0]
        params = dict((key.lower(), value) for key, value in _CHALLENGE_PARAM.findall(challenge))
        realm = urllib.parse.urlsplit(params.get("realm", ""))
        if realm.scheme != "https" or not realm.hostname:
            self._disable("%s names a token realm that is not https (%r)" % (self.registry, params.get("realm")))
        query = [("scope", "repository:%s:pull" % repository)]
        if params.get("service"):
            query.insert(0, ("service", params["service"]))
        path = (realm.path or "/") + "?" + "&".join(
            ([realm.query] if realm.query else []) + ["%s=%s" % (k, urllib.parse.quote(v, safe=":/")) for k, v in query])
        headers = {}
        basic = self._basic_header(repository, required=False)
        if basic:
            headers["Authorization"] = basic
        conn = http.client.HTTPSConnection(realm.hostname, realm.port or 443, timeout=self.timeout, context=self._context)
        try:
            conn.request("GET", path, headers=headers)
            response = conn.getresponse()
            body = response.read()
        except (http.client.HTTPException, OSError) as exc:
            self._disable("cannot get a token from %s (%s)" % (params.get("realm"), exc))
        finally:
            conn.close()
        if response.status != 200:
            self._disable("the token realm %s answered HTTP %d" % (params.get("realm"), response.status))
        try:
            document = json.loads(body.decode("utf-8"))
            token = document.get("token") or document.get("access_token")
            lifetime = int(document.get("expires_in") or 60)
        except (ValueError, AttributeError, TypeError):
            token = None
        if not token:
            self._disable("the token realm %s returned no token" % params.get("realm"))
        header = "Bearer " + token
        with self._tokens_lock:
            # renew a little before the registry would refuse it
            self._tokens[repository] = (header, time.monotonic() + max(5, lifetime - 10))
        return header

    def _login(self, repository, response, stale=None):
        """The Authorization header a 401 ``response`` asks for: Basic, or a bearer token."""
        challenge = response.getheader("WWW-Authenticate") or ""
        scheme = challenge.split(" ", 1)[0].lower()
        if scheme == "basic":
            self._scheme = "basic"
            return self._basic_header(repository)
        if scheme == "bearer":
            self._scheme = challenge
            return self._bearer_header(repository, challenge, stale)
        self._disable("%s asks for a login this reader does not do (%s)" % (self.registry, scheme or "none"))
        return None  # not reached

    def _get(self, repository, path, headers):
        """``(status, response, body)`` of a GET on the registry, logging in when it asks (once per call)."""
        if self._disabled:
            raise CannotTell(self._disabled)
        headers = dict(headers)
        # once the registry asked for a login, send one with every request
        if self._scheme == "basic":
            headers["Authorization"] = self._basic_header(repository)
        elif self._scheme:
            headers["Authorization"] = self._bearer_header(repository, self._scheme)
        status, response, body = self._request(path, headers)
        if status == 401:
            # no login yet, or an expired token: one more try with a fresh one
            headers["Authorization"] = self._login(repository, response, stale=headers.get("Authorization"))
            status, response, body = self._request(path, headers)
        return status, response, body

    def get_manifest(self, repository, reference, accept=MANIFEST_ACCEPT):
        """``(bytes, media type)`` the registry serves for ``repository`` at ``reference`` (a tag or a
        digest), or None when it has none (404)."""
        status, response, body = self._get(repository, "/v2/%s/manifests/%s" % (repository, reference), {"Accept": accept})
        if status == 200:
            return body, (response.getheader("Content-Type") or "").split(";", 1)[0].strip()
        if status == 404:
            return None
        self._disable("%s answered HTTP %d for %s:%s" % (self.registry, status, repository, reference))
        return None  # not reached

    def manifest(self, repository, digest):
        """The bytes the registry serves for ``repository@digest``, or None when it has none (404)."""
        found = self.get_manifest(repository, digest)
        return None if found is None else found[0]

    def blob(self, repository, digest, max_size):
        """The bytes of the blob ``digest`` of ``repository`` (at most ``max_size``), or None when absent.

        A redirect to a storage URL (as Quay's CDN answers) is followed once, without credentials.
        Raises :class:`CannotTell` for anything else, and for bytes that do not hash to ``digest``.
        """
        status, response, body = self._get(repository, "/v2/%s/blobs/%s" % (repository, digest), {})
        if status in (301, 302, 303, 307, 308):
            body = self._follow(response.getheader("Location") or "", max_size, digest)
        elif status == 404:
            return None
        elif status != 200:
            self._disable("%s answered HTTP %d for the blob %s of %s" % (self.registry, status, digest, repository))
        if len(body) > max_size:
            self._disable("%s served %d bytes for the blob %s of %s, more than %d" % (self.registry, len(body), digest, repository, max_size))
        if "sha256:" + hashlib.sha256(body).hexdigest() != digest:
            self._disable("%s served bytes of another digest for the blob %s of %s" % (self.registry, digest, repository))
        return body

    def _follow(self, location, max_size, digest):
        url = urllib.parse.urlsplit(location)
        if url.scheme != "https" or not url.hostname:
            self._disable("%s redirected the blob %s to a URL that is not https" % (self.registry, digest))
        context = self._context if url.hostname == self.registry.split(":", 1)[0] else ssl.create_default_context()
        conn = http.client.HTTPSConnection(url.hostname, url.port or 443, timeout=self.timeout, context=context)
        try:
            conn.request("GET", url.path + ("?" + url.query if url.query else ""))
            response = conn.getresponse()
            body = response.read(max_size + 1)
        except (http.client.HTTPException, OSError) as exc:
            self._disable("cannot read the blob %s from %s (%s)" % (digest, url.hostname, exc))
        finally:
            conn.close()
        if response.status != 200:
            self._disable("%s answered HTTP %d for the blob %s" % (url.hostname, response.status, digest))
        return body

    def served(self, repository, digest):
        """True when ``repository@digest`` is served with bytes of that digest, False when it is absent.

        Raises :class:`CannotTell` otherwise (including bytes of another digest: skopeo, asked
        next, words that failure).
        """
        body = self.manifest(repository, digest)
        if body is None:
            return False
        if "sha256:" + hashlib.sha256(body).hexdigest() != digest:
            self._disable("%s served bytes of another digest for %s@%s" % (self.registry, repository, digest))
        return True


class RegistrySource:
    """Reads manifests and small blobs from any registry: one :class:`ManifestReader` per host.

    What the signature checks read (attachments, their payloads, the manifests they sign).
    Every method raises :class:`CannotTell` with the reason when a registry cannot be read for sure.
    """

    def __init__(self, authfile=None, tls_verify=True, cert_dir=None, timeout=30.0, insecure=()):
        self.authfile = authfile
        self.tls_verify = tls_verify
        self.cert_dir = cert_dir
        self.insecure = set(insecure)   # registries read without verifying their certificate
        self.timeout = timeout
        self._readers = {}
        self._lock = threading.Lock()
        self.requests = 0

    def reader(self, registry):
        with self._lock:
            if registry not in self._readers:
                self._readers[registry] = ManifestReader(registry, self.authfile, self.tls_verify and registry not in self.insecure,
                                                         self.cert_dir, self.timeout)
            self.requests += 1
            return self._readers[registry]

    def manifest(self, registry, repository, reference, accept=None):
        """``(bytes, media type)`` of ``registry/repository`` at ``reference`` (tag or digest), or None (absent)."""
        return self.reader(registry).get_manifest(repository, reference, accept or MANIFEST_ACCEPT)

    def blob(self, registry, repository, digest, max_size):
        """The bytes of a blob (checked against its digest), or None (absent)."""
        return self.reader(registry).blob(repository, digest, max_size)
