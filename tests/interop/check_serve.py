#!/usr/bin/env python3
"""Interop check of `dabs mp serve` with an independent MP client (stdlib only).

    python3 tests/interop/check_serve.py --dabs target/debug/dabs [--seed N] [--full-hex]

Written from /work/shared/spec/mp-wire.md and /work/shared/spec/interop.md alone. Starts
`DABS mp serve --bind 127.0.0.1:0`, reads the bound "IP:PORT" from the first stdout line, runs
the checks below against it over UDP on 127.0.0.1 only, then sends SIGTERM and expects exit 0
within 5 s. One line per check, then "serve interop: N passed, M failed (seed S)"; exit 1 on
any failure. A failing check prints the datagrams it sent and received (hex, with a decode).

    start  the server prints 127.0.0.1:PORT first
    a      OPEN_SESSION {"app": "echo-test"} -> exactly one REPLY (va, addr, queue, security)
    b      ECHO 10 bytes without / with CRC -> same payload back
    c      ECHO 3000 bytes multi-buffer, shuffled + duplicated buffers, without / with CRC
    d      ECHO 65536 bytes
    e      REPLY retransmitted while un-ACKed (same transaction, same stamp), stops after ACK
    f      CRC-corrupted datagram -> NAK 2; the rebuilt request is then answered
    g      ECHO in a session never opened -> NAK 1
    h      version 7 -> NAK 3; the rebuilt version-1 request is then answered
    i      2000 garbage datagrams, then a fresh OPEN_SESSION + ECHO still work
    j      the same ECHO datagram twice -> one consistent REPLY; next transaction works
    stop   SIGTERM -> exit status 0 within 5 s

Every wait is bounded. All randomness (payloads, shuffles, garbage) comes from one
random.Random(seed); the seed is printed so a run can be replayed with --seed.
"""

import argparse
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import traceback

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import cbor  # noqa: E402
import mpref  # noqa: E402
from mpref import MpError  # noqa: E402

HOST = "127.0.0.1"
CMD_OPEN_SESSION = 1
CMD_ECHO = 9
NAK_UNKNOWN_SESSION = 1
NAK_CRC = 2
NAK_VERSION = 3
CLIENT_QUEUE = 5          # our client portion's (source) queue
APP = "echo-test"
MAX_PAYLOAD_SINGLE = 500  # 512 - 12
MAX_PAYLOAD_MULTI = 496   # 512 - 12 - 4
START_TIMEOUT = 15.0      # for the first stdout line of a debug build
STOP_TIMEOUT = 5.0


class CheckFail(Exception):
    pass


# --- datagram building -------------------------------------------------------------------

def stamp(t=None):
    """Sent time of the UTC wall clock: (minutes, seconds, ms) within the hour."""
    ms_total = int((time.time() if t is None else t) * 1000) % 3_600_000
    return ms_total // 60_000, (ms_total // 1000) % 60, ms_total % 1000


def build(kind, command, session, transaction, dst, src, payload=b"", crc=False,
          buffer=None, total=None, when=None, version=None):
    m, s, ms = when or stamp()
    return mpref.encode({
        "kind": kind, "version": version, "command": command, "session": session,
        "transaction": transaction, "encrypted": False, "crc": crc, "minutes": m,
        "seconds": s, "ms": ms, "dst": dst, "src": src, "buffer": buffer, "total": total,
        "payload": bytes(payload).hex(),
    })


def build_message(command, session, transaction, dst, payload, crc=False, kind="request",
                  src=CLIENT_QUEUE, when=None):
    """All datagrams of one message, in buffer order, sharing one sent time."""
    when = when or stamp()
    single = MAX_PAYLOAD_SINGLE - (1 if crc else 0)
    if len(payload) <= single:
        return [build(kind, command, session, transaction, dst, src, payload, crc, when=when)]
    size = MAX_PAYLOAD_MULTI - (1 if crc else 0)
    chunks = [payload[i:i + size] for i in range(0, len(payload), size)]
    total = len(chunks)
    if total > 0xFFFF:
        raise ValueError("message too large")
    return [build(kind, command, session, transaction, dst, src, c, crc, buffer=i,
                  total=total, when=when) for i, c in enumerate(chunks)]


def describe(data: bytes) -> str:
    try:
        d = mpref.decode(data)
    except MpError as e:
        return f"undecodable: {e}"
    s = (f"{d['kind']} v{d['version']} cmd={d['command']} s={d['session']} "
         f"t={d['transaction']} dst={d['dst']} src={d['src']} "
         f"time={d['minutes']:02d}:{d['seconds']:02d}.{d['ms']:03d}")
    if d["crc"]:
        s += " CRC"
    if d["encrypted"]:
        s += " ENC"
    if d["buffer"] is not None:
        s += f" buf={d['buffer']}/{d['total']}"
    p = bytes.fromhex(d["payload"])
    s += f" payload={len(p)}B"
    if d["kind"] == "nak" and len(p) >= 2:
        s += f" error={int.from_bytes(p[:2], 'big')}"
        if len(p) > 2:
            s += f" text={p[2:].decode('utf-8', 'replace')!r}"
    return s


