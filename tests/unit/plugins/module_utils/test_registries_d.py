# Copyright: airgap.microshift contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""registries.d: the YAML files of real hosts read the same with and without PyYAML, duplicates refused,
and use-sigstore-attachments looked up by the repository an image is read from."""

from __future__ import annotations

import pytest

from ansible_collections.airgap.microshift.plugins.module_utils import _registries_d as regd
from ansible_collections.airgap.microshift.plugins.module_utils._registries_d import RegistriesDError

yaml = pytest.importorskip("yaml")

# RHEL 9's default.yaml and registry.redhat.io.yaml (containers-common), and Red Hat's documented mirror file.
RHEL_DEFAULT = """# This is a default registries.d configuration file.  You may
# add to this file or create additional files in registries.d/.
#
# lookaside: for reading/writing simple signing signatures
# lookaside-staging: for writing simple signing signatures, preferred over lookaside
default-docker:
#  lookaside: https://…
#  lookaside-staging: file:///…

# docker:
#
#   privateregistry.com:
#    lookaside: https://privateregistry.com/sigstore/
"""
RHEL_REDHAT_IO = """docker:
     registry.redhat.io:
         sigstore: https://registry.redhat.io/containers/sigstore
"""
MIRROR = """docker:
   mirror.registry.local:8443:
        use-sigstore-attachments: true
   'quay.io/openshift-release-dev': {}
   "quay.io/x": null
"""


@pytest.mark.parametrize("text", [RHEL_DEFAULT, RHEL_REDHAT_IO, MIRROR, "", "---\ndocker:\n  a.io:\n    use-sigstore-attachments: false\n"])
def test_subset_reader_agrees_with_pyyaml(text):
    assert regd.parse_yaml_subset(text) == (yaml.safe_load(text) or {})


@pytest.mark.parametrize("text, words", [
    ("docker:\n  - a.io\n", "sequences"),
    ("docker:\n  a.io: [1, 2]\n", "not a plain scalar"),
    ("docker:\n  a.io: 1\n  a.io: 2\n", "defined twice"),
    ("docker:\n    a.io: 1\n  b.io: 2\n", "indentation"),
    ("docker:\n\ta.io: 1\n", "tab"),
    ("docker:\n  a.io: \"unterminated\n", "unterminated"),
])
def test_subset_reader_refuses_what_it_does_not_know(text, words):
    with pytest.raises(RegistriesDError, match=words):
        regd.parse_yaml_subset(text)


def test_validation():
    assert regd.validate(regd.parse_yaml_subset(MIRROR)) == []
    assert "use-sigstore-attachments must be true or false" in regd.validate(
        {"docker": {"a.io": {"use-sigstore-attachments": "yes"}}})[0]
    assert "cannot both be set" in regd.validate({"docker": {"a.io": {"sigstore": "https://a", "lookaside": "https://b"}}})[0]
    with pytest.raises(RegistriesDError, match="/etc/containers/registries.d/x.yaml is invalid"):
        regd.parse("docker: [a]\n", "/etc/containers/registries.d/x.yaml")


def test_render_reads_back():
    doc = regd.attachments_document(["mirror.example.com:8443", "mirror.example.com:8443/ns"])
    text = regd.checked_render(doc, "Ansible managed: do not edit")
    assert text.startswith("# Ansible managed: do not edit\ndocker:\n  mirror.example.com:8443:\n    use-sigstore-attachments: true\n")
    assert yaml.safe_load(text) == doc
    for bad in ([], ["https://mirror"], ["mirror example"]):
        with pytest.raises(RegistriesDError):
            regd.attachments_document(bad)


def test_merge_refuses_duplicates_as_containers_image_does():
    ours = ("/d/mirror.yaml", regd.attachments_document(["mirror.registry.local:8443"]))
    merged = regd.merge_files([("/d/default.yaml", regd.parse(RHEL_DEFAULT, "a")), ("/d/redhat.yaml", regd.parse(RHEL_REDHAT_IO, "b")), ours])
    assert merged["owners"]["mirror.registry.local:8443"] == "/d/mirror.yaml"
    with pytest.raises(RegistriesDError, match="mirror.registry.local:8443 is defined both in /d/other.yaml and /d/mirror.yaml"):
        regd.merge_files([("/d/other.yaml", regd.parse(MIRROR, "c")), ours])
    with pytest.raises(RegistriesDError, match='"default-docker" is defined both'):
        regd.merge_files([("/d/1.yaml", {"default-docker": {"lookaside": "x"}}), ("/d/2.yaml", {"default-docker": {"lookaside": "y"}})])


def test_use_sigstore_attachments_lookup():
    merged = regd.merge_files([("a", {"docker": {"mirror.example.com:8443": {"use-sigstore-attachments": True},
                                                 "mirror.example.com:8443/off": {"use-sigstore-attachments": False},
                                                 "mirror.example.com:8443/unset": {"lookaside": "https://x"}}}),
                               ("b", {"default-docker": {"use-sigstore-attachments": False}})])
    assert regd.use_sigstore_attachments(merged, "mirror.example.com:8443/ns/app@sha256:" + "a" * 64)
    assert not regd.use_sigstore_attachments(merged, "mirror.example.com:8443/off/app")
    # a namespace that does not set it falls through to a broader one
    assert regd.use_sigstore_attachments(merged, "mirror.example.com:8443/unset/app")
    assert not regd.use_sigstore_attachments(merged, "quay.io/openshift-release-dev/x")
    assert regd.use_sigstore_attachments(regd.merge_files([("w", {"docker": {"*.example.com": {"use-sigstore-attachments": True}}})]),
                                         "mirror.example.com:8443/x")
    assert not regd.use_sigstore_attachments(regd.merge_files([]), "mirror.example.com:8443/x")
