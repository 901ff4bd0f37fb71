# Copyright: airgap.microshift contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The WAN proxy, run as its own process on loopback: counters, bandwidth cap, latency and faults."""

from __future__ import annotations

import http.client
import json
import os
import socket
import ssl
import subprocess
import sys
import threading
import time

import pytest

from tests.sandbox import pki
from tests.sandbox import proxy as wanproxy

PROXY = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "proxy.py")


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Upstream:
    """A loopback TCP server: reads ``<n>\\n`` then sends n bytes back; counts what it received."""

    def __init__(self, tls_ctx=None, http=False):
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(128)
        self.port = self.sock.getsockname()[1]
        self.tls_ctx = tls_ctx
        self.http = http
        self.received = 0
        self.lock = threading.Lock()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        while True:
            try:
                conn, unused = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn):
        try:
            if self.tls_ctx:
                conn = self.tls_ctx.wrap_socket(conn, server_side=True)
            f = conn.makefile("rb")
            if self.http:
                while True:
                    line = f.readline()
                    if not line:
                        break
                    while f.readline() not in (b"\r\n", b""):
                        pass
                    body = b"hello"
                    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n" + body)
                return
            line = f.readline()
            n = int(line)
            data = f.read(int(f.readline()))
            with self.lock:
                self.received += len(line) + len(str(len(data))) + 1 + len(data)
            chunk = os.urandom(65536)
            while n:
                k = min(n, len(chunk))
                conn.sendall(chunk[:k])
                n -= k
        except (OSError, ValueError, ssl.SSLError):
            pass
        finally:
            conn.close()

    def close(self):
        self.sock.close()


@pytest.fixture
def run_proxy(tmp_path):
    procs = []

    def start(upstream_port, mode="passthrough", settings=None, tls=None):
        port = _free_port()
        listener = {"name": "up", "listen": ["127.0.0.1", port], "upstream": ["127.0.0.1", upstream_port], "server_name": "registry.test"}
        if tls:
            listener.update(tls)
        cfg = {"listeners": [listener], "mode": mode, "settings": settings or {}, "seed": 1,
               "control_socket": str(tmp_path / "control.sock"), "counters_file": str(tmp_path / "counters.json"),
               "ready_file": str(tmp_path / "ready")}
        (tmp_path / "proxy.json").write_text(json.dumps(cfg))
        proc = subprocess.Popen([sys.executable, PROXY, "--config", str(tmp_path / "proxy.json")])
        procs.append(proc)
        for unused in range(200):
            if (tmp_path / "ready").exists():
                break
            time.sleep(0.025)
        return port, cfg["control_socket"]

    yield start
    for proc in procs:
        proc.terminate()
        proc.wait(10)


def _fetch(port, n, payload=b""):
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        s.sendall(b"%d\n%d\n%s" % (n, len(payload), payload))
        s.shutdown(socket.SHUT_WR)
        got = 0
        while True:
            data = s.recv(65536)
            if not data:
                return got
            got += len(data)


def _settled(sock):
    for unused in range(400):
        reply = wanproxy.control(sock, {"cmd": "get"})
        if reply["total"]["active"] == 0:
            return reply
        time.sleep(0.025)
    raise AssertionError("connections did not finish")


def test_byte_counters_are_exact(run_proxy):
    up = Upstream()
    port, sock = run_proxy(up.port)
    sizes = [(0, b""), (1, b"x"), (100_000, b"a" * 1000), (1_234_567, os.urandom(70_000))]
    sent = 0
    for n, payload in sizes:
        assert _fetch(port, n, payload) == n
        sent += len(b"%d\n%d\n" % (n, len(payload))) + len(payload)
    reply = _settled(sock)
    c = reply["listeners"]["up"]
    assert c["bytes_down"] == sum(n for n, unused in sizes)
    assert c["bytes_up"] == sent == up.received
    assert c["connections"] == len(sizes)
    counters_file = json.loads(open(os.path.join(os.path.dirname(sock), "counters.json"), encoding="utf-8").read())
    assert "up" in counters_file["listeners"]
    wanproxy.control(sock, {"cmd": "reset_counters"})
    assert wanproxy.control(sock, {"cmd": "get"})["total"]["bytes_down"] == 0
    up.close()


