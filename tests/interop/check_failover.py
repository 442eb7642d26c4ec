#!/usr/bin/env python3
"""Interop check of a dabs farm's drain / authenticated FAILOVER, with an independent client.

    dabs farm up --nodes 3 --dir DIR --secret HEX &
    python3 tests/interop/check_failover.py --farm-json DIR/farm.json --secret HEX \
        --dabs target/debug/dabs [--seed N]

Stdlib only (hmac, hashlib, socket, subprocess, ...). Written from
/work/shared/spec/interop.md ("The failover message (system command 8, FAILOVER)") and
/work/shared/spec/mp-wire.md alone; the MP client helpers come from check_serve.py and
check_calc_farm.py next to this file (datagrams, reassembly, ACKing, group opens, calls),
the CBOR codec from cbor.py.

    farm        farm.json is valid: {"group": multicast "IP:port", "nodes": [{"mp", ...}]}
    open        OPEN_SESSION {"app": "calc"} to the group -> exactly one REPLY
    mul         258 [6, 7] -> {"ok": 42} in that session
    failover    `DABS drain <the session node's mp> --secret HEX` is started; within 5 s a
                FAILOVER request arrives: command 8, our session, from the session's addr,
                destination queue = our source queue, payload CBOR {"body": bytes,
                "mac": 32 bytes}. We REPLY to it (empty payload: the REPLY is its ACK).
    drain       that drain command exits 0 (bounded)
    mac         HMAC-SHA256(secret, "dabs-failover-v1" || server "IP:port" || 0x00 ||
                client "IP:port" || 0x00 || body), server = the datagram's UDP source,
                client = our socket's own 127.0.0.1:port, compared with compare_digest
    body        body is CBOR {"alternates": non-empty [{"addr": "IP:port", "va": text}],
                "nonce": unsigned, "issued": unsigned ms within 30 s of our clock};
                no alternate is the drained node
    replied     our REPLY ends the FAILOVER: any retransmitted copy is REPLYed again and
                copies stop; the server's ACK of our REPLY is reported (see REPLY_ACK_STRICT)
    neg-*       offline: the same MAC computation does NOT match when one byte of the body
                is flipped, the client or server address is wrong, or the secret is wrong
                (so the mac check above can fail)
    alt-open    OPEN_SESSION {"app": "calc", "va": alternates[0].va} sent directly to
                alternates[0].addr -> exactly one REPLY, not from the drained node
    alt-NN      272 [1.5, 2.25] -> 3.75 and 256 [2, 2] -> 4 in that session
    group-N     5 OPEN_SESSIONs to the group from fresh sockets: each answered (exactly one
                REPLY) by a node other than the drained one
    wrong-*     `DABS drain <mp> --secret <WRONG HEX>` exits non-zero, for the drained node
                and for the node now serving us; afterwards no FAILOVER reaches the
                alternate session and it still computes
    cleanup     (not counted) `DABS drain <drained mp> --undo --secret HEX`

One line per check (PASS/FAIL and details; a failing check prints the datagrams it sent and
received), then "failover interop: N passed, M failed (seed S)"; exit status 1 on any
failure. Traffic goes only to 127.0.0.1 and to the group with multicast TTL 0. Every wait is
bounded. The seed picks the transactions, the flipped byte and the wrong secret.
"""

import argparse
import hashlib
import hmac
import os
import random
import subprocess
import sys
import threading
import time
import traceback

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import cbor  # noqa: E402
import check_calc_farm as ccf  # noqa: E402  (group opens, calls, farm.json)
import check_serve as cs  # noqa: E402  (datagrams, Client, Trace)

HOST = "127.0.0.1"
CMD_OPEN_SESSION = 1
CMD_FAILOVER = 8
CLIENT_QUEUE = cs.CLIENT_QUEUE
MAC_LABEL = b"dabs-failover-v1"
MAC_LEN = 32

FAILOVER_WAIT = 5.0          # from starting the drain to the FAILOVER's arrival
DRAIN_TIMEOUT = 20.0         # the drain command itself
ISSUED_WINDOW_MS = 30_000    # "issued" vs our clock
AFTER_REPLY_WATCH = 2.0      # how long we watch for copies / the ACK after our REPLY
REPLY_RTO = 0.5              # our REPLY is retransmitted while un-ACKed, within the watch
QUIET_WATCH = 2.0            # after a wrong-secret drain: no FAILOVER in the alt session
OPEN_TIMEOUT = 10.0
OPEN_WINDOW = 2.0
GROUP_OPENS = 5