# --- trace of one check, printed when it fails -----------------------------------------

class Trace:
    def __init__(self, full_hex: bool):
        self.lines = []
        self.problems = []       # protocol violations seen in the server's traffic
        self.full_hex = full_hex
        self.t0 = time.monotonic()

    def add(self, direction, peer, data):
        self.lines.append((time.monotonic() - self.t0, direction, peer, bytes(data)))

    def note(self, text):
        self.lines.append((time.monotonic() - self.t0, "!!", None, text))

    def dump(self, limit_head=40, limit_tail=15):
        out = []
        rows = self.lines
        if len(rows) > limit_head + limit_tail:
            rows = rows[:limit_head] + [None] + rows[-limit_tail:]
        for row in rows:
            if row is None:
                out.append(f"      ... {len(self.lines) - limit_head - limit_tail} more ...")
                continue
            t, direction, peer, data = row
            if direction == "!!":
                out.append(f"      {t:7.3f} !! {data}")
                continue
            hx = data.hex()
            if not self.full_hex and len(data) > 64:
                hx = hx[:128] + f"...({len(data)} bytes; --full-hex for all)"
            p = f"{peer[0]}:{peer[1]}" if peer else "?"
            out.append(f"      {t:7.3f} {direction} {p} {describe(data)}")
            out.append(f"              {hx}")
        return "\n".join(out)


# --- one client socket -------------------------------------------------------------------

class Event(dict):
    """A complete message from the server: kind, command, session, transaction, src, dst,
    crc, when, payload (bytes), peer, nbufs."""
    __getattr__ = dict.__getitem__


