#!/usr/bin/env python3
"""Cross-check `dabs mp decode` / `dabs mp encode` against the reference codec mpref.py.

    python3 tests/interop/check_codec.py --dabs target/debug/dabs [--seed N] [--count N]
    python3 tests/interop/check_codec.py --self-test

Every datagram comes from one seeded random.Random, so a failure is replayed with --seed.
CLI contract assumed for the binary:
  mp decode: stdin hex lines -> stdout one JSON object per line, in order, {"error": ...}
             for a line that fails; exit 0 only if every line decoded.
  mp encode: stdin JSON lines -> stdout one lowercase hex line per input; an invalid
             object makes it exit non-zero with a message on stderr naming the field.
"""

import argparse
import json
import os
import random
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import mpref  # noqa: E402
from mpref import MpError  # noqa: E402

KINDS = ("request", "ack", "nak", "reply")
KIND_BITS = {"request": 0x00, "ack": 0x40, "nak": 0x20, "reply": 0x60}
MAX_SHOWN = 20  # detailed disagreements printed; the rest are only counted
TIMEOUT = 300


# --- a second, table-driven CRC-8 so the generator does not lean on mpref's ---------------

def _make_table():
    table = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = ((c << 1) ^ 0x07) & 0xFF if c & 0x80 else (c << 1) & 0xFF
        table.append(c)
    return table


_CRC_TABLE = _make_table()


def crc8_table(data: bytes) -> int:
    c = 0
    for b in data:
        c = _CRC_TABLE[c ^ b]
    return c


# --- raw packer: no validation, so it can also build out-of-range datagrams ---------------

def raw_pack(f: dict) -> bytes:
    """Build a datagram from raw field values (masked to their bit widths).

    f: kind, version, command, session, transaction, encrypted, crc, minutes, seconds,
    ms, dst, src, multi, buffer, total, payload (bytes). CRC byte appended when f["crc"].
    """
    out = bytearray()
    out.append((0x80 if f["multi"] else 0) | KIND_BITS[f["kind"]] | (f["version"] & 0x1F))
    out += (f["command"] & 0xFFFF).to_bytes(2, "big")
    out.append(f["session"] & 0xFF)
    out.append(f["transaction"] & 0xFF)
    out.append((0x80 if f["encrypted"] else 0) | (0x40 if f["crc"] else 0) | (f["minutes"] & 0x3F))
    out.append(((f["seconds"] & 0x3F) << 2) | ((f["ms"] >> 8) & 0x03))
    out.append(f["ms"] & 0xFF)
    out += (f["dst"] & 0xFFFF).to_bytes(2, "big")
    out += (f["src"] & 0xFFFF).to_bytes(2, "big")
    if f["multi"]:
        out += (f["buffer"] & 0xFFFF).to_bytes(2, "big")
        out += (f["total"] & 0xFFFF).to_bytes(2, "big")
    out += f["payload"]
    if f["crc"]:
        out.append(crc8_table(out))
    return bytes(out)


def expected_dict(f: dict) -> dict:
    """What a correct decoder must return for a valid raw field set."""
    return {
        "kind": f["kind"], "version": f["version"], "command": f["command"],
        "session": f["session"], "transaction": f["transaction"],
        "encrypted": f["encrypted"], "crc": f["crc"], "minutes": f["minutes"],
        "seconds": f["seconds"], "ms": f["ms"], "dst": f["dst"], "src": f["src"],
        "buffer": f["buffer"] if f["multi"] else None,
        "total": f["total"] if f["multi"] else None,
        "payload": f["payload"].hex(),
    }


# --- generation ---------------------------------------------------------------------------

def pick(rng, lo, hi):
    """Uniform in lo..hi, but hit the edges often: that is where codecs break."""
    r = rng.random()
    if r < 0.1:
        return lo
    if r < 0.2:
        return hi
    return rng.randint(lo, hi)


