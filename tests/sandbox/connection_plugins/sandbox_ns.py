# Copyright: airgap.microshift contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Ansible connection to a test bed node: commands and files go through ``nsenter``."""

from __future__ import annotations

DOCUMENTATION = r"""
name: sandbox_ns
short_description: Reach a node of the airgap.microshift test bed through its namespaces
description:
  - Runs commands inside the network, mount and UTS namespaces of a test bed node with C(nsenter),
    and copies files into and out of the node's mount namespace the same way (C(dd) inside the node).
  - The controller runs as root on the machine that hosts the test bed, so no C(become) is needed.
  - Only for the test bed under C(tests/sandbox); the generated inventory sets every variable.
options:
  net:
    description: Network namespace file of the node (e.g. C(/run/netns/amsb-1a2b3c-gap)).
    type: string
    required: true
    vars:
      - name: sandbox_ns_net
  mount:
    description: Persistent mount namespace file of the node.
    type: string
    required: true
    vars:
      - name: sandbox_ns_mount
  uts:
    description: Persistent UTS namespace file of the node (its host name).
    type: string
    vars:
      - name: sandbox_ns_uts
  sandbox_id:
    description: Test bed id, put in the environment of every command so a sweep can find leftovers.
    type: string
    default: ""
    vars:
      - name: sandbox_id
  executable:
    description: Shell that runs the commands inside the node.
    type: string
    default: /bin/sh
    vars:
      - name: ansible_executable
"""

import os
import subprocess

from ansible.errors import AnsibleConnectionFailure, AnsibleError
from ansible.module_utils.common.text.converters import to_bytes, to_native
from ansible.plugins.connection import ConnectionBase
from ansible.utils.display import Display

display = Display()
BUFSIZE = 65536


class Connection(ConnectionBase):
    """Run commands and move files inside a test bed node's namespaces."""

    transport = "sandbox_ns"
    has_pipelining = True
    has_tty = False
    default_user = "root"

    def _nsenter(self):
        argv = ["nsenter", "--net=" + self.get_option("net"), "--mount=" + self.get_option("mount")]
        if self.get_option("uts"):
            argv.append("--uts=" + self.get_option("uts"))
        return argv

    def _env(self):
        env = dict(os.environ)
        if self.get_option("sandbox_id"):
            env["AMSB_SANDBOX_ID"] = self.get_option("sandbox_id")
        return env

    def _connect(self):
        if os.geteuid() != 0:
            raise AnsibleConnectionFailure("the sandbox_ns connection needs root (nsenter) on the controller")
        for opt in ("net", "mount"):
            path = self.get_option(opt)
            if not path or not os.path.exists(path):
                raise AnsibleConnectionFailure("namespace file %s=%r of %s does not exist: is the test bed up?"
                                               % (opt, path, self._play_context.remote_addr))
        self._connected = True
        return self

    def _popen(self, argv, stdin=subprocess.PIPE):
        cmd = self._nsenter() + argv
        display.vvv("NSENTER %s" % cmd, host=self._play_context.remote_addr)
        return subprocess.Popen([to_bytes(a, errors="surrogate_or_strict") for a in cmd], stdin=stdin,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=self._env())

    def exec_command(self, cmd, in_data=None, sudoable=True):
        super().exec_command(cmd, in_data=in_data, sudoable=sudoable)
        proc = self._popen([self.get_option("executable"), "-c", cmd])
        stdout, stderr = proc.communicate(in_data)
        return proc.returncode, stdout, stderr

    def put_file(self, in_path, out_path):
        super().put_file(in_path, out_path)
        display.vvv("PUT %s TO %s" % (in_path, out_path), host=self._play_context.remote_addr)
        if not os.path.exists(to_bytes(in_path, errors="surrogate_or_strict")):
            raise AnsibleError("file or module does not exist: %s" % in_path)
        with open(to_bytes(in_path, errors="surrogate_or_strict"), "rb") as src:
            proc = self._popen(["dd", "of=" + out_path, "bs=%d" % BUFSIZE, "status=none"], stdin=src)
            stdout, stderr = proc.communicate()
        if proc.returncode != 0:
            raise AnsibleError("failed to put %s to %s: %s %s" % (in_path, out_path, to_native(stdout), to_native(stderr)))

    def fetch_file(self, in_path, out_path):
        super().fetch_file(in_path, out_path)
        display.vvv("FETCH %s TO %s" % (in_path, out_path), host=self._play_context.remote_addr)
        proc = self._popen(["dd", "if=" + in_path, "bs=%d" % BUFSIZE, "status=none"], stdin=subprocess.DEVNULL)
        with open(to_bytes(out_path, errors="surrogate_or_strict"), "wb") as dest:
            while True:
                chunk = proc.stdout.read(BUFSIZE)
                if not chunk:
                    break
                dest.write(chunk)
        stderr = proc.stderr.read()
        proc.wait()
        if proc.returncode != 0:
            raise AnsibleError("failed to fetch %s to %s: %s" % (in_path, out_path, to_native(stderr)))

    def close(self):
        self._connected = False
