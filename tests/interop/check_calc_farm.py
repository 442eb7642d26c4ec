#!/usr/bin/env python3
"""Interop check of a dabs farm running the calculator, with an independent MP client.

    dabs farm up --nodes 3 --dir DIR &
    python3 tests/interop/check_calc_farm.py --farm-json DIR/farm.json [--seed N] [--no-kill]

Stdlib only. Written from /work/shared/spec/mp-wire.md, /work/shared/spec/interop.md and
/work/shared/spec/system.md section 10 alone. The MP datagram helpers (building, decoding,
reassembly, ACKing, traces) are imported from check_serve.py next to this file; the codec is
mpref.py and the CBOR codec cbor.py.

    farm    wait (bounded, --wait s) for farm.json: {"group": "IP:port" (multicast),
            "nodes": [{"name", "mp": "127.0.0.1:port", "pid"}, ...]}
    open    OPEN_SESSION {"app": "calc"} (session 0, destination queue 0) sent to the group,
            retried for up to --open-timeout s while unanswered. After the first REPLY, every
            answer for ~1.5 s is collected: exactly one REPLY per request (distinct
            (address, session) pairs; exact retransmissions are ACKed and ignored), no NAK
            for the answered request, payload {"va": "mp://...", "addr": "IP:port" == the
            REPLY's UDP source, "queue": unsigned == the REPLY's source queue,
            "security": null}. The REPLY is ACKed.
    c-NN    one line per calculator call in that session (commands 256..260, 272..275):
            fixed cases (truncating division and modulus, overflow, division by zero,
            bad operands) and a few random operand pairs from the seed. Every request is
            retransmitted with a growing timeout until an ACK or REPLY comes (at most 8 s per
            call); the REPLY (after an optional separate ACK) is ACKed and its payload must
            be {"ok": value} or {"err": {"code": C, "message": M}}.
    kill    (unless --no-kill) SIGKILL the pid of the node whose "mp" is the session's addr
            (if no "mp" matches, the node whose process owns that UDP port, via /proc).
    reopen  OPEN_SESSION to the group again (retried for up to ~10 s while membership
            notices the death): exactly one REPLY, from a node other than the killed one.
    after-NN  6 * 7 = 42 (258) and 1.5 + 2.25 = 3.75 (272) in the new session.

One line per check (PASS/FAIL and details; a failing check also prints every datagram it
sent and received, hex and decoded), then "calc farm interop: N passed, M failed (seed S)";
exit status 1 on any failure. Traffic goes only to 127.0.0.1 and to the group address with
multicast TTL 0 (the host only). Every wait is bounded. All operand randomness comes from one
random.Random(seed); retransmission jitter uses a separate generator so that a replay with
--seed sends the same cases.
"""

import argparse
import ipaddress
import json
import math
import os
import random
import signal
import socket
import struct
import sys
import time
import traceback

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import cbor  # noqa: E402
import check_serve as cs  # noqa: E402  (MP client helpers: build, Client, Trace, ...)

HOST = "127.0.0.1"
APP = "calc"
CMD_OPEN_SESSION = 1
CLIENT_QUEUE = cs.CLIENT_QUEUE   # our source queue (5); check_serve's Client ACKs from it

I64_MIN = -(1 << 63)
I64_MAX = (1 << 63) - 1

ADD, SUB, MUL, DIV, MOD = 256, 257, 258, 259, 260
FADD, FSUB, FMUL, FDIV = 272, 273, 274, 275
OP_NAMES = {ADD: "add", SUB: "sub", MUL: "mul", DIV: "div", MOD: "mod",
            FADD: "fadd", FSUB: "fsub", FMUL: "fmul", FDIV: "fdiv"}
INT_OPS = (ADD, SUB, MUL, DIV, MOD)
FLOAT_OPS = (FADD, FSUB, FMUL, FDIV)

CALL_TIMEOUT = 8.0          # give up on one calculator call after this long
FIRST_RTO = 0.5             # first retransmission timeout of a request (doubles, jittered)
OPEN_WINDOW = 2.0           # one OPEN_SESSION attempt waits this long before a new attempt
COLLECT_AFTER_OPEN = 1.5    # how long answers to OPEN_SESSION are collected after the first
REOPEN_TIMEOUT = 10.0
REOPEN_WINDOW = 1.5
KILL_SETTLE = 0.3

CheckFail = cs.CheckFail
MAX_SILENT_CALLS = 3        # after this many calls in a row time out, skip the rest


class CallTimeout(CheckFail):
    """A call that got no ACK, REPLY or NAK at all within CALL_TIMEOUT."""


_jitter = random.Random()   # not the seeded generator: retransmission timing only