def rand_fields(rng, multi=None, crc=None, payload_len=None):
    """A valid field set; payload length anywhere up to the maximum that fits."""
    if multi is None:
        multi = rng.random() < 0.4
    if crc is None:
        crc = rng.random() < 0.5
    total = pick(rng, 2, 0xFFFF)
    buffer = rng.choice([0, total - 1, rng.randrange(total)])
    room = mpref.MAX_DATAGRAM - 12 - (4 if multi else 0) - (1 if crc else 0)
    if payload_len is None:
        payload_len = pick(rng, 0, room) if rng.random() < 0.7 else rng.randint(0, 16)
    return {
        "kind": rng.choice(KINDS), "version": 1,
        "command": pick(rng, 0, 0xFFFF), "session": pick(rng, 0, 0xFF),
        "transaction": pick(rng, 0, 0xFF),
        "encrypted": rng.random() < 0.3, "crc": crc,
        "minutes": pick(rng, 0, 59), "seconds": pick(rng, 0, 59), "ms": pick(rng, 0, 999),
        "dst": pick(rng, 0, 0xFFFF), "src": pick(rng, 0, 0xFFFF),
        "multi": multi, "buffer": buffer, "total": total,
        "payload": rng.randbytes(payload_len),
    }


def gen_malformed(rng, category):
    """One datagram that the spec says must be rejected, for the given category."""
    if category == "short":
        if rng.random() < 0.5:
            return rng.randbytes(rng.randint(0, 11))
        return raw_pack(rand_fields(rng))[: rng.randint(0, 11)]
    if category == "long":
        f = rand_fields(rng, payload_len=0)
        base = len(raw_pack(f))
        f["payload"] = rng.randbytes(rng.randint(513, 600) - base)
        return raw_pack(f)
    if category == "multi_short":
        return raw_pack(rand_fields(rng, multi=True))[: rng.randint(12, 15)]
    if category == "buffer_ge_total":
        f = rand_fields(rng, multi=True)
        f["total"] = pick(rng, 2, 0xFFFF)
        f["buffer"] = pick(rng, f["total"], 0xFFFF)
        return raw_pack(f)
    if category == "total_lt_2":
        f = rand_fields(rng, multi=True)
        f["total"] = rng.choice([0, 1])
        f["buffer"] = pick(rng, 0, 0xFFFF)
        return raw_pack(f)
    if category == "crc_no_room":
        # Headers only, CRC bit set afterwards: there is no byte left to be the CRC.
        f = rand_fields(rng, crc=False, payload_len=0)
        b = bytearray(raw_pack(f))
        b[5] |= 0x40
        return bytes(b)
    if category == "crc_wrong":
        b = bytearray(raw_pack(rand_fields(rng, crc=True)))
        b[-1] ^= rng.randint(1, 255)
        return bytes(b)
    if category == "bad_version":
        f = rand_fields(rng)
        f["version"] = rng.choice([0] + list(range(2, 32)))
        return raw_pack(f)
    if category == "bad_minutes":
        f = rand_fields(rng)
        f["minutes"] = rng.randint(60, 63)
        return raw_pack(f)
    if category == "bad_seconds":
        f = rand_fields(rng)
        f["seconds"] = rng.randint(60, 63)
        return raw_pack(f)
    if category == "bad_ms":
        f = rand_fields(rng)
        f["ms"] = rng.randint(1000, 1023)
        return raw_pack(f)
    raise ValueError(category)


MUST_REJECT = ("short", "long", "multi_short", "buffer_ge_total", "total_lt_2", "crc_no_room",
               "crc_wrong", "bad_version", "bad_minutes", "bad_seconds", "bad_ms")


