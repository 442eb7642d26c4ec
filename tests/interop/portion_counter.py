#!/usr/bin/env python3
"""A server portion in Python, written from docs/protocol.md ("Portions as processes") and
/work/shared/spec/mp-wire.md alone (stdlib only, with the reference codecs mpref.py and
cbor.py beside it).

`dabs node` starts it for an application record such as

    [[app]]
    name = "pycount"
    command = ["python3", "tests/interop/portion_counter.py"]

and talks MP to it over a Unix datagram socket (no ACK/NAK on this link). The application
keeps one counter per portion:

    256  add [n]   -> {"ok": total after adding n}
    257  total []  -> {"ok": total}

Anything else is NAK 6. The control session answers GET_STATISTICS (4) with its figures and
SHUTDOWN (3) by answering and exiting. Ten seconds without a word from the node on the
control session means the node is gone: the program exits.
"""

import os
import socket
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import cbor  # noqa: E402
import mpref  # noqa: E402

OPEN_SESSION, CLOSE_SESSION, SHUTDOWN, GET_STATISTICS = 1, 2, 3, 4
CLIENT_QUEUE, CONTROL_QUEUE = 1, 2
ORPHAN_AFTER = 10.0


def stamp():
    now = time.time()
    ms = int(now * 1000) % 1000
    t = time.gmtime(now)
    return {"minutes": t.tm_min, "seconds": t.tm_sec, "ms": ms}


def answer(sock, peer, req, kind, payload, src):
    d = {"kind": kind, "command": req["command"], "session": req["session"],
         "transaction": req["transaction"], "encrypted": False,
         # A session opened with CRCs wants one on every datagram (else NAK 2).
         "crc": req["crc"],
         "dst": req["src"], "src": src, "payload": payload.hex()}
    d.update(stamp())
    sock.sendto(mpref.encode(d), peer)


def nak(sock, peer, req, code, text, src=0):
    answer(sock, peer, req, "nak", code.to_bytes(2, "big") + text.encode(), src)


def main():
    path, app = os.environ["DABS_PORTION_SOCKET"], os.environ["DABS_APP"]
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)  # the node waits for this socket to appear
    sock.settimeout(1.0)
    sessions = {}  # (peer, number) -> "control" | "client"
    total, handled = 0, 0
    heard = time.monotonic()
    while time.monotonic() - heard < ORPHAN_AFTER:
        try:
            data, peer = sock.recvfrom(1024)
        except socket.timeout:
            continue
        try:
            req = mpref.decode(data)
        except mpref.MpError:
            continue  # the node's own socket sends nothing malformed; drop, never crash
        if req["kind"] != "request":
            continue
        if req["buffer"] is not None:
            nak(sock, peer, req, 5, "this portion takes single-buffer messages only")
            continue
        payload = bytes.fromhex(req["payload"])
        cmd, key = req["command"], (peer, req["session"])
        if cmd == OPEN_SESSION and req["session"] == 0:
            ask = cbor.loads(payload)
            if ask.get("app") != app:
                nak(sock, peer, req, 11, f"this program serves {app}")
                continue
            free = [n for n in range(1, 256) if (peer, n) not in sessions]
            if not free:
                nak(sock, peer, req, 10, "no free session number")
                continue
            role = ask.get("role")
            sessions[(peer, free[0])] = role
            req = dict(req, session=free[0])
            queue = CONTROL_QUEUE if role == "control" else CLIENT_QUEUE
            answer(sock, peer, req, "reply", cbor.dumps({"va": os.environ["DABS_VA"]}), queue)
            continue
        role = sessions.get(key)
        if role is None:
            nak(sock, peer, req, 1, "unknown session")
            continue
        if cmd == CLOSE_SESSION:
            del sessions[key]
            # Confirms the close as an MP endpoint does; the node does not wait for it.
            answer(sock, peer, req, "reply", b"", CONTROL_QUEUE if role == "control" else CLIENT_QUEUE)
            continue
        if role == "control":
            heard = time.monotonic()
            if cmd == GET_STATISTICS:
                clients = sum(1 for r in sessions.values() if r == "client")
                status = {"state": f"running, total {total}", "clients": clients,
                          "handled": handled, "timeouts": [], "errors": []}
                answer(sock, peer, req, "reply", cbor.dumps(status), CONTROL_QUEUE)
            elif cmd == SHUTDOWN:
                answer(sock, peer, req, "reply", b"", CONTROL_QUEUE)
                break
            else:
                nak(sock, peer, req, 6, f"no control command {cmd}", CONTROL_QUEUE)
            continue
        if cmd == 256:
            args = cbor.loads(payload)
            if not (isinstance(args, list) and len(args) == 1 and isinstance(args[0], int)):
                reply = {"err": {"code": "bad_operands", "message": "add takes one integer"}}
            else:
                total += args[0]
                reply = {"ok": total}
        elif cmd == 257:
            reply = {"ok": total}
        else:
            nak(sock, peer, req, 6, f"pycount has no command {cmd}", CLIENT_QUEUE)
            continue
        handled += 1
        answer(sock, peer, req, "reply", cbor.dumps(reply), CLIENT_QUEUE)
    sock.close()
    os.unlink(path)


if __name__ == "__main__":
    main()