def fmt_addr(peer):
    return f"{peer[0]}:{peer[1]}"


# --- the client socket -------------------------------------------------------------------

class FarmClient(cs.Client):
    """check_serve's client, also allowed to send to the farm's multicast group (TTL 0,
    loopback interface). Everything else still goes to 127.0.0.1 only."""

    def __init__(self, ctx, label, group):
        super().__init__(ctx, label)
        self.group = group
        s = self.sock
        s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton(HOST))
        s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, 1)
        s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 0)

    def send(self, data, peer):
        if peer != self.group and peer[0] != HOST:
            raise CheckFail(f"refusing to send to {fmt_addr(peer)}: only {HOST} and the group "
                            f"{fmt_addr(self.group)} are allowed")
        self.trace.add("->", peer, data)
        try:
            self.sock.sendto(data, peer)
        except ConnectionRefusedError:   # ICMP left over from an earlier send (dead node)
            self.trace.note("sendto: connection refused (ICMP from an earlier datagram)")
            self.sock.sendto(data, peer)


class Session:
    def __init__(self, client, number, peer, queue, addr_text, first_tx):
        self.client = client
        self.number = number
        self.peer = peer
        self.queue = queue
        self.addr_text = addr_text
        self.tx = first_tx

    def next_tx(self):
        t = self.tx
        self.tx = 1 if t == 255 else t + 1
        return t


class Ctx:
    def __init__(self, rng, full_hex, first_open_tx):
        self.rng = rng
        self.full_hex = full_hex
        self.trace = cs.Trace(full_hex)   # replaced for every check
        self.clients = []
        self.open_tx = first_open_tx      # transactions of our session-0 requests

    def next_open_tx(self):
        t = self.open_tx
        self.open_tx = 1 if t == 255 else t + 1
        return t


# --- farm.json ---------------------------------------------------------------------------

def parse_ipv4_addr(text):
    """'IP:port' with a dotted IPv4 address -> (ip, port) or None."""
    if not isinstance(text, str):
        return None
    p = cs.parse_addr(text)
    if p is None:
        return None
    try:
        ip = ipaddress.IPv4Address(p[0])
    except ValueError:
        return None
    return str(ip), p[1]


def load_farm(path, wait):
    """Wait (bounded) for a complete, valid farm.json. Returns (farm, seconds waited)."""
    t0 = time.monotonic()
    deadline = t0 + wait
    last = "file does not exist"
    while True:
        try:
            with open(path, "rb") as f:
                raw = f.read()
            farm = json.loads(raw)
            if isinstance(farm, dict) and "group" in farm and farm.get("nodes"):
                return farm, time.monotonic() - t0
            last = f"incomplete content: {raw[:200]!r}"
        except FileNotFoundError:
            last = "file does not exist"
        except (OSError, ValueError) as e:
            last = f"{type(e).__name__}: {e}"
        if time.monotonic() >= deadline:
            raise CheckFail(f"no valid {path} within {wait:.0f} s ({last})")
        time.sleep(0.2)


def check_farm(farm, need_pids):
    problems = []
    group = parse_ipv4_addr(farm.get("group"))
    if group is None:
        raise CheckFail(f"group {farm.get('group')!r} is not IPv4 'IP:port'")
    if not ipaddress.IPv4Address(group[0]).is_multicast:
        raise CheckFail(f"group {farm.get('group')!r} is not a multicast address")
    nodes = farm.get("nodes")
    if not isinstance(nodes, list):
        raise CheckFail(f"nodes is not an array: {nodes!r}")
    out = []
    for i, n in enumerate(nodes):
        if not isinstance(n, dict):
            problems.append(f"nodes[{i}] is not an object: {n!r}")
            continue
        mp = parse_ipv4_addr(n.get("mp"))
        if mp is None:
            problems.append(f"nodes[{i}].mp {n.get('mp')!r} is not 'IP:port'")
        elif mp[0] != HOST:
            problems.append(f"nodes[{i}].mp {n.get('mp')!r} is not on {HOST}")
        pid = n.get("pid")
        if not (isinstance(pid, int) and not isinstance(pid, bool) and pid > 1):
            if need_pids:
                problems.append(f"nodes[{i}].pid {pid!r} is not a process id")
            pid = None
        if not isinstance(n.get("name"), str):
            problems.append(f"nodes[{i}].name {n.get('name')!r} is not text")
        out.append({"name": n.get("name"), "mp": mp, "pid": pid})
    return group, out, problems


# --- OPEN_SESSION to the group ---------------------------------------------------------

