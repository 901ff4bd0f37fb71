# Copyright: airgap.microshift contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""The release image list, checked against jq on every real MicroShift release file."""

from __future__ import annotations

import json
import os
import shutil
import subprocess

import pytest

from ansible_collections.airgap.microshift.plugins.module_utils import _release
from ansible_collections.airgap.microshift.plugins.module_utils._release import ReleaseError, list_images
from ansible_collections.airgap.microshift.tests.unit.plugins.helpers.release import FIXTURES, LazyRpms, build_rpm, needs_rpmbuild, release_files, rpm_root

VERSIONS = sorted(name for name in os.listdir(FIXTURES) if os.path.isdir(os.path.join(FIXTURES, name)))
RELEASE_FILES = sorted(
    (version, name) for version in VERSIONS for name in os.listdir(os.path.join(FIXTURES, version)) if name.endswith(".json")
)
VERSION_ARCHES = sorted(set((version, _release.parse_file_name(name)[1]) for version, name in RELEASE_FILES))
RPM_PAYLOADS = ("gzip", "xz", "zstd")

needs_jq = pytest.mark.skipif(shutil.which("jq") is None, reason="jq is not installed")


def jq_images(*paths):
    """What `jq -r '.images | .[]' FILES | sort -u` prints, as a list."""
    out = subprocess.run(["jq", "-r", ".images | .[]"] + list(paths), check=True, stdout=subprocess.PIPE, universal_newlines=True).stdout
    return sorted(set(line for line in out.splitlines() if line))


def fixture_path(version, name=None):
    return os.path.join(FIXTURES, version, name) if name else os.path.join(FIXTURES, version)


def arch_files(version, arch):
    return [fixture_path(version, n) for v, n in RELEASE_FILES if v == version and _release.parse_file_name(n)[1] == arch]


def assert_one_sentence(message, *names):
    assert "\n" not in message
    assert "Traceback" not in message
    assert message.endswith(".")
    for name in names:
        assert name in message


def test_every_version_is_there():
    assert VERSIONS == ["4.12", "4.14", "4.16", "4.18", "4.20", "4.22", "5.0"]
    assert len(RELEASE_FILES) == 61


@needs_jq
@pytest.mark.parametrize("version, name", RELEASE_FILES)
def test_each_file_matches_jq(version, name):
    component, arch = _release.parse_file_name(name)
    path = fixture_path(version, name)
    expected = jq_images(path)
    # As a single file ...
    result = list_images(paths=[path], arches=[arch], components=[component])
    assert result["images"] == expected
    assert result["files"] == [path]
    # ... and selected from its directory.
    result = list_images(paths=[fixture_path(version)], arches=[arch], components=[component])
    assert result["images"] == expected
    assert result["files"] == [path]
    with open(path) as handle:
        doc = json.load(handle)
    assert result["releases"] == {component: doc["release"]["base"]}
    for entry in result["entries"]:
        assert entry["components"] == [component]
        assert entry["arches"] == [arch]
        assert entry["files"] == [path]
        assert entry["image_keys"] == sorted(k for k, v in doc["images"].items() if v == entry["ref"])


@needs_jq
@pytest.mark.parametrize("version, arch", VERSION_ARCHES)
def test_union_per_version_and_arch_matches_jq(version, arch):
    files = arch_files(version, arch)
    result = list_images(paths=[fixture_path(version)], arches=[arch], components=["all"])
    assert result["images"] == jq_images(*files)
    assert sorted(result["files"]) == sorted(files)
    assert [e["ref"] for e in result["entries"]] == result["images"]
    # The same through an explicit list of components.
    components = sorted(_release.parse_file_name(f)[0] for f in files)
    assert list_images(paths=files, arches=[arch], components=components)["images"] == result["images"]


def test_union_counts_of_the_data_notes():
    # The x86_64 counts published with the release files.
    counts = {"4.12": 13, "4.14": 16, "4.16": 20, "4.18": 19, "4.20": 43, "4.22": 53, "5.0": 57}
    for version, count in counts.items():
        assert len(list_images(paths=[fixture_path(version)], arches=["x86_64"], components=["all"])["images"]) == count