class Client:
    def __init__(self, ctx, label: str):
        self.ctx = ctx
        self.label = label
        ctx.clients.append(self)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        except OSError:
            pass
        self.sock.bind((HOST, 0))
        self.partial = {}
        self.acked = set()       # (peer, command, session, transaction) of REPLYs we ACKed
        self.strays = 0

    @property
    def trace(self):
        return self.ctx.trace

    def close(self):
        self.sock.close()

    @property
    def addr(self):
        return self.sock.getsockname()

    def send(self, data: bytes, peer):
        if peer[0] != HOST:
            raise CheckFail(f"refusing to send to {peer[0]}: only {HOST} is allowed")
        self.trace.add("->", peer, data)
        self.sock.sendto(data, peer)

    def recv_raw(self, deadline):
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            self.sock.settimeout(min(left, 0.5))
            try:
                data, peer = self.sock.recvfrom(65535)
            except socket.timeout:
                continue
            except ConnectionRefusedError:   # ICMP from an earlier send; ignore
                continue
            self.trace.add("<-", peer, data)
            return data, peer

    def problem(self, text):
        self.trace.problems.append(text)
        self.trace.note(text)

    def poll(self, deadline):
        """Next complete message from the server, or None at the deadline."""
        while True:
            r = self.recv_raw(deadline)
            if r is None:
                return None
            data, peer = r
            try:
                d = mpref.decode(data)
            except MpError as e:
                self.problem(f"server sent an undecodable datagram ({e}): {data.hex()}")
                continue
            payload = bytes.fromhex(d["payload"])
            when = (d["minutes"], d["seconds"], d["ms"])
            if d["buffer"] is None:
                return Event(kind=d["kind"], command=d["command"], session=d["session"],
                             transaction=d["transaction"], src=d["src"], dst=d["dst"],
                             crc=d["crc"], when=when, payload=payload, peer=peer, nbufs=1)
            key = (peer, d["kind"], d["command"], d["session"], d["transaction"])
            p = self.partial.get(key)
            if p is None:
                p = self.partial[key] = {"total": d["total"], "bufs": {}, "when": when,
                                        "crc": d["crc"], "src": d["src"], "dst": d["dst"]}
            if d["total"] != p["total"]:
                self.problem(f"buffers of one message disagree on total: "
                             f"{p['total']} vs {d['total']} ({key[1:]})")
                continue
            if when != p["when"] or d["crc"] != p["crc"] or (d["src"], d["dst"]) != (
                    p["src"], p["dst"]):
                self.problem(f"buffer {d['buffer']} of {key[1:]} differs in sent time, CRC flag "
                             f"or queues from the message's first buffer")
            full = MAX_PAYLOAD_MULTI - (1 if d["crc"] else 0)
            last = d["buffer"] == d["total"] - 1
            if not last and len(payload) != full:
                self.problem(f"buffer {d['buffer']}/{d['total']} of {key[1:]} is not full: "
                             f"{len(payload)} payload bytes, want {full}")
            if last and not payload:
                self.problem(f"last buffer {d['buffer']}/{d['total']} of {key[1:]} is empty")
            old = p["bufs"].get(d["buffer"])
            if old is not None and old != payload:
                self.problem(f"two copies of buffer {d['buffer']} of {key[1:]} differ")
            p["bufs"][d["buffer"]] = payload
            if len(p["bufs"]) == p["total"]:
                del self.partial[key]
                whole = b"".join(p["bufs"][i] for i in range(p["total"]))
                return Event(kind=d["kind"], command=d["command"], session=d["session"],
                             transaction=d["transaction"], src=p["src"], dst=p["dst"],
                             crc=p["crc"], when=p["when"], payload=whole, peer=peer,
                             nbufs=p["total"])

    def ack(self, ev):
        """ACK a REPLY (or request) from the server: same command, session, transaction."""
        self.send(build("ack", ev.command, ev.session, ev.transaction, ev.src, CLIENT_QUEUE),
                  ev.peer)
        if ev.kind == "reply":
            self.acked.add((ev.peer, ev.command, ev.session, ev.transaction))

    def handle_stray(self, ev):
        """Something we were not waiting for: ACK replies and requests, note the rest."""
        self.strays += 1
        if ev.kind in ("reply", "request"):
            if ev.kind == "reply" and (ev.peer, ev.command, ev.session, ev.transaction) \
                    not in self.acked:
                self.trace.note(f"unexpected REPLY cmd={ev.command} s={ev.session} "
                                f"t={ev.transaction}; ACKing it")
            self.ack(ev)

    def wait(self, match, deadline):
        """Next message satisfying match(ev); everything else goes to handle_stray."""
        while True:
            ev = self.poll(deadline)
            if ev is None:
                return None
            if match(ev):
                return ev
            self.handle_stray(ev)

    def collect(self, match, duration):
        """All matching messages within duration seconds (strays handled as usual)."""
        out = []
        deadline = time.monotonic() + duration
        while True:
            ev = self.wait(match, deadline)
            if ev is None:
                return out
            out.append(ev)

    def transact(self, dgrams, peer, command, transaction, session=None, timeout=6.0,
                 rto=1.0, retransmit=True, any_nak=False):
        """Send a request (all its datagrams) and wait for the REPLY or NAK that answers it.

        session None matches any session (OPEN_SESSION's REPLY carries the new number).
        A separate ACK of the request stops our retransmissions. Returns (event or None,
        number of retransmissions, whether an ACK was seen). any_nak: a NAK for this command
        matches whatever its session and transaction (the caller checks them)."""
        def match(ev):
            if any_nak and ev.kind == "nak" and ev.command == command:
                return True
            return (ev.kind in ("reply", "nak", "ack") and ev.command == command
                    and ev.transaction == transaction
                    and (session is None or ev.session == session))
        for dg in dgrams:
            self.send(dg, peer)
        end = time.monotonic() + timeout
        next_rto = time.monotonic() + rto
        retrans = 0
        acked = False
        while True:
            now = time.monotonic()
            if now >= end:
                return None, retrans, acked
            ev = self.wait(match, min(end, next_rto) if (retransmit and not acked) else end)
            if ev is None:
                if retransmit and not acked and time.monotonic() < end:
                    retrans += 1
                    rto *= 2
                    next_rto = time.monotonic() + rto
                    self.trace.note(f"no answer yet: retransmitting the request (#{retrans})")
                    for dg in dgrams:
                        self.send(dg, peer)
                continue
            if ev.kind == "ack":
                acked = True
                continue
            return ev, retrans, acked


# --- the checks --------------------------------------------------------------------------

class Ctx:
    def __init__(self, server, rng, full_hex, first_tx):
        self.server = server          # (ip, port) printed by the server
        self.rng = rng
        self.full_hex = full_hex
        self.client = None            # main session client
        self.session = None
        self.peer = None              # portion endpoint ("addr")
        self.queue = None
        self.tx = first_tx
        self.proc = None
        self.trace = Trace(full_hex)  # replaced for every check
        self.clients = []

    def next_tx(self):
        t = self.tx
        self.tx = 1 if t == 255 else t + 1
        return t

    def need_session(self):
        if self.session is None:
            raise CheckFail("no session (check a failed)")


def parse_addr(text):
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        return None
    return host, int(port)


def check_reply_header(ev, peer, src_queue, problems, what="REPLY"):
    if ev.peer != peer:
        problems.append(f"{what} came from {ev.peer[0]}:{ev.peer[1]}, "
                        f"expected {peer[0]}:{peer[1]}")
    if ev.dst != CLIENT_QUEUE:
        problems.append(f"{what} destination queue {ev.dst}, expected our source queue "
                        f"{CLIENT_QUEUE}")
    if src_queue is not None and ev.src != src_queue:
        problems.append(f"{what} source queue {ev.src}, expected the portion's queue {src_queue}")


