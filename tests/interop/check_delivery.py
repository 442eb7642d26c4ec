#!/usr/bin/env python3
"""Interop check of client delivery (R-CL) and MP over TCP (R-MP-7), with an independent client.

    dabs farm up --nodes 1 --dir DIR &
    python3 tests/interop/check_delivery.py --farm-json DIR/farm.json

Stdlib only. Written from /work/shared/spec/interop.md ("Client modules", "MP over a stream",
"The calculator application") and mp-wire.md alone; the MP codec is mpref.py, CBOR cbor.py,
the datagram helpers check_serve.py. Ed25519 verification below is RFC 8032 section 5.1.7,
written from the RFC's equations (edwards25519 in extended coordinates), not from a library.

    key      GET /api/farm/publishing-key on the node's operator port: {"ed25519": base64 of
             32 bytes}.
    list     GET /api/applications/calc/modules?class=native: a JSON array whose entries
             have name, kind in first/addon/mutable (never peer-locked), sha256 (64 hex),
             url, signature (base64 of 64 bytes), channel for channel modules; one first
             module at least, and a channel module for each of udp, tcp, ws.
    m-NAME   each module: GET its url, SHA-256 equals the listing's, and the Ed25519
             signature over "dabs-module-v1" || name || 0x00 || sha256 verifies with the key;
             the same bytes with one bit flipped, or the signature checked under another
             name, must not verify; the bytes start with the WebAssembly magic.
    tcp-open OPEN_SESSION {"app": "calc"} over TCP to the node's MP port (each datagram
             preceded by its length, 2 bytes big-endian): one REPLY on the same connection,
             naming "channels" with "tcp".
    tcp-NN   calculator calls in that session over the connection: 6*7, 7/0 (an error reply
             with code division_by_zero), 1.5+2.25, i64 max + 1 (overflow).

One line per check, then "delivery interop: N passed, M failed"; exit status 1 on any
failure. Traffic goes only to 127.0.0.1. Every wait is bounded.
"""

import argparse
import base64
import hashlib
import json
import os
import socket
import struct
import sys
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import cbor  # noqa: E402
import check_serve as cs  # noqa: E402
import check_calc_farm as ccf  # noqa: E402

HOST = "127.0.0.1"