# The spec says every REPLY is acknowledged by its receiver; with False a missing ACK of our
# REPLY to the FAILOVER is reported in the line but does not fail the check.
REPLY_ACK_STRICT = True

CheckFail = cs.CheckFail
fmt_addr = ccf.fmt_addr


# --- the MAC, exactly as interop.md writes it ------------------------------------------------

def failover_mac(secret: bytes, server: str, client: str, body: bytes) -> bytes:
    msg = (MAC_LABEL + server.encode("ascii") + b"\x00" + client.encode("ascii") + b"\x00"
           + body)
    return hmac.new(secret, msg, hashlib.sha256).digest()


def mac_ok(secret, server, client, body, mac):
    return hmac.compare_digest(failover_mac(secret, server, client, body), mac)


# --- subprocess: dabs drain -----------------------------------------------------------------

class Drain:
    """`DABS drain NODE --secret HEX [--undo]` in a thread, so that we can listen meanwhile."""

    def __init__(self, dabs, node, secret_hex, undo=False):
        self.argv = [dabs, "drain", node, "--secret", secret_hex] + (["--undo"] if undo else [])
        self.result = None      # (returncode or None on timeout, stdout, stderr, seconds)
        self.t0 = time.monotonic()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        try:
            p = subprocess.run(self.argv, stdin=subprocess.DEVNULL, capture_output=True,
                               timeout=DRAIN_TIMEOUT)
            self.result = (p.returncode, p.stdout.decode("utf-8", "replace"),
                           p.stderr.decode("utf-8", "replace"), time.monotonic() - self.t0)
        except subprocess.TimeoutExpired as e:
            self.result = (None, (e.stdout or b"").decode("utf-8", "replace"),
                           (e.stderr or b"").decode("utf-8", "replace"),
                           time.monotonic() - self.t0)
        except OSError as e:
            self.result = (None, "", f"cannot run {self.argv[0]}: {e}",
                           time.monotonic() - self.t0)

    def join(self):
        self.thread.join(DRAIN_TIMEOUT + 5.0)
        if self.result is None:
            return (None, "", "drain thread did not finish", time.monotonic() - self.t0)
        return self.result

    def cmdline(self):
        return " ".join(self.argv[1:])


def short(text, n=300):
    text = " ".join(text.split())
    return text if len(text) <= n else text[:n] + "..."


# --- opening a session at one address ----------------------------------------------------------

