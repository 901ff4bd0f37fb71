# Copyright: airgap.microshift contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

import pytest

from ansible_collections.airgap.microshift.plugins.module_utils import _registries_conf as rc
from ansible_collections.airgap.microshift.plugins.module_utils._registries_conf import (
    RegistriesConfError,
    TomlSubsetError,
    check_text,
    checked_render,
    location_problem,
    mirror_config,
    parse_toml_subset,
    registries_for,
    render,
    validate,
)

try:
    import tomllib
except ImportError:
    tomllib = None

DIGEST = "sha256:" + "ab" * 32


def _registry(data, prefix):
    return [entry for entry in data["registry"] if entry.get("prefix", entry["location"]) == prefix][0]


# --------------------------------------------------------------------------- rendering

def test_default_registries_are_mirrored_by_digest():
    data = mirror_config("mirror.example.com:8443")
    assert [entry.get("prefix", entry["location"]) for entry in data["registry"]] == [
        "mirror.example.com:8443", "quay.io", "registry.redhat.io", "registry.access.redhat.com"]
    quay = _registry(data, "quay.io")
    assert quay == {"prefix": "quay.io", "location": "quay.io", "mirror-by-digest-only": True,
                    "mirror": [{"location": "mirror.example.com:8443"}]}
    text = checked_render(data, header="Ansible managed")
    assert text.startswith("# Ansible managed\n\n[[registry]]\nlocation = \"mirror.example.com:8443\"\n")
    assert "insecure" not in text
    assert text.count("[[registry.mirror]]") == 3
    assert 'prefix = "quay.io"\nlocation = "quay.io"\nmirror-by-digest-only = true\n\n[[registry.mirror]]\n' \
           'location = "mirror.example.com:8443"\n' in text


def test_extra_registries_come_from_the_image_list():
    images = ["quay.io/a/b@" + DIGEST, "ghcr.io/org/app:v1", "registry.k8s.io/pause@" + DIGEST, "ghcr.io/org/other@" + DIGEST]
    assert registries_for(images) == ["quay.io", "registry.redhat.io", "registry.access.redhat.com", "ghcr.io", "registry.k8s.io"]
    data = mirror_config("mirror:5000", registries=registries_for(images))
    assert _registry(data, "ghcr.io")["mirror"] == [{"location": "mirror:5000"}]


def test_invalid_image_in_the_list_is_named():
    with pytest.raises(RegistriesConfError) as info:
        registries_for(["quay.io/a/b@" + DIGEST, "not a reference", "busybox"])
    assert "'not a reference'" in str(info.value)
    assert "'busybox'" in str(info.value)
    assert len(info.value.errors) == 2


def test_namespace_goes_on_the_mirror_location():
    data = mirror_config("mirror.example.com:8443", namespace="/microshift/release/")
    text = checked_render(data)
    assert 'location = "mirror.example.com:8443/microshift/release"' in text
    assert _registry(data, "mirror.example.com:8443") == {"location": "mirror.example.com:8443"}


def test_insecure_only_when_asked_and_on_mirror_tables():
    data = mirror_config("mirror:5000", insecure=True)
    assert _registry(data, "mirror:5000") == {"location": "mirror:5000", "insecure": True}
    assert _registry(data, "quay.io")["mirror"] == [{"location": "mirror:5000", "insecure": True}]
    assert "insecure" not in _registry(data, "quay.io")
    assert checked_render(data).count("insecure = true") == 4


def test_digest_only_false():
    data = mirror_config("mirror:5000", digest_only=False)
    assert "mirror-by-digest-only = false" in checked_render(data)


def test_the_mirror_itself_is_not_mirrored():
    data = mirror_config("mirror:5000", registries=["quay.io", "mirror:5000"])
    assert [entry.get("prefix", entry["location"]) for entry in data["registry"]] == ["mirror:5000", "quay.io"]


def test_header_lines_become_comments():
    text = render({"registry": [{"location": "a.io"}]}, header="Ansible managed\n# already\n\nthird")
    assert text.splitlines()[:4] == ["# Ansible managed", "# already", "#", "# third"]