def group_open(ctx, client, group, total, window):
    """Send OPEN_SESSION {"app": "calc"} to the group until a REPLY comes (each attempt a new
    transaction on session 0, retransmitted within its window with a growing timeout), ACK
    it, and collect every answer for COLLECT_AFTER_OPEN s more.

    Returns (info, problems, notes); raises CheckFail when no REPLY came within total s."""
    payload = cbor.dumps({"app": APP})
    attempts = {}          # transaction -> datagram
    acks, naks = [], []
    retrans = 0
    t0 = time.monotonic()
    deadline = t0 + total
    first = None

    def match(ev):
        return (ev.command == CMD_OPEN_SESSION and ev.transaction in attempts
                and ev.kind in ("reply", "ack", "nak"))

    while first is None and time.monotonic() < deadline:
        tx = ctx.next_open_tx()
        dg = cs.build("request", CMD_OPEN_SESSION, 0, tx, 0, CLIENT_QUEUE, payload)
        attempts[tx] = dg
        client.send(dg, group)
        now = time.monotonic()
        end = min(deadline, now + window)
        rto = 0.4
        next_rto = now + rto
        acked = False
        while first is None:
            now = time.monotonic()
            if now >= end:
                break
            ev = client.wait(match, end if acked else min(end, next_rto))
            if ev is None:
                now = time.monotonic()
                if not acked and next_rto <= now < end:
                    rto *= 2 * _jitter.uniform(0.9, 1.1)
                    next_rto = now + rto
                    retrans += 1
                    client.trace.note(f"OPEN_SESSION t={tx} unanswered: retransmitting")
                    client.send(dg, group)   # same bytes: a retransmission keeps its stamp
                continue
            if ev.kind == "ack":
                acks.append(ev)
                if ev.transaction == tx:
                    acked = True
            elif ev.kind == "nak":
                naks.append(ev)
            else:
                first = ev
        if first is None and time.monotonic() < deadline:
            client.trace.note(f"no REPLY to OPEN_SESSION t={tx} within {window:.1f} s: "
                              f"new attempt")
    waited = time.monotonic() - t0
    if first is None:
        nak_s = "; NAKs: " + ", ".join(
            f"{cs.nak_text(e)} from {fmt_addr(e.peer)}" for e in naks) if naks else ""
        raise CheckFail(f"no REPLY to OPEN_SESSION {{\"app\": \"calc\"}} sent to the group "
                        f"{fmt_addr(group)} within {total:.0f} s ({len(attempts)} attempt(s), "
                        f"{retrans} retransmission(s), {len(acks)} separate ACK(s)){nak_s}")
    client.ack(first)

    # Everything that answers our OPEN_SESSION requests in the next 1.5 s.
    replies = [first]
    collect_end = time.monotonic() + COLLECT_AFTER_OPEN
    while True:
        ev = client.wait(match, collect_end)
        if ev is None:
            break
        if ev.kind == "reply":
            client.ack(ev)     # at once, so that a server stops retransmitting it
            replies.append(ev)
        elif ev.kind == "ack":
            acks.append(ev)
        else:
            naks.append(ev)

    problems, notes = [], []
    by_tx = {}
    for ev in replies:
        by_tx.setdefault(ev.transaction, {}).setdefault((ev.peer, ev.session), []).append(ev)
    for tx, pairs in sorted(by_tx.items()):
        if len(pairs) > 1:
            listing = "; ".join(
                f"from {fmt_addr(p)} session {s} payload {evs[0].payload.hex()}"
                for (p, s), evs in pairs.items())
            problems.append(f"{len(pairs)} different REPLYs to one group OPEN_SESSION t={tx} "
                            f"(expected exactly one): {listing}")
        for (p, s), evs in pairs.items():
            for e in evs[1:]:
                if e.payload != evs[0].payload or e.when != evs[0].when:
                    problems.append(
                        f"REPLY t={tx} from {fmt_addr(p)} session {s} came again with a "
                        f"different payload or sent time: {e.payload.hex()} at {e.when} vs "
                        f"{evs[0].payload.hex()} at {evs[0].when}")
    copies = sum(len(evs) - 1 for pairs in by_tx.values() for evs in pairs.values())
    if copies:
        notes.append(f"{copies} retransmitted REPLY copy(ies) re-ACKed")
    other = [tx for tx in by_tx if tx != first.transaction]
    if other:
        notes.append(f"REPLY(s) also to earlier attempt(s) t={sorted(other)} (ACKed, sessions "
                     f"left unused)")
    for e in naks:
        if e.transaction == first.transaction:
            problems.append(f"the answered OPEN_SESSION t={e.transaction} was also NAKed by "
                            f"{fmt_addr(e.peer)}: {cs.nak_text(e)}; NAK {e.payload.hex()}")
        else:
            notes.append(f"unanswered attempt t={e.transaction} NAKed by {fmt_addr(e.peer)}: "
                         f"{cs.nak_text(e)}")

    # The REPLY itself.
    n_before_payload = len(problems)
    if first.session == 0:
        problems.append("REPLY header session is 0")
    if first.dst != CLIENT_QUEUE:
        problems.append(f"REPLY destination queue {first.dst}, expected our source queue "
                        f"{CLIENT_QUEUE}")
    try:
        body = cbor.loads(first.payload)
    except cbor.CborError as e:
        raise CheckFail(f"REPLY payload is not CBOR ({e}): {first.payload.hex()}")
    if not isinstance(body, dict):
        raise CheckFail(f"REPLY payload is not a CBOR map: {body!r} ({first.payload.hex()})")
    va, addr, queue = body.get("va"), body.get("addr"), body.get("queue")
    if not (isinstance(va, str) and va.startswith("mp://")):
        problems.append(f"va {va!r} is not text starting with mp://")
    peer = parse_ipv4_addr(addr)
    if peer is None:
        problems.append(f"addr {addr!r} is not text 'IP:port'; using the REPLY's source "
                        f"{fmt_addr(first.peer)}")
        peer = first.peer
    elif peer != first.peer:
        problems.append(f"addr {addr!r} differs from the REPLY's UDP source "
                        f"{fmt_addr(first.peer)}")
        if peer[0] != HOST:
            problems.append(f"addr {addr!r} is not on {HOST}; using the REPLY's source")
            peer = first.peer
    if not (isinstance(queue, int) and not isinstance(queue, bool) and 0 <= queue <= 0xFFFF):
        problems.append(f"queue {queue!r} is not an unsigned 16-bit integer; using the "
                        f"REPLY's source queue {first.src}")
        queue = first.src
    elif first.src != queue:
        problems.append(f"REPLY source queue {first.src} differs from payload queue {queue}")
    if "security" not in body:
        problems.append("security key missing")
    elif body["security"] is not None:
        problems.append(f"security is {body['security']!r}, expected null (no offer was made)")
    if len(problems) > n_before_payload:
        problems.append(f"REPLY payload {first.payload.hex()}")
    if retrans:
        notes.append(f"{retrans} retransmission(s)")
    if len(attempts) > 1:
        notes.append(f"{len(attempts)} attempts")
    if acks:
        notes.append(f"{len(acks)} separate ACK(s)")
    info = {"session": first.session, "va": va, "addr": addr, "peer": peer, "queue": queue,
            "from": first.peer, "waited": waited, "event": first}
    return info, problems, notes