@needs_jq
def test_both_arches_together():
    result = list_images(paths=[fixture_path("5.0")], arches=["amd64", "arm64"], components=["all"])
    assert result["images"] == jq_images(*(arch_files("5.0", "x86_64") + arch_files("5.0", "aarch64")))
    arches = set(a for e in result["entries"] for a in e["arches"])
    assert arches == {"x86_64", "aarch64"}


def test_shared_ref_names_every_source():
    result = list_images(paths=[fixture_path("4.16")], arches=["x86_64"], components=["core", "olm"])
    shared = [e for e in result["entries"] if len(e["components"]) > 1]
    assert shared, "kube-rbac-proxy is in core and olm"
    for entry in shared:
        assert entry["components"] == ["core", "olm"]
        assert len(entry["files"]) == 2


def test_tag_refs_and_registries():
    result = list_images(paths=[fixture_path("5.0")], arches=["x86_64"], components=["ai-model-serving"])
    assert len(result["tag_refs"]) == 16
    assert "ghcr.io/llm-d/llm-d-dev:sha-b3f0b0d" in result["tag_refs"]
    assert result["registries"] == ["ghcr.io", "quay.io", "registry.redhat.io"]
    warnings = _release.warnings_for(result)
    assert len(warnings) == 2
    assert "mirror-by-digest-only" in warnings[0] and "16 image reference" in warnings[0]
    assert "ghcr.io" in warnings[1] and "quay.io" not in warnings[1].split(":")[-1]
    core = list_images(paths=[fixture_path("5.0")], arches=["x86_64"])
    assert core["tag_refs"] == []
    assert _release.warnings_for(core) == []


@pytest.fixture(scope="session")
def release_rpms(tmp_path_factory):
    """Release-info RPMs of every version, one per payload compression, built on first use."""
    specs = dict(
        ((version, payload), ("microshift-release-info", release_files(version), payload, version))
        for version in VERSIONS for payload in RPM_PAYLOADS
    )
    specs["no-release"] = (
        "microshift-greenboot", {"/etc/greenboot/check/required.d/40-microshift.sh": fixture_path("5.0", "release-x86_64.json")}, "gzip", "1.0"
    )
    return LazyRpms(rpm_root(tmp_path_factory, "release-rpms"), specs)


@needs_jq
@pytest.mark.parametrize("payload", RPM_PAYLOADS)
@pytest.mark.parametrize("version, arch", VERSION_ARCHES)
def test_rpm_matches_jq(release_rpms, version, arch, payload):
    rpm = release_rpms[version, payload]
    result = list_images(rpms=[rpm], arches=[arch], components=["all"])
    assert result["images"] == jq_images(*arch_files(version, arch))
    base = os.path.basename(rpm)
    assert sorted(result["files"]) == sorted(
        "%s:./usr/share/microshift/release/%s" % (base, os.path.basename(f)) for f in arch_files(version, arch)
    )
    core = list_images(rpms=[rpm], arches=[arch])
    assert core["images"] == jq_images(fixture_path(version, "release-%s.json" % arch))


def test_rpm_and_directory_together(release_rpms):
    rpm = release_rpms["5.0", "zstd"]
    result = list_images(paths=[fixture_path("5.0")], rpms=[rpm], arches=["x86_64"], components=["olm"])
    for entry in result["entries"]:
        assert entry["files"] == sorted([
            fixture_path("5.0", "release-olm-x86_64.json"),
            os.path.basename(rpm) + ":./usr/share/microshift/release/release-olm-x86_64.json",
        ])


def test_two_versions_for_an_upgrade():
    result = list_images(paths=[fixture_path("4.20"), fixture_path("4.22")], arches=["x86_64"])
    assert len(result["entries"][0]["releases"]) >= 1
    assert ", " in result["releases"]["core"]