def test_full_schema_round_trip():
    data = {
        "unqualified-search-registries": ["registry.example.com"],
        "short-name-mode": "enforcing",
        "credential-helpers": ["containers-auth.json"],
        "registry": [
            {"prefix": "*.example.com", "location": "mirror.example.com/wild", "blocked": False},
            {"location": "docker.io", "blocked": True},
            {"prefix": "quay.io/one", "location": "quay.io/one", "mirror": [
                {"location": "[::1]:5000/one", "insecure": True, "pull-from-mirror": "digest-only"}]},
        ],
        "aliases": {"pause": "registry.k8s.io/pause", "odd key/with slash": "quay.io/x/y"},
    }
    text = checked_render(data, header="managed")
    assert parse_toml_subset(text) == data
    assert '"odd key/with slash" = "quay.io/x/y"' in text
    if tomllib is not None:
        assert tomllib.loads(text) == data


@pytest.mark.skipif(tomllib is None, reason="tomllib is in Python 3.11 and later")
@pytest.mark.parametrize("kwargs", [
    {},
    {"namespace": "ns/sub", "insecure": True},
    {"registries": ["quay.io", "ghcr.io", "localhost:5000"], "digest_only": False},
])
def test_tomllib_reads_what_is_rendered(kwargs):
    data = mirror_config("mirror.example.com:8443", **kwargs)
    assert tomllib.loads(checked_render(data, header="Ansible managed")) == data


def test_strings_are_escaped():
    data = {"aliases": {"a": 'quote " backslash \\ tab \t nl \n bell \x07 é'}}
    text = render(data)
    assert parse_toml_subset(text) == data
    if tomllib is not None:
        assert tomllib.loads(text) == data


# --------------------------------------------------------------------------- schema

@pytest.mark.parametrize("data, expected", [
    ({"registry": [{"prefix": "quay.io"}]}, "location is required"),
    ({"registry": [{"location": "quay.io", "mirror": [{"insecure": True}]}]}, "[[registry.mirror]] #1: location is required"),
    ({"registry": [{"location": 5}]}, "location must be a string, not a number"),
    ({"registry": [{"location": "quay.io", "insecure": "yes"}]}, "insecure must be a boolean (true or false), not a string"),
    ({"registry": [{"location": "quay.io", "blocked": 1}]}, "blocked must be a boolean (true or false), not a number"),
    ({"registry": [{"location": "quay.io", "mirror-by-digest-only": "true"}]}, "mirror-by-digest-only must be a boolean"),
    ({"registry": [{"location": "quay.io", "mirror": {"location": "m"}}]}, "mirror must be a list of tables, not a table"),
    ({"registry": {"location": "quay.io"}}, "registry must be a list of tables, not a table"),
    ({"unqualified-search-registries": "quay.io"}, "unqualified-search-registries must be a list of strings"),
    ({"short-name-mode": "strict"}, "short-name-mode must be one of enforcing, permissive, disabled"),
    ({"aliases": {"a": 1}}, "aliases must be a table of strings"),
    ({"registry": [{"location": "quay.io", "mirrors": []}]}, "unknown key 'mirrors'"),
    ({"registry": [{"location": "quay.io", "mirror": [{"location": "m.io", "digest-only": True}]}]}, "unknown key 'digest-only'"),
    ({"registries": {"search": ["quay.io"]}}, "unknown top-level key 'registries'"),
    ({"registry": [{"location": "quay.io"}, {"prefix": "quay.io", "location": "other.io"}]},
     "[[registry]] #2: prefix 'quay.io' is already used by [[registry]] #1"),
    ({"registry": [{"location": "https://quay.io"}]}, "must not carry a scheme"),
    ({"registry": [{"location": "quay.io/a/b:tag"}]}, "must not carry a tag or digest"),
    ({"registry": [{"location": "quay.io/a@" + DIGEST}]}, "must not carry a tag or digest"),
    ({"registry": [{"location": "bad host"}]}, "'bad host' is not a valid host[:port][/path]"),
    ({"registry": [{"location": "quay.io/UPPER"}]}, "is not a valid host[:port][/path]"),
    ({"registry": [{"location": "mirror:99999"}]}, "has a port outside 1-65535"),
    ({"registry": [{"location": ""}]}, "location must not be empty"),
    ({"registry": [{"location": " quay.io"}]}, "leading or trailing white space"),
    ({"registry": [{"prefix": "*.", "location": "x.io"}]}, "is not a valid wildcard"),
    ({"registry": [{"location": "quay.io", "mirror": [{"location": "m.io", "pull-from-mirror": "sometimes"}]}]},
     "pull-from-mirror must be one of all, digest-only, tag-only"),
    ({"registry": [{"location": "quay.io", "mirror-by-digest-only": True, "mirror": [{"location": "m.io", "pull-from-mirror": "all"}]}]},
     "pull-from-mirror cannot be set when the registry has mirror-by-digest-only = true"),
    ([], "the document must be a table"),
])
def test_schema_rejects(data, expected):
    errors = validate(data)
    assert any(expected in error for error in errors), errors
    with pytest.raises(RegistriesConfError):
        checked_render(data) if isinstance(data, dict) else rc.check(data)