def open_at(ctx, client, dest, ask, total, window):
    """OPEN_SESSION (session 0, destination queue 0) with payload `ask` sent to `dest` until
    a REPLY comes, ACK it, collect further answers for ccf.COLLECT_AFTER_OPEN s. Returns
    (info like ccf.group_open's, problems, notes)."""
    payload = cbor.dumps(ask)
    attempts = {}
    naks, acks = [], []
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
        client.send(dg, dest)
        end = min(deadline, time.monotonic() + window)
        rto = 0.4
        next_rto = time.monotonic() + rto
        acked = False
        while first is None and time.monotonic() < end:
            ev = client.wait(match, end if acked else min(end, next_rto))
            if ev is None:
                now = time.monotonic()
                if not acked and next_rto <= now < end:
                    rto *= 2
                    next_rto = now + rto
                    client.trace.note(f"OPEN_SESSION t={tx} unanswered: retransmitting")
                    client.send(dg, dest)
                continue
            if ev.kind == "ack":
                acks.append(ev)
                acked = acked or ev.transaction == tx
            elif ev.kind == "nak":
                naks.append(ev)
                if ev.peer == dest and ev.transaction == tx:
                    raise CheckFail(f"OPEN_SESSION {ask!r} to {fmt_addr(dest)} NAKed: "
                                    f"{cs.nak_text(ev)}")
            else:
                first = ev
    waited = time.monotonic() - t0
    if first is None:
        raise CheckFail(f"no REPLY to OPEN_SESSION {ask!r} sent to {fmt_addr(dest)} within "
                        f"{total:.0f} s ({len(attempts)} attempt(s))"
                        + ("; NAKs: " + ", ".join(cs.nak_text(e) for e in naks) if naks else ""))
    client.ack(first)
    replies = [first]
    collect_end = time.monotonic() + ccf.COLLECT_AFTER_OPEN
    while True:
        ev = client.wait(match, collect_end)
        if ev is None:
            break
        if ev.kind == "reply":
            client.ack(ev)
            replies.append(ev)
        elif ev.kind == "nak":
            naks.append(ev)
    problems, notes = [], []
    distinct = {}
    for ev in replies:
        distinct.setdefault((ev.transaction, ev.peer, ev.session), ev)
    per_tx = {}
    for (tx, peer, s) in distinct:
        per_tx.setdefault(tx, []).append((peer, s))
    for tx, pairs in per_tx.items():
        if len(pairs) > 1:
            problems.append(f"{len(pairs)} different REPLYs to OPEN_SESSION t={tx}: "
                            + ", ".join(f"{fmt_addr(p)} session {s}" for p, s in pairs))
    if len(replies) > len(distinct):
        notes.append(f"{len(replies) - len(distinct)} retransmitted REPLY copy(ies) re-ACKed")
    for e in naks:
        if e.transaction == first.transaction:
            problems.append(f"the answered OPEN_SESSION was also NAKed by {fmt_addr(e.peer)}: "
                            f"{cs.nak_text(e)}")
    if first.session == 0:
        problems.append("REPLY header session is 0")
    if first.dst != CLIENT_QUEUE:
        problems.append(f"REPLY destination queue {first.dst}, expected {CLIENT_QUEUE}")
    try:
        body = cbor.loads(first.payload)
    except cbor.CborError as e:
        raise CheckFail(f"REPLY payload is not CBOR ({e}): {first.payload.hex()}")
    if not isinstance(body, dict):
        raise CheckFail(f"REPLY payload is not a map: {body!r}")
    va, addr, queue = body.get("va"), body.get("addr"), body.get("queue")
    if not (isinstance(va, str) and va.startswith("mp://")):
        problems.append(f"va {va!r} is not text starting with mp://")
    peer = ccf.parse_ipv4_addr(addr)
    if peer is None:
        problems.append(f"addr {addr!r} is not 'IP:port'; using the REPLY's source")
        peer = first.peer
    elif peer != first.peer:
        problems.append(f"addr {addr!r} differs from the REPLY's UDP source "
                        f"{fmt_addr(first.peer)}")
        if peer[0] != HOST:
            peer = first.peer
    if not (isinstance(queue, int) and not isinstance(queue, bool) and 0 <= queue <= 0xFFFF):
        problems.append(f"queue {queue!r} is not an unsigned 16-bit integer")
        queue = first.src
    elif queue != first.src:
        problems.append(f"REPLY source queue {first.src} differs from payload queue {queue}")
    if "security" not in body:
        problems.append("security key missing")
    elif body["security"] is not None:
        problems.append(f"security is {body['security']!r}, expected null")
    if acks:
        notes.append(f"{len(acks)} separate ACK(s)")
    if len(attempts) > 1:
        notes.append(f"{len(attempts)} attempts")
    info = {"session": first.session, "va": va, "addr": addr, "peer": peer, "queue": queue,
            "from": first.peer, "waited": waited, "event": first}
    return info, problems, notes


def new_session(client, info):
    return ccf.Session(client, info["session"], info["peer"], info["queue"],
                       info["addr"] if isinstance(info["addr"], str) else fmt_addr(info["peer"]),
                       ccf.after_tx(info))


# --- the FAILOVER ------------------------------------------------------------------------------

def reply_to(client, ev):
    """REPLY with an empty payload to a request from the server (it is also the ACK)."""
    client.send(cs.build("reply", ev.command, ev.session, ev.transaction, ev.src, CLIENT_QUEUE),
                ev.peer)


def is_failover(ev):
    return ev.kind == "request" and ev.command == CMD_FAILOVER