def open_session(client, server, problems, retransmit=True):
    """OPEN_SESSION + ACK. Returns (session, peer, queue, info) or raises CheckFail."""
    tx = 1
    req = build_message(CMD_OPEN_SESSION, 0, tx, 0, cbor.dumps({"app": APP}))
    ev, retrans, _ = client.transact(req, server, CMD_OPEN_SESSION, tx, session=None,
                                     retransmit=retransmit)
    if ev is None:
        raise CheckFail("no REPLY to OPEN_SESSION within 6 s")
    if ev.kind == "nak":
        raise CheckFail(f"OPEN_SESSION NAKed: {nak_text(ev)}")
    client.ack(ev)
    if ev.session == 0:
        problems.append("REPLY header session is 0")
    try:
        body = cbor.loads(ev.payload)
    except cbor.CborError as e:
        raise CheckFail(f"REPLY payload is not CBOR ({e}): {ev.payload.hex()}")
    if not isinstance(body, dict):
        raise CheckFail(f"REPLY payload is not a CBOR map: {body!r}")
    va, addr, queue = body.get("va"), body.get("addr"), body.get("queue")
    if not (isinstance(va, str) and va.startswith("mp://")):
        problems.append(f"va {va!r} is not text starting with mp://")
    peer = parse_addr(addr) if isinstance(addr, str) else None
    if peer is None:
        problems.append(f"addr {addr!r} is not text IP:port")
    elif peer[0] != HOST:
        problems.append(f"addr {addr!r} is not on {HOST}; using the printed address instead")
        peer = None
    if not (isinstance(queue, int) and not isinstance(queue, bool) and 0 <= queue <= 0xFFFF):
        problems.append(f"queue {queue!r} is not an unsigned 16-bit integer")
        queue = ev.src
    if "security" not in body:
        problems.append("security key missing")
    elif body["security"] is not None:
        problems.append(f"security is {body['security']!r}, expected null (no offer was made)")
    if ev.src != queue:
        problems.append(f"REPLY source queue {ev.src} differs from payload queue {queue}")
    if ev.dst != CLIENT_QUEUE:
        problems.append(f"REPLY destination queue {ev.dst}, expected our source queue "
                        f"{CLIENT_QUEUE}")
    if ev.transaction != tx:
        problems.append(f"REPLY transaction {ev.transaction}, expected {tx}")
    info = {"session": ev.session, "va": va, "addr": addr, "queue": queue,
            "from": f"{ev.peer[0]}:{ev.peer[1]}", "retrans": retrans, "event": ev}
    return ev.session, peer or ev.peer, queue, info


def nak_text(ev):
    if len(ev.payload) < 2:
        return f"NAK with {len(ev.payload)}-byte payload (no error number)"
    n = int.from_bytes(ev.payload[:2], "big")
    t = ev.payload[2:].decode("utf-8", "replace")
    return f"NAK error {n}" + (f" {t!r}" if t else "")


def nak_number(ev, problems):
    if len(ev.payload) < 2:
        problems.append(f"NAK payload has {len(ev.payload)} bytes, no u16 error number")
        return None
    try:
        ev.payload[2:].decode("utf-8")
    except UnicodeDecodeError:
        problems.append(f"NAK text is not UTF-8: {ev.payload[2:].hex()}")
    return int.from_bytes(ev.payload[:2], "big")


def echo(ctx, payload, crc=False, shuffle=False, dup_fraction=0.0, timeout=6.0, client=None,
         session=None, peer=None, queue=None, tx=None):
    """One ECHO request (shuffled/duplicated buffers on request). Returns the REPLY event
    (already ACKed) and notes; raises CheckFail if no matching REPLY."""
    client = client or ctx.client
    session = ctx.session if session is None else session
    peer = peer or ctx.peer
    queue = ctx.queue if queue is None else queue
    tx = ctx.next_tx() if tx is None else tx
    dgrams = build_message(CMD_ECHO, session, tx, queue, payload, crc=crc)
    order = list(dgrams)
    if shuffle:
        ctx.rng.shuffle(order)
    ndup = 0
    if dup_fraction and len(dgrams) > 1:
        ndup = max(1, int(len(dgrams) * dup_fraction))
        for dg in ctx.rng.sample(dgrams, ndup):
            order.insert(ctx.rng.randrange(len(order) + 1), dg)
    ev, retrans, acked = client.transact(order, peer, CMD_ECHO, tx, session=session,
                                         timeout=timeout)
    if ev is None:
        raise CheckFail(f"no REPLY to ECHO t={tx} ({len(payload)} bytes, {len(dgrams)} "
                        f"buffer(s)) within {timeout:.0f} s")
    if ev.kind == "nak":
        raise CheckFail(f"ECHO t={tx} answered with {nak_text(ev)}")
    client.ack(ev)
    problems = []
    if ev.payload != payload:
        problems.append(f"REPLY payload differs: {len(ev.payload)} bytes, want {len(payload)}; "
                        f"first difference at {first_diff(ev.payload, payload)}")
    if ev.crc != crc:
        problems.append(f"REPLY CRC flag {ev.crc}, request had {crc}")
    if ev.session != session:
        problems.append(f"REPLY session {ev.session}, expected {session}")
    check_reply_header(ev, peer, queue, problems)
    note = f"{len(dgrams)}->{ev.nbufs} buffer(s)"
    if ndup:
        note += f", {ndup} dup"
    if retrans:
        note += f", request retransmitted {retrans}x"
    if acked:
        note += ", separate ACK seen"
    return ev, problems, note, tx