def after_tx(info):
    """First transaction of a new session. The OPEN_SESSION's REPLY already carries the new
    session number with the open's transaction k, so the session's own requests start at
    k + 1 (wrapping 255 -> 1) rather than reuse (session, k): a receiver that keys its
    duplicate suppression on (peer, session, transaction) alone would otherwise take the
    first request with transaction k for a copy of the open exchange."""
    k = info["event"].transaction
    return 1 if k == 255 else k + 1


# --- calculator calls ----------------------------------------------------------------------

def call(sess, command, payload):
    """One request in the session; returns (REPLY event, transaction, notes). The REPLY is
    ACKed. Raises CheckFail on NAK or when nothing answers within CALL_TIMEOUT."""
    c = sess.client
    tx = sess.next_tx()
    dg = cs.build("request", command, sess.number, tx, sess.queue, CLIENT_QUEUE, payload)

    def match(ev):
        return (ev.command == command and ev.session == sess.number and ev.transaction == tx
                and ev.kind in ("reply", "ack", "nak"))

    c.send(dg, sess.peer)
    t0 = time.monotonic()
    end = t0 + CALL_TIMEOUT
    rto = FIRST_RTO
    next_rto = t0 + rto
    retrans = 0
    acked = None
    while True:
        now = time.monotonic()
        if now >= end:
            exc = CheckFail if acked else CallTimeout   # only total silence counts to skip
            raise exc(f"no REPLY to command {command} t={tx} within {CALL_TIMEOUT:.0f} s "
                      f"({retrans} retransmission(s), "
                      f"{'separate ACK seen' if acked else 'no ACK'}); request {dg.hex()}")
        ev = c.wait(match, end if acked else min(end, next_rto))
        if ev is None:
            now = time.monotonic()
            if not acked and next_rto <= now < end:
                rto *= 2 * _jitter.uniform(0.9, 1.1)
                next_rto = now + rto
                retrans += 1
                c.trace.note(f"no ACK/REPLY for t={tx} yet: retransmitting (#{retrans})")
                c.send(dg, sess.peer)
            continue
        if ev.kind == "ack":
            acked = ev
            continue
        if ev.kind == "nak":
            raise CheckFail(f"command {command} t={tx} answered with {cs.nak_text(ev)} from "
                            f"{fmt_addr(ev.peer)} (an operation error must be a REPLY); "
                            f"request {dg.hex()}, NAK {ev.payload.hex()}")
        c.ack(ev)
        notes = []
        if retrans:
            notes.append(f"retransmitted {retrans}x")
        if acked:
            notes.append("separate ACK first")
        return ev, tx, notes


