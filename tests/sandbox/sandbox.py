# Copyright: airgap.microshift contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The test bed: a simulated internet, a real air gap and isolated MicroShift hosts on one machine.

See tests/README.md for the topology. ``Sandbox(state_dir).up()`` raises everything and writes
``<state_dir>/sandbox.json``; ``down()`` removes everything again (also after a crash: ``up()``
sweeps the leftovers of the same state dir first, ``sweep_all()`` those of every sandbox).
"""

from __future__ import annotations

import atexit
import base64
import hashlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import threading
import time

from . import booted as booted_hosts
from . import ns
from . import pki
from . import proxy as wanproxy
from . import release as releases
from . import signatures as sigs
from . import rootfs

HERE = os.path.dirname(os.path.abspath(__file__))
CONNECTION_PLUGINS = os.path.join(HERE, "connection_plugins")
STATE_FILE = "sandbox.json"

# The internet: one loopback address per registry name inside the internet netns; the WAN proxy
# listeners use the same last octet in 127.0.1.0/24.
INTERNET_REGISTRIES = (
    ("quay.io", "127.0.0.2"),
    ("registry.redhat.io", "127.0.0.3"),
    ("registry.access.redhat.com", "127.0.0.4"),
    ("ghcr.io", "127.0.0.5"),
)
MIRROR_HOST = "mirror.airgap.test"
MIRROR_ADDR = "127.0.0.10"
MIRROR_PORT = 8443
CONNECTED = "connected-host"
ALIASES = {"connected": CONNECTED, "bastion": "airgap-bastion"}
BASTION = "airgap-bastion"
# Directories a node sees as its own (an overlay over the machine's, upper dir under the state dir).
NODE_OVERLAYS = ("/etc", "/var/lib", "/usr/local", "/run")
DEBIAN_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"
RHEL_BUNDLE = "/etc/pki/tls/certs/ca-bundle.crt"

UPDATE_CA_TRUST = """#!/bin/sh
# update-ca-trust for the Debian-based test hosts: copies the RHEL anchors into the Debian trust
# store, rebuilds it, and writes the RHEL bundle paths from the result.
set -e
mkdir -p /usr/local/share/ca-certificates/ca-trust-anchors
rm -f /usr/local/share/ca-certificates/ca-trust-anchors/*.crt
for f in /etc/pki/ca-trust/source/anchors/*; do
    [ -f "$f" ] || continue
    name=$(basename "$f"); cp "$f" "/usr/local/share/ca-certificates/ca-trust-anchors/${name%.*}.crt"
done
update-ca-certificates --fresh >/dev/null 2>&1
mkdir -p /etc/pki/ca-trust/extracted/pem /etc/pki/tls/certs
cp /etc/ssl/certs/ca-certificates.crt /etc/pki/ca-trust/extracted/pem/tls-ca-bundle.pem
cp /etc/ssl/certs/ca-certificates.crt /etc/pki/tls/certs/ca-bundle.crt
"""

STORAGE_CONF = """[storage]
driver = "vfs"
runroot = "/run/containers/storage"
graphroot = "/var/lib/containers/storage"
"""


class SandboxError(Exception):
    """The test bed cannot be raised or used."""


def sandbox_id(state_dir):
    """``amsb-<6 hex>``, stable for a state dir: names its namespaces, mounts and processes."""
    return ns.PREFIX + hashlib.sha256(os.path.realpath(state_dir).encode()).hexdigest()[:6]


def load_state(state_dir):
    """The state file of a sandbox that is up (dict)."""
    path = os.path.join(state_dir, STATE_FILE)
    if not os.path.exists(path):
        raise SandboxError("no sandbox state at %s (is it up?)" % path)
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _write_json(path, data, mode=0o644):
    tmp = path + ".tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2, sort_keys=True)
        f.write("\n")
    os.replace(tmp, path)


def _write(path, text, mode=0o644):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
    os.chmod(path, mode)


def _registry_config(addr, port, realm, storage, cert, key, htpasswd, readonly):
    # JSON is YAML: docker-registry reads this as its config.yml.
    return {
        "version": "0.1",
        "log": {"level": "info", "formatter": "text", "accesslog": {"disabled": False}},
        "storage": {
            "filesystem": {"rootdirectory": storage},
            "delete": {"enabled": True},
            "cache": {"blobdescriptor": "inmemory"},
            "maintenance": {"uploadpurging": {"enabled": False}, "readonly": {"enabled": readonly}},
        },
        "http": {"addr": "%s:%d" % (addr, port), "secret": secrets.token_hex(16), "tls": {"certificate": cert, "key": key},
                 "relativeurls": False},
        "auth": {"htpasswd": {"realm": realm, "path": htpasswd}},
    }


class Sandbox:
    """A running test bed. Use ``up()``/``down()``, or ``with Sandbox(...) as sb:``.

    ``wan``: None (no proxy) or a dict with ``bandwidth`` (e.g. ``"200mbit"``), ``latency``
    (``"20ms"``), ``faults`` (``"reset=0.05,http429=0.05"``) and ``mode`` (``passthrough`` or
    ``terminate``; ``terminate`` is chosen when HTTP faults are asked for).

    ``host_kind``: ``ns`` (namespace hosts, the default), ``booted`` (every host a real systemd
    machine reached over SSH), ``mixed`` (the first half booted) or ``last`` (the last host booted,
    the others namespace hosts); ``qemu_hosts``: how many of the booted hosts are QEMU guests rather
    than nspawn machines; ``ostree_hosts``: booted hosts that carry the rpm-ostree marker
    ``/run/ostree-booted``; ``booted_mirror=False`` keeps the mirror off the booted hosts' network
    (they still answer SSH: a site with no registry in reach). See
    tests/README.md, "Host kinds".
    """

    def __init__(self, state_dir, size="tiny", hosts=2, version=releases.DEFAULT_VERSION, seed=releases.DEFAULT_SEED,
                 ref_mode="index", cache_dir=releases.DEFAULT_CACHE_DIR, wan=None, python=None, log=None,
                 host_kind="ns", qemu_hosts=0, ostree_hosts=(), rootfs_cache=rootfs.DEFAULT_CACHE_DIR, booted_mirror=True):
        self.state_dir = os.path.realpath(state_dir)
        for top in NODE_OVERLAYS:
            if self.state_dir == top or self.state_dir.startswith(top + "/"):
                raise SandboxError("the state dir %s must not be under %s (the nodes overlay it)" % (self.state_dir, top))
        self.size = size
        self.hosts = ["microshift-%d" % (i + 1) for i in range(int(hosts))]
        self.host_kind, self.host_kind_reason = booted_hosts.resolve_kind(host_kind, qemu_hosts, rootfs_cache)
        self.kinds = booted_hosts.plan(self.hosts, self.host_kind, qemu_hosts if self.host_kind != "ns" else 0)
        self.ostree_hosts = list(ostree_hosts or ())
        self.rootfs_cache = rootfs_cache
        self.booted_mirror = bool(booted_mirror)
        self.version = version
        self.seed = seed
        self.ref_mode = ref_mode
        self.cache_dir = cache_dir
        self.wan = wan
        self.python = python or sys.executable
        self.sid = sandbox_id(self.state_dir)
        self.nsdir = os.path.join(self.state_dir, "amsb-ns-" + self.sid[len(ns.PREFIX):])
        self.netns = {"internet": self.sid + "-inet", "gap": self.sid + "-gap"}
        self.state = None
        self._log = log or (lambda msg: None)
        self._atexit = False
        self._wan_faults = {}

    # -- public API -------------------------------------------------------------------------

    def __enter__(self):
        if self.state is None:
            self.up()
        return self

    def __exit__(self, *exc):
        self.down()
        return False

    def up(self):
        """Raise every site; return the state dict (also written to ``sandbox.json``)."""
        t0 = time.monotonic()
        timings = {}
        self._cleanup_previous()
        if self.host_kind_reason:
            self._log("booted hosts are not possible here (%s): raising namespace hosts instead" % self.host_kind_reason)
        os.makedirs(self.state_dir, exist_ok=True)
        self._install_handlers()
        try:
            meta = releases.ensure_release(self.cache_dir, self.version, self.size, self.seed, self.ref_mode)
            timings["release"] = time.monotonic() - t0
            state = self._base_state(meta)
            self.state = state
            _write_json(self._path(STATE_FILE), state)
            self._make_credentials(state)
            timings["credentials"] = time.monotonic() - t0
            for net in self.netns.values():
                ns.netns_add(net)
                state["created"]["netns"].append(net)
            ns.make_private_dir(self.nsdir)
            state["created"]["mounts"].append(self.nsdir)
            self._start_registries(state)
            if self.wan is not None:
                self._start_wan(state, self.wan)
            self._make_nodes(state)
            timings["namespaces"] = time.monotonic() - t0
            booted = None
            if state["booted_hosts"]:
                booted = booted_hosts.BootedHosts(self, state, self.kinds, self.ostree_hosts, self.rootfs_cache, self._log)
                booted.create()
                _write_json(self._path(STATE_FILE), state)
                booted.start()
                _write_json(self._path(STATE_FILE), state)
                timings["booted_started"] = time.monotonic() - t0
            self._wait_listening(state)
            timings["listening"] = time.monotonic() - t0
            self._write_inventory(state)
            self._verify(state)
            timings["verified"] = time.monotonic() - t0
            if booted is not None:
                ready = booted.wait_ready()
                timings["booted_ready"] = time.monotonic() - t0
                self._log("booted hosts answer SSH (seconds from start): %s"
                          % ", ".join("%s %.1f" % kv for kv in sorted(ready.items())))
            if state.get("wan") and self._wan_faults:
                reply = wanproxy.control(state["wan"]["control_socket"], {"cmd": "set", "settings": self._wan_faults})
                state["wan"]["settings"] = reply["settings"]
            state["status"] = "up"
            state["timings"] = {k: round(v, 3) for k, v in timings.items()}
            _write_json(self._path(STATE_FILE), state)
            self._log("sandbox %s up in %.1fs" % (self.sid, max(timings.values())))
            return state
        except BaseException:
            self.down()
            raise

    def down(self, keep_logs=False):
        """Stop and remove everything this sandbox created. Idempotent."""
        state = self.state
        if state is None and os.path.exists(self._path(STATE_FILE)):
            try:
                state = load_state(self.state_dir)
            except (OSError, ValueError):
                state = None
        if state is not None:
            # Booted hosts first: their supervisor powers them off (a killed nspawn leaves its container running).
            booted_hosts.stop_supervisor(state)
        removed = ns.sweep(self.sid, self._log)
        for name in ("nodes", "hosts", "internet", "gap", "wan", "pki", "creds", "transfer", "ansible", "wan.json"):
            path = self._path(name)
            if os.path.isdir(path):
                shutil.rmtree(path, ignore_errors=True)
            elif os.path.exists(path):
                os.unlink(path)
        if os.path.isdir(self.nsdir) and not any(p.startswith(self.nsdir) for p in ns.mountinfo()):
            shutil.rmtree(self.nsdir, ignore_errors=True)
        if not keep_logs:
            shutil.rmtree(self._path("logs"), ignore_errors=True)
        if os.path.exists(self._path(STATE_FILE)):
            os.unlink(self._path(STATE_FILE))
        self.state = None
        if state is not None:
            self._log("sandbox %s down" % self.sid)
        return removed

    def exec_argv(self, node, argv):
        """The argv that runs ``argv`` on ``node`` (connected, airgap-bastion, microshift-N, internet, gap)."""
        st = self.state or load_state(self.state_dir)
        return node_command(st, node, argv)

    def run(self, node, argv, check=True, **kwargs):
        """Run a command on a node; return the CompletedProcess (text)."""
        kwargs.setdefault("capture_output", True)
        kwargs.setdefault("text", True)
        env = dict(kwargs.pop("env", None) or os.environ)
        env[ns.ENV_MARK] = self.sid
        return subprocess.run(self.exec_argv(node, argv), check=check, env=env, **kwargs)

    def publish_update(self, changed=2):
        """Publish a release update on the internet registries; return its description (dict).

        Exactly ``changed`` images of the release (named by digest only) get a new top layer, hence
        new digests; every other image is unchanged. The update's release files are written under
        a new directory (``update["release"]["dir"]``), and the internet registries are restarted on
        a storage that serves both releases (the registries serve storage read-only from the
        release cache, so the update is its own cache entry rather than a write into the running
        one). Also in the state file (``update``) and the inventory (``sandbox_update_release_dir``).
        """
        st = self.state or load_state(self.state_dir)
        self.hosts = list(st["hosts"])
        # The inventory is written again: with the host kinds the sandbox was raised with.
        self.kinds = dict(st.get("host_kinds") or {h: "ns" for h in self.hosts})
        rel = st["release"]
        meta = releases.ensure_release(st.get("cache_dir", self.cache_dir), rel["version"], rel["size"], rel["seed"], rel["ref_mode"],
                                       changed=changed)
        self._restart_internet_registries(st, meta["storage_dirs"])
        files = {}
        for fname in sorted(os.listdir(meta["release_dir"])):
            with open(os.path.join(meta["release_dir"], fname), encoding="utf-8") as f:
                files[fname] = sorted(set(json.load(f)["images"].values()))
        update = {
            "changed": int(changed),
            "release": {
                "version": meta["version"], "size": meta["size"], "seed": meta["seed"], "ref_mode": meta["ref_mode"],
                "dir": meta["release_dir"], "rpm": meta["rpm"], "meta": os.path.join(os.path.dirname(meta["release_dir"]), "release-meta.json"),
                "image_count": meta["image_count"], "files": files,
                "tag_refs": sorted(t for img in meta["images"] for t in img["tags"]),
            },
            "changed_images": meta["changed_images"],
            "new_blobs": {d: s for img in meta["changed_images"] for d, s in img["new_blobs"].items()},
        }
        # The connected host reads every new ref and one previous ref of each changed image.
        checks = [(r, r.split("@", 1)[1]) for img in meta["changed_images"] for r in img["refs_after"] + img["refs_before"][:1]]
        procs = [(ref, digest, subprocess.Popen(node_argv(st, CONNECTED) + ["skopeo", "inspect", "--raw", "--authfile", st["pull_secret"],
                                                                            "docker://" + ref], stdout=subprocess.PIPE, stderr=subprocess.PIPE))
                 for ref, digest in checks]
        for ref, digest, proc in procs:
            out, err = proc.communicate()
            if proc.returncode != 0 or "sha256:" + hashlib.sha256(out).hexdigest() != digest:
                raise SandboxError("after the update the connected host cannot read %s: %s" % (ref, err.decode(errors="replace").strip()))
        st["update"] = update
        self._write_inventory(st)
        _write_json(self._path(STATE_FILE), st)
        self._log("sandbox %s: release update with %d changed images published (%s)" % (self.sid, int(changed), meta["release_dir"]))
        return update

    def mirror_signature(self, repository, manifest_digest, key="release", identity=None, remove=False):
        """Tamper with the signatures of a manifest on the site mirror (a damaged or compromised mirror).

        ``repository`` is the mirror repository without its host (namespace included). With
        ``remove``, the attachment's tag is dropped; otherwise it is replaced by one signature of
        ``manifest_digest`` for ``identity`` (default: the repository's original name by digest)
        made with ``key``: ``release`` (the test release key) or ``other`` (an ECDSA key of this
        sandbox, which nobody trusts). Returns a description of what was done.
        """
        st = self.state or load_state(self.state_dir)
        storage = st["mirror"]["storage"]
        if remove:
            return {"removed": sigs.remove_attachment(storage, repository, manifest_digest)}
        if key == "release":
            private = sigs.load_key(st["release"]["signing"]["private_key"])
        elif key == "other":
            path = self._path("keys", "other-key.pem")
            if not os.path.exists(path):
                sigs.write_key_pair(sigs.generate_key("ecdsa"), self._path("keys"), "other-key")
            private = sigs.load_key(path)
        else:
            raise SandboxError("key must be release or other, not %r" % key)
        if identity is None:
            raise SandboxError("give the identity the signature names")
        digest = sigs.write_attachment(storage, repository, manifest_digest, [sigs.sign(private, identity, manifest_digest)])
        return {"attachment": digest, "identity": identity, "key": key}

    def _restart_internet_registries(self, state, storage_dirs):
        configs = [reg["config"].encode() for reg in state["registries"].values()]
        old = [state["processes"].get("registry-" + name) for name in state["registries"]]
        # Also any registry of this sandbox still serving one of these configs (an interrupted update).
        for pid in ns.find_processes(self.sid):
            try:
                with open("/proc/%d/cmdline" % pid, "rb") as f:
                    argv = f.read().split(b"\0")
            except OSError:
                continue
            if any(c in argv for c in configs):
                old.append(pid)
        ns.kill_processes(sorted({p for p in old if p}))
        for name, reg in state["registries"].items():
            reg["storage"] = storage_dirs[name]
            cfg = _registry_config(reg["address"], 443, name, reg["storage"], reg["cert"], reg["key"], reg["htpasswd"], True)
            _write_json(reg["config"], cfg, 0o600)
            self._spawn(state, "registry-" + name, self.netns["internet"], ["docker-registry", "serve", reg["config"]])
        _write_json(self._path(STATE_FILE), state)
        self._wait_listening(state)
        dead = [name for name in state["registries"] if not ns.alive(state["processes"]["registry-" + name])]
        if dead:
            raise SandboxError("the registries %s did not restart (logs in %s)" % (", ".join(dead), self._path("logs")))

    def wan_control(self, request):
        """Send a control request to the WAN proxy (``{"cmd": "get"|"set"|"reset_counters", ...}``)."""
        st = self.state or load_state(self.state_dir)
        if not st.get("wan"):
            raise SandboxError("this sandbox has no WAN proxy (raise it with wan=...)")
        return wanproxy.control(st["wan"]["control_socket"], request)

    def wan_set(self, bandwidth=None, latency=None, faults=None):
        settings = {}
        if bandwidth is not None:
            settings["bandwidth"] = bandwidth
        if latency is not None:
            settings["latency"] = latency
        if faults is not None:
            settings["faults"] = faults
        return self.wan_control({"cmd": "set", "settings": settings})

    def wan_counters(self):
        return self.wan_control({"cmd": "get"})

    # -- internals ---------------------------------------------------------------------------

    def _path(self, *parts):
        return os.path.join(self.state_dir, *parts)

    def _install_handlers(self):
        if not self._atexit:
            atexit.register(self._atexit_down)
            self._atexit = True
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGHUP):
                prev = signal.getsignal(sig)
                if prev in (signal.SIG_DFL, None):
                    signal.signal(sig, self._signal_down)

    def _atexit_down(self):
        # A Python-API sandbox never outlives its process; the CLI hands it over with detach().
        if self.state is not None:
            self.down()

    def _signal_down(self, signum, _frame):
        self.down()
        raise SystemExit(128 + signum)

    def detach(self):
        """Leave the sandbox running after this process exits (used by the CLI ``up``)."""
        self.state = None

    def _cleanup_previous(self):
        if ns.leftovers(self.sid)["netns"] or ns.leftovers(self.sid)["mounts"] or os.path.exists(self._path(STATE_FILE)):
            self._log("removing leftovers of a previous run of %s" % self.sid)
        self.down()

    def _base_state(self, meta):
        refs = {}
        for fname in sorted(os.listdir(meta["release_dir"])):
            with open(os.path.join(meta["release_dir"], fname), encoding="utf-8") as f:
                refs[fname] = sorted(set(json.load(f)["images"].values()))
        return {
            "id": self.sid,
            "status": "starting",
            "state_dir": self.state_dir,
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "size": self.size,
            "seed": self.seed,
            "python": self.python,
            "namespaces": {k: {"name": v, "path": ns.netns_path(v)} for k, v in self.netns.items()},
            "namespace_dir": self.nsdir,
            "hosts": list(self.hosts),
            "host_kind": self.host_kind,
            "host_kind_reason": self.host_kind_reason,
            "host_kinds": dict(self.kinds),
            "booted_hosts": [h for h in self.hosts if self.kinds[h] != "ns"],
            "booted": None,
            "booted_mirror": self.booted_mirror and any(k != "ns" for k in self.kinds.values()),
            "nodes": {},
            "registries": {},
            "mirror": {},
            "release": {
                "version": meta["version"], "size": meta["size"], "seed": meta["seed"], "ref_mode": meta["ref_mode"],
                "dir": meta["release_dir"], "rpm": meta["rpm"], "meta": os.path.join(os.path.dirname(meta["release_dir"]), "release-meta.json"),
                "logical_bytes": meta["logical_bytes"], "unique_bytes": meta["unique_bytes"], "image_count": meta["image_count"],
                "blob_count": meta["blob_count"], "files": refs,
                "tag_refs": sorted(t for img in meta["images"] for t in img["tags"]),
                "signing": meta.get("signing"),
                "public_key": (meta.get("signing") or {}).get("public_key"),
            },
            "transfer_dir": self._path("transfer"),
            "cache_dir": os.path.realpath(self.cache_dir),
            "logs_dir": self._path("logs"),
            "processes": {},
            "wan": None,
            "created": {"netns": [], "mounts": []},
            "ansible": {"connection_plugins": CONNECTION_PLUGINS, "env": {"ANSIBLE_CONNECTION_PLUGINS": CONNECTION_PLUGINS}},
        }

    def _make_credentials(self, state):
        pkid = self._path("pki")
        os.makedirs(pkid, exist_ok=True)
        os.makedirs(self._path("logs"), exist_ok=True)
        os.makedirs(self._path("transfer"), exist_ok=True)
        creds = self._path("creds")
        os.makedirs(creds, mode=0o700, exist_ok=True)
        public_ca = pki.make_ca(pkid, "public-ca", "airgap-microshift sandbox public CA")
        site_ca = pki.make_ca(pkid, "site-ca", "airgap-microshift sandbox site CA")
        state["public_ca"] = public_ca
        state["public_ca_key"] = os.path.join(pkid, "public-ca.key")
        state["site_ca"] = site_ca
        auths = {}
        for name, addr in INTERNET_REGISTRIES:
            crt, key = pki.make_server_cert(pkid, name, public_ca, os.path.join(pkid, "public-ca.key"), [name])
            user, password = name.replace(".", "-"), secrets.token_hex(12)
            htp = os.path.join(creds, name + ".htpasswd")
            _write(htp, pki.htpasswd_line(user, password), 0o600)
            auths[name] = (user, password)
            state["registries"][name] = {
                "name": name, "host": name, "port": 443, "address": addr, "url": "https://%s" % name,
                "user": user, "password": password, "htpasswd": htp, "cert": crt, "key": key, "ca": public_ca,
                "storage": os.path.join(os.path.dirname(state["release"]["dir"]), "storage", name),
            }
        state["pull_secret"] = pki.write_auth_file(os.path.join(creds, "pull-secret.json"), auths)
        crt, key = pki.make_server_cert(pkid, MIRROR_HOST, site_ca, os.path.join(pkid, "site-ca.key"), [MIRROR_HOST], [MIRROR_ADDR])
        user, password = "mirror", secrets.token_hex(12)
        htp = os.path.join(creds, "mirror.htpasswd")
        _write(htp, pki.htpasswd_line(user, password), 0o600)
        hostport = "%s:%d" % (MIRROR_HOST, MIRROR_PORT)
        state["mirror"] = {
            "host": MIRROR_HOST, "port": MIRROR_PORT, "hostport": hostport, "address": MIRROR_ADDR,
            "url": "https://%s" % hostport, "user": user, "password": password, "htpasswd": htp, "cert": crt, "key": key,
            "ca": site_ca, "auth_file": pki.write_auth_file(os.path.join(creds, "mirror-auth.json"), {hostport: (user, password)}),
            "storage": self._path("gap", "mirror-storage"),
        }

    def _spawn(self, state, name, netns, argv, cwd=None):
        log = open(os.path.join(self._path("logs"), name + ".log"), "ab")  # pylint: disable=consider-using-with
        env = dict(os.environ)
        env[ns.ENV_MARK] = self.sid
        proc = subprocess.Popen(ns.enter_argv(net=ns.netns_path(netns)) + argv, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True, env=env, cwd=cwd)
        log.close()
        state["processes"][name] = proc.pid
        return proc

    def _start_registries(self, state):
        for name, reg in state["registries"].items():
            cfg = _registry_config(reg["address"], 443, name, reg["storage"], reg["cert"], reg["key"], reg["htpasswd"], True)
            path = self._path("internet", name + ".yml")
            os.makedirs(os.path.dirname(path), exist_ok=True)
            _write_json(path, cfg, 0o600)
            reg["config"] = path
            reg["log"] = os.path.join(self._path("logs"), "registry-%s.log" % name)
            self._spawn(state, "registry-" + name, self.netns["internet"], ["docker-registry", "serve", path])
        m = state["mirror"]
        os.makedirs(m["storage"], exist_ok=True)
        # With booted hosts the mirror also listens on the air-gapped bridge (every address of the
        # gap namespace: its loopback and the bridge, nothing else exists there).
        listen = "0.0.0.0" if state["booted_mirror"] else MIRROR_ADDR
        cfg = _registry_config(listen, MIRROR_PORT, MIRROR_HOST, m["storage"], m["cert"], m["key"], m["htpasswd"], False)
        path = self._path("gap", "mirror.yml")
        _write_json(path, cfg, 0o600)
        m["config"] = path
        m["log"] = os.path.join(self._path("logs"), "registry-mirror.log")
        self._spawn(state, "registry-mirror", self.netns["gap"], ["docker-registry", "serve", path])

    def _start_wan(self, state, wan):
        wan = dict(wan)
        faults = wanproxy.parse_faults(wan.get("faults"))
        mode = wan.get("mode") or ("terminate" if faults.get("http429") or faults.get("http503") else "passthrough")
        wdir = self._path("wan")
        os.makedirs(wdir, exist_ok=True)
        settings = {"bandwidth": wanproxy.parse_bandwidth(wan.get("bandwidth")), "latency": wanproxy.parse_latency(wan.get("latency"))}
        # Faults are switched on after up() has verified the registries (see up()).
        self._wan_faults = faults
        listeners = []
        for name, reg in state["registries"].items():
            listen = "127.0.1." + reg["address"].rsplit(".", 1)[1]
            listeners.append({"name": name, "listen": [listen, 443], "upstream": [reg["address"], 443], "server_name": name,
                              "cert": reg["cert"], "key": reg["key"], "ca": state["public_ca"]})
            reg["wan_address"] = listen
        config = {"listeners": listeners, "mode": mode, "settings": settings, "seed": wan.get("seed", 0),
                  "control_socket": os.path.join(wdir, "control.sock"), "counters_file": os.path.join(wdir, "counters.json"),
                  "settings_file": os.path.join(wdir, "settings.json"), "ready_file": os.path.join(wdir, "ready")}
        _write_json(os.path.join(wdir, "proxy.json"), config, 0o600)
        proxy_argv = [sys.executable, os.path.join(HERE, "proxy.py"), "--config", os.path.join(wdir, "proxy.json")]
        self._spawn(state, "wan-proxy", self.netns["internet"], proxy_argv)
        state["wan"] = {"mode": mode, "settings": settings, "control_socket": config["control_socket"],
                        "counters_file": config["counters_file"], "settings_file": config["settings_file"], "config": os.path.join(wdir, "proxy.json")}
        deadline = time.monotonic() + 15
        while not os.path.exists(config["ready_file"]):
            if time.monotonic() > deadline:
                raise SandboxError("the WAN proxy did not start (see %s)" % os.path.join(self._path("logs"), "wan-proxy.log"))
            time.sleep(0.05)

    def _node_hosts_file(self, state, node, site):
        lines = ["127.0.0.1\tlocalhost", "::1\tlocalhost ip6-localhost ip6-loopback", "127.0.1.1\t%s" % node]
        if site == "internet":
            for name, reg in state["registries"].items():
                lines.append("%s\t%s" % (reg.get("wan_address") or reg["address"], name))
        else:
            lines.append("%s\t%s" % (MIRROR_ADDR, MIRROR_HOST))
        return "\n".join(lines) + "\n"

    def _make_nodes(self, state):
        with open(DEBIAN_BUNDLE, encoding="utf-8") as f:
            system_bundle = f.read()
        plan = [(CONNECTED, "internet", state["public_ca"]), (BASTION, "gap", state["site_ca"])]
        plan += [(h, "gap", None) for h in self.hosts if self.kinds[h] == "ns"]
        for node, site, extra_ca in plan:
            root = self._path("nodes", node)
            script_lines = ["hostname %s" % node]
            uppers = {}
            for top in NODE_OVERLAYS:
                key = top.strip("/").replace("/", "-")
                upper, work = os.path.join(root, key, "upper"), os.path.join(root, key, "work")
                os.makedirs(upper, exist_ok=True)
                os.makedirs(work, exist_ok=True)
                uppers[top] = upper
                script_lines.append("mount -t overlay amsb-%s -o lowerdir=%s,upperdir=%s,workdir=%s %s" % (node, top, upper, work, top))
            # Its own /dev/shm, as a real host has: podman keeps its lock segment there, and two
            # first pulls on two nodes at once must not race to create the same one.
            script_lines.append("mount -t tmpfs -o mode=1777,size=64m amsb-%s-shm /dev/shm" % node)
            etc, usr_local = uppers["/etc"], uppers["/usr/local"]
            _write(os.path.join(etc, "hosts"), self._node_hosts_file(state, node, site))
            _write(os.path.join(etc, "hostname"), node + "\n")
            # No resolver: names not in /etc/hosts fail at once, and no query leaves the namespace.
            _write(os.path.join(etc, "resolv.conf"), "nameserver 127.0.0.1\noptions timeout:1 attempts:1\n")
            bundle = system_bundle
            if extra_ca:
                with open(extra_ca, encoding="utf-8") as f:
                    pem = f.read()
                bundle = system_bundle.rstrip("\n") + "\n" + pem
                _write(os.path.join(usr_local, "share", "ca-certificates", "amsb-%s-ca.crt" % site), pem)
                _write(os.path.join(etc, "pki", "ca-trust", "source", "anchors", "amsb-%s-ca.crt" % site), pem)
            _write(os.path.join(etc, DEBIAN_BUNDLE[len("/etc/"):]), bundle)
            _write(os.path.join(etc, RHEL_BUNDLE[len("/etc/"):]), bundle)
            _write(os.path.join(etc, "pki", "ca-trust", "extracted", "pem", "tls-ca-bundle.pem"), bundle)
            os.makedirs(os.path.join(etc, "pki", "ca-trust", "source", "anchors"), exist_ok=True)
            # /etc/containers: the machine's (policy.json, registries.conf) with an empty registries.conf.d.
            confd = os.path.join(etc, "containers", "registries.conf.d")
            os.makedirs(confd, exist_ok=True)
            os.setxattr(confd, "trusted.overlay.opaque", b"y")
            _write(os.path.join(etc, "containers", "storage.conf"), STORAGE_CONF)
            for d in ("crio", "microshift", os.path.join("containers", "certs.d")):
                os.makedirs(os.path.join(etc, d), exist_ok=True)
            os.makedirs(os.path.join(uppers["/var/lib"], "containers"), exist_ok=True)
            _write(os.path.join(usr_local, "sbin", "update-ca-trust"), UPDATE_CA_TRUST, 0o755)
            script = os.path.join(root, "setup.sh")
            _write(script, "\n".join(script_lines) + "\n", 0o755)
            mnt = os.path.join(self.nsdir, node + ".mnt")
            uts = os.path.join(self.nsdir, node + ".uts")
            ns.create_mount_ns(mnt, uts, script)
            state["nodes"][node] = {
                "name": node, "site": site, "net": ns.netns_path(self.netns[site]), "netns": self.netns[site],
                "mount": mnt, "uts": uts, "root": root, "uppers": uppers,
                "trusts": [p for p in (extra_ca,) if p],
            }

    def _wait_listening(self, state):
        checks = {"internet": [], "gap": [[MIRROR_ADDR, MIRROR_PORT]]}
        for reg in state["registries"].values():
            checks["internet"].append([reg["address"], 443])
            if reg.get("wan_address"):
                checks["internet"].append([reg["wan_address"], 443])
        code = ("import socket,sys,time,json\naddrs=json.loads(sys.argv[1]);end=time.time()+20\n"
                "for a in addrs:\n"
                "    while True:\n"
                "        try:\n            socket.create_connection(tuple(a),0.5).close();break\n"
                "        except OSError:\n"
                "            if time.time()>end: sys.exit('not listening: %s:%s'%tuple(a))\n"
                "            time.sleep(0.03)\n")
        procs = [subprocess.Popen(ns.enter_argv(net=ns.netns_path(self.netns[site])) + [sys.executable, "-c", code, json.dumps(addrs)],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for site, addrs in checks.items()]
        for p in procs:
            _out, err = p.communicate()
            if p.returncode != 0:
                raise SandboxError("registries did not come up: %s (logs in %s)" % (err.strip(), self._path("logs")))

    def _verify(self, state):
        """skopeo over TLS, with auth, from the connected host: one image per registry that has any."""
        meta_path = state["release"]["meta"]
        with open(meta_path, encoding="utf-8") as f:
            meta = json.load(f)
        picks = {}
        for img in meta["images"]:
            for ref in img["synthetic_refs"]:
                reg = ref.split("/", 1)[0]
                picks.setdefault(reg, (ref, img))
        procs = []
        for reg, (ref, img) in sorted(picks.items()):
            argv = node_argv(state, CONNECTED) + ["skopeo", "inspect", "--raw", "--authfile", state["pull_secret"], "docker://" + ref]
            procs.append((ref, img, subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)))
        for ref, img, p in procs:
            out, err = p.communicate()
            if p.returncode != 0:
                raise SandboxError("the connected host cannot read %s: %s" % (ref, err.decode(errors="replace").strip()))
            digest = "sha256:" + hashlib.sha256(out).hexdigest()
            if "@" in ref and ref.split("@", 1)[1] != digest:
                raise SandboxError("%s served a manifest with digest %s" % (ref, digest))
            if "@" not in ref and digest != img["index"]:
                raise SandboxError("%s served %s instead of %s" % (ref, digest, img["index"]))
        state["verified_refs"] = sorted(item[0] for item in procs)

    def _write_inventory(self, state):
        m = state["mirror"]
        node_vars = {}
        for node, info in state["nodes"].items():
            if info.get("kind") in ("nspawn", "qemu"):
                node_vars[node] = booted_hosts.inventory_vars(state, node)
                continue
            node_vars[node] = {"sandbox_ns_net": info["net"], "sandbox_ns_mount": info["mount"], "sandbox_ns_uts": info["uts"],
                               "sandbox_site": info["site"], "sandbox_host_kind": "ns"}
        inv = {"all": {
            "vars": {
                "ansible_connection": "sandbox_ns",
                "ansible_python_interpreter": self.python,
                "sandbox_id": self.sid,
                "sandbox_state_dir": self.state_dir,
                "sandbox_pull_secret": state["pull_secret"],
                "sandbox_public_ca": state["public_ca"],
                "sandbox_mirror_registry": m["hostport"],
                "sandbox_mirror_ca": m["ca"],
                "sandbox_mirror_auth_file": m["auth_file"],
                "sandbox_mirror_user": m["user"],
                "sandbox_mirror_password": m["password"],
                "sandbox_release_dir": state["release"]["dir"],
                "sandbox_release_rpm": state["release"]["rpm"],
                "sandbox_release_public_key": state["release"].get("public_key"),
                "sandbox_transfer_dir": state["transfer_dir"],
            },
            "children": {
                "connected": {"hosts": {CONNECTED: node_vars[CONNECTED]}},
                "airgapped": {"hosts": {BASTION: node_vars[BASTION]}},
                "microshift": {"hosts": {h: node_vars[h] for h in self.hosts}},
                # Host kinds, for plays that target one kind (their hosts are also in microshift).
                "sandbox_ns_hosts": {"hosts": {h: {} for h in self.hosts if self.kinds[h] == "ns"}},
                "sandbox_booted_hosts": {"hosts": {h: {} for h in self.hosts if self.kinds[h] != "ns"}},
                "sandbox_qemu_hosts": {"hosts": {h: {} for h in self.hosts if self.kinds[h] == "qemu"}},
            },
        }}
        if state.get("update"):
            inv["all"]["vars"]["sandbox_update_release_dir"] = state["update"]["release"]["dir"]
        adir = self._path("ansible")
        os.makedirs(adir, exist_ok=True)
        path = os.path.join(adir, "inventory.yml")
        try:
            import yaml  # pylint: disable=import-outside-toplevel
            text = yaml.safe_dump(inv, default_flow_style=False, sort_keys=False)
        except ImportError:
            text = json.dumps(inv, indent=2)
        _write(path, "# Generated by tests/sandbox for sandbox %s\n%s" % (self.sid, text), 0o600)
        cfg = os.path.join(adir, "ansible.cfg")
        text = "[defaults]\ninventory = %s\nconnection_plugins = %s\nhost_key_checking = False\n" % (path, CONNECTION_PLUGINS)
        if state["booted_hosts"]:
            # Booted hosts: real SSH as users run it (a master connection kept open, pipelining), with
            # the control sockets in this sandbox (the hosts' addresses repeat from one sandbox to another).
            text += ("\n[ssh_connection]\npipelining = True\nssh_args = -C -o ControlMaster=auto -o ControlPersist=60s\n"
                     "control_path_dir = %s\n" % os.path.join(adir, "cp"))
        _write(cfg, text)
        state["inventory"] = path
        state["ansible"]["config"] = cfg
        state["ansible"]["env"]["ANSIBLE_CONFIG"] = cfg


def node_command(state, node, argv):
    """The argv that runs ``argv`` on a node: ``nsenter`` for namespace nodes, ``ssh`` for booted hosts."""
    info = state["nodes"].get(ALIASES.get(node, node)) or {}
    if info.get("kind") in ("nspawn", "qemu"):
        return booted_hosts.ssh_argv(state, ALIASES.get(node, node), list(argv) or ["/bin/sh"])
    return node_argv(state, node) + list(argv)


def node_argv(state, node):
    """``nsenter`` prefix for a node of a state dict; ``internet``/``gap`` give the bare netns.

    For a booted host, the ``ssh`` prefix (its remote command must then be one quoted string:
    prefer ``node_command``).
    """
    node = ALIASES.get(node, node)
    if (state["nodes"].get(node) or {}).get("kind") in ("nspawn", "qemu"):
        return booted_hosts.ssh_argv(state, node)
    if node in state["namespaces"]:
        return ns.enter_argv(net=state["namespaces"][node]["path"])
    info = state["nodes"].get(node)
    if info is None:
        raise SandboxError("unknown node %r (nodes: %s)" % (node, ", ".join(list(state["nodes"]) + list(state["namespaces"]))))
    return ns.enter_argv(net=info["net"], mnt=info["mount"], uts=info["uts"])


def sweep_all(log=None):
    """Remove the leftovers of every sandbox on this machine (processes, mounts, namespaces)."""
    return ns.sweep(None, log)


def b64_auth(user, password):
    return base64.b64encode(("%s:%s" % (user, password)).encode()).decode()