def test_default_path(monkeypatch):
    monkeypatch.setattr(_release, "DEFAULT_PATH", fixture_path("4.18"))
    result = list_images(arches=["aarch64"])
    assert result["files"] == [fixture_path("4.18", "release-aarch64.json")]


@needs_jq
@pytest.mark.parametrize(
    "query, jq_filter",
    [
        ("images", ".images | .[]"),
        ("values(images)", ".images | .[]"),
        ("values(images)[?starts_with(@, 'registry.redhat.io/')]", '.images | .[] | select(startswith("registry.redhat.io/"))'),
        ("images.{lvms: lvms_operator, router: \"haproxy-router\"}", '.images | .lvms_operator, ."haproxy-router"'),
        ("[images.cli]", ".images.cli"),
    ],
)
def test_query(query, jq_filter):
    path = fixture_path("4.20", "release-x86_64.json")
    out = subprocess.run(["jq", "-r", jq_filter, path], check=True, stdout=subprocess.PIPE, universal_newlines=True).stdout
    result = list_images(paths=[path], arches=["x86_64"], query=query)
    assert result["images"] == sorted(set(out.split()))


def test_query_keys():
    path = fixture_path("4.20", "release-x86_64.json")
    result = list_images(paths=[path], arches=["x86_64"], query="images.{lvms: lvms_operator}")
    assert [e["image_keys"] for e in result["entries"]] == [["lvms"]]
    result = list_images(paths=[path], arches=["x86_64"], query="[images.lvms_operator]")
    assert [e["image_keys"] for e in result["entries"]] == [["lvms_operator"]]
    assert list_images(paths=[path], arches=["x86_64"], query="images.absent")["images"] == []


def test_extra_images(tmp_path):
    digest = "sha256:" + "0123456789abcdef" * 4
    listing = tmp_path / "extra.txt"
    listing.write_text("# workload images\n\nquay.io/example/app@%s   # pinned\n  registry.example.com:5000/team/tool:v1\n" % digest)
    result = list_images(
        paths=[fixture_path("4.12")], arches=["x86_64"],
        extra_images=["quay.io/example/other@" + digest], extra_images_file=str(listing),
    )
    assert "quay.io/example/app@" + digest in result["images"]
    assert "registry.example.com:5000/team/tool:v1" in result["images"]
    assert "quay.io/example/other@" + digest in result["images"]
    assert result["images"] == sorted(result["images"])
    by_ref = dict((e["ref"], e) for e in result["entries"])
    assert by_ref["quay.io/example/app@" + digest]["files"] == [str(listing)]
    assert by_ref["quay.io/example/other@" + digest]["files"] == ["extra_images"]
    assert "registry.example.com:5000" in result["registries"]
    assert result["tag_refs"] == ["registry.example.com:5000/team/tool:v1"]


@pytest.mark.parametrize(
    "arch, expected",
    [("x86_64", "x86_64"), ("amd64", "x86_64"), ("AMD64", "x86_64"), ("aarch64", "aarch64"), ("arm64", "aarch64")],
)
def test_normalize_arch(arch, expected):
    assert _release.normalize_arch(arch) == expected


@pytest.mark.parametrize(
    "name, expected",
    [
        ("release-x86_64.json", ("core", "x86_64")),
        ("release-aarch64.json", ("core", "aarch64")),
        ("release-gateway-api-x86_64.json", ("gateway-api", "x86_64")),
        ("./usr/share/microshift/release/release-kube-state-metrics-aarch64.json", ("kube-state-metrics", "aarch64")),
        ("release-ppc64le.json", None),
        ("release-x86_64.json.bak", None),
        ("images.json", None),
    ],
)
def test_parse_file_name(name, expected):
    assert _release.parse_file_name(name) == expected


# Bad input: every case gives one sentence naming the file (or the option) and the problem.

def _write(tmp_path, name, content):
    path = tmp_path / name
    path.write_text(content)
    return str(path)


