# Copyright: airgap.microshift contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""ManifestReader against a real registry (TLS from a test CA, htpasswd logins), and the
upload's checks that use it with skopeo behind it."""

from __future__ import annotations

import base64
import json
import os
import shutil
import time

import pytest

from ansible_collections.airgap.microshift.plugins.module_utils._registry import (
    CannotTell,
    ManifestReader,
    credentials_for,
)
from ansible_collections.airgap.microshift.plugins.module_utils._upload import Registry
from ansible_collections.airgap.microshift.tests.unit.plugins.helpers.images import SyntheticImages
from ansible_collections.airgap.microshift.tests.unit.plugins.helpers.registry import make_test_ca

SKOPEO = shutil.which("skopeo")


def _auth(user, password):
    return {"auth": base64.b64encode(("%s:%s" % (user, password)).encode()).decode()}


def test_credentials_of_the_most_specific_entry():
    auths = {
        "https://mirror.example.com:8443/": _auth("site", "a"),
        "mirror.example.com:8443/team": _auth("team", "b"),
        "mirror.example.com:8443/team/app": _auth("app", "c"),
        "other.example.com": _auth("other", "d"),
    }
    assert credentials_for(auths, "mirror.example.com:8443", "team/app") == ("app", "c")
    assert credentials_for(auths, "mirror.example.com:8443", "team/tool") == ("team", "b")
    assert credentials_for(auths, "mirror.example.com:8443", "ocp/release") == ("site", "a")
    assert credentials_for(auths, "mirror.example.com", "ocp/release") is None
    with pytest.raises(CannotTell, match="identitytoken|holds no user"):
        credentials_for({"mirror.example.com": {"identitytoken": "x"}}, "mirror.example.com", "a")
    with pytest.raises(CannotTell, match="not base64"):
        credentials_for({"mirror.example.com": {"auth": base64.b64encode(b"no-colon").decode()}}, "mirror.example.com", "a")


@pytest.fixture
def pushed(local_registry, synthetic_images):
    return synthetic_images.push("app", "reader/app", ["amd64", "arm64"], [("base-{arch}", 4096), ("app-{arch}", 2048)])


def test_reads_what_the_registry_serves_and_tells_absent(local_registry, pushed):
    reader = ManifestReader(local_registry.host, local_registry.authfile, True, local_registry.cert_dir)
    manifests = [d for d in pushed["blobs"] if d == pushed["digest"]]
    assert reader.served("reader/app", pushed["digest"]) is True
    index = json.loads(local_registry.manifest("reader/app", pushed["digest"])[0])
    for child in index["manifests"]:
        manifests.append(child["digest"])
        assert reader.served("reader/app", child["digest"]) is True
    assert reader.served("reader/app", "sha256:" + "0" * 64) is False
    assert reader.served("reader/nothing-here", pushed["digest"]) is False
    assert reader.disabled is None
    assert reader.manifest("reader/app", pushed["digest"]) == local_registry.manifest("reader/app", pushed["digest"])[0]
    assert len(manifests) == 3


@pytest.mark.parametrize("case", ["wrong password", "no auth file", "credential helper", "other CA", "proxy"])
def test_steps_aside_for_what_it_does_not_handle(local_registry, pushed, tmp_path, monkeypatch, case):
    authfile, cert_dir = local_registry.authfile, local_registry.cert_dir
    if case == "wrong password":
        authfile = local_registry.write_authfile(str(tmp_path / "auth.json"), "wrong")
    elif case == "no auth file":
        authfile = None
    elif case == "credential helper":
        authfile = str(tmp_path / "auth.json")
        with open(authfile, "w") as handle:
            json.dump({"auths": {}, "credHelpers": {local_registry.host: "secretservice"}}, handle)
    elif case == "other CA":
        # a CA that did not sign the registry's certificate
        cert_dir = str(tmp_path / "certs")
        os.makedirs(cert_dir)
        make_test_ca(cert_dir, "ca", "another CA")
    else:
        monkeypatch.setenv("https_proxy", "http://127.0.0.1:9")
    reader = ManifestReader(local_registry.host, authfile, True, cert_dir)
    with pytest.raises(CannotTell):
        reader.served("reader/app", pushed["digest"])
    assert reader.disabled
    # and it stays aside: the next call does not try again
    with pytest.raises(CannotTell):
        reader.served("reader/app", pushed["digest"])


def test_the_upload_check_falls_back_to_skopeo_with_its_message(local_registry, pushed, tmp_path):
    repository = "%s/reader/app" % local_registry.host
    registry = Registry(SKOPEO, local_registry.authfile, True, local_registry.cert_dir, retries=0, direct_reads=True)
    assert registry.served(repository, pushed["digest"]) == (True, None)
    assert registry.served(repository, "sha256:" + "1" * 64) == (False, None)
    assert registry.direct_checks == 2
    wrong = Registry(SKOPEO, local_registry.write_authfile(str(tmp_path / "auth.json"), "wrong"), True, local_registry.cert_dir,
                     retries=0, direct_reads=True)
    served, message = wrong.served(repository, pushed["digest"])
    assert not served and "authentication failed" in message
    assert wrong.direct_checks == 0


@pytest.fixture
def token_pushed(token_registry, tmp_path):
    images = SyntheticImages(token_registry, str(tmp_path / "synthetic"), seed="token-%s" % tmp_path.name)
    return images.push("app", "tokens/app", ["amd64", "arm64"], [("base-{arch}", 4096), ("app-{arch}", 2048)])


def test_bearer_token_logins_are_made_once_per_repository_and_renewed(token_registry, token_pushed):
    server = token_registry.token_server
    reader = ManifestReader(token_registry.host, token_registry.authfile, True, token_registry.cert_dir)
    issued = server.issued
    index = json.loads(token_registry.manifest("tokens/app", token_pushed["digest"])[0])
    issued_for_test = server.issued - issued
    for digest in [token_pushed["digest"]] + [child["digest"] for child in index["manifests"]]:
        assert reader.served("tokens/app", digest) is True
    assert reader.served("tokens/app", "sha256:" + "2" * 64) is False
    assert reader.served("tokens/other", token_pushed["digest"]) is False
    # one token per repository read, not one per request
    assert server.issued - issued - issued_for_test == 2
    assert reader.disabled is None
    # a token the registry no longer takes is replaced once, then reading goes on
    with reader._tokens_lock:  # pylint: disable=protected-access
        reader._tokens["tokens/app"] = ("Bearer not-a-token", time.monotonic() + 600)  # pylint: disable=protected-access
    before = server.issued
    assert reader.served("tokens/app", token_pushed["digest"]) is True
    assert server.issued == before + 1 and reader.disabled is None


def test_a_token_realm_that_refuses_the_login_makes_the_reader_step_aside(token_registry, token_pushed, tmp_path):
    reader = ManifestReader(token_registry.host, token_registry.write_authfile(str(tmp_path / "auth.json"), "wrong"), True,
                            token_registry.cert_dir)
    with pytest.raises(CannotTell, match="token realm"):
        reader.served("tokens/app", token_pushed["digest"])
    # and the upload's check then asks skopeo, which names the cause
    registry = Registry(SKOPEO, str(tmp_path / "auth.json"), True, token_registry.cert_dir, retries=0, direct_reads=True)
    served, message = registry.served("%s/tokens/app" % token_registry.host, token_pushed["digest"])
    assert not served and "authentication" in message.lower()