def gen_cases(rng, count):
    """Return [(category, bytes, expected_dict_or_None)].

    expected_dict is set for datagrams built valid (checked against mpref too);
    None for everything else, whose verdict comes from mpref alone.
    """
    cases = []
    # Every must-reject category at least a few times, whatever the count.
    for cat in MUST_REJECT:
        for _ in range(3):
            cases.append((cat, gen_malformed(rng, cat), None))
    while len(cases) < count:
        r = rng.random()
        if r < 0.40:
            f = rand_fields(rng)
            cases.append(("valid", raw_pack(f), expected_dict(f)))
        elif r < 0.65:
            cat = rng.choice(MUST_REJECT)
            cases.append((cat, gen_malformed(rng, cat), None))
        elif r < 0.75:
            b = raw_pack(rand_fields(rng))
            cases.append(("truncated", b[: rng.randrange(len(b))], None))
        elif r < 0.90:
            b = bytearray(raw_pack(rand_fields(rng)))
            for _ in range(rng.randint(1, 3)):
                i = rng.randrange(len(b))
                if rng.random() < 0.5:
                    b[i] ^= 1 << rng.randrange(8)
                else:
                    b[i] ^= rng.randint(1, 255)
            cases.append(("flipped", bytes(b), None))
        else:
            cases.append(("random", rng.randbytes(rng.randint(0, 600)), None))
    return cases[:max(count, len(MUST_REJECT) * 3)]


def ref_decode(b):
    try:
        return mpref.decode(b)
    except MpError as e:
        return {"error": str(e)}


def ref_encode(d):
    try:
        return mpref.encode(d).hex()
    except MpError as e:
        return {"error": str(e)}


def same_value(a, b):
    # JSON true == 1 in Python; a bool where an int belongs (or vice versa) is a mismatch.
    return type(a) is type(b) and a == b


def diff_decoded(ref, got):
    """Return a description of the difference, or None if they agree."""
    if not isinstance(got, dict):
        return f"not a JSON object: {got!r}"
    ref_err, got_err = "error" in ref, "error" in got
    if ref_err != got_err:
        return "ok/error disagreement"
    if ref_err:
        if not isinstance(got["error"], str) or not got["error"]:
            return "error value is not a non-empty string"
        return None
    if set(ref) != set(got):
        return f"key sets differ: missing {sorted(set(ref) - set(got))}, extra {sorted(set(got) - set(ref))}"
    bad = [k for k in ref if not same_value(ref[k], got[k])]
    return f"fields differ: {bad}" if bad else None


# --- self-test (no binary) ----------------------------------------------------------------

