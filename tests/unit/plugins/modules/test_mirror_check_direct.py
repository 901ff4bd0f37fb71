# Copyright: airgap.microshift contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""mirror_check's direct reads against skopeo alone: both engines on the same configurations must agree.

Three real registries (``docker-registry serve``, TLS from a test CA each, htpasswd logins) listen
on the loopback of a private network namespace:

- ``A`` (127.0.0.1:5453) and ``B`` (127.0.0.1:5454), the mirrors, under ``ns/``;
- ``C`` (``localhost:5455``), whose certificate names its host only in the legacy Common Name:
  Go's crypto/tls (skopeo, CRI-O) refuses it, Python's ssl accepts it unless told not to.

The whole module runs inside the namespace (``nsenter --net``), once with ``engine: skopeo`` and
once with ``engine: auto``, on each registries.conf below. Both must serve, and refuse, the same
images with the same reasons; ``auto`` must have confirmed the expected number of them itself, and
read each from the registry skopeo reads it from (the registries' logs say where). The source
registry, ``quay.io``, does not resolve in the namespace: no packet leaves the machine.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import sys

import ansible
import pytest

from ansible_collections.airgap.microshift.plugins.modules import mirror_check
from ansible_collections.airgap.microshift.tests.unit.plugins.helpers.images import SyntheticImages
from ansible_collections.airgap.microshift.tests.unit.plugins.helpers.processes import run
from ansible_collections.airgap.microshift.tests.unit.plugins.helpers.registry import (
    NSENTER, REGISTRY_TOOLS, SKOPEO, UNSHARE, LocalRegistry, Namespace, make_test_ca,
)

pytestmark = pytest.mark.skipif(
    not (REGISTRY_TOOLS and UNSHARE and NSENTER) or os.geteuid() != 0,
    reason="needs root, skopeo, docker-registry, openssl, htpasswd and util-linux (the test command runs as root and installs them)",
)

APP = "quay.io/openshift-release-dev/app"
BOTH = "quay.io/openshift-release-dev/both"
ONLY_B = "quay.io/openshift-release-dev/onlyb"
NEVER = "quay.io/openshift-release-dev/never"

# Runs main() of mirror_check with the arguments of a JSON file, as Ansible would.
RUNNER = """
import json, sys
from ansible.module_utils.testing import patch_module_args
from ansible_collections.airgap.microshift.plugins.modules import mirror_check
with open(sys.argv[1]) as handle:
    args = json.load(handle)
with patch_module_args(args):
    mirror_check.main()
"""


def _python_path():
    """PYTHONPATH for the module in the namespace: the directory holding ``ansible_collections``, the
    one holding ``ansible`` (ansible-test puts it on a path of its own) and this process's own."""
    root = os.path.abspath(mirror_check.__file__)
    for dummy in range(6):
        root = os.path.dirname(root)
    paths = [root, os.path.dirname(os.path.dirname(os.path.abspath(ansible.__file__)))]
    paths += [path for path in os.environ.get("PYTHONPATH", "").split(os.pathsep) if path]
    return os.pathsep.join(dict.fromkeys(paths))


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    base = str(tmp_path_factory.mktemp("mirror-direct"))
    namespace = Namespace()
    registries = {}
    try:
        registries["a"] = LocalRegistry(os.path.join(base, "a"), username="usera", password="pass-a", netns=namespace.path, port=5453)
        registries["b"] = LocalRegistry(os.path.join(base, "b"), username="userb", password="pass-b", netns=namespace.path, port=5454)
        registries["c"] = LocalRegistry(os.path.join(base, "c"), username="userc", password="pass-c", netns=namespace.path, port=5455,
                                        server_san=None, server_cn="localhost")
        for registry in registries.values():
            registry.start()
        site = Site(base, namespace, registries)
        yield site
    finally:
        for registry in registries.values():
            registry.stop()
        namespace.close()


class Site:
    """The three registries, the images they serve, one auth file and one certificate directory for all."""

    def __init__(self, base, namespace, registries):
        self.base = base
        self.namespace = namespace
        self.a, self.b, self.c = registries["a"], registries["b"], registries["c"]
        self.cert_dir = os.path.join(base, "certs")
        os.makedirs(self.cert_dir)
        for name, registry in registries.items():
            shutil.copy(registry.ca_path, os.path.join(self.cert_dir, "%s.crt" % name))
        self.wrong_cert_dir = os.path.join(base, "wrong-certs")
        os.makedirs(self.wrong_cert_dir)
        shutil.copy(make_test_ca(base, "wrong-ca", "mirror_check wrong CA")[1], os.path.join(self.wrong_cert_dir, "ca.crt"))
        self.authfile = self._authfile("auth.json", {"127.0.0.1:5453": ("usera", "pass-a"), "127.0.0.1:5454": ("userb", "pass-b"),
                                                     "localhost:5455": ("userc", "pass-c")})
        self.wrong_authfile = self._authfile("wrong-auth.json", {"127.0.0.1:5453": ("usera", "not-the-password"),
                                                                 "127.0.0.1:5454": ("userb", "not-the-password")})
        self.home = os.path.join(base, "home")
        os.makedirs(self.home)

        def pushed(registry, name, repository, layers, tag="v1"):
            # the same seed and name on two registries: the same bytes, so the same digest
            images = SyntheticImages(registry, os.path.join(base, "images-%s-%s" % (registry.port, name)), seed="direct")
            return images.push(name, "ns/" + repository, ["amd64"], layers, tag=tag)["digest"]

        self.app = "%s@%s" % (APP, pushed(self.a, "app", "openshift-release-dev/app", [("app", 2048)]))
        # C's certificate is refused by skopeo too: it is filled without checking it
        layout = SyntheticImages(self.c, os.path.join(base, "images-c"), seed="direct").build("app", ["amd64"], [("app", 2048)])
        run([self.c.skopeo, "copy", "--quiet", "--preserve-digests", "--dest-tls-verify=false", "--dest-authfile=" + self.c.authfile,
             "oci:" + layout, "docker://%s/ns/openshift-release-dev/app:v1" % self.c.host])
        self.both = "%s@%s" % (BOTH, pushed(self.a, "both", "openshift-release-dev/both", [("both", 2048)]))
        assert self.both == "%s@%s" % (BOTH, pushed(self.b, "both", "openshift-release-dev/both", [("both", 2048)]))
        self.only_b = "%s@%s" % (ONLY_B, pushed(self.b, "onlyb", "openshift-release-dev/onlyb", [("onlyb", 2048)], tag="v2"))
        missing = SyntheticImages(self.a, os.path.join(base, "images-missing"), seed="direct")
        self.missing = "%s@%s" % (APP, missing.layout_blobs(missing.build("missing", ["amd64"], [("never pushed", 2048)]))[0])
        self.never = "%s@%s" % (NEVER, self.app.split("@")[1])

    def _authfile(self, name, logins):
        path = os.path.join(self.base, name)
        with open(path, "w") as handle:
            json.dump({"auths": dict((host, {"auth": base64.b64encode(("%s:%s" % pair).encode()).decode()})
                                     for host, pair in logins.items())}, handle)
        os.chmod(path, 0o600)
        return path

    def conf(self, name, text):
        path = os.path.join(self.base, name + ".conf")
        with open(path, "w") as handle:
            handle.write(text)
        return path

    def run(self, args, env=None):
        """The module's result, run inside the namespace as root with an empty home."""
        path = os.path.join(self.base, "args.json")
        with open(path, "w") as handle:
            json.dump(args, handle)
        environ = dict((k, v) for k, v in os.environ.items() if "proxy" not in k.lower())
        environ.update(PYTHONPATH=_python_path(), HOME=self.home, **(env or {}))
        done = subprocess.run([NSENTER, "--net=%s" % self.namespace.path, "--", sys.executable, "-c", RUNNER, path],
                              capture_output=True, env=environ, timeout=600, check=False)
        assert done.stdout, done.stderr.decode("utf-8", "replace")
        return json.loads(done.stdout.decode("utf-8"))

    @staticmethod
    def manifest_gets(registry, offset, ref):
        """The GETs of ``ref``'s manifest (by its digest or tag) ``registry`` logged after ``offset``."""
        name, dummy, reference = ref.partition("@") if "@" in ref else ref.rpartition(":")
        return [uri for verb, uri in registry.requests_since(offset, method="GET", path_contains="/manifests/" + reference)
                if uri.endswith("/%s/manifests/%s" % (name.split("/", 1)[1], reference))]


def entry(prefix, *mirrors, **settings):
    """One ``[[registry]]`` of registries.conf for ``prefix`` (its own location) with ``mirrors`` in order.

    ``settings``: ``digest_only`` (``mirror-by-digest-only``, default True), ``blocked``, and
    ``pull_from`` (every mirror's ``pull-from-mirror``).
    """
    text = '[[registry]]\nprefix = "%s"\nlocation = "%s"\n' % (prefix, prefix)
    if settings.get("blocked"):
        text += "blocked = true\n"
    if settings.get("digest_only", True):
        text += "mirror-by-digest-only = true\n"
    for location in mirrors:
        text += '[[registry.mirror]]\nlocation = "%s"\n' % location
        if settings.get("pull_from"):
            text += 'pull-from-mirror = "%s"\n' % settings["pull_from"]
    return text


MIRRORS_AB = entry("quay.io", "127.0.0.1:5453/ns", "127.0.0.1:5454/ns")
MIRROR_A = entry("quay.io", "127.0.0.1:5453/ns")
# a longer prefix wins: onlyb is read from B only
PREFIXES = MIRROR_A + entry("quay.io/openshift-release-dev/onlyb", "127.0.0.1:5454/ns/openshift-release-dev/onlyb",
                            digest_only=False, pull_from="digest-only")
# a mirror for tags only is never asked for a reference by digest
TAG_ONLY = entry("quay.io", "127.0.0.1:5453/ns", digest_only=False, pull_from="tag-only")
BLOCKED = entry("quay.io", "127.0.0.1:5453/ns", blocked=True)
# the certificate of C names localhost in its Common Name only
LEGACY_CN = entry("quay.io", "localhost:5455/ns")
TAGS = entry("quay.io", "127.0.0.1:5454/ns", digest_only=False)

# name, registries.conf, other arguments, references (served ones, in order), how many auto confirms itself
CASES = [
    ("two mirrors, each image from the first that has it", MIRRORS_AB, {}, ["app", "both", "only_b", "missing", "never"], 3),
    ("one mirror", MIRROR_A, {}, ["app", "both", "only_b", "missing"], 2),
    ("the longest prefix wins", PREFIXES, {}, ["app", "only_b", "both"], 3),
    ("a tag-only mirror is skipped for digests", TAG_ONLY, {}, ["app", "both"], 0),
    ("a blocked registry", BLOCKED, {}, ["app"], 0),
    ("a CA that did not sign the mirror", MIRROR_A, {"cert_dir": "wrong"}, ["app", "both"], 0),
    ("wrong credentials", MIRRORS_AB, {"authfile": "wrong"}, ["app", "only_b"], 0),
    ("a certificate with its host in the Common Name only", LEGACY_CN, {}, ["app"], 0),
    ("a tag through a mirror that serves tags", TAGS, {"digest_only": False}, ["tag", "only_b"], 1),
]


def _args(site, conf, extra, refs):
    args = {"registries_conf": conf, "cert_dir": site.cert_dir, "authfile": site.authfile, "executable": SKOPEO,
            "retries": 0, "retry_delay": 0.0, "timeout": 60, "parallel": 3, "images": refs}
    for key, value in extra.items():
        args[key] = {"cert_dir": site.wrong_cert_dir, "authfile": site.wrong_authfile}[key] if value == "wrong" else value
    return args


def _verdicts(result):
    return result["served"], dict((item["ref"], item["reason"]) for item in result["not_served"]), result["tag_refs"]


@pytest.mark.parametrize("name, text, extra, picks, direct", CASES, ids=[case[0] for case in CASES])
def test_both_engines_resolve_alike(site, name, text, extra, picks, direct):
    refs = [{"tag": "%s:v2" % ONLY_B}.get(pick) or getattr(site, pick) for pick in picks]
    args = _args(site, site.conf(name.replace(" ", "-"), text), extra, refs)
    offsets = dict((key, registry.log_offset()) for key, registry in (("a", site.a), ("b", site.b), ("c", site.c)))
    alone = site.run(dict(args, engine="skopeo"))
    middle = dict((key, registry.log_offset()) for key, registry in (("a", site.a), ("b", site.b), ("c", site.c)))
    auto = site.run(dict(args, engine="auto"))
    assert "served" in alone and "served" in auto, (alone, auto)
    assert _verdicts(auto) == _verdicts(alone), (auto, alone)
    assert auto.get("failed", False) == alone.get("failed", False)
    assert alone["reads"] == {"direct": 0, "skopeo": len(refs), "obstacle": None}
    assert auto["reads"]["obstacle"] is None
    assert auto["reads"]["direct"] == direct, auto["reads"]
    assert auto["reads"]["skopeo"] == len(refs) - direct
    # each image served was read from the same registry by both
    for ref in auto["served"]:
        for key, registry in (("a", site.a), ("b", site.b), ("c", site.c)):
            by_skopeo = site.manifest_gets(registry, offsets[key], ref)
            by_auto = site.manifest_gets(registry, middle[key], ref)
            assert bool(by_skopeo) == bool(by_auto), (ref, key, by_skopeo, by_auto)


def test_the_cases_cover_served_and_refused(site):
    """The cases above are not all alike: the first serves three images and refuses two."""
    result = site.run(_args(site, site.conf("cover", MIRRORS_AB), {}, [site.app, site.both, site.only_b, site.missing, site.never]))
    assert result["served"] == [site.app, site.both, site.only_b]
    assert sorted(item["ref"] for item in result["not_served"]) == sorted([site.missing, site.never])
    assert "manifest unknown" in dict((item["ref"], item["reason"]) for item in result["not_served"])[site.missing]
    assert result["reads"] == {"direct": 3, "skopeo": 2, "obstacle": None}


def test_python_alone_would_accept_the_legacy_certificate(site):
    """What the Common Name case guards against: Python's ssl, left to its defaults, trusts C's certificate."""
    script = ("import socket, ssl; c = ssl.create_default_context(cafile=%r); c.hostname_checks_common_name = True; "
              "s = c.wrap_socket(socket.create_connection(('127.0.0.1', 5455)), server_hostname='localhost'); "
              "print(s.version())" % site.c.ca_path)
    done = subprocess.run([NSENTER, "--net=%s" % site.namespace.path, "--", sys.executable, "-c", script],
                          capture_output=True, check=False)
    assert done.returncode == 0 and done.stdout.startswith(b"TLS"), done.stderr


@pytest.mark.parametrize("env, files, words", [
    ({"CONTAINERS_REGISTRIES_CONF": "{conf}"}, [], "CONTAINERS_REGISTRIES_CONF is set"),
    ({}, [".config/containers/registries.conf"], "/.config/containers/registries.conf exists"),
    ({"HTTPS_PROXY": "http://127.0.0.1:9"}, [], "a proxy is configured (HTTPS_PROXY)"),
])
def test_what_the_reader_cannot_follow_leaves_every_image_to_skopeo(site, env, files, words):
    conf = site.conf("obstacle", MIRROR_A)
    for name in files:
        os.makedirs(os.path.dirname(os.path.join(site.home, name)), exist_ok=True)
        shutil.copy(conf, os.path.join(site.home, name))
    try:
        args = _args(site, conf, {}, [site.app])
        result = site.run(args, env=dict((k, v.format(conf=conf)) for k, v in env.items()))
    finally:
        shutil.rmtree(os.path.join(site.home, ".config"), ignore_errors=True)
    assert result["reads"]["direct"] == 0 and result["reads"]["skopeo"] == 1
    assert words in result["reads"]["obstacle"]
    if "HTTPS_PROXY" not in env:
        assert result["served"] == [site.app]


def test_credential_helpers_leave_every_image_to_skopeo(site):
    conf = site.conf("helpers", 'credential-helpers = ["secretservice"]\n' + MIRROR_A)
    result = site.run(_args(site, conf, {}, [site.app]))
    assert result["reads"] == {"direct": 0, "skopeo": 1, "obstacle": "%s sets credential-helpers" % conf}
