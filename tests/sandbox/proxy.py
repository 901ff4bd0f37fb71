# Copyright: airgap.microshift contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""A user-space WAN emulator: a TCP proxy with a bandwidth cap, added latency and faults.

It runs as its own process (``python proxy.py --config FILE``), one listener per upstream. Two
modes per run:

* ``passthrough`` (default): bytes are relayed untouched (TLS stays end to end). Faults: ``reset``
  (a fraction of the connections is answered by a TCP RST).
* ``terminate``: the proxy ends TLS with a certificate for the upstream's name (signed by the same
  test CA), re-encrypts to the upstream, and reads HTTP/1.1 requests, so it can also answer a
  fraction of GET/HEAD requests itself with ``429 Too Many Requests`` or ``503 Service Unavailable``.

Settings change at run time through the control socket (JSON lines: ``{"cmd": "get"}``,
``{"cmd": "set", "settings": {...}}``, ``{"cmd": "reset_counters"}``) or by rewriting the settings
file. Counters (bytes per direction per listener, connections, injected faults) are written to the
counters file twice a second and answered exactly by ``get``.

No imports outside the standard library: the harness starts it with any Python 3.9+.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import signal
import socket
import ssl
import struct
import sys
import time

CHUNK = 64 * 1024
DEFAULT_SETTINGS = {"bandwidth": 0, "latency": 0.0, "reset": 0.0, "http429": 0.0, "http503": 0.0}


def parse_bandwidth(text):
    """``200mbit`` / ``10MB`` / ``512kbit`` / ``1000`` (bytes/s) -> bytes per second (0: no cap)."""
    if text in (None, "", 0, "0"):
        return 0
    if isinstance(text, (int, float)):
        return int(text)
    m = re.match(r"^\s*([0-9.]+)\s*([kmg]?)(bit|b|bps|)\s*(/s)?\s*$", str(text), re.I)
    if not m:
        raise ValueError("bad bandwidth %r (e.g. 200mbit, 25MB, 100000)" % text)
    value = float(m.group(1)) * {"": 1, "k": 1e3, "m": 1e6, "g": 1e9}[m.group(2).lower()]
    unit = m.group(3)
    if unit.lower() in ("bit", "bps") or unit == "b":  # b/bit/bps: bits; B: bytes; none: bytes
        value /= 8
    return int(value)


def parse_latency(text):
    """``20ms`` / ``0.1s`` / ``0.02`` (seconds) -> seconds."""
    if text in (None, "", 0, "0"):
        return 0.0
    if isinstance(text, (int, float)):
        return float(text)
    m = re.match(r"^\s*([0-9.]+)\s*(ms|s|us)?\s*$", str(text))
    if not m:
        raise ValueError("bad latency %r (e.g. 20ms)" % text)
    return float(m.group(1)) * {"ms": 1e-3, "us": 1e-6, "s": 1.0, None: 1.0}[m.group(2)]


def parse_faults(text):
    """``reset=0.05,http429=0.05,http503=0.05`` -> dict of rates."""
    out = {}
    for part in filter(None, (p.strip() for p in (text or "").split(","))):
        key, unused, value = part.partition("=")
        if key not in ("reset", "http429", "http503"):
            raise ValueError("unknown fault %r (reset, http429, http503)" % key)
        rate = float(value)
        if not 0 <= rate <= 1:
            raise ValueError("fault rate %s=%s is not within 0..1" % (key, value))
        out[key] = rate
    return out


class TokenBucket:
    """A bandwidth cap shared by every connection that uses it (bytes per second)."""

    def __init__(self, settings):
        self.settings = settings
        self.tokens = 0.0
        self.stamp = time.monotonic()

    async def take(self, n):
        rate = self.settings["bandwidth"]
        if not rate:
            return
        burst = max(rate * 0.05, CHUNK)
        now = time.monotonic()
        self.tokens = min(burst, self.tokens + (now - self.stamp) * rate)
        self.stamp = now
        self.tokens -= n
        if self.tokens < 0:
            await asyncio.sleep(-self.tokens / rate)