# --- Ed25519 verification (RFC 8032 5.1.7) ------------------------------------------------
P = 2**255 - 19
L = 2**252 + 27742317777372353535851937790883648493
D = (-121665 * pow(121666, P - 2, P)) % P
SQRT_M1 = pow(2, (P - 1) // 4, P)


def _add(p1, q1):
    """Extended-coordinates addition on -x^2 + y^2 = 1 + d x^2 y^2."""
    x1, y1, z1, t1 = p1
    x2, y2, z2, t2 = q1
    a = (y1 - x1) * (y2 - x2) % P
    b = (y1 + x1) * (y2 + x2) % P
    c = 2 * t1 * t2 * D % P
    dd = 2 * z1 * z2 % P
    e, f, g, h = b - a, dd - c, dd + c, b + a
    return (e * f % P, g * h % P, f * g % P, e * h % P)


def _mul(s, pt):
    q = (0, 1, 1, 0)
    while s > 0:
        if s & 1:
            q = _add(q, pt)
        pt = _add(pt, pt)
        s >>= 1
    return q


def _equal(p1, q1):
    x1, y1, z1, _ = p1
    x2, y2, z2, _ = q1
    return (x1 * z2 - x2 * z1) % P == 0 and (y1 * z2 - y2 * z1) % P == 0


def _decompress(b):
    if len(b) != 32:
        return None
    y = int.from_bytes(b, "little")
    sign = y >> 255
    y &= (1 << 255) - 1
    if y >= P:
        return None
    u, v = (y * y - 1) % P, (D * y * y + 1) % P
    x = u * pow(v, 3, P) * pow(u * pow(v, 7, P), (P - 5) // 8, P) % P
    if (v * x * x - u) % P != 0:
        if (v * x * x + u) % P != 0:
            return None
        x = x * SQRT_M1 % P
    if x == 0 and sign:
        return None
    if x & 1 != sign:
        x = P - x
    return (x, y, 1, x * y % P)


_BY = 4 * pow(5, P - 2, P) % P
BASE = _decompress(_BY.to_bytes(32, "little"))


def ed25519_verify(public, message, signature):
    if len(signature) != 64:
        return False
    a = _decompress(public)
    r = _decompress(signature[:32])
    s = int.from_bytes(signature[32:], "little")
    if a is None or r is None or s >= L:
        return False
    k = int.from_bytes(hashlib.sha512(signature[:32] + public + message).digest(), "little") % L
    return _equal(_mul(s, BASE), _add(r, _mul(k, a)))


# --- HTTP ----------------------------------------------------------------------------------
def http_get(base, path, timeout=10):
    if not base.startswith(f"http://{HOST}:"):
        raise cs.CheckFail(f"refusing {base}: only http://{HOST}:PORT")
    with urllib.request.urlopen(base + path, timeout=timeout) as r:
        return r.status, r.read()


# --- MP over TCP ---------------------------------------------------------------------------
class TcpClient(cs.Client):
    """check_serve's client with its datagrams framed on one TCP connection (interop.md:
    each datagram preceded by its length, 2 bytes big-endian)."""

    def __init__(self, ctx, label, server):
        super().__init__(ctx, label)
        if server[0] != HOST:
            raise cs.CheckFail(f"refusing to connect to {server[0]}")
        self.server = server
        self.stream = socket.create_connection(server, timeout=5)
        self.buf = b""

    def close(self):
        self.stream.close()
        super().close()

    def send(self, data, peer):
        if peer != self.server:
            raise cs.CheckFail(f"refusing to send to {peer}: only the connection's peer")
        self.trace.add("->", peer, data)
        self.stream.sendall(struct.pack(">H", len(data)) + data)

    def recv_raw(self, deadline):
        while True:
            if len(self.buf) >= 2:
                n = struct.unpack(">H", self.buf[:2])[0]
                if len(self.buf) >= 2 + n:
                    data, self.buf = self.buf[2:2 + n], self.buf[2 + n:]
                    self.trace.add("<-", self.server, data)
                    return data, self.server
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            self.stream.settimeout(min(left, 0.5))
            try:
                chunk = self.stream.recv(65536)
            except socket.timeout:
                continue
            if not chunk:
                return None
            self.buf += chunk


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--farm-json", required=True)
    ap.add_argument("--wait", type=float, default=30.0)
    ap.add_argument("--seed", type=int, default=0, help="accepted for the harness; nothing here is random")
    args = ap.parse_args()
    farm, _ = ccf.load_farm(args.farm_json, args.wait)
    node = farm["nodes"][0]
    ops, mp = node["operator"], cs.parse_addr(node["mp"])
    results = []

    def check(name, fn):
        try:
            detail = fn()
            results.append(True)
            print(f"PASS {name}: {detail}")
        except Exception as e:  # noqa: BLE001 - every failure is reported, then counted
            results.append(False)
            print(f"FAIL {name}: {e}")

    state = {}

    def key():
        status, body = http_get(ops, "/api/farm/publishing-key")
        k = base64.b64decode(json.loads(body)["ed25519"], validate=True)
        if status != 200 or len(k) != 32:
            raise cs.CheckFail(f"status {status}, {len(k)}-byte key")
        state["key"] = k
        return k.hex()

    def listing():
        status, body = http_get(ops, "/api/applications/calc/modules?class=native")
        entries = json.loads(body)
        if status != 200 or not isinstance(entries, list) or not entries:
            raise cs.CheckFail(f"status {status}: {body[:200]!r}")
        for e in entries:
            if e.get("kind") not in ("first", "addon", "mutable"):
                raise cs.CheckFail(f"{e.get('name')}: kind {e.get('kind')!r}")
            for field in ("name", "sha256", "url", "signature"):
                if not isinstance(e.get(field), str):
                    raise cs.CheckFail(f"{e.get('name')}: {field} is not text")
        if not any(e["kind"] == "first" for e in entries):
            raise cs.CheckFail("no first module")
        channels = {e.get("channel") for e in entries}
        if not {"udp", "tcp", "ws"} <= channels:
            raise cs.CheckFail(f"channel modules for {sorted(c for c in channels if c)}")
        state["entries"] = entries
        return ", ".join(f"{e['name']} ({e['kind']})" for e in entries)

    def module(e):
        def run():
            status, data = http_get(ops, e["url"])
            digest = hashlib.sha256(data).digest()
            if status != 200 or digest.hex() != e["sha256"]:
                raise cs.CheckFail(f"status {status}, sha256 {digest.hex()} vs {e['sha256']}")
            sig = base64.b64decode(e["signature"], validate=True)
            msg = b"dabs-module-v1" + e["name"].encode() + b"\x00" + digest
            if not ed25519_verify(state["key"], msg, sig):
                raise cs.CheckFail("the signature does not verify")
            flipped = bytes([data[0] ^ 1]) + data[1:]
            bad = b"dabs-module-v1" + e["name"].encode() + b"\x00" + hashlib.sha256(flipped).digest()
            if ed25519_verify(state["key"], bad, sig):
                raise cs.CheckFail("a flipped bit still verifies: the verifier checks nothing")
            other = b"dabs-module-v1" + b"another" + b"\x00" + digest
            if ed25519_verify(state["key"], other, sig):
                raise cs.CheckFail("the signature verifies under another name")
            if not data.startswith(b"\x00asm"):
                raise cs.CheckFail("not a WebAssembly module")
            return f"{len(data)} bytes, hash and signature verified"
        return run

    ctx = ccf.Ctx(None, False, 1)
    sess = {}

    def tcp_open():
        client = TcpClient(ctx, "tcp", mp)
        req = cs.build_message(1, 0, 1, 0, cbor.dumps({"app": "calc"}))
        ev, _, _ = client.transact(req, mp, 1, 1, session=None)
        if ev is None or ev.kind != "reply":
            raise cs.CheckFail(f"no REPLY to OPEN_SESSION over TCP: {ev and cs.nak_text(ev)}")
        client.ack(ev)
        body = cbor.loads(ev.payload)
        problems = []
        if not (isinstance(body.get("va"), str) and body["va"].startswith("mp://")):
            problems.append(f"va {body.get('va')!r}")
        queue = body.get("queue")
        if queue != ev.src:
            problems.append(f"queue {queue!r} is not the REPLY's source queue {ev.src}")
        channels = body.get("channels") or {}
        if channels.get("tcp") != f"{mp[0]}:{mp[1]}":
            problems.append(f"REPLY's tcp channel {channels.get('tcp')!r}, not the MP port")
        if ev.session == 0:
            problems.append("session 0")
        if problems:
            raise cs.CheckFail("; ".join(problems))
        sess["s"] = ccf.Session(client, ev.session, mp, queue, body.get("addr"), 1)
        return f"session {ev.session}, queue {queue}, channels {channels}"

    def calc(command, operands, want):
        def run():
            if "s" not in sess:
                raise cs.CheckFail("no session")
            ev, _, _ = ccf.call(sess["s"], command, cbor.dumps(operands))
            got = cbor.loads(ev.payload)
            ok = got == want if "ok" in want else (
                isinstance(got, dict) and got.get("err", {}).get("code") == want["err"])
            if not ok:
                raise cs.CheckFail(f"{operands!r} -> {got!r}, want {want!r}")
            return f"{command} {operands!r} -> {got!r}"
        return run

    check("key", key)
    check("list", listing)
    for e in state.get("entries", []):
        check(f"m-{e['name']}", module(e))
    check("tcp-open", tcp_open)
    check("tcp-01", calc(258, [6, 7], {"ok": 42}))
    check("tcp-02", calc(259, [7, 0], {"err": "division_by_zero"}))
    check("tcp-03", calc(272, [1.5, 2.25], {"ok": 3.75}))
    check("tcp-04", calc(256, [(1 << 63) - 1, 1], {"err": "overflow"}))
    passed = sum(results)
    print(f"delivery interop: {passed} passed, {len(results) - passed} failed")
    return 0 if passed == len(results) else 1


if __name__ == "__main__":
    sys.exit(main())