def receive_failover(ctx, client, sess, drain, secret_hex):
    """Wait (bounded) for the FAILOVER after starting the drain, check its header and outer
    payload, REPLY to it. Returns (problems, detail, result)."""
    end = drain.t0 + FAILOVER_WAIT
    others = []

    ev = client.wait(is_failover, end)
    if ev is None:
        r = drain.result
        how = ("drain still running" if r is None else
               f"drain exited {r[0]} after {r[3]:.1f} s: {short(r[1] + ' ' + r[2])}")
        raise CheckFail(f"no FAILOVER (command 8 request) within {FAILOVER_WAIT:.0f} s of "
                        f"starting `dabs {drain.cmdline().replace(secret_hex, 'HEX')}` ({how})")
    waited = time.monotonic() - drain.t0
    reply_to(client, ev)      # at once: the REPLY is also its ACK
    problems = []
    if ev.peer != sess.peer:
        problems.append(f"FAILOVER came from {fmt_addr(ev.peer)}, not the session's addr "
                        f"{sess.addr_text}")
    if ev.session != sess.number:
        problems.append(f"FAILOVER session {ev.session}, ours is {sess.number}")
    if ev.dst != CLIENT_QUEUE:
        problems.append(f"FAILOVER destination queue {ev.dst}, expected our source queue "
                        f"{CLIENT_QUEUE}")
    if ev.src != sess.queue:
        problems.append(f"FAILOVER source queue {ev.src}, the portion's queue is {sess.queue}")
    if ev.transaction == 0:
        problems.append("FAILOVER transaction is 0 (not used inside a session)")
    try:
        outer = cbor.loads(ev.payload)
    except cbor.CborError as e:
        raise CheckFail(f"FAILOVER payload is not CBOR ({e}): {ev.payload.hex()}")
    if not isinstance(outer, dict):
        raise CheckFail(f"FAILOVER payload is not a CBOR map: {outer!r}")
    body, mac = outer.get("body"), outer.get("mac")
    if not isinstance(body, bytes):
        raise CheckFail(f"FAILOVER \"body\" is not a byte string: {body!r}")
    if not (isinstance(mac, bytes) and len(mac) == MAC_LEN):
        raise CheckFail(f"FAILOVER \"mac\" is not a {MAC_LEN}-byte string: {mac!r}")
    extra = sorted(map(str, set(outer) - {"body", "mac"}))
    detail = (f"from {fmt_addr(ev.peer)} session {ev.session} t={ev.transaction} "
              f"dst={ev.dst} src={ev.src} after {waited:.2f} s, body {len(body)} B, "
              f"mac {mac.hex()[:16]}...; REPLYed")
    if extra:
        detail += f" (extra payload keys {extra})"
    return problems, detail, {"ev": ev, "body": body, "mac": mac, "others": others}


def watch_after_reply(client, fo):
    """Watch AFTER_REPLY_WATCH s after our REPLY: REPLY again to every copy of the FAILOVER,
    retransmit our REPLY while the server has not ACKed it, note other FAILOVERs."""
    ev = fo["ev"]
    key = (ev.peer, ev.session, ev.transaction)
    copies, resent, acked, other = 0, 0, None, []
    t0 = time.monotonic()
    end = t0 + AFTER_REPLY_WATCH
    last_copy = None
    rto = REPLY_RTO
    next_rto = t0 + rto

    def match(e):
        return e.command == CMD_FAILOVER

    while True:
        now = time.monotonic()
        if now >= end:
            break
        e = client.wait(match, end if acked else min(end, next_rto))
        if e is None:
            if acked is None and time.monotonic() >= next_rto:
                rto *= 2
                next_rto = time.monotonic() + rto
                resent += 1
                reply_to(client, ev)
            continue
        if (e.peer, e.session, e.transaction) == key:
            if e.kind == "ack":
                acked = acked or time.monotonic() - t0
            elif e.kind == "request":
                copies += 1
                last_copy = time.monotonic() - t0
                if e.payload != ev.payload or e.when != ev.when:
                    client.problem("a retransmitted FAILOVER differs in payload or sent time")
                reply_to(client, e)
            continue
        if e.kind == "request":
            other.append(e)
            reply_to(client, e)
        elif e.kind in ("reply", "nak"):
            client.problem(f"unexpected {e.kind} for command 8 from {fmt_addr(e.peer)}")
    return {"copies": copies, "last_copy": last_copy, "acked": acked, "resent": resent,
            "other": other}