@pytest.mark.parametrize(
    "content, problem",
    [
        ('{"images": {"a": "quay.io/a/b:1"', "is not valid JSON"),
        ("", "is not valid JSON"),
        ("[1, 2]", "top level is not a JSON object"),
        ('{"release": {"base": "1"}}', "has no images object"),
        ('{"images": ["quay.io/a/b:1"]}', "images value is a list, not an object"),
        ('{"images": {"a": 1}}', "non-string image reference under images.a"),
        ('{"images": {"a": null}}', "non-string image reference under images.a"),
        ('{"images": {"a": "not a ref"}}', "has an invalid image reference"),
        ('{"images": {"a": "ubuntu:22.04"}}', "does not start with a registry host"),
        ('{"images": {"a": "quay.io/a/b@sha256:123"}}', "digest that is not sha256"),
        (b"\xff\xfe{}", "is not valid JSON"),
    ],
)
def test_bad_release_file(tmp_path, content, problem):
    path = tmp_path / "release-x86_64.json"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    with pytest.raises(ReleaseError, match=problem) as caught:
        list_images(paths=[str(path)], arches=["x86_64"])
    assert_one_sentence(str(caught.value), str(path))


@needs_rpmbuild
def test_bad_file_in_an_rpm(tmp_path):
    source = _write(tmp_path, "release-olm-x86_64.json", '{"images": {"x": "quay.io/bad ref"}}')
    rpm = build_rpm(str(tmp_path / "build"), "microshift-olm-release-info", {"/usr/share/microshift/release/release-olm-x86_64.json": source})
    with pytest.raises(ReleaseError, match="has an invalid image reference") as caught:
        list_images(rpms=[rpm], arches=["x86_64"], components=["olm"])
    assert_one_sentence(str(caught.value), os.path.basename(rpm) + ":./usr/share/microshift/release/release-olm-x86_64.json")


def test_rpm_without_release_files(release_rpms):
    with pytest.raises(ReleaseError, match="holds no /usr/share/microshift/release/release-") as caught:
        list_images(rpms=[release_rpms["no-release"]], arches=["x86_64"])
    assert_one_sentence(str(caught.value), release_rpms["no-release"], "microshift-greenboot-1.0-1", "40-microshift.sh")


@pytest.mark.parametrize("cut", [10, 200, -100])
def test_truncated_rpm(release_rpms, tmp_path, cut):
    with open(release_rpms["5.0", "xz"], "rb") as handle:
        data = handle.read()
    path = tmp_path / "microshift-release-info.rpm"
    path.write_bytes(data[:cut])
    with pytest.raises(ReleaseError, match="truncated|corrupt") as caught:
        list_images(rpms=[str(path)], arches=["x86_64"])
    assert_one_sentence(str(caught.value), str(path))


def test_corrupt_rpm(release_rpms, tmp_path):
    with open(release_rpms["5.0", "gzip"], "rb") as handle:
        data = bytearray(handle.read())
    for pos in range(len(data) - 2000, len(data) - 100):
        data[pos] = (data[pos] * 7 + 3) % 256
    path = tmp_path / "microshift-release-info.rpm"
    path.write_bytes(bytes(data))
    with pytest.raises(ReleaseError, match="corrupt|truncated") as caught:
        list_images(rpms=[str(path)], arches=["x86_64"])
    assert_one_sentence(str(caught.value), str(path))


def test_not_an_rpm():
    path = fixture_path("5.0", "release-x86_64.json")
    with pytest.raises(ReleaseError, match="is not an RPM package") as caught:
        list_images(rpms=[path], arches=["x86_64"])
    assert_one_sentence(str(caught.value), path)