def test_every_problem_is_listed():
    errors = validate({"registry": [{"prefix": "quay.io"}, {"location": "quay.io", "insecure": "no", "x": 1}], "y": 2})
    assert len(errors) == 5  # unknown y, missing location, bad insecure, unknown x, duplicate prefix


def test_error_message_names_the_file():
    with pytest.raises(RegistriesConfError) as info:
        checked_render({"registry": [{"prefix": "quay.io"}]}, what="the drop-in /etc/x.conf")
    assert str(info.value) == "the drop-in /etc/x.conf is invalid: [[registry]] #1: location is required"


@pytest.mark.parametrize("value", ["quay.io", "mirror:8443", "localhost:5000/a/b", "10.0.0.1:5000", "[fd00::1]:5000/ns",
                                   "registry-1.docker.io/library"])
def test_valid_locations(value):
    assert location_problem(value) is None


def test_valid_drop_in_validates():
    assert validate(mirror_config("mirror:5000", namespace="x", insecure=True)) == []


# --------------------------------------------------------------------------- strict parser

@pytest.mark.parametrize("text, expected", [
    ('[[registry]]\nlocation = "a"\nlocation = "b"\n', "defined twice"),
    ('[[registry]]\nlocation = "a\n', "unterminated string"),
    ('[[registry]]\nlocation = a\n', "unsupported value"),
    ('[[registry]\nlocation = "a"\n', "expected ']'"),
    ('location = "a" junk\n', "unexpected text"),
    ('a.b = "x"\n', "dotted keys"),
    ('x = 5\n', "unsupported value"),
    ('x = """a"""\n', "multi-line strings"),
    ('x = "\\q"\n', "invalid escape"),
    ('[aliases]\n[aliases]\n', "defined twice"),
    ('registry = "x"\n[[registry]]\n', "not an array of tables"),
    ('[[registry.mirror]]\nlocation = "m"\n', None),
    ('x = [true, "a"\n', "expected ',' or ']'"),
    ('= "x"\n', "expected a key"),
])
def test_parser_refuses(text, expected):
    if expected is None:
        # An array of tables under a missing parent: TOML makes the parent a table, so
        # registry becomes a table and the schema check refuses it.
        with pytest.raises(RegistriesConfError):
            check_text(text)
        return
    with pytest.raises(TomlSubsetError) as info:
        parse_toml_subset(text)
    assert expected in str(info.value)
    assert str(info.value).startswith("line ")


def test_parser_reads_comments_and_arrays():
    text = '# c\n\nx = ["a", "b",]  # trailing\n[[registry]] # c\nlocation = "q#not-a-comment"\ninsecure=false\n'
    assert parse_toml_subset(text) == {"x": ["a", "b"], "registry": [{"location": "q#not-a-comment", "insecure": False}]}


def test_check_text_refuses_invalid_toml_and_schema():
    with pytest.raises(RegistriesConfError) as info:
        check_text('[[registry]]\nlocation = "quay.io"\nprefix = \n')
    assert "not valid TOML" in str(info.value)
    with pytest.raises(RegistriesConfError) as info:
        check_text('[[registry]]\nprefix = "quay.io"\n')
    assert "location is required" in str(info.value)


def test_render_read_back_disagreement_is_caught(monkeypatch):
    # A renderer that drops a key must be caught by the read-back comparison.
    original = rc.render
    monkeypatch.setattr(rc, "render", lambda data, header=None: original(data, header).replace("blocked = true\n", ""))
    with pytest.raises(RegistriesConfError) as info:
        checked_render({"registry": [{"location": "docker.io", "blocked": True}]})
    assert "does not read back" in str(info.value)


@pytest.mark.parametrize("header", ["line one\x00", "bell\x07", "escape \x1b[31m", "vertical\x0btab", "next line\u2028here", "del\x7f"])
def test_header_with_a_control_character_is_refused(header):
    data = rc.mirror_config("mirror.example.com:8443")
    with pytest.raises(rc.RegistriesConfError, match="header holds the control character"):
        rc.checked_render(data, header=header)


def test_header_with_windows_line_ends_stays_toml():
    data = rc.mirror_config("mirror.example.com:8443")
    text = rc.checked_render(data, header="Ansible managed\r\nsecond line")
    assert text.startswith("# Ansible managed\n# second line\n")