def self_test():
    failures = []

    def check(cond, what):
        if not cond:
            failures.append(what)

    # CRC: the catalogue check value, a few single bytes worked out by hand, two implementations.
    check(mpref.crc8(b"123456789") == 0xF4, "crc8 check value")
    check(mpref.crc8(b"") == 0x00, "crc8 of empty")
    check(mpref.crc8(b"\x01") == 0x07, "crc8 of 01")
    check(mpref.crc8(b"\x80") == 0x89, "crc8 of 80")
    check(mpref.crc8(b"\xff") == 0xF3, "crc8 of ff")
    rng = random.Random(1)
    for _ in range(200):
        data = rng.randbytes(rng.randint(0, 600))
        check(mpref.crc8(data) == crc8_table(data), f"crc8 bitwise vs table on {data.hex()}")
    # Appending a correct CRC-8 (no xorout) makes the CRC over the whole thing 0.
    check(mpref.crc8(b"123456789\xf4") == 0, "crc8 residue")

    # Hand-built datagrams, bytes written out from the spec tables.
    # 1) REPLY with CRC: version 1, ECHO (9), session 5, txn 7, 12:34.567, dst 0x0102,
    #    src 0x0304, payload "hi".
    #    flags 0x61 (ACK|NAK|v1); byte5 0x40|12=0x4c; byte6 34<<2|567>>8 = 0x88|2 = 0x8a;
    #    byte7 567&0xff = 0x37.
    body = bytes.fromhex("61" "0009" "05" "07" "4c8a37" "0102" "0304" "6869")
    reply = body + bytes([mpref.crc8(body)])
    want = {"kind": "reply", "version": 1, "command": 9, "session": 5, "transaction": 7,
            "encrypted": False, "crc": True, "minutes": 12, "seconds": 34, "ms": 567,
            "dst": 0x0102, "src": 0x0304, "buffer": None, "total": None, "payload": "6869"}
    check(len(reply) == 15, "reply length")
    check(ref_decode(reply) == want, f"decode hand REPLY: {ref_decode(reply)}")
    check(ref_encode(want) == reply.hex(), f"encode hand REPLY: {ref_encode(want)}")

    # 2) Multi-buffer REQUEST, no CRC: cmd 0x1234, session 1, txn 1, 00:00.000, dst 0,
    #    src 0xffff, buffer 1 of 3, payload abcdef.
    multi = bytes.fromhex("81" "1234" "01" "01" "000000" "0000" "ffff" "0001" "0003" "abcdef")
    want = {"kind": "request", "version": 1, "command": 0x1234, "session": 1, "transaction": 1,
            "encrypted": False, "crc": False, "minutes": 0, "seconds": 0, "ms": 0,
            "dst": 0, "src": 0xFFFF, "buffer": 1, "total": 3, "payload": "abcdef"}
    check(ref_decode(multi) == want, f"decode hand multi: {ref_decode(multi)}")
    check(ref_encode(want) == multi.hex(), "encode hand multi")

    # 3) Bare ACK, exactly 12 bytes, empty payload.
    ack = bytes.fromhex("41" "0100" "ff" "fe" "000000" "0007" "0008")
    d = ref_decode(ack)
    check(d.get("kind") == "ack" and d.get("command") == 256 and d.get("payload") == "",
          f"decode hand ACK: {d}")
    check(ref_encode(d) == ack.hex(), "encode hand ACK")

    # 4) Encrypted NAK at 59:59.999 carrying error 2: byte5 0x80|59=0xbb,
    #    byte6 59<<2|3=0xef, byte7 999&0xff=0xe7.
    nak = bytes.fromhex("21" "0001" "03" "04" "bbefe7" "0000" "0000" "0002")
    d = ref_decode(nak)
    check(d.get("kind") == "nak" and d.get("encrypted") is True and d.get("crc") is False
          and (d.get("minutes"), d.get("seconds"), d.get("ms")) == (59, 59, 999)
          and d.get("payload") == "0002", f"decode hand NAK: {d}")

    # 5) Multi with CRC: the CRC byte is excluded from the payload, buffer header too.
    body = bytes.fromhex("c1" "0002" "00" "00" "400000" "0000" "0000" "0000" "0002" "00")
    d = ref_decode(body + bytes([crc8_table(body)]))
    check(d.get("kind") == "ack" and d.get("buffer") == 0 and d.get("total") == 2
          and d.get("payload") == "00" and d.get("crc") is True, f"decode multi+crc: {d}")

    # Each rejection rule on a hand-made datagram (base = the 12-byte ACK above).
    def mutate(base, **at):
        b = bytearray(base)
        for k, v in at.items():
            b[int(k[1:])] = v
        return bytes(b)

    rejects = {
        "len 11": ack[:11],
        "len 0": b"",
        "len 513": ack + bytes(501),
        "multi len 15": mutate(ack, o0=0xC1) + b"\x00\x00\x00",
        "buffer == total": mutate(ack, o0=0xC1) + bytes.fromhex("00020002"),
        "total 1": mutate(ack, o0=0xC1) + bytes.fromhex("00000001"),
        "total 0": mutate(ack, o0=0xC1) + bytes.fromhex("00000000"),
        "crc no room single": mutate(ack, o5=0x40),
        "crc no room multi": mutate(ack, o0=0xC1, o5=0x40) + bytes.fromhex("00000002"),
        "crc wrong": reply[:-1] + bytes([reply[-1] ^ 1]),
        "version 0": mutate(ack, o0=0x40),
        "version 2": mutate(ack, o0=0x42),
        "version 31": mutate(ack, o0=0x5F),
        "minutes 60": mutate(ack, o5=60),
        "seconds 60": mutate(ack, o6=60 << 2),
        "ms 1000": mutate(ack, o6=0x03, o7=0xE8),
    }
    for name, b in rejects.items():
        check("error" in ref_decode(b), f"decode must reject {name}")
    # Boundaries that must still decode.
    accepts = {
        "len 512": ack + bytes(500),
        "len 512 crc": (lambda body: body + bytes([mpref.crc8(body)]))(mutate(ack, o5=0x40) + bytes(499)),
        "multi len 16": mutate(ack, o0=0xC1) + bytes.fromhex("fffeffff"),
        "crc only byte": (lambda body: body + bytes([mpref.crc8(body)]))(mutate(ack, o5=0x40)),
        "59:59.999": mutate(ack, o5=59, o6=0xEF, o7=0xE7),
    }
    for name, b in accepts.items():
        d = ref_decode(b)
        check("error" not in d, f"decode must accept {name}: {d}")
    check(ref_decode(accepts["crc only byte"]).get("payload") == "", "crc-only payload empty")

    # Encode: defaults, rejections.
    base = ref_decode(ack)
    short = {k: v for k, v in base.items() if k not in ("buffer", "total", "version")}
    check(ref_encode(short) == ack.hex(), "encode with buffer/total/version absent")
    check(ref_encode(dict(base, version=0)) == "40" + ack.hex()[2:], "encode version 0")
    check(ref_encode(dict(base, version=31)) == "5f" + ack.hex()[2:], "encode version 31")
    bad_encodes = [
        dict(base, minutes=60), dict(base, seconds=60), dict(base, ms=1000), dict(base, ms=-1),
        dict(base, command=65536), dict(base, session=256), dict(base, transaction=-1),
        dict(base, dst=65536), dict(base, src=-1), dict(base, version=32),
        dict(base, buffer=0), dict(base, total=2), dict(base, buffer=2, total=2),
        dict(base, buffer=0, total=1), dict(base, buffer=0, total=65536),
        dict(base, payload="zz"), dict(base, payload="abc"), dict(base, payload=" ab"),
        dict(base, kind="bogus"), dict(base, crc=1), dict(base, command=True),
        dict(base, payload="00" * 501), dict(base, crc=True, payload="00" * 500),
        dict(base, buffer=0, total=2, payload="00" * 497),
    ]
    for d in bad_encodes:
        check("error" in ref_encode(d), f"encode must reject {d}")
    check("error" not in ref_encode(dict(base, payload="00" * 500)), "encode 512 bytes")
    check("error" not in ref_encode(dict(base, buffer=0, total=2, payload="00" * 496)),
          "encode 512 bytes multi")

    # Round trips over generated valid datagrams, and the generator against mpref.
    rng = random.Random(2)
    for _ in range(2000):
        f = rand_fields(rng)
        b = raw_pack(f)
        d = ref_decode(b)
        check(d == expected_dict(f), f"decode generated {b.hex()}: {d}")
        check(ref_encode(d) == b.hex(), f"encode round trip {b.hex()}")
    for cat in MUST_REJECT:
        for _ in range(50):
            b = gen_malformed(rng, cat)
            check("error" in ref_decode(b), f"generator {cat} made an accepted datagram {b.hex()}")

    for f in failures:
        print("SELF-TEST FAIL:", f)
    n = len(failures)
    print(f"mpref self-test: {'OK' if n == 0 else f'{n} failed'}")
    return n == 0


