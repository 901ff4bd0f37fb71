# Copyright: airgap.microshift contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""What the unit tests share, and the only test code a test file imports.

- :mod:`.modules`: a module's ``main()`` run in-process with real arguments;
- :mod:`.processes`: child processes that end with their test (``die_with_parent``), free ports;
- :mod:`.registry`: a real ``docker-registry`` on loopback (TLS from a test CA, htpasswd or token
  logins, or plain HTTP; in a private network namespace when asked);
- :mod:`.images`: synthetic OCI images, pushed to such a registry, copied into an image store or
  a ``dir:`` tree;
- :mod:`.stores`: image stores written directly as docs/store-format.md describes;
- :mod:`.release`: the release-info fixtures and RPMs built from them with rpmbuild.
"""