def first_diff(a, b):
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i
    return min(len(a), len(b))


def check_start(ctx):
    return f"server bound {ctx.server[0]}:{ctx.server[1]}"


def check_a(ctx):
    c = Client(ctx, "main")
    ctx.client = c
    problems = []
    session, peer, queue, info = open_session(c, ctx.server, problems)
    ctx.session, ctx.peer, ctx.queue = session, peer, queue
    # Exactly one REPLY: anything else for OPEN_SESSION in the next second must be a
    # retransmission of the same one (same session, same payload), which we ACK again.
    first = info["event"]
    extra = c.collect(lambda ev: ev.command == CMD_OPEN_SESSION and ev.kind == "reply", 1.0)
    for ev in extra:
        c.ack(ev)
        if ev.session != first.session or ev.payload != first.payload:
            problems.append(f"a second, different REPLY to OPEN_SESSION: session {ev.session}, "
                            f"payload {ev.payload.hex()}")
    if session == 0:
        ctx.session = None
    return problems, (f"session {info['session']} va={info['va']!r} addr={info['addr']!r} "
                      f"queue={info['queue']} from {info['from']}"
                      + (f", {len(extra)} retransmitted copy(ies) re-ACKed" if extra else ""))


def check_b(ctx):
    ctx.need_session()
    problems, notes = [], []
    for crc in (False, True):
        payload = ctx.rng.randbytes(10)
        ev, p, note, tx = echo(ctx, payload, crc=crc)
        problems += [f"{'with' if crc else 'without'} CRC: {x}" for x in p]
        notes.append(f"t={tx} {'CRC' if crc else 'no CRC'} ok")
    return problems, ", ".join(notes)


def check_c(ctx):
    ctx.need_session()
    problems, notes = [], []
    for crc in (False, True):
        payload = ctx.rng.randbytes(3000)
        ev, p, note, tx = echo(ctx, payload, crc=crc, shuffle=True, dup_fraction=0.4)
        problems += [f"{'with' if crc else 'without'} CRC: {x}" for x in p]
        notes.append(f"t={tx} {'CRC' if crc else 'no CRC'}: {note}")
    return problems, "; ".join(notes)


def check_d(ctx):
    ctx.need_session()
    payload = ctx.rng.randbytes(65536)
    ev, p, note, tx = echo(ctx, payload, shuffle=True, timeout=15.0)
    return p, f"t={tx}: {note}"


def check_e(ctx):
    ctx.need_session()
    c = ctx.client
    tx = ctx.next_tx()
    payload = ctx.rng.randbytes(20)
    req = build_message(CMD_ECHO, ctx.session, tx, ctx.queue, payload)
    ev, retrans, _ = c.transact(req, ctx.peer, CMD_ECHO, tx, session=ctx.session)
    if ev is None or ev.kind != "reply":
        raise CheckFail(f"no REPLY to ECHO t={tx}" + (f" ({nak_text(ev)})" if ev else ""))
    problems = []
    if ev.payload != payload:
        problems.append("REPLY payload differs from the request")
    # Withhold the ACK: the same REPLY must come again.
    t0 = time.monotonic()
    again = c.wait(lambda e: e.kind == "reply" and e.command == CMD_ECHO
                   and e.session == ctx.session and e.transaction == tx,
                   time.monotonic() + 6.0)
    if again is None:
        c.ack(ev)
        raise CheckFail(f"REPLY t={tx} was not retransmitted within 6 s without an ACK")
    delay = time.monotonic() - t0
    if again.payload != ev.payload:
        problems.append("retransmitted REPLY has a different payload")
    if again.when != ev.when:
        problems.append(f"retransmitted REPLY has a new sent time {again.when}, original "
                        f"{ev.when} (a retransmission keeps the original stamp)")
    c.ack(again)
    # Copies already in flight when the ACK went out are tolerated for 0.3 s.
    late = c.collect(lambda e: e.kind == "reply" and e.transaction == tx
                     and e.session == ctx.session, 0.3)
    for e in late:
        c.ack(e)
    more = c.collect(lambda e: e.kind == "reply" and e.transaction == tx
                     and e.session == ctx.session, 1.5)
    for e in more:
        c.ack(e)
    if more:
        problems.append(f"{len(more)} further REPLY copy(ies) within 1.5 s after the ACK")
    return problems, (f"t={tx}: copy after {delay:.2f} s, then quiet for 1.5 s after the ACK"
                      + (f" ({len(late)} in-flight copy tolerated)" if late else ""))