def parse_body(body, drained, now_ms):
    """Check the decoded body; returns (problems, detail, parsed body)."""
    try:
        b = cbor.loads(body)
    except cbor.CborError as e:
        raise CheckFail(f"body is not CBOR ({e}): {body.hex()}")
    if not isinstance(b, dict):
        raise CheckFail(f"body is not a CBOR map: {b!r}")
    problems = []
    alts = b.get("alternates")
    if not isinstance(alts, list):
        raise CheckFail(f"\"alternates\" is not an array: {alts!r}")
    if not alts:
        raise CheckFail("\"alternates\" is empty")
    good = []
    for i, a in enumerate(alts):
        if not isinstance(a, dict):
            problems.append(f"alternates[{i}] is not a map: {a!r}")
            continue
        addr, va = a.get("addr"), a.get("va")
        peer = ccf.parse_ipv4_addr(addr)
        if peer is None:
            problems.append(f"alternates[{i}].addr {addr!r} is not text 'IP:port'")
        elif peer == drained:
            problems.append(f"alternates[{i}].addr {addr!r} is the drained node itself")
        elif peer[0] != HOST:
            problems.append(f"alternates[{i}].addr {addr!r} is not on {HOST}")
        if not isinstance(va, str) or not va:
            problems.append(f"alternates[{i}].va {va!r} is not text")
        elif not va.startswith("mp://"):
            problems.append(f"alternates[{i}].va {va!r} does not start with mp://")
        if peer is not None and isinstance(va, str):
            good.append({"addr": addr, "peer": peer, "va": va})
    nonce, issued = b.get("nonce"), b.get("issued")
    if not (isinstance(nonce, int) and not isinstance(nonce, bool) and 0 <= nonce < 1 << 64):
        problems.append(f"nonce {nonce!r} is not an unsigned integer")
    skew = None
    if not (isinstance(issued, int) and not isinstance(issued, bool) and 0 <= issued < 1 << 64):
        problems.append(f"issued {issued!r} is not an unsigned integer")
    else:
        skew = issued - now_ms
        if abs(skew) > ISSUED_WINDOW_MS:
            problems.append(f"issued {issued} is {skew / 1000:+.1f} s from our clock "
                            f"({now_ms}), outside +-{ISSUED_WINDOW_MS // 1000} s")
    extra = sorted(map(str, set(b) - {"alternates", "nonce", "issued"}))
    detail = (f"{len(alts)} alternate(s) "
              + ", ".join(f"{a.get('addr')!r}/{a.get('va')!r}" if isinstance(a, dict) else "?"
                          for a in alts)
              + f"; nonce {nonce!r}; issued {issued!r}"
              + (f" ({skew:+d} ms vs our clock)" if skew is not None else "")
              + (f"; extra keys {extra}" if extra else ""))
    if problems:
        problems.append(f"body {body.hex()}")
    return problems, detail, {"alternates": good, "nonce": nonce, "issued": issued}


# --- main ------------------------------------------------------------------------------------

