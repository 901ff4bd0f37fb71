# Copyright: airgap.microshift contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""When mirror_check's direct reads step aside, and what they confirm: real files in a temporary home,
and a source that answers from a dictionary (the registries themselves are in test_mirror_check_direct)."""

from __future__ import annotations

import hashlib

import pytest

from ansible_collections.airgap.microshift.plugins.module_utils._mirror_check import DirectReader, configuration_obstacle, direct_read_obstacle
from ansible_collections.airgap.microshift.plugins.module_utils._registries_conf import merge_host_files
from ansible_collections.airgap.microshift.plugins.module_utils._registry import CannotTell


def _obstacle(home, authfile="/etc/crio/openshift-pull-secret", **environ):
    return direct_read_obstacle(authfile, environ=environ, expanduser=lambda path: path.replace("~", str(home), 1), uid=4242)


def test_nothing_in_the_way(tmp_path):
    assert _obstacle(tmp_path) is None
    assert _obstacle(tmp_path, authfile=None) is None


@pytest.mark.parametrize("relative, authfile, words", [
    (".config/containers/registries.conf", "/auth.json", "/.config/containers/registries.conf exists"),
    (".config/containers/registries.conf.d", "/auth.json", "/.config/containers/registries.conf.d exists"),
    (".docker/config.json", None, "the containers tools would read"),
    (".config/containers/auth.json", None, "the containers tools would read"),
])
def test_files_the_containers_tools_would_read(tmp_path, relative, authfile, words):
    path = tmp_path / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    if relative.endswith(".d"):
        path.mkdir()
    else:
        path.write_text("{}")
    assert words in _obstacle(tmp_path, authfile=authfile)
    if authfile is None:
        # the auth file given is the only one they read
        assert _obstacle(tmp_path, authfile="/auth.json") is None


def test_environment(tmp_path):
    assert _obstacle(tmp_path, CONTAINERS_REGISTRIES_CONF="/x.conf") == "CONTAINERS_REGISTRIES_CONF is set"
    assert _obstacle(tmp_path, https_proxy="http://proxy:3128") == "a proxy is configured (https_proxy)"
    assert _obstacle(tmp_path, authfile=None, REGISTRY_AUTH_FILE="/a.json") == "REGISTRY_AUTH_FILE is set"
    runtime = tmp_path / "run"
    (runtime / "containers").mkdir(parents=True)
    (runtime / "containers" / "auth.json").write_text("{}")
    assert str(runtime / "containers" / "auth.json") in _obstacle(tmp_path, authfile=None, XDG_RUNTIME_DIR=str(runtime))


def test_credential_helpers():
    assert configuration_obstacle([("/a.conf", {"credential-helpers": ["containers-auth.json"]})]) is None
    assert configuration_obstacle([("/a.conf", {}), ("/b.conf", {"credential-helpers": ["pass"]})]) == "/b.conf sets credential-helpers"


class Answers:
    """A source that answers from ``{(registry, repository): body}``; ``down`` registries cannot tell,
    ``broken`` ones raise what nobody foresaw."""

    def __init__(self, bodies, down=(), broken=()):
        self.bodies = bodies
        self.down = down
        self.broken = broken
        self.asked = []

    def manifest(self, registry, repository, reference, accept=None):
        self.asked.append("%s/%s@%s" % (registry, repository, reference))
        if registry in self.down:
            raise CannotTell("cannot reach %s" % registry)
        if registry in self.broken:
            raise ValueError("unforeseen")
        body = self.bodies.get((registry, repository))
        return None if body is None else (body, "application/vnd.oci.image.manifest.v1+json")


BODY = b'{"schemaVersion": 2}'
DIGEST = "sha256:" + hashlib.sha256(BODY).hexdigest()
REGISTRIES = merge_host_files([("/etc/containers/registries.conf.d/mirror.conf", {"registry": [{
    "prefix": "quay.io", "location": "quay.io", "mirror-by-digest-only": True,
    "mirror": [{"location": "m1.example:8443/ns"}, {"location": "m2.example:8443/ns"}]}]})])


def test_the_first_source_that_answers_serves_it():
    source = Answers({("m2.example:8443", "ns/a/b"): BODY, ("m1.example:8443", "ns/a/b"): BODY}, down=["m1.example:8443"])
    assert DirectReader(REGISTRIES, source).served_from("quay.io/a/b@" + DIGEST) == "m2.example:8443/ns/a/b@" + DIGEST
    assert source.asked == ["m1.example:8443/ns/a/b@" + DIGEST, "m2.example:8443/ns/a/b@" + DIGEST]


@pytest.mark.parametrize("ref, bodies", [
    ("quay.io/a/b:v1", {("m1.example:8443", "ns/a/b"): BODY}),                          # a tag: skopeo decides
    ("quay.io/a/b@" + DIGEST, {}),                                                       # nobody has it
    ("quay.io/a/b@" + DIGEST, {("m1.example:8443", "ns/a/b"): b'{"other": 1}'}),        # other bytes
    ("docker.io/library/b@" + DIGEST, {("docker.io", "library/b"): BODY}),               # read from another host
])
def test_what_it_leaves_to_skopeo(ref, bodies):
    assert DirectReader(REGISTRIES, Answers(bodies)).served_from(ref) is None


def test_an_unforeseen_error_leaves_it_to_skopeo():
    source = Answers({("m2.example:8443", "ns/a/b"): BODY}, broken=["m1.example:8443"])
    assert DirectReader(REGISTRIES, source).served_from("quay.io/a/b@" + DIGEST) is None
    assert source.asked == ["m1.example:8443/ns/a/b@" + DIGEST]
    blocked = merge_host_files([("/b.conf", {"registry": [{"prefix": "quay.io", "blocked": True}]})])
    assert DirectReader(blocked, Answers({("quay.io", "a/b"): BODY})).served_from("quay.io/a/b@" + DIGEST) is None
