# Copyright: airgap.microshift contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""The release_images module's main(), run with real module arguments."""

from __future__ import annotations

import os
import platform
import stat
import subprocess

import pytest


from ansible_collections.airgap.microshift.plugins.modules import release_images
from ansible_collections.airgap.microshift.tests.unit.plugins.helpers.modules import run_main, warning_texts
from ansible_collections.airgap.microshift.tests.unit.plugins.helpers.release import FIXTURES, LazyRpms, release_files, rpm_root


def run_module(capsys, args, check_mode=False, diff=False):
    """Run main() with ``args``; return the result dict it printed."""
    return run_main(release_images, capsys, args, check_mode, diff)[0]


def jq_images(*paths):
    out = subprocess.run(["jq", "-r", ".images | .[]"] + list(paths), check=True, stdout=subprocess.PIPE, universal_newlines=True).stdout
    return sorted(set(out.split()))


@pytest.fixture(scope="session")
def rpm_50(tmp_path_factory):
    """A release-info RPM of MicroShift 5.0 with a zstd payload."""
    rpms = LazyRpms(rpm_root(tmp_path_factory, "module-rpms"),
                    {"zstd": ("microshift-release-info", release_files("5.0"), "zstd", "5.0.0")})
    return rpms["zstd"]


def test_list_from_directory(capsys):
    path = os.path.join(FIXTURES, "4.20")
    result = run_module(capsys, {"path": [path], "arch": ["x86_64"], "components": ["core", "olm"]})
    assert result["changed"] is False
    assert "failed" not in result
    assert result["images"] == jq_images(os.path.join(path, "release-x86_64.json"), os.path.join(path, "release-olm-x86_64.json"))
    assert sorted(result["releases"]) == ["core", "olm"]
    assert result["tag_refs"] == []
    assert result["registries"] == ["quay.io", "registry.redhat.io"]
    assert "warnings" not in result
    assert "dest" not in result


def test_default_arch_is_the_host(capsys):
    machine = platform.machine()
    if machine not in ("x86_64", "aarch64"):
        pytest.skip("host architecture %s has no MicroShift release" % machine)
    result = run_module(capsys, {"path": [os.path.join(FIXTURES, "4.14")]})
    assert result["files"] == [os.path.join(FIXTURES, "4.14", "release-%s.json" % machine)]


def test_list_from_rpm_with_warnings(capsys, rpm_50):
    result = run_module(capsys, {"rpm": [rpm_50], "arch": ["amd64"], "components": ["all"]})
    files = [os.path.join(FIXTURES, "5.0", n) for n in os.listdir(os.path.join(FIXTURES, "5.0")) if n.endswith("x86_64.json")]
    assert result["images"] == jq_images(*files)
    assert len(result["tag_refs"]) == 16
    assert "ghcr.io" in result["registries"]
    warnings = warning_texts(result)
    assert any("mirror-by-digest-only" in w for w in warnings)
    assert any("ghcr.io" in w for w in warnings)


def test_dest_check_mode_write_idempotence_and_diff(capsys, tmp_path):
    path = os.path.join(FIXTURES, "4.22")
    dest = tmp_path / "images.txt"
    args = {"path": [path], "arch": ["aarch64"], "components": ["all"], "dest": str(dest), "mode": "0640"}
    expected = "".join(ref + "\n" for ref in jq_images(*[os.path.join(path, n) for n in os.listdir(path) if n.endswith("aarch64.json")]))

    # Check mode: reports the change and the diff, writes nothing.
    result = run_module(capsys, args, check_mode=True, diff=True)
    assert result["changed"] is True
    assert result["diff"]["before"] == ""
    assert result["diff"]["after"] == expected
    assert not dest.exists()

    # Apply.
    result = run_module(capsys, args, diff=True)
    assert result["changed"] is True
    assert result["dest"] == str(dest)
    assert dest.read_text() == expected
    assert stat.S_IMODE(dest.stat().st_mode) == 0o640
    assert list(tmp_path.iterdir()) == [dest], "no temporary file is left behind"

    # Again: nothing to do, in check mode or not.
    for check_mode in (True, False):
        result = run_module(capsys, args, check_mode=check_mode, diff=True)
        assert result["changed"] is False
        assert result["diff"]["before"] == result["diff"]["after"] == expected

    # A mode change alone is a change.
    result = run_module(capsys, dict(args, mode="0644"))
    assert result["changed"] is True
    assert stat.S_IMODE(dest.stat().st_mode) == 0o644

    # Different content replaces the file.
    dest.write_text("quay.io/stale/image:1\n")
    result = run_module(capsys, dict(args, mode="0644"), diff=True)
    assert result["changed"] is True
    assert result["diff"]["before"] == "quay.io/stale/image:1\n"
    assert dest.read_text() == expected


def test_extra_images(capsys, tmp_path):
    digest = "sha256:" + "ab" * 32
    listing = tmp_path / "extra.txt"
    listing.write_text("# mine\nquay.io/example/app@%s\n" % digest)
    result = run_module(capsys, {
        "path": [os.path.join(FIXTURES, "4.12")], "arch": ["x86_64"],
        "extra_images": ["registry.example.com/a/b@" + digest], "extra_images_file": str(listing),
    })
    assert "quay.io/example/app@" + digest in result["images"]
    assert "registry.example.com/a/b@" + digest in result["images"]
    assert any("registry.example.com" in w for w in warning_texts(result))


def test_query(capsys):
    result = run_module(capsys, {
        "path": [os.path.join(FIXTURES, "4.18")], "arch": ["x86_64"],
        "query": "values(images)[?starts_with(@, 'registry.redhat.io/')]",
    })
    assert result["images"]
    assert all(ref.startswith("registry.redhat.io/") for ref in result["images"])


@pytest.mark.parametrize(
    "args, message",
    [
        ({"arch": ["s390x"]}, "Architecture 's390x' is not supported"),
        ({"components": ["nope"]}, "Component 'nope' is unknown"),
        ({"query": "images[["}, "is not a valid JMESPath expression"),
        ({"path": ["/nonexistent/release"]}, "/nonexistent/release does not exist"),
        ({"rpm": ["/nonexistent/x.rpm"]}, "/nonexistent/x.rpm does not exist"),
        ({"dest": "/nonexistent/dir/images.txt"}, "The directory /nonexistent/dir of dest /nonexistent/dir/images.txt does not exist."),
    ],
)
def test_failures(capsys, args, message):
    full = {"path": [os.path.join(FIXTURES, "4.16")], "arch": ["x86_64"]}
    full.update(args)
    result = run_module(capsys, full)
    assert result["failed"] is True
    assert message in result["msg"]
    assert "\n" not in result["msg"]
    assert "exception" not in result


def test_corrupt_rpm_fails_cleanly(capsys, tmp_path, rpm_50):
    with open(rpm_50, "rb") as handle:
        data = handle.read()
    bad = tmp_path / "cut.rpm"
    bad.write_bytes(data[:len(data) // 2])
    result = run_module(capsys, {"rpm": [str(bad)], "arch": ["x86_64"]})
    assert result["failed"] is True
    assert result["msg"].startswith(str(bad) + " is truncated") or result["msg"].startswith(str(bad) + " is corrupt")


def test_dest_is_a_directory(capsys, tmp_path):
    result = run_module(capsys, {"path": [os.path.join(FIXTURES, "4.16")], "arch": ["x86_64"], "dest": str(tmp_path)})
    assert result["failed"] is True
    assert result["msg"] == "dest %s is a directory, not a file." % tmp_path