def check_f(ctx):
    ctx.need_session()
    c = ctx.client
    tx = ctx.next_tx()
    payload = ctx.rng.randbytes(16)
    good = build_message(CMD_ECHO, ctx.session, tx, ctx.queue, payload, crc=True)[0]
    bad = bytearray(good)
    i = 12 + ctx.rng.randrange(len(payload))
    bad[i] ^= 1 << ctx.rng.randrange(8)
    bad = bytes(bad)
    problems = []
    ev, probe_rx, _ = c.transact([bad], ctx.peer, CMD_ECHO, tx, session=None, timeout=5.0,
                          rto=1.5, any_nak=True)
    if ev is None:
        raise CheckFail(f"no NAK within 5 s for the corrupted datagram {bad.hex()}")
    if ev.kind != "nak":
        if ev.kind == "reply":
            c.ack(ev)
        raise CheckFail(f"corrupted datagram answered with a {ev.kind}, not a NAK: "
                        f"{bad.hex()}")
    n = nak_number(ev, problems)
    if n != NAK_CRC:
        problems.append(f"NAK error {n}, expected {NAK_CRC} (CRC mismatch); sent {bad.hex()}")
    if ev.session != ctx.session:
        problems.append(f"NAK session {ev.session}, expected {ctx.session}")
    if ev.transaction != tx:
        problems.append(f"NAK transaction {ev.transaction}, expected {tx}")
    nak = nak_text(ev)
    # The sender rebuilds and resends: the correct datagram, same transaction.
    ev2, p, note, _ = echo(ctx, payload, crc=True, tx=tx)
    problems += [f"resend: {x}" for x in p]
    return problems, (f"t={tx}: {nak}; rebuilt request answered ({note})"
                      + (f"; probe resent {probe_rx}x" if probe_rx else ""))


def check_g(ctx):
    c = Client(ctx, "stranger")
    peer = ctx.peer or ctx.server
    session, tx = 200, 1
    dg = build_message(CMD_ECHO, session, tx, ctx.queue or 0, b"who am I")[0]
    problems = []
    ev, probe_rx, _ = c.transact([dg], peer, CMD_ECHO, tx, session=None, timeout=5.0,
                          rto=1.5, any_nak=True)
    if ev is None:
        raise CheckFail(f"no NAK within 5 s for ECHO in unopened session 200: {dg.hex()}")
    if ev.kind != "nak":
        if ev.kind == "reply":
            c.ack(ev)
        raise CheckFail(f"ECHO in unopened session answered with {ev.kind}: {dg.hex()}")
    n = nak_number(ev, problems)
    if n != NAK_UNKNOWN_SESSION:
        problems.append(f"NAK error {n}, expected {NAK_UNKNOWN_SESSION}; sent {dg.hex()}")
    if ev.session != session:
        problems.append(f"NAK session {ev.session}, expected {session}")
    if ev.transaction != tx:
        problems.append(f"NAK transaction {ev.transaction}, expected {tx}")
    return problems, (f"{nak_text(ev)} from {ev.peer[0]}:{ev.peer[1]}"
                      + (f"; probe resent {probe_rx}x" if probe_rx else ""))


def check_h(ctx):
    ctx.need_session()
    c = ctx.client
    tx = ctx.next_tx()
    payload = ctx.rng.randbytes(12)
    dg = build(kind="request", command=CMD_ECHO, session=ctx.session, transaction=tx,
               dst=ctx.queue, src=CLIENT_QUEUE, payload=payload, version=7)
    assert dg[0] & 0x1F == 7
    problems = []
    ev, probe_rx, _ = c.transact([dg], ctx.peer, CMD_ECHO, tx, session=None, timeout=5.0,
                          rto=1.5, any_nak=True)
    if ev is None:
        raise CheckFail(f"no NAK within 5 s for a version-7 datagram: {dg.hex()}")
    if ev.kind != "nak":
        if ev.kind == "reply":
            c.ack(ev)
        raise CheckFail(f"version-7 datagram answered with {ev.kind}: {dg.hex()}")
    n = nak_number(ev, problems)
    if n != NAK_VERSION:
        problems.append(f"NAK error {n}, expected {NAK_VERSION}; sent {dg.hex()}")
    if ev.transaction != tx:
        problems.append(f"NAK transaction {ev.transaction}, expected {tx}")
    nak = nak_text(ev)
    ev2, p, note, _ = echo(ctx, payload, tx=tx)
    problems += [f"version-1 resend: {x}" for x in p]
    return problems, (f"t={tx}: {nak}; version-1 resend answered"
                      + (f"; probe resent {probe_rx}x" if probe_rx else ""))