def same_float(a, b):
    return struct.pack(">d", a) == struct.pack(">d", b)


def show(v):
    return repr(v)


def outcome_str(o):
    kind, v = o
    return f"ok {show(v)}" if kind == "ok" else f"err {v}"


def judge(ev, sess, expects):
    """Check one REPLY against the acceptable outcomes. Returns (problems, detail)."""
    problems = []
    if ev.peer != sess.peer:
        problems.append(f"REPLY came from {fmt_addr(ev.peer)}, not the session's "
                        f"{fmt_addr(sess.peer)}")
    if ev.dst != CLIENT_QUEUE:
        problems.append(f"REPLY destination queue {ev.dst}, expected {CLIENT_QUEUE}")
    if ev.src != sess.queue:
        problems.append(f"REPLY source queue {ev.src}, expected the portion's {sess.queue}")
    hexp = ev.payload.hex()
    try:
        body = cbor.loads(ev.payload)
    except cbor.CborError as e:
        problems.append(f"REPLY payload is not CBOR ({e}): {hexp}")
        return problems, "undecodable reply"
    want = " or ".join(outcome_str(o) for o in expects)
    if not isinstance(body, dict) or (("ok" in body) == ("err" in body)):
        problems.append(f"REPLY payload {body!r} is neither {{\"ok\": v}} nor "
                        f"{{\"err\": {{...}}}} (want {want}): {hexp}")
        return problems, f"got {body!r}"
    extra = set(body) - {"ok", "err"}
    if extra:
        problems.append(f"REPLY map has extra key(s) {sorted(map(str, extra))}: {hexp}")
    if "ok" in body:
        got = ("ok", body["ok"])
    else:
        err = body["err"]
        if not isinstance(err, dict):
            problems.append(f"err is not a map: {err!r}: {hexp}")
            return problems, f"got err {err!r}"
        code, msg = err.get("code"), err.get("message")
        if not isinstance(code, str):
            problems.append(f"err.code {code!r} is not text: {hexp}")
        if not (isinstance(msg, str) and msg.strip()):
            problems.append(f"err.message {msg!r} is not a human-readable text: {hexp}")
        got = ("err", code)
    for kind, v in expects:
        if kind != got[0]:
            continue
        if kind == "err" and got[1] == v:
            break
        if kind == "ok":
            g = got[1]
            if isinstance(v, float):
                if isinstance(g, float) and same_float(g, v):
                    break
            elif isinstance(g, int) and not isinstance(g, bool) and g == v:
                break
    else:
        problems.append(f"got {outcome_str(got)} ({type(got[1]).__name__}), want {want}; "
                        f"payload {hexp}")
    detail = outcome_str(got)
    if got[0] == "err" and isinstance(body["err"], dict):
        detail += f" ({body['err'].get('message')!r})"
    return problems, detail


# --- expected results --------------------------------------------------------------------

def trunc_div(a, b):
    q = abs(a) // abs(b)
    return -q if (a < 0) != (b < 0) else q


def int_expect(op, a, b):
    if op in (DIV, MOD) and b == 0:
        return [("err", "division_by_zero")]
    if op == ADD:
        r = a + b
    elif op == SUB:
        r = a - b
    elif op == MUL:
        r = a * b
    elif op == DIV:
        r = trunc_div(a, b)
    else:
        q = trunc_div(a, b)
        r = a - b * q
        if not I64_MIN <= q <= I64_MAX:
            # i64::MIN % -1: the remainder 0 is representable, but the quotient the
            # hardware computes on the way is not. Both answers are defensible.
            return [("ok", r), ("err", "overflow")]
    if not I64_MIN <= r <= I64_MAX:
        return [("err", "overflow")]
    return [("ok", r)]


def float_expect(op, x, y):
    if op == FDIV and y == 0.0:
        return [("err", "division_by_zero")]
    r = {FADD: lambda: x + y, FSUB: lambda: x - y, FMUL: lambda: x * y,
         FDIV: lambda: x / y}[op]()
    if not math.isfinite(r):
        return [("ok", r), ("err", "overflow")]
    return [("ok", r)]


def op_case(op, a, b, label=None):
    exp = int_expect(op, a, b) if op in INT_OPS else float_expect(op, a, b)
    return (op, cbor.dumps([a, b]), f"{OP_NAMES[op]} [{show(a)}, {show(b)}]"
            + (f" ({label})" if label else ""), exp)