def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--farm-json", required=True)
    ap.add_argument("--secret", required=True, help="the farm's shared secret, hex")
    ap.add_argument("--dabs", required=True, help="path of the dabs binary")
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--wait", type=float, default=20.0, help="seconds to wait for farm.json")
    ap.add_argument("--full-hex", action="store_true")
    args = ap.parse_args()
    try:
        secret = bytes.fromhex(args.secret)
    except ValueError:
        ap.error("--secret must be hex")
    if not secret:
        ap.error("--secret is empty")
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(1 << 32)
    rng = random.Random(seed)
    print(f"seed {seed}", flush=True)
    first_tx = rng.randint(1, 255)
    flip_seed = rng.randrange(1 << 30)
    wrong = bytearray(secret)
    wrong[rng.randrange(len(wrong))] ^= 1 << rng.randrange(8)
    wrong_hex = bytes(wrong).hex()

    ctx = ccf.Ctx(rng, args.full_hex, first_tx)
    passed = failed = 0

    def run(name, desc, fn):
        nonlocal passed, failed
        ctx.trace = trace = cs.Trace(args.full_hex)
        result = None
        try:
            problems, detail, result = fn()
        except CheckFail as e:
            problems, detail = [], str(e)
            ok = False
        except Exception as e:
            problems, detail = [], f"{type(e).__name__}: {e}"
            ok = False
            traceback.print_exc()
        else:
            ok = True
        problems = list(problems) + [f"farm traffic: {p}" for p in trace.problems]
        if problems:
            ok = False
            detail = f"{detail} -- " + "; ".join(problems[:8])
        if ok:
            passed += 1
        else:
            failed += 1
        print(f"{'PASS' if ok else 'FAIL'} {name}: {desc}: {detail}", flush=True)
        if not ok and trace.lines:
            print(trace.dump(), flush=True)
        return result

    def fail(name, desc, why):
        nonlocal failed
        failed += 1
        print(f"FAIL {name}: {desc}: {why}", flush=True)

    def finish():
        for c in ctx.clients:
            try:
                c.close()
            except OSError:
                pass
        print(f"failover interop: {passed} passed, {failed} failed (seed {seed})", flush=True)
        return 1 if failed else 0

    # --- farm, open, mul ---
    def farm_check():
        farm, waited = ccf.load_farm(args.farm_json, args.wait)
        group, nodes, problems = ccf.check_farm(farm, need_pids=False)
        return problems, (f"group {fmt_addr(group)}, nodes "
                          + ", ".join(f"{n['name']}={fmt_addr(n['mp']) if n['mp'] else '?'}"
                                      for n in nodes)
                          + f" (waited {waited:.1f} s)"), (group, nodes)

    farm = run("farm", f"farm.json ({args.farm_json})", farm_check)
    if farm is None:
        return finish()
    group, nodes = farm
    client = ccf.FarmClient(ctx, "main", group)
    me = f"{HOST}:{client.addr[1]}"

    def open_group(c, total=OPEN_TIMEOUT):
        def fn():
            info, problems, notes = ccf.group_open(ctx, c, group, total, OPEN_WINDOW)
            return problems, (f"session {info['session']} va={info['va']!r} "
                              f"addr={info['addr']!r} queue={info['queue']} after "
                              f"{info['waited']:.2f} s" + "".join(f"; {n}" for n in notes)), info
        return fn

    info = run("open", "OPEN_SESSION {\"app\": \"calc\"} to the group -> exactly one REPLY",
               open_group(client))
    if info is None:
        return finish()
    sess = new_session(client, info)

    def calc(s, op, a, b, want):
        def fn():
            ev, tx, notes = ccf.call(s, op, cbor.dumps([a, b]))
            problems, detail = ccf.judge(ev, s, [("ok", want)])
            return problems, f"{detail} (t={tx}" + "".join(f", {n}" for n in notes) + ")", ev
        return fn

    run("mul", f"258 [6, 7] -> 42 at {sess.addr_text}", calc(sess, ccf.MUL, 6, 7, 42))

    # --- the drained node ---
    drained_node = next((n for n in nodes if n["mp"] == sess.peer), None)
    if drained_node is None:
        fail("drain", "find the session's node",
             f"no node in farm.json has mp {sess.addr_text} (nodes: "
             + ", ".join(fmt_addr(n["mp"]) for n in nodes if n["mp"]) + ")")
        return finish()
    drained = sess.peer
    drained_text = fmt_addr(drained)

    drain = Drain(args.dabs, drained_text, args.secret)
    fo = run("failover", f"drain {drained_node['name']} ({drained_text}) -> FAILOVER "
                         f"(command 8) in our session within {FAILOVER_WAIT:.0f} s",
             lambda: receive_failover(ctx, client, sess, drain, args.secret))
    now_ms = int(time.time() * 1000)

    def drain_check():
        rc, out, err, secs = drain.join()
        if rc is None:
            raise CheckFail(f"did not finish within {DRAIN_TIMEOUT:.0f} s: {short(err)}")
        if rc != 0:
            raise CheckFail(f"exit status {rc} after {secs:.1f} s: {short(out + ' ' + err)}")
        return [], f"exit 0 after {secs:.2f} s" + (f": {short(out)}" if out.strip() else ""), rc

    run("drain", f"`dabs drain {drained_text} --secret HEX` exits 0", drain_check)
    if fo is None:
        fail("mac", "MAC of the FAILOVER", "no FAILOVER")
        fail("body", "body of the FAILOVER", "no FAILOVER")
        return finish()
    ev, body, mac = fo["ev"], fo["body"], fo["mac"]
    server_text = fmt_addr(ev.peer)

    def watch():
        w = watch_after_reply(client, fo)
        problems = []
        bits = [f"{w['copies']} retransmitted copy(ies) REPLYed again"]
        if w["copies"] and w["last_copy"] is not None and w["last_copy"] > 1.5:
            problems.append(f"the FAILOVER was still retransmitted {w['last_copy']:.1f} s "
                            f"after our REPLY")
        if w["acked"] is not None:
            bits.append(f"server ACKed our REPLY after {w['acked']:.2f} s")
        else:
            text = (f"the server never ACKed our REPLY within {AFTER_REPLY_WATCH:.0f} s "
                    f"({w['resent']} REPLY retransmission(s))")
            (problems.append if REPLY_ACK_STRICT else bits.append)(text)
        if w["other"]:
            bits.append(f"{len(w['other'])} further FAILOVER(s) with other transactions "
                        f"(REPLYed)")
            fo["others"].extend(w["other"])
        return problems, "; ".join(bits), w

    run("replied", f"our REPLY to the FAILOVER (t={ev.transaction}) ends it", watch)

    def mac_check():
        want = failover_mac(secret, server_text, me, body)
        if not hmac.compare_digest(want, mac):
            raise CheckFail(f"MAC mismatch: got {mac.hex()}, computed {want.hex()} over "
                            f"{MAC_LABEL.decode()!r} || {server_text!r} || 00 || {me!r} || 00 || "
                            f"body {body.hex()}")
        return [], f"HMAC-SHA256 over server {server_text!r}, client {me!r}, body " \
                   f"{len(body)} B matches", True

    mac_good = run("mac", "HMAC-SHA256 with the farm secret matches", mac_check)

    parsed = run("body", "body: alternates (not the drained node), nonce, issued",
                 lambda: parse_body(body, drained, now_ms))

    # Other FAILOVERs seen meanwhile: each must carry a valid MAC and a larger nonce.
    if fo["others"]:
        def others_check():
            problems, last = [], parsed["nonce"] if parsed else None
            for o in fo["others"]:
                try:
                    ob = cbor.loads(o.payload)
                    b2, m2 = ob["body"], ob["mac"]
                    if not mac_ok(secret, fmt_addr(o.peer), me, b2, m2):
                        problems.append(f"t={o.transaction}: MAC mismatch")
                    n2 = cbor.loads(b2).get("nonce")
                    if isinstance(last, int) and isinstance(n2, int) and n2 <= last:
                        problems.append(f"t={o.transaction}: nonce {n2} not above {last}")
                    last = n2
                except Exception as e:  # noqa: BLE001
                    problems.append(f"t={o.transaction}: {type(e).__name__}: {e}")
            return problems, f"{len(fo['others'])} further FAILOVER(s) checked", None
        run("more", "further FAILOVERs: valid MAC, increasing nonce", others_check)

    # --- offline negatives ---
    frng = random.Random(flip_seed)
    pos = frng.randrange(len(body)) if body else 0
    bit = 1 << frng.randrange(8)
    flipped = bytearray(body)
    if flipped:
        flipped[pos] ^= bit
    wrong_port = client.addr[1] + 1 if client.addr[1] < 65535 else client.addr[1] - 1
    negatives = [
        ("neg-body", f"body byte {pos} ^ 0x{bit:02x}", server_text, me, bytes(flipped), secret),
        ("neg-client", f"client {HOST}:{wrong_port}", server_text, f"{HOST}:{wrong_port}",
         body, secret),
        ("neg-server", "server 127.0.0.2 instead of 127.0.0.1",
         server_text.replace(HOST, "127.0.0.2"), me, body, secret),
        ("neg-secret", "wrong secret (one bit flipped)", server_text, me, body, bytes(wrong)),
        ("neg-swap", "server and client swapped", me, server_text, body, secret),
    ]
    for name, what, srv, cli, b, key in negatives:
        def neg(srv=srv, cli=cli, b=b, key=key, what=what):
            if not body:
                raise CheckFail("empty body: nothing to flip")
            if b == body and (srv, cli, key) == (server_text, me, secret):
                raise CheckFail("the negative case equals the real one")
            if mac_ok(key, srv, cli, b, mac):
                raise CheckFail(f"MAC still matches with {what}: the check cannot fail")
            return [], f"{what}: no match" + ("" if mac_good else
                                                 " (note: the real MAC did not match either)"), \
                True
        run(name, "the MAC check rejects a tampered input (offline)", neg)

    # --- move to the alternate ---
    alts = parsed["alternates"] if parsed else []
    if not alts and fo is not None:
        # A body check failure with usable alternates still hands them on; else, read them.
        try:
            alts = [{"addr": a["addr"], "peer": ccf.parse_ipv4_addr(a["addr"]), "va": a["va"]}
                    for a in cbor.loads(body)["alternates"]
                    if ccf.parse_ipv4_addr(a.get("addr")) and isinstance(a.get("va"), str)]
        except Exception:  # noqa: BLE001
            alts = []
    alt_sess = None
    if not alts:
        fail("alt-open", "open at alternates[0]", "no usable alternate")
    elif alts[0]["peer"][0] != HOST:
        fail("alt-open", "open at alternates[0]", f"{alts[0]['addr']} is not on {HOST}")
    else:
        alt = alts[0]

        def alt_open():
            info, problems, notes = open_at(ctx, client, alt["peer"],
                                            {"app": ccf.APP, "va": alt["va"]},
                                            OPEN_TIMEOUT, OPEN_WINDOW)
            if info["peer"] == drained or info["from"] == drained:
                problems.append(f"the session is on the drained node {drained_text}")
            if info["va"] != alt["va"]:
                notes.append(f"REPLY va {info['va']!r} differs from the alternate's "
                             f"{alt['va']!r}")
            if info["from"] != alt["peer"]:
                notes.append(f"REPLY from {fmt_addr(info['from'])}, not the alternate's addr")
            return problems, (f"session {info['session']} va={info['va']!r} "
                              f"addr={info['addr']!r} queue={info['queue']} after "
                              f"{info['waited']:.2f} s" + "".join(f"; {n}" for n in notes)), info

        ainfo = run("alt-open", f"OPEN_SESSION {{\"app\": \"calc\", \"va\": {alt['va']!r}}} "
                                f"directly to {alt['addr']} -> exactly one REPLY", alt_open)
        if ainfo is not None:
            alt_sess = new_session(client, ainfo)
            run("alt-01", f"272 [1.5, 2.25] -> 3.75 at {alt_sess.addr_text}",
                calc(alt_sess, ccf.FADD, 1.5, 2.25, 3.75))
            run("alt-02", f"256 [2, 2] -> 4 at {alt_sess.addr_text}",
                calc(alt_sess, ccf.ADD, 2, 2, 4))
    if alt_sess is None:
        fail("alt-calc", "calls at the alternate", "no session at the alternate")

    # --- new clients avoid the drained node ---
    for i in range(1, GROUP_OPENS + 1):
        c = ccf.FarmClient(ctx, f"group-{i}", group)

        def gopen(c=c):
            problems, detail, info = open_group(c)()
            if info["peer"] == drained or info["from"] == drained:
                problems.append(f"answered by the drained node {drained_text}")
            node = next((n for n in nodes if n["mp"] == info["from"]), None)
            if node is not None:
                detail += f" (node {node['name']})"
            return problems, detail, info

        run(f"group-{i}", "new client, OPEN_SESSION to the group -> a node other than the "
                          "drained one", gopen)
        c.close()
        ctx.clients.remove(c)

    # --- wrong secret ---
    def wrong_check(target):
        def fn():
            d = Drain(args.dabs, fmt_addr(target), wrong_hex)
            rc, out, err, secs = d.join()
            if rc is None:
                raise CheckFail(f"did not finish within {DRAIN_TIMEOUT:.0f} s: {short(err)}")
            if rc == 0:
                raise CheckFail(f"exit status 0 with a wrong secret: {short(out + ' ' + err)}")
            return [], f"exit status {rc} after {secs:.2f} s: {short(err or out, 160)}", rc
        return fn

    run("wrong-drained", f"`dabs drain {drained_text} --secret <wrong>` exits non-zero",
        wrong_check(drained))
    live = None
    if alt_sess is not None and any(n["mp"] == alt_sess.peer for n in nodes):
        live = alt_sess.peer
    else:
        live = next((n["mp"] for n in nodes if n["mp"] and n["mp"] != drained), None)
    if live is None:
        fail("wrong-live", "wrong secret at a live node", "no other node in farm.json")
    else:
        run("wrong-live", f"`dabs drain {fmt_addr(live)} --secret <wrong>` exits non-zero",
            wrong_check(live))
        if alt_sess is not None:
            def quiet():
                got = client.collect(lambda e: is_failover(e) and e.peer == alt_sess.peer,
                                     QUIET_WATCH)
                for e in got:
                    reply_to(client, e)
                if got:
                    raise CheckFail(f"{len(got)} FAILOVER(s) from {alt_sess.addr_text} after a "
                                    f"drain with a wrong secret")
                return [], f"no FAILOVER from {alt_sess.addr_text} in {QUIET_WATCH:.0f} s", True
            run("wrong-quiet", "no FAILOVER reaches the alternate session", quiet)
            run("wrong-calc", f"256 [2, 2] -> 4 still at {alt_sess.addr_text}",
                calc(alt_sess, ccf.ADD, 2, 2, 4))

    # --- cleanup (not counted) ---
    rc, out, err, secs = Drain(args.dabs, drained_text, args.secret, undo=True).join()
    print(f"cleanup: `dabs drain {drained_text} --undo --secret HEX` exit {rc} "
          f"({secs:.2f} s){': ' + short(err or out, 160) if rc else ''}", flush=True)
    return finish()


if __name__ == "__main__":
    sys.exit(main())
