# Copyright: airgap.microshift contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""MicroShift's release-info files, and real RPMs built from them with rpmbuild."""

from __future__ import annotations

import glob
import os
import shutil
import subprocess

import pytest

# The release-info files of every MicroShift version the tests know (tests/unit/fixtures/release;
# the test bed reads its release shapes from there too).
FIXTURES = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "fixtures", "release")
RELEASE_DIR = "/usr/share/microshift/release"
PATTERN = "*" + RELEASE_DIR + "/release-*.json"

# rpmbuild's payload settings: w<level>.<io>
PAYLOADS = {
    "gzip": "w9.gzdio",
    "xz": "w6.xzdio",
    "zstd": "w19.zstdio",
    "bzip2": "w9.bzdio",
    "lzma": "w6.lzdio",
}

needs_rpmbuild = pytest.mark.skipif(shutil.which("rpmbuild") is None, reason="rpmbuild is not installed")


def run_command(argv):
    """A CommandRunner.run on subprocess, as AnsibleModule.run_command(argv, encoding=None) behaves."""
    proc = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, check=False)
    return proc.returncode, proc.stdout, proc.stderr


def build_rpm(topdir, name, files, payload="gzip", version="1.0"):
    """Build a noarch RPM named ``name`` installing ``files`` ({installed path: source path}).

    Returns the path of the package. ``payload`` is a key of PAYLOADS.
    """
    os.makedirs(topdir, exist_ok=True)
    install = "\n".join(
        "install -D -m 0644 %s %%{buildroot}%s" % (source, target) for target, source in sorted(files.items())
    )
    listed = "\n".join(sorted(files))
    spec = os.path.join(topdir, "%s-%s.spec" % (name, payload))
    with open(spec, "w") as handle:
        handle.write(
            "Name: %s\nVersion: %s\nRelease: 1\nSummary: Test package %s\nLicense: GPL-3.0-or-later\nBuildArch: noarch\n"
            "%%description\nTest package.\n%%install\n%s\n%%files\n%s\n" % (name, version, name, install, listed)
        )
    subprocess.run(
        [
            "rpmbuild", "-bb", "--quiet",
            "--define", "_topdir %s" % topdir,
            "--define", "_binary_payload %s" % PAYLOADS[payload],
            "--define", "_build_id_links none",
            "--define", "__os_install_post %{nil}",
            spec,
        ],
        check=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )
    built = glob.glob(os.path.join(topdir, "RPMS", "noarch", "%s-%s-1.noarch.rpm" % (name, version)))
    assert len(built) == 1, built
    return built[0]


def release_files(version):
    """{installed path: fixture path} for every release file of a version."""
    directory = os.path.join(FIXTURES, version)
    return dict(
        (RELEASE_DIR + "/" + name, os.path.join(directory, name))
        for name in sorted(os.listdir(directory)) if name.endswith(".json")
    )


class LazyRpms:
    """Test RPMs built on first use and kept under ``root``: ``rpms[key]`` is a package path.

    ``specs`` maps a key to ``build_rpm`` arguments (name, files, payload, version). Packages are
    found again on disk, not only in memory: ansible-test runs every test in a forked process, where
    a session fixture's in-memory state does not survive from one test to the next.
    """

    def __init__(self, root, specs):
        self.root = root
        self.specs = specs

    def __getitem__(self, key):
        name, files, payload, version = self.specs[key]
        top = os.path.join(self.root, "-".join(str(part) for part in (key if isinstance(key, tuple) else (key,))))
        path = os.path.join(top, "RPMS", "noarch", "%s-%s-1.noarch.rpm" % (name, version))
        if not os.path.exists(path):
            build_rpm(top, name, files, payload, version)
        return path


def rpm_root(tmp_path_factory, name):
    if shutil.which("rpmbuild") is None:
        pytest.skip("rpmbuild is not installed")
    root = os.path.join(str(tmp_path_factory.getbasetemp()), name)
    os.makedirs(root, exist_ok=True)
    return root