def raw_case(op, obj, label, expects):
    return (op, cbor.dumps(obj), f"{OP_NAMES[op]} {label}", expects)


BAD = [("err", "bad_operands")]


def fixed_cases():
    c = [
        op_case(ADD, 2, 3), op_case(ADD, -7, 2),
        op_case(ADD, I64_MAX, 1, "overflow"), op_case(ADD, I64_MIN, -1, "overflow"),
        op_case(SUB, 2, 3), op_case(SUB, I64_MIN, 1, "overflow"),
        op_case(MUL, 6, 7), op_case(MUL, -3, 4),
        op_case(MUL, I64_MAX, 2, "overflow"), op_case(MUL, 1 << 32, 1 << 31, "2^63 overflows"),
        op_case(MUL, -(1 << 32), 1 << 31, "exactly i64 min"),
        op_case(DIV, 7, 2), op_case(DIV, -7, 2, "truncates"), op_case(DIV, 7, -2),
        op_case(DIV, 1, 0, "by zero"), op_case(DIV, I64_MIN, -1, "overflow"),
        op_case(MOD, 7, 2), op_case(MOD, -7, 2, "sign of the dividend"), op_case(MOD, 7, -2),
        op_case(MOD, 1, 0, "by zero"), op_case(MOD, I64_MIN, -1, "0 or overflow"),
        op_case(FADD, 1.5, 2.25), op_case(FSUB, 1.0, 2.5), op_case(FMUL, 1.5, -4.0),
        op_case(FDIV, 7.0, 2.0), op_case(FDIV, 1.0, 0.0, "by zero"),
        op_case(FDIV, 0.0, 0.0, "by zero"), op_case(FDIV, -1.0, -0.0, "by negative zero"),
        # bad operands
        raw_case(ADD, [1], "[1]", BAD),
        raw_case(ADD, ["a", 2], "[\"a\", 2]", BAD),
        raw_case(ADD, [1.5, 2], "[1.5, 2] (float for an integer op)", BAD),
        raw_case(MUL, 5, "5 (not an array)", BAD),
        raw_case(SUB, {"a": 1, "b": 2}, "{\"a\": 1, \"b\": 2} (a map)", BAD),
        raw_case(ADD, [1, 2, 3], "[1, 2, 3]", BAD),
        raw_case(DIV, [], "[]", BAD),
        raw_case(ADD, [True, 1], "[true, 1]", BAD),
        raw_case(FADD, ["x", 1.0], "[\"x\", 1.0]", BAD),
        raw_case(FDIV, [1.0], "[1.0]", BAD),
        raw_case(FMUL, None, "null (not an array)", BAD),
        # Defensible either way: note which.
        raw_case(FADD, [1, 2], "[1, 2] (integers for a float op: 3.0 or bad_operands)",
                 [("ok", 3.0)] + BAD),
        raw_case(ADD, [1 << 63, 0], "[2^63, 0] (not a signed 64-bit integer)",
                 BAD + [("err", "overflow")]),
    ]
    return c


def random_int(rng):
    k = rng.randrange(3)
    if k == 0:
        return rng.randint(-1000, 1000)
    if k == 1:
        return rng.randint(-(1 << 32), 1 << 32)
    return rng.randint(I64_MIN, I64_MAX)


def random_cases(rng):
    out = []
    for op in INT_OPS:
        for _ in range(3):
            a = random_int(rng)
            b = random_int(rng)
            while op in (DIV, MOD) and b == 0:
                b = random_int(rng)
            out.append(op_case(op, a, b, "random"))
    for op in FLOAT_OPS:
        for _ in range(2):
            x = rng.uniform(-1e6, 1e6)
            y = rng.uniform(-1e6, 1e6)
            out.append(op_case(op, x, y, "random"))
    return out


# --- killing the session's node --------------------------------------------------------------