def test_bandwidth_cap_is_roughly_honoured(run_proxy):
    up = Upstream()
    rate = 2_000_000
    port, sock = run_proxy(up.port, settings={"bandwidth": rate})
    size = 3_000_000
    t0 = time.monotonic()
    # Two connections share the cap.
    threads = [threading.Thread(target=_fetch, args=(port, size // 2)) for unused in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - t0
    assert elapsed >= 0.8 * size / rate, elapsed
    assert elapsed <= 4 * size / rate, elapsed
    # Uncapped at run time: much faster.
    wanproxy.control(sock, {"cmd": "set", "settings": {"bandwidth": 0}})
    t0 = time.monotonic()
    assert _fetch(port, size) == size
    assert time.monotonic() - t0 < size / rate
    up.close()


def test_added_latency(run_proxy):
    up = Upstream()
    port, sock = run_proxy(up.port, settings={"latency": "200ms"})
    t0 = time.monotonic()
    _fetch(port, 10)
    assert time.monotonic() - t0 >= 0.2
    assert wanproxy.control(sock, {"cmd": "get"})["settings"]["latency"] == pytest.approx(0.2)
    up.close()


def test_resets_at_the_requested_rate(run_proxy):
    up = Upstream()
    port, sock = run_proxy(up.port, settings={"reset": 0.3})
    resets = 0
    loops = 200
    for unused in range(loops):
        try:
            if _fetch(port, 1000) != 1000:
                resets += 1
        except ConnectionResetError:
            resets += 1
    reply = _settled(sock)
    assert reply["total"]["resets"] == resets
    assert 0.2 * loops <= resets <= 0.4 * loops
    up.close()


@pytest.fixture(scope="module")
def tls_material(tmp_path_factory):
    d = str(tmp_path_factory.mktemp("pki"))
    ca = pki.make_ca(d, "ca", "proxy test CA")
    crt, key = pki.make_server_cert(d, "registry.test", ca, os.path.join(d, "ca.key"), ["registry.test"], ["127.0.0.1"])
    return {"ca": ca, "cert": crt, "key": key}


def test_http_faults_at_the_requested_rate_in_terminate_mode(run_proxy, tls_material):
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(tls_material["cert"], tls_material["key"])
    up = Upstream(tls_ctx=server_ctx, http=True)
    port, sock = run_proxy(up.port, mode="terminate", settings={"http429": 0.1, "http503": 0.2}, tls=tls_material)
    ctx = ssl.create_default_context(cafile=tls_material["ca"])
    seen = {200: 0, 429: 0, 503: 0}
    loops = 300
    conn = None
    for unused in range(loops):
        if conn is None:
            conn = http.client.HTTPSConnection("127.0.0.1", port, context=ctx, timeout=30)
        conn.request("GET", "/v2/")
        resp = conn.getresponse()
        body = resp.read()
        seen[resp.status] += 1
        if resp.status == 200:
            assert body == b"hello"
        else:
            assert json.loads(body)["errors"][0]["code"] in ("TOOMANYREQUESTS", "UNAVAILABLE")
            conn.close()
            conn = None
    if conn:
        conn.close()
    reply = _settled(sock)
    c = reply["listeners"]["up"]
    assert (c["http429"], c["http503"]) == (seen[429], seen[503])
    assert c["requests"] == loops
    assert 0.05 * loops <= seen[429] <= 0.15 * loops
    assert 0.13 * loops <= seen[503] <= 0.27 * loops
    up.close()


def test_parsers():
    assert wanproxy.parse_bandwidth("200mbit") == 25_000_000
    assert wanproxy.parse_bandwidth("25MB") == 25_000_000
    assert wanproxy.parse_bandwidth("1000") == 1000
    assert wanproxy.parse_latency("20ms") == pytest.approx(0.02)
    assert wanproxy.parse_faults("reset=0.05,http429=0.1") == {"reset": 0.05, "http429": 0.1}
    with pytest.raises(ValueError):
        wanproxy.parse_faults("drop=0.1")