# --- cross-check against the binary -------------------------------------------------------

def run(dabs, sub, stdin_text):
    return subprocess.run([dabs, "mp", sub], input=stdin_text, capture_output=True,
                          text=True, timeout=TIMEOUT)


def parse_lines(stdout):
    lines = stdout.splitlines()
    out = []
    for ln in lines:
        try:
            out.append(json.loads(ln))
        except json.JSONDecodeError:
            out.append(f"<unparseable line: {ln!r}>")
    return out


# Invalid objects for `mp encode`, each with the field names its error message may cite.
def invalid_encodes(base_single, base_multi):
    return [
        (dict(base_single, minutes=60), ("minutes",)),
        (dict(base_single, seconds=60), ("seconds",)),
        (dict(base_single, ms=1000), ("ms",)),
        (dict(base_single, command=65536), ("command",)),
        (dict(base_single, command=-1), ("command",)),
        (dict(base_single, session=256), ("session",)),
        (dict(base_single, transaction=256), ("transaction",)),
        (dict(base_single, dst=65536), ("dst",)),
        (dict(base_single, src=-1), ("src",)),
        (dict(base_single, version=32), ("version",)),
        (dict(base_single, kind="bogus"), ("kind",)),
        (dict(base_single, payload="zz"), ("payload",)),
        (dict(base_single, payload="abc"), ("payload",)),
        (dict(base_multi, buffer=base_multi["total"]), ("buffer", "total")),
        (dict(base_multi, buffer=0, total=1), ("total",)),
        (dict(base_multi, total=65536), ("total",)),
        (dict(base_single, buffer=0), ("buffer", "total")),
        # Over 512 bytes: no single field is at fault, so accept any reasonable wording.
        (dict(base_single, crc=False, payload="00" * 501), ("payload", "512", "size", "long", "large")),
    ]