def udp_socket_inodes(port):
    """Inodes of the UDP sockets bound to a local port (from /proc/net/udp)."""
    inodes = set()
    try:
        with open("/proc/net/udp") as f:
            lines = f.read().splitlines()[1:]
    except OSError:
        return inodes
    for line in lines:
        parts = line.split()
        if len(parts) < 10:
            continue
        try:
            if int(parts[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(parts[9])
        except ValueError:
            continue
    return inodes


def pid_owns_port(pid, port):
    """True/False when /proc can tell, None when it cannot."""
    inodes = udp_socket_inodes(port)
    if not inodes:
        return None
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return None
    for fd in fds:
        try:
            link = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if link.startswith("socket:[") and link[8:-1] in inodes:
            return True
    return False


def alive(pid):
    """Running (not gone, not a zombie)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
        state = stat.rsplit(")", 1)[1].split()[0]
        return state not in ("Z", "X")
    except (OSError, IndexError):
        try:
            os.kill(pid, 0)
            return True
        except ProcessLookupError:
            return False
        except PermissionError:
            return True


def do_kill(nodes, sess):
    """SIGKILL the node hosting the session. Returns (problems, detail, killed node)."""
    problems = []
    node = next((n for n in nodes if n["mp"] == sess.peer), None)
    how = "its mp address is the session's addr"
    if node is None:
        owners = [n for n in nodes if n["pid"] and pid_owns_port(n["pid"], sess.peer[1])]
        if len(owners) == 1:
            node = owners[0]
            how = (f"no node's mp is {sess.addr_text}; node {node['name']} owns that UDP port "
                   f"(/proc)")
        else:
            raise CheckFail(f"no node in farm.json has mp {sess.addr_text} (nodes: "
                            + ", ".join(f"{n['name']}={fmt_addr(n['mp']) if n['mp'] else '?'}"
                                        for n in nodes)
                            + f"), and /proc names {len(owners)} owner(s) of that port")
    pid = node["pid"]
    if pid is None or pid <= 1 or pid in (os.getpid(), os.getppid()):
        raise CheckFail(f"node {node['name']} has no usable pid ({pid!r})")
    if not alive(pid):
        raise CheckFail(f"node {node['name']} pid {pid} is not running before the kill")
    owns = pid_owns_port(pid, sess.peer[1])
    if owns is False:
        # Safety: never SIGKILL a pid that /proc says is not the process behind the address
        # (a stale farm.json, a recycled pid).
        raise CheckFail(f"pid {pid} of node {node['name']} does not own UDP port "
                        f"{sess.peer[1]} (per /proc): not killing it")
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        raise CheckFail(f"node {node['name']} pid {pid} vanished before SIGKILL")
    except PermissionError as e:
        raise CheckFail(f"cannot kill node {node['name']} pid {pid}: {e}")
    end = time.monotonic() + 3.0
    while alive(pid) and time.monotonic() < end:
        time.sleep(0.05)
    if alive(pid):
        problems.append(f"pid {pid} still running 3 s after SIGKILL")
    return problems, (f"SIGKILL node {node['name']} pid {pid} ({how}"
                      + (", socket owner confirmed" if owns else "") + ")"), node


# --- main --------------------------------------------------------------------------------

def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--farm-json", required=True, help="path of the farm's farm.json")
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--no-kill", action="store_true",
                    help="do not kill the session's node and re-open")
    ap.add_argument("--wait", type=float, default=20.0,
                    help="seconds to wait for farm.json (default 20)")
    ap.add_argument("--open-timeout", type=float, default=10.0,
                    help="seconds to retry the first OPEN_SESSION (default 10)")
    ap.add_argument("--first-transaction", type=int, default=250,
                    help="first transaction of the calc session (default 250, so that the "
                         "calls cross the 255 -> 1 wrap); the first OPEN_SESSION uses the "
                         "one before it, and every retried open shifts it by one")
    ap.add_argument("--full-hex", action="store_true", help="print whole datagrams on failure")
    args = ap.parse_args()
    if not 1 <= args.first_transaction <= 255:
        ap.error("--first-transaction must be 1..255")
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(1 << 32)
    rng = random.Random(seed)
    print(f"seed {seed}", flush=True)
    # Plan every case up front so that --seed replays the same traffic.
    cases = fixed_cases() + random_cases(rng)

    # The session's transactions continue after the OPEN_SESSION that opened it (see
    # after_tx), so the first open uses first_transaction - 1.
    ctx = Ctx(rng, args.full_hex, 255 if args.first_transaction == 1
              else args.first_transaction - 1)
    passed = failed = 0
    timeouts = [0]    # calls in a row that timed out

    def run(name, desc, fn):
        """Run one check; returns its result, or None when it could not complete."""
        nonlocal passed, failed
        ctx.trace = trace = cs.Trace(args.full_hex)
        result = None
        try:
            problems, detail, result = fn()
            ok = True
            timeouts[0] = 0
        except CheckFail as e:
            ok, problems, detail = False, [], str(e)
            timeouts[0] = timeouts[0] + 1 if isinstance(e, CallTimeout) else 0
        except Exception as e:  # a bug here, or something unexpected from the farm
            ok, problems, detail = False, [], f"{type(e).__name__}: {e}"
            traceback.print_exc()
        problems = list(problems) + [f"farm traffic: {p}" for p in trace.problems]
        if problems:
            ok = False
            shown = problems[:6]
            if len(problems) > len(shown):
                shown.append(f"... {len(problems) - len(shown)} more problem(s)")
            detail = f"{detail} -- " + "; ".join(shown)
        if ok:
            passed += 1
        else:
            failed += 1
        print(f"{'PASS' if ok else 'FAIL'} {name}: {desc}: {detail}", flush=True)
        if not ok and trace.lines:
            print(trace.dump(), flush=True)
        # A check that completed with problems still hands on what it got (a session with
        # a wrong payload field can still be used for the calls that follow).
        return result

    def fail(name, desc, why):
        nonlocal failed
        failed += 1
        print(f"FAIL {name}: {desc}: {why}", flush=True)

    def finish():
        for c in ctx.clients:
            c.close()
        print(f"calc farm interop: {passed} passed, {failed} failed (seed {seed})", flush=True)
        return 1 if failed else 0

    # farm.json
    def farm_check():
        farm, waited = load_farm(args.farm_json, args.wait)
        group, nodes, problems = check_farm(farm, need_pids=not args.no_kill)
        return problems, (f"group {fmt_addr(group)}, {len(nodes)} node(s) "
                          + ", ".join(f"{n['name']}={fmt_addr(n['mp']) if n['mp'] else '?'}"
                                      f"/pid {n['pid']}" for n in nodes)
                          + f" (waited {waited:.1f} s)"), (group, nodes)

    farm = run("farm", f"farm.json ({args.farm_json})", farm_check)
    if farm is None:
        return finish()
    group, nodes = farm
    client = FarmClient(ctx, "main", group)

    # open
    def open_check(total, window):
        def fn():
            info, problems, notes = group_open(ctx, client, group, total, window)
            detail = (f"session {info['session']} va={info['va']!r} addr={info['addr']!r} "
                      f"queue={info['queue']} from {fmt_addr(info['from'])} after "
                      f"{info['waited']:.2f} s" + ("; " + "; ".join(notes) if notes else ""))
            return problems, detail, info
        return fn

    info = run("open", "OPEN_SESSION {\"app\": \"calc\"} to the group -> exactly one REPLY",
               open_check(args.open_timeout, OPEN_WINDOW))
    if info is None:
        fail("calc", "calculator calls", "no session (open failed)")
        return finish()
    sess = Session(client, info["session"], info["peer"], info["queue"],
                   info["addr"] if isinstance(info["addr"], str) else fmt_addr(info["peer"]),
                   after_tx(info))

    def calc_check(s, op, payload, expects):
        def fn():
            ev, tx, notes = call(s, op, payload)
            problems, detail = judge(ev, s, expects)
            return problems, f"{detail} (t={tx}" + "".join(f", {n}" for n in notes) + ")", ev
        return fn

    for i, (op, payload, label, expects) in enumerate(cases, 1):
        if timeouts[0] >= MAX_SILENT_CALLS:
            fail(f"c-{i:02d}", f"{op} {label}", f"not sent: the last {timeouts[0]} calls got "
                                                f"no answer at all")
            continue
        run(f"c-{i:02d}", f"{op} {label}", calc_check(sess, op, payload, expects))

    if args.no_kill:
        return finish()

    # kill the session's node, re-open
    killed = run("kill", f"kill the node serving the session ({sess.addr_text})",
                 lambda: do_kill(nodes, sess))
    if killed is None:
        return finish()
    time.sleep(KILL_SETTLE)

    def reopen():
        problems, detail, info2 = open_check(REOPEN_TIMEOUT, REOPEN_WINDOW)()
        if info2["peer"] == sess.peer or info2["from"] == sess.peer:
            problems.append(f"the REPLY names / comes from the killed node's address "
                            f"{sess.addr_text}")
        node = next((n for n in nodes if n["mp"] == info2["peer"]), None)
        if node is not None:
            detail += f" (node {node['name']})"
            if node is killed:
                problems.append(f"addr is the killed node {node['name']}")
        return problems, detail, info2

    info2 = run("reopen", "OPEN_SESSION to the group after the kill -> one REPLY from "
                          "another node", reopen)
    if info2 is None:
        fail("after", "calculator calls after the kill", "no session (reopen failed)")
        return finish()
    sess2 = Session(client, info2["session"], info2["peer"], info2["queue"],
                    info2["addr"] if isinstance(info2["addr"], str) else fmt_addr(info2["peer"]),
                    after_tx(info2))
    timeouts[0] = 0
    for i, (op, payload, label, expects) in enumerate(
            [op_case(MUL, 6, 7), op_case(FADD, 1.5, 2.25)], 1):
        run(f"after-{i:02d}", f"{op} {label}", calc_check(sess2, op, payload, expects))
    return finish()


if __name__ == "__main__":
    sys.exit(main())