@pytest.mark.parametrize(
    "kwargs, problem, names",
    [
        (dict(arches=["ppc64le"]), "Architecture 'ppc64le' is not supported", ["x86_64", "aarch64"]),
        (dict(arches=[]), "No architecture given", []),
        (dict(components=["olm", "openshift-ai"]), "Component 'openshift-ai' is unknown", ["core", "olm", "ai-model-serving"]),
        (dict(components=["sriov"]), "No release file for component sriov and architecture x86_64", ["4.18", "core, gateway-api, multus, olm"]),
        (dict(query="images["), "is not a valid JMESPath expression", ["images["]),
        (dict(query="length(images)"), "yields a int", ["length(images)", "release-x86_64.json"]),
        (dict(query="images.*.length(@)"), "yields a non-string item", ["release-x86_64.json"]),
        (dict(query="images.{a: length(cli)}"), "yields a non-string value under 'a'", ["release-x86_64.json"]),
        (dict(query="abs(images)"), "fails on", ["release-x86_64.json"]),
        (dict(extra_images=["docker.io"]), "The extra_images option has an invalid image reference", ["docker.io"]),
    ],
)
def test_bad_options(kwargs, problem, names):
    args = dict(paths=[fixture_path("4.18")], arches=["x86_64"])
    args.update(kwargs)
    with pytest.raises(ReleaseError, match=problem.replace("(", r"\(").replace("[", r"\[")) as caught:
        list_images(**args)
    assert_one_sentence(str(caught.value), *names)


def test_arch_without_files():
    with pytest.raises(ReleaseError, match="No release file for architecture aarch64") as caught:
        list_images(paths=[fixture_path("4.12", "release-x86_64.json")], arches=["aarch64"])
    assert_one_sentence(str(caught.value), "x86_64: core")


def test_component_for_one_arch_only():
    with pytest.raises(ReleaseError, match="No release file for component ai-model-serving and architecture aarch64"):
        list_images(paths=[fixture_path("5.0")], arches=["x86_64", "aarch64"], components=["core", "ai-model-serving"])
    # `all` takes what exists per architecture.
    result = list_images(paths=[fixture_path("5.0")], arches=["x86_64", "aarch64"], components=["all"])
    assert any(e["components"] == ["ai-model-serving"] for e in result["entries"])


@pytest.mark.parametrize("kind", ["missing", "empty-dir", "bad-name"])
def test_bad_paths(tmp_path, kind):
    if kind == "missing":
        path, problem = str(tmp_path / "absent"), "does not exist"
    elif kind == "empty-dir":
        path, problem = str(tmp_path), "holds no release file"
    else:
        path, problem = _write(tmp_path, "images.json", "{}"), "is not named release-<arch>.json"
    with pytest.raises(ReleaseError, match=problem) as caught:
        list_images(paths=[path], arches=["x86_64"])
    assert_one_sentence(str(caught.value), path)


def test_missing_rpm(tmp_path):
    path = str(tmp_path / "absent.rpm")
    with pytest.raises(ReleaseError, match="does not exist or is not a file") as caught:
        list_images(rpms=[path], arches=["x86_64"])
    assert_one_sentence(str(caught.value), path)


def test_bad_extra_images_file(tmp_path):
    path = _write(tmp_path, "extra.txt", "quay.io/a/b:1\n\n# fine\nquay.io/UPPER/case:1\n")
    with pytest.raises(ReleaseError, match="line 4 has an invalid image reference") as caught:
        list_images(paths=[fixture_path("4.12")], arches=["x86_64"], extra_images_file=path)
    assert_one_sentence(str(caught.value), path)
    with pytest.raises(ReleaseError, match="cannot be read: No such file or directory"):
        list_images(paths=[fixture_path("4.12")], arches=["x86_64"], extra_images_file=str(tmp_path / "absent.txt"))


def test_query_without_jmespath(monkeypatch):
    monkeypatch.setattr(_release, "jmespath", None)
    with pytest.raises(ReleaseError, match="needs the jmespath Python library"):
        list_images(paths=[fixture_path("4.12")], arches=["x86_64"], query="images")
    # The default query does not need it.
    assert list_images(paths=[fixture_path("4.12")], arches=["x86_64"])["images"]


def test_render_list():
    assert _release.render_list([]) == ""
    assert _release.render_list(["a/b", "c/d"]) == "a/b\nc/d\n"