def garbage(rng, template):
    """One random datagram: raw bytes, a plausible header with random fields, or a mutation
    of a valid request."""
    kind = rng.randrange(3)
    n = rng.randrange(601)
    if kind == 0 or n < 12:
        return rng.randbytes(n)
    if kind == 1:
        b = bytearray(rng.randbytes(n))
        b[0] = rng.choice([0x01, 0x81, 0x41, 0x21, 0x61, 0xC1]) if rng.random() < 0.8 else b[0]
        b[1:3] = rng.choice([0, CMD_OPEN_SESSION, CMD_ECHO, rng.randrange(65536)]).to_bytes(
            2, "big")
        b[3] = rng.choice([0, rng.randrange(256)])
        b[5] = (b[5] & 0xC0) | rng.randrange(60)
        if b[0] & 0x80 and n >= 16:
            total = rng.choice([2, 3, 133, 65535, rng.randrange(65536)])
            b[12:16] = rng.randrange(max(total, 1)).to_bytes(2, "big") + total.to_bytes(2, "big")
        if b[5] & 0x40 and rng.random() < 0.5:
            b[-1] = mpref.crc8(bytes(b[:-1]))
        return bytes(b)
    b = bytearray(template)
    for _ in range(rng.randrange(1, 6)):
        b[rng.randrange(len(b))] ^= 1 << rng.randrange(8)
    if rng.random() < 0.3:
        b += rng.randbytes(rng.randrange(1, 100))
    return bytes(b[:600])


def check_i(ctx):
    rng = ctx.rng
    g = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    g.bind((HOST, 0))
    targets = [ctx.server] + ([ctx.peer] if ctx.peer and ctx.peer != ctx.server else [])
    template = build_message(CMD_OPEN_SESSION, 0, 1, 0, cbor.dumps({"app": APP}))[0]
    sent = 0
    try:
        for k in range(2000):
            dg = garbage(rng, template)
            g.sendto(dg, targets[k % len(targets)])
            sent += 1
        # Drain what the server answers to the garbage (not checked, only counted).
        answers = 0
        g.settimeout(0.2)
        end = time.monotonic() + 1.0
        while time.monotonic() < end:
            try:
                g.recvfrom(65535)
                answers += 1
            except (socket.timeout, ConnectionRefusedError):
                pass
    finally:
        g.close()
    if ctx.proc is not None and ctx.proc.poll() is not None:
        raise CheckFail(f"server exited with status {ctx.proc.returncode} during the garbage")
    c = Client(ctx, "after-garbage")
    problems = []
    session, peer, queue, info = open_session(c, ctx.server, problems)
    payload = rng.randbytes(100)
    ev, p, note, tx = echo(ctx, payload, crc=True, client=c, session=session, peer=peer,
                           queue=queue, tx=1)
    problems += p
    return problems, (f"{sent} garbage datagrams ({answers} answers drained); new session "
                      f"{session}, ECHO ok ({note})")


def check_j(ctx):
    ctx.need_session()
    c = ctx.client
    tx = ctx.next_tx()
    payload = ctx.rng.randbytes(50)
    dg = build_message(CMD_ECHO, ctx.session, tx, ctx.queue, payload)[0]
    c.send(dg, ctx.peer)
    c.send(dg, ctx.peer)
    mine = lambda e: (e.command == CMD_ECHO and e.session == ctx.session  # noqa: E731
                      and e.transaction == tx and e.kind in ("reply", "ack", "nak"))
    early = []
    end = time.monotonic() + 5.0
    while True:
        first = c.wait(mine, end)
        if first is None or first.kind != "ack":
            break
        early.append(first)
    problems = []
    if first is None:
        raise CheckFail(f"no REPLY to the duplicated ECHO t={tx} within 5 s: {dg.hex()}")
    if first.kind == "nak":
        raise CheckFail(f"duplicated ECHO t={tx} answered with {nak_text(first)}")
    c.ack(first)
    rest = c.collect(mine, 1.5)
    replies = [first] + [e for e in rest if e.kind == "reply"]
    acks = early + [e for e in rest if e.kind == "ack"]
    naks = [e for e in rest if e.kind == "nak"]
    for e in replies[1:]:
        c.ack(e)
    for e in replies:
        if e.payload != payload:
            problems.append("a REPLY payload differs from the request")
            break
    stamps = {e.when for e in replies}
    if len(stamps) > 1:
        problems.append(f"REPLYs for t={tx} carry {len(stamps)} different sent times "
                        f"{sorted(stamps)}: the duplicate was answered with a new REPLY "
                        f"rather than an ACK or a retransmission")
    if naks:
        problems.append(f"the duplicate was NAKed: {nak_text(naks[0])}")
    answered = len(replies) + len(acks)
    warn = "" if answered >= 2 else " (only one answer seen for two copies)"
    ev, p, note, tx2 = echo(ctx, ctx.rng.randbytes(30))
    problems += [f"next transaction: {x}" for x in p]
    return problems, (f"t={tx}: {len(replies)} REPLY copy(ies), {len(acks)} ACK(s){warn}; "
                      f"next t={tx2} ok")