class Channel:
    """One direction of a connection: bandwidth, then delivery after the added delay."""

    def __init__(self, proxy, writer, bucket, counters, key):
        self.proxy = proxy
        self.writer = writer
        self.bucket = bucket
        self.counters = counters
        self.key = key
        self.queue = asyncio.Queue(maxsize=64)
        self.task = asyncio.ensure_future(self._drain())

    async def send(self, data):
        await self.bucket.take(len(data))
        delay = self.proxy.settings["latency"] / 2.0
        await self.queue.put((time.monotonic() + delay, data))

    async def finish(self):
        await self.queue.put(None)
        try:
            await self.task
        except (ConnectionError, OSError):
            pass

    async def _drain(self):
        while True:
            item = await self.queue.get()
            if item is None:
                break
            due, data = item
            wait = due - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            self.writer.write(data)
            await self.writer.drain()
            self.counters[self.key] += len(data)
        if self.writer.can_write_eof():
            try:
                self.writer.write_eof()
            except (OSError, RuntimeError):
                pass


def _http_error(status):
    reason = {429: "Too Many Requests", 503: "Service Unavailable"}[status]
    code = {429: "TOOMANYREQUESTS", 503: "UNAVAILABLE"}[status]
    body = json.dumps({"errors": [{"code": code, "message": "injected by the WAN emulator", "detail": None}]}).encode()
    head = ("HTTP/1.1 %d %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\nRetry-After: 1\r\n"
            "Connection: close\r\n\r\n" % (status, reason, len(body))).encode()
    return head + body


async def _server_tls(writer, server_ctx):
    """Upgrade an accepted plain connection to TLS (server side)."""
    if hasattr(writer, "start_tls"):  # Python 3.11+
        await writer.start_tls(server_ctx)
        return
    loop = asyncio.get_running_loop()
    protocol = writer.transport.get_protocol()
    new_transport = await loop.start_tls(writer.transport, protocol, server_ctx, server_side=True)
    writer._transport = new_transport  # pylint: disable=protected-access
    protocol._replace_writer(writer)  # pylint: disable=protected-access


