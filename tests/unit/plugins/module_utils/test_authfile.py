# Copyright: airgap.microshift contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""Auth file logic: parse/validate, merge, remove, mask."""

from __future__ import annotations

import json

import pytest

from ansible_collections.airgap.microshift.plugins.module_utils import _authfile as authfile


def test_encode_decode_round_trip_with_colon_in_password():
    value = authfile.encode_auth("robot$x", "pa:ss")
    assert authfile.decode_auth(value) == ("robot$x", "pa:ss")


@pytest.mark.parametrize("value", ["%%%", authfile.encode_auth("a", "b")[:-2] + "!!", "bm9jb2xvbg==", 42])
def test_decode_rejects_garbage(value):
    with pytest.raises(ValueError):
        authfile.decode_auth(value)


@pytest.mark.parametrize("text, words", [
    ("{", "is not valid JSON"),
    ("[1]", "its content is not a JSON object"),
    ('{"auths": []}', "'auths' is not an object"),
    ('{"auths": {"quay.io": "x"}}', "the entry for quay.io is not an object"),
    ('{"auths": {"quay.io": {"auth": "bm9jb2xvbg=="}}}', "the auth of quay.io is not base64 'user:password'"),
])
def test_malformed_content_is_named(text, words):
    with pytest.raises(authfile.AuthFileError) as err:
        authfile.parse_authfile(text, "/etc/x.json")
    assert str(err.value).startswith("/etc/x.json") and words in str(err.value) and "left untouched" in str(err.value)


def test_merge_keeps_others_and_is_idempotent():
    data = authfile.parse_authfile(json.dumps({
        "auths": {"quay.io": {"auth": authfile.encode_auth("q", "1"), "identitytoken": "tok"},
                  "other.example": {"identitytoken": "t2"}},
        "credHelpers": {"x": "y"}}), "f")
    new, changed = authfile.set_credentials(data, "mirror:8443", "m", "p")
    assert changed and set(new["auths"]) == {"quay.io", "other.example", "mirror:8443"} and new["credHelpers"] == {"x": "y"}
    again, changed = authfile.set_credentials(new, "mirror:8443", "m", "p")
    assert not changed and again == new
    updated, changed = authfile.set_credentials(new, "quay.io", "q", "2", email="a@b.c")
    assert changed and updated["auths"]["quay.io"]["identitytoken"] == "tok"
    assert authfile.entry_credentials(updated["auths"]["quay.io"]) == ("q", "2", "a@b.c")
    assert data["auths"]["quay.io"]["auth"] == authfile.encode_auth("q", "1")  # input not mutated


def test_remove():
    data = {"auths": {"a.example": {"auth": authfile.encode_auth("u", "p")}, "b.example": {}}}
    new, changed = authfile.remove_credentials(data, "a.example")
    assert changed and new == {"auths": {"b.example": {}}}
    assert authfile.remove_credentials(new, "a.example") == (new, False)


def test_masked_shows_no_secret():
    data = {"auths": {"quay.io": {"auth": authfile.encode_auth("robot", "TOPSECRET"), "email": "e@x", "identitytoken": "TOKEN"}}}
    view = authfile.masked(data)
    text = json.dumps(view)
    assert "TOPSECRET" not in text and "TOKEN" not in text and data["auths"]["quay.io"]["auth"] not in text
    assert view == {"auths": {"quay.io": {"username": "robot", "auth": "********", "email": "e@x", "identitytoken": "********"}}}


@pytest.mark.parametrize("registry", ["https://quay.io", "", "has space", "quay.io/ns with space"])
def test_registry_key_validation(registry):
    with pytest.raises(ValueError):
        authfile.validate_registry(registry)


@pytest.mark.parametrize("registry", ["quay.io", "mirror.example.com:8443", "mirror:8443/ocp4/openshift", "localhost"])
def test_registry_keys_accepted(registry):
    authfile.validate_registry(registry)