CHECKS = [
    ("a", "OPEN_SESSION echo-test", check_a),
    ("b", "ECHO 10 bytes, without and with CRC", check_b),
    ("c", "ECHO 3000 bytes multi-buffer, shuffled + duplicated", check_c),
    ("d", "ECHO 65536 bytes", check_d),
    ("e", "REPLY retransmitted until ACKed", check_e),
    ("f", "corrupted CRC -> NAK 2", check_f),
    ("g", "unopened session -> NAK 1", check_g),
    ("h", "version 7 -> NAK 3", check_h),
    ("i", "garbage burst, then OPEN_SESSION + ECHO", check_i),
    ("j", "duplicate request", check_j),
]


# --- server process ----------------------------------------------------------------------

def start_server(dabs, errfile):
    proc = subprocess.Popen([dabs, "mp", "serve", "--bind", f"{HOST}:0"],
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=errfile)
    lines = []
    got = threading.Event()

    def reader():
        for raw in proc.stdout:
            lines.append(raw.decode("utf-8", "replace").rstrip("\r\n"))
            got.set()
        got.set()

    threading.Thread(target=reader, daemon=True).start()
    got.wait(START_TIMEOUT)
    return proc, lines


def stop_server(proc):
    if proc.poll() is not None:
        return False, f"server had already exited with status {proc.returncode}"
    proc.send_signal(signal.SIGTERM)
    try:
        rc = proc.wait(STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)
        return False, f"server still running {STOP_TIMEOUT:.0f} s after SIGTERM (killed)"
    if rc != 0:
        return False, f"server exited with status {rc} after SIGTERM"
    return True, "exit status 0 after SIGTERM"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dabs", required=True, help="path of the dabs binary")
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--first-transaction", type=int, default=250,
                    help="first transaction of the main session (default 250, so that the "
                         "checks cross the 255 -> 1 wrap)")
    ap.add_argument("--full-hex", action="store_true", help="print whole datagrams on failure")
    args = ap.parse_args()
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(1 << 32)
    if not 1 <= args.first_transaction <= 255:
        ap.error("--first-transaction must be 1..255")
    rng = random.Random(seed)
    print(f"seed {seed}", flush=True)

    passed = failed = 0

    def report(name, desc, ok, detail, trace=None):
        nonlocal passed, failed
        if ok:
            passed += 1
        else:
            failed += 1
        print(f"{'PASS' if ok else 'FAIL'} {name}: {desc}: {detail}", flush=True)
        if not ok and trace is not None and trace.lines:
            print(trace.dump(), flush=True)

    errfile = tempfile.TemporaryFile()
    try:
        proc, lines = start_server(args.dabs, errfile)
    except OSError as e:
        report("start", "server starts", False, f"cannot run {args.dabs}: {e}")
        print(f"serve interop: {passed} passed, {failed} failed (seed {seed})")
        return 1
    first = lines[0] if lines else None
    server = parse_addr(first.strip()) if first else None
    if server is None or server[0] != HOST:
        report("start", "server prints its address", False,
               f"first stdout line {first!r} is not {HOST}:PORT"
               + (f" (server exited {proc.poll()})" if proc.poll() is not None else ""))
        stop_server(proc) if proc.poll() is None else None
        dump_stderr(errfile)
        print(f"serve interop: {passed} passed, {failed} failed (seed {seed})")
        return 1
    ctx = Ctx(server, rng, args.full_hex, args.first_transaction)
    ctx.proc = proc
    report("start", "server prints its address", True, check_start(ctx))

    try:
        for name, desc, fn in CHECKS:
            ctx.trace = trace = Trace(args.full_hex)
            if proc.poll() is not None:
                report(name, desc, False, f"server not running (exited with status "
                                          f"{proc.returncode})")
                continue
            try:
                problems, detail = fn(ctx)
                ok = True
            except CheckFail as e:
                ok, problems, detail = False, [], str(e)
            except Exception as e:  # a bug here, or the server sent something unexpected
                ok, problems, detail = False, [], f"{type(e).__name__}: {e}"
                traceback.print_exc()
            problems = list(problems) + [f"server traffic: {p}" for p in trace.problems]
            if problems:
                ok = False
                shown = problems[:6]
                if len(problems) > len(shown):
                    shown.append(f"... {len(problems) - len(shown)} more problem(s)")
                detail = detail + " -- " + "; ".join(shown)
            if not ok and proc.poll() is not None:
                detail += f" [server exited with status {proc.returncode}]"
            report(name, desc, ok, detail, trace)
    finally:
        ok, detail = stop_server(proc)
        report("stop", "SIGTERM -> exit 0 within 5 s", ok, detail)
        for c in ctx.clients:
            c.close()
    if failed:
        dump_stderr(errfile)
    print(f"serve interop: {passed} passed, {failed} failed (seed {seed})")
    return 1 if failed else 0


def dump_stderr(errfile, limit=40):
    try:
        errfile.seek(0)
        text = errfile.read().decode("utf-8", "replace").splitlines()
    except OSError:
        return
    if text:
        print(f"--- server stderr (last {min(limit, len(text))} of {len(text)} lines) ---")
        for line in text[-limit:]:
            print(f"    {line}")


if __name__ == "__main__":
    sys.exit(main())