class Proxy:
    def __init__(self, config):
        self.config = config
        self.settings = dict(DEFAULT_SETTINGS)
        self.apply(config.get("settings", {}))
        self.mode = config.get("mode", "passthrough")
        self.rng = random.Random(config.get("seed", 0))
        self.up_bucket = TokenBucket(self.settings)
        self.down_bucket = TokenBucket(self.settings)
        self.counters = {}
        self.servers = []
        self.settings_mtime = None
        self.stopping = asyncio.Event()

    def _counter(self, name):
        return self.counters.setdefault(name, {
            "bytes_up": 0, "bytes_down": 0, "connections": 0, "active": 0, "resets": 0,
            "requests": 0, "http429": 0, "http503": 0, "upstream_errors": 0, "client_errors": 0})

    def snapshot(self):
        total = {}
        for c in self.counters.values():
            for k, v in c.items():
                total[k] = total.get(k, 0) + v
        return {"settings": dict(self.settings), "mode": self.mode, "listeners": {k: dict(v) for k, v in self.counters.items()},
                "total": total, "time": time.time()}

    def apply(self, new):
        for key, value in new.items():
            if key == "bandwidth":
                self.settings[key] = parse_bandwidth(value)
            elif key == "latency":
                self.settings[key] = parse_latency(value)
            elif key in ("reset", "http429", "http503"):
                self.settings[key] = float(value)
            elif key == "faults":
                self.settings.update(parse_faults(value))
            else:
                raise ValueError("unknown setting %r" % key)

    async def start(self):
        for lst in self.config["listeners"]:
            self._counter(lst["name"])
            server = await asyncio.start_server(lambda r, w, lst=lst: self._client(lst, r, w), lst["listen"][0], lst["listen"][1],
                                                reuse_address=True, limit=1 << 20)
            self.servers.append(server)
        if self.config.get("control_socket"):
            path = self.config["control_socket"]
            if os.path.exists(path):
                os.unlink(path)
            self.servers.append(await asyncio.start_unix_server(self._control, path))
        asyncio.ensure_future(self._housekeeping())

    def _ssl_contexts(self, lst):
        server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        server_ctx.load_cert_chain(lst["cert"], lst["key"])
        server_ctx.set_alpn_protocols(["http/1.1"])
        client_ctx = ssl.create_default_context(cafile=lst["ca"])
        client_ctx.set_alpn_protocols(["http/1.1"])
        return server_ctx, client_ctx

    async def _client(self, lst, reader, writer):
        c = self._counter(lst["name"])
        c["connections"] += 1
        if self.settings["reset"] and self.rng.random() < self.settings["reset"]:
            c["resets"] += 1
            sock = writer.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            writer.transport.abort()
            return
        c["active"] += 1
        up_writer = None
        try:
            if self.mode == "terminate":
                server_ctx, client_ctx = self._ssl_contexts(lst)
                try:
                    await _server_tls(writer, server_ctx)
                except (OSError, ssl.SSLError, ConnectionError) as exc:
                    c["client_errors"] += 1
                    c["active"] -= 1
                    sys.stderr.write("%s: TLS with the client failed: %r\n" % (lst["name"], exc))
                    writer.transport.abort()
                    return
                up_reader, up_writer = await asyncio.open_connection(lst["upstream"][0], lst["upstream"][1], ssl=client_ctx,
                                                                     server_hostname=lst.get("server_name"), limit=1 << 20)
            else:
                up_reader, up_writer = await asyncio.open_connection(lst["upstream"][0], lst["upstream"][1], limit=1 << 20)
        except (OSError, ssl.SSLError, ConnectionError) as exc:
            sys.stderr.write("%s: connection to the upstream failed: %r\n" % (lst["name"], exc))
            c["upstream_errors"] += 1
            c["active"] -= 1
            writer.transport.abort()
            return
        to_up = Channel(self, up_writer, self.up_bucket, c, "bytes_up")
        to_client = Channel(self, writer, self.down_bucket, c, "bytes_down")
        try:
            pumps = [self._pump(up_reader, to_client)]
            if self.mode == "terminate":
                pumps.append(self._http_requests(reader, to_up, to_client, writer, up_writer, c))
            else:
                pumps.append(self._pump(reader, to_up))
            await asyncio.gather(*pumps)
        except (ConnectionError, OSError, ssl.SSLError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass
        finally:
            for ch in (to_up, to_client):
                try:
                    await ch.finish()
                except (ConnectionError, OSError, ssl.SSLError):
                    pass
            for w in (writer, up_writer):
                try:
                    w.close()
                except (OSError, RuntimeError):
                    pass
            c["active"] -= 1

    async def _pump(self, reader, channel):
        while True:
            data = await reader.read(CHUNK)
            if not data:
                break
            await channel.send(data)
        await channel.finish()

    async def _http_requests(self, reader, to_up, to_client, writer, up_writer, c):
        while True:
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except asyncio.IncompleteReadError:
                break
            c["requests"] += 1
            lines = head.split(b"\r\n")
            method = lines[0].split(b" ", 1)[0].upper()
            headers = {}
            for line in lines[1:]:
                if b":" in line:
                    k, v = line.split(b":", 1)
                    headers[k.strip().lower()] = v.strip()
            if method in (b"GET", b"HEAD"):
                roll = self.rng.random()
                status = None
                if roll < self.settings["http429"]:
                    status = 429
                elif roll < self.settings["http429"] + self.settings["http503"]:
                    status = 503
                if status:
                    c["http%d" % status] += 1
                    await to_client.send(_http_error(status))
                    await to_client.finish()
                    up_writer.transport.abort()
                    return
            await to_up.send(head)
            if b"chunked" in headers.get(b"transfer-encoding", b"").lower():
                while True:
                    size_line = await reader.readuntil(b"\r\n")
                    await to_up.send(size_line)
                    size = int(size_line.split(b";")[0].strip(), 16)
                    if size == 0:
                        while True:
                            trailer = await reader.readuntil(b"\r\n")
                            await to_up.send(trailer)
                            if trailer == b"\r\n":
                                break
                        break
                    left = size + 2
                    while left:
                        data = await reader.read(min(CHUNK, left))
                        if not data:
                            raise asyncio.IncompleteReadError(b"", left)
                        left -= len(data)
                        await to_up.send(data)
            else:
                left = int(headers.get(b"content-length", b"0") or 0)
                while left:
                    data = await reader.read(min(CHUNK, left))
                    if not data:
                        raise asyncio.IncompleteReadError(b"", left)
                    left -= len(data)
                    await to_up.send(data)
        await to_up.finish()
        # TLS has no half-close: when the client is gone, so is the upstream connection.
        up_writer.close()

    async def _control(self, reader, writer):
        try:
            while True:
                line = await reader.readline()
                if not line:
                    break
                try:
                    req = json.loads(line)
                    cmd = req.get("cmd")
                    if cmd == "set":
                        self.apply(req.get("settings", {}))
                    elif cmd == "reset_counters":
                        for c in self.counters.values():
                            for k in c:
                                if k != "active":
                                    c[k] = 0
                    elif cmd == "stop":
                        self.stopping.set()
                    elif cmd != "get":
                        raise ValueError("unknown command %r" % cmd)
                    reply = {"ok": True}
                    reply.update(self.snapshot())
                except (ValueError, TypeError) as exc:
                    reply = {"ok": False, "error": str(exc)}
                writer.write(json.dumps(reply).encode() + b"\n")
                await writer.drain()
        finally:
            writer.close()

    def write_counters(self):
        path = self.config.get("counters_file")
        if path:
            tmp = path + ".tmp"
            with open(tmp, "w", encoding="utf-8") as f:
                json.dump(self.snapshot(), f, indent=1, sort_keys=True)
            os.replace(tmp, path)

    def _reload_settings_file(self):
        path = self.config.get("settings_file")
        if not path or not os.path.exists(path):
            return
        mtime = os.stat(path).st_mtime_ns
        if mtime == self.settings_mtime:
            return
        self.settings_mtime = mtime
        try:
            with open(path, encoding="utf-8") as f:
                self.apply(json.load(f))
        except (OSError, ValueError) as exc:
            sys.stderr.write("settings file %s ignored: %s\n" % (path, exc))

    async def _housekeeping(self):
        while not self.stopping.is_set():
            self._reload_settings_file()
            self.write_counters()
            try:
                await asyncio.wait_for(self.stopping.wait(), 0.5)
            except asyncio.TimeoutError:
                pass


async def _main(config):
    proxy = Proxy(config)
    proxy._reload_settings_file()  # pylint: disable=protected-access
    await proxy.start()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, proxy.stopping.set)
    if config.get("ready_file"):
        with open(config["ready_file"], "w", encoding="ascii") as f:
            f.write(str(os.getpid()))
    await proxy.stopping.wait()
    for server in proxy.servers:
        server.close()
    proxy.write_counters()


def control(sock_path, request, timeout=10.0):
    """Send one control request to a running proxy; return its reply (dict)."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        s.connect(sock_path)
        s.sendall(json.dumps(request).encode() + b"\n")
        buf = b""
        while not buf.endswith(b"\n"):
            data = s.recv(65536)
            if not data:
                break
            buf += data
    finally:
        s.close()
    reply = json.loads(buf)
    if not reply.get("ok"):
        raise ValueError(reply.get("error", "control request failed"))
    return reply


def main(argv=None):
    parser = argparse.ArgumentParser(description="WAN emulator TCP proxy")
    parser.add_argument("--config", required=True, help="JSON file: listeners, mode, settings, control_socket, counters_file")
    args = parser.parse_args(argv)
    with open(args.config, encoding="utf-8") as f:
        config = json.load(f)
    asyncio.run(_main(config))


if __name__ == "__main__":
    main()