def cross_check(dabs, seed, count):
    rng = random.Random(seed)
    failures = []  # (what, input, ref, got)
    passed = 0

    def fail(what, inp, ref, got):
        failures.append((what, inp, ref, got))

    # 1) decode
    cases = gen_cases(rng, count)
    refs = []
    for cat, b, exp in cases:
        r = ref_decode(b)
        if cat in MUST_REJECT and "error" not in r:
            fail(f"reference accepted a {cat} datagram (generator/reference bug)", b.hex(), r, None)
        if exp is not None and r != exp:
            fail("reference disagrees with generator on a valid datagram", b.hex(), r, exp)
        refs.append(r)
    # An empty datagram is an empty line: the binary must still answer it with an error line.
    proc = run(dabs, "decode", "".join(b.hex() + "\n" for _, b, _ in cases))
    got = parse_lines(proc.stdout)
    if len(got) != len(cases):
        fail(f"mp decode printed {len(got)} lines for {len(cases)} inputs "
             f"(exit {proc.returncode}, stderr {proc.stderr.strip()[:500]!r})", "-", None, None)
    for (cat, b, _), r, g in zip(cases, refs, got):
        why = diff_decoded(r, g)
        if why:
            fail(f"mp decode [{cat}]: {why}", b.hex(), r, g)
        else:
            passed += 1
    all_ok = all("error" not in r for r in refs)
    if (proc.returncode == 0) != all_ok:
        fail(f"mp decode exit status {proc.returncode} but all-decoded={all_ok}", "-", None, None)
    else:
        passed += 1

    # A batch of only valid datagrams must exit 0.
    valid_bytes = [b for (_, b, _), r in zip(cases, refs) if "error" not in r][:200]
    proc = run(dabs, "decode", "".join(b.hex() + "\n" for b in valid_bytes))
    if proc.returncode != 0 or len(proc.stdout.splitlines()) != len(valid_bytes):
        fail(f"mp decode on {len(valid_bytes)} valid lines: exit {proc.returncode}, "
             f"{len(proc.stdout.splitlines())} lines, stderr {proc.stderr.strip()[:500]!r}",
             "-", None, None)
    else:
        passed += 1

    # 2) encode: every dict the reference decoded, some with optional keys left out,
    #    plus versions 0..31 which encode allows though decode only takes 1.
    objs = []
    for r in refs:
        if "error" in r:
            continue
        d = dict(r)
        if rng.random() < 0.2:
            d.pop("version")
        if d["buffer"] is None and rng.random() < 0.3:
            del d["buffer"], d["total"]
        if rng.random() < 0.1:
            d["version"] = rng.randint(0, 31)
        objs.append(d)
    ref_hex = [ref_encode(d) for d in objs]
    for d, h in zip(objs, ref_hex):
        if not isinstance(h, str):
            fail("reference failed to encode a decoded dict (reference bug)", json.dumps(d), h, None)
    proc = run(dabs, "encode", "".join(json.dumps(d) + "\n" for d in objs))
    got = proc.stdout.splitlines()
    if proc.returncode != 0 or len(got) != len(objs):
        fail(f"mp encode on {len(objs)} valid objects: exit {proc.returncode}, {len(got)} lines, "
             f"stderr {proc.stderr.strip()[:500]!r}", "-", None, None)
    for d, h, g in zip(objs, ref_hex, got):
        if g.strip() != h:  # byte for byte, and lowercase
            fail("mp encode: bytes differ", json.dumps(d), h, g)
        else:
            passed += 1

    # 3) encode must refuse invalid objects, naming the field.
    base_single = next((r for r in refs if "error" not in r and r["buffer"] is None), None)
    base_multi = next((r for r in refs if "error" not in r and r["buffer"] is not None), None)
    if base_single is None or base_multi is None:
        fail("count too small to produce single- and multi-buffer bases", "-", None, None)
    else:
        base_single = dict(base_single, payload="")
        base_multi = dict(base_multi, payload="")
        for d, names in invalid_encodes(base_single, base_multi):
            text = json.dumps(d)
            if "error" not in ref_encode(d):
                fail("reference accepted an invalid object (reference bug)", text, ref_encode(d), None)
            proc = run(dabs, "encode", text + "\n")
            err = proc.stderr.strip()
            if proc.returncode == 0:
                fail("mp encode accepted an invalid object", text, ref_encode(d), proc.stdout.strip())
            elif not err:
                fail("mp encode failed without a message on stderr", text, ref_encode(d),
                     f"exit {proc.returncode}")
            elif not any(n in err.lower() for n in names):
                fail(f"mp encode error message does not mention {' or '.join(names)}", text,
                     ref_encode(d), err)
            else:
                passed += 1

    for what, inp, ref, got in failures[:MAX_SHOWN]:
        print(f"DISAGREEMENT (seed {seed}): {what}")
        print(f"  input: {inp}")
        print(f"  mpref: {json.dumps(ref)}")
        print(f"  dabs:  {json.dumps(got)}")
    if len(failures) > MAX_SHOWN:
        print(f"... and {len(failures) - MAX_SHOWN} more")
    print(f"codec cross-check: {passed} passed, {len(failures)} failed (seed {seed})")
    return not failures


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dabs", help="path to the dabs binary")
    ap.add_argument("--seed", type=int, default=None, help="random seed (default: from time)")
    ap.add_argument("--count", type=int, default=5000, help="datagrams to decode (default 5000)")
    ap.add_argument("--self-test", action="store_true", help="test mpref only; no binary needed")
    args = ap.parse_args()

    if args.self_test:
        sys.exit(0 if self_test() else 1)
    if not args.dabs:
        ap.error("--dabs is required unless --self-test")
    if not os.path.isfile(args.dabs):
        ap.error(f"no such binary: {args.dabs}")
    seed = args.seed if args.seed is not None else time.time_ns() % 2**32
    print(f"seed {seed}")
    sys.exit(0 if cross_check(args.dabs, seed, args.count) else 1)


if __name__ == "__main__":
    main()
