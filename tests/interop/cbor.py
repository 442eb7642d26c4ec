"""Minimal CBOR (RFC 8949) encoder/decoder, stdlib only, for the MP interop checks.

    dumps(obj, canonical=False) -> bytes
    loads(data: bytes) -> object      raises CborError on malformed or trailing input

Python <-> CBOR:
    int (-2**64 .. 2**64-1)   major 0 / 1
    bytes, bytearray          major 2 (decoded as bytes)
    str                       major 3 (UTF-8; invalid UTF-8 is an error when decoding)
    list, tuple               major 4 (decoded as list)
    dict                      major 5 (decoded as dict; duplicate keys are an error;
                                       array keys come back as tuples)
    None / True / False       simple 22 / 21 / 20
    float                     always encoded as float64 (0xfb); float16/32/64 decoded
    Tag(tag, value)           major 6 (tags 2/3, bignums, decode to int)
    UNDEFINED, Simple(n)      decoded only (simple 23 and other simple values)

The decoder also accepts indefinite-length strings, arrays and maps, since a peer may legally
send them; the encoder always writes definite lengths. Nothing is ever read past the end of
the input, and a declared length larger than what is left is an error before any allocation.

Run `python3 cbor.py` for a self-test against RFC 8949 Appendix A vectors.
"""

import math
import struct
from collections import namedtuple

__all__ = ["CborError", "Tag", "Simple", "UNDEFINED", "dumps", "loads"]

MAX_DEPTH = 200


class CborError(ValueError):
    """Malformed CBOR, or a value that cannot be encoded."""


Tag = namedtuple("Tag", "tag value")
Simple = namedtuple("Simple", "value")


class _Undefined:
    _inst = None

    def __new__(cls):
        if cls._inst is None:
            cls._inst = super().__new__(cls)
        return cls._inst

    def __repr__(self):
        return "UNDEFINED"

    def __bool__(self):
        return False


UNDEFINED = _Undefined()


# --- encoder -----------------------------------------------------------------------------

def _head(major: int, n: int) -> bytes:
    m = major << 5
    if n < 24:
        return bytes([m | n])
    if n < 0x100:
        return bytes([m | 24, n])
    if n < 0x10000:
        return bytes([m | 25]) + n.to_bytes(2, "big")
    if n < 0x100000000:
        return bytes([m | 26]) + n.to_bytes(4, "big")
    if n < 0x10000000000000000:
        return bytes([m | 27]) + n.to_bytes(8, "big")
    raise CborError(f"argument {n} does not fit in 64 bits")


def _enc(obj, out: bytearray, canonical: bool, depth: int) -> None:
    if depth > MAX_DEPTH:
        raise CborError("nesting too deep")
    if obj is None:
        out.append(0xF6)
    elif obj is True:
        out.append(0xF5)
    elif obj is False:
        out.append(0xF4)
    elif obj is UNDEFINED:
        out.append(0xF7)
    elif isinstance(obj, int):
        if 0 <= obj < 1 << 64:
            out += _head(0, obj)
        elif -(1 << 64) <= obj < 0:
            out += _head(1, -1 - obj)
        else:
            raise CborError(f"integer {obj} out of the 64-bit CBOR range")
    elif isinstance(obj, float):
        out.append(0xFB)
        out += struct.pack(">d", obj)
    elif isinstance(obj, (bytes, bytearray, memoryview)):
        b = bytes(obj)
        out += _head(2, len(b))
        out += b
    elif isinstance(obj, str):
        b = obj.encode("utf-8")
        out += _head(3, len(b))
        out += b
    elif isinstance(obj, (list, tuple)) and not isinstance(obj, (Tag, Simple)):
        out += _head(4, len(obj))
        for item in obj:
            _enc(item, out, canonical, depth + 1)
    elif isinstance(obj, dict):
        out += _head(5, len(obj))
        pairs = []
        for k, v in obj.items():
            kb = bytearray()
            _enc(k, kb, canonical, depth + 1)
            pairs.append((bytes(kb), v))
        if canonical:
            # RFC 8949 4.2.1: keys sorted by the bytewise order of their encodings.
            pairs.sort(key=lambda p: p[0])
        for kb, v in pairs:
            out += kb
            _enc(v, out, canonical, depth + 1)
    elif isinstance(obj, Tag):
        if not isinstance(obj.tag, int) or obj.tag < 0:
            raise CborError(f"bad tag number {obj.tag!r}")
        out += _head(6, obj.tag)
        _enc(obj.value, out, canonical, depth + 1)
    elif isinstance(obj, Simple):
        v = obj.value
        if not isinstance(v, int) or not (0 <= v <= 19 or 32 <= v <= 255):
            raise CborError(f"bad simple value {v!r}")
        out += bytes([0xE0 | v]) if v < 24 else bytes([0xF8, v])
    else:
        raise CborError(f"cannot encode {type(obj).__name__}")


def dumps(obj, canonical: bool = False) -> bytes:
    out = bytearray()
    _enc(obj, out, canonical, 0)
    return bytes(out)


# --- decoder -----------------------------------------------------------------------------

_BREAK = object()


class _Reader:
    def __init__(self, data: bytes):
        self.b = bytes(data)
        self.i = 0

    def take(self, n: int) -> bytes:
        if n < 0 or n > len(self.b) - self.i:
            raise CborError(f"need {n} bytes at offset {self.i}, only {len(self.b) - self.i} left")
        r = self.b[self.i:self.i + n]
        self.i += n
        return r

    def byte(self) -> int:
        return self.take(1)[0]

    def left(self) -> int:
        return len(self.b) - self.i

    def arg(self, ai: int, major: int):
        """The argument of a head; None for indefinite length (ai 31)."""
        if ai < 24:
            return ai
        if ai == 24:
            return self.byte()
        if ai == 25:
            return int.from_bytes(self.take(2), "big")
        if ai == 26:
            return int.from_bytes(self.take(4), "big")
        if ai == 27:
            return int.from_bytes(self.take(8), "big")
        if ai == 31 and major in (2, 3, 4, 5):
            return None
        raise CborError(f"reserved/invalid additional info {ai} for major type {major} "
                        f"at offset {self.i - 1}")

    def item(self, depth: int, allow_break: bool = False):
        if depth > MAX_DEPTH:
            raise CborError("nesting too deep")
        start = self.i
        ib = self.byte()
        major, ai = ib >> 5, ib & 0x1F
        if ib == 0xFF:
            if allow_break:
                return _BREAK
            raise CborError(f"unexpected break at offset {start}")
        if major == 7:
            return self.simple(ai, start)
        n = self.arg(ai, major)
        if major == 0:
            return n
        if major == 1:
            return -1 - n
        if major in (2, 3):
            if n is None:
                chunks = []
                while True:
                    if self.left() and self.b[self.i] != 0xFF and (
                            self.b[self.i] >> 5 != major or self.b[self.i] & 0x1F == 31):
                        raise CborError(f"indefinite {'byte' if major == 2 else 'text'} string "
                                        f"at offset {start} has a chunk that is not a definite "
                                        f"string of the same type")
                    c = self.item(depth + 1, allow_break=True)
                    if c is _BREAK:
                        break
                    chunks.append(c)
                return b"".join(chunks) if major == 2 else "".join(chunks)
            raw = self.take(n)
            if major == 2:
                return raw
            try:
                return raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise CborError(f"invalid UTF-8 in text string at offset {start}: {e}") from None
        if major == 4:
            items = []
            if n is None:
                while True:
                    v = self.item(depth + 1, allow_break=True)
                    if v is _BREAK:
                        return items
                    items.append(v)
            if n > self.left():  # every item takes at least one byte
                raise CborError(f"array of {n} items at offset {start} exceeds the input")
            for _ in range(n):
                items.append(self.item(depth + 1))
            return items
        if major == 5:
            d = {}
            if n is not None and 2 * n > self.left():
                raise CborError(f"map of {n} pairs at offset {start} exceeds the input")
            count = 0
            while n is None or count < n:
                k = self.item(depth + 1, allow_break=n is None)
                if k is _BREAK:
                    break
                k = _hashable(k)
                v = self.item(depth + 1)
                if k in d:
                    raise CborError(f"duplicate map key {k!r} in map at offset {start}")
                d[k] = v
                count += 1
            return d
        if major == 6:
            v = self.item(depth + 1)
            if n in (2, 3) and isinstance(v, bytes):
                big = int.from_bytes(v, "big")
                return big if n == 2 else -1 - big
            return Tag(n, v)
        raise AssertionError("unreachable")

    def simple(self, ai: int, start: int):
        if ai < 20:
            return Simple(ai)
        if ai == 20:
            return False
        if ai == 21:
            return True
        if ai == 22:
            return None
        if ai == 23:
            return UNDEFINED
        if ai == 24:
            v = self.byte()
            if v < 32:
                raise CborError(f"two-byte simple value {v} < 32 at offset {start}")
            return Simple(v)
        if ai == 25:
            return struct.unpack(">e", self.take(2))[0]
        if ai == 26:
            return struct.unpack(">f", self.take(4))[0]
        if ai == 27:
            return struct.unpack(">d", self.take(8))[0]
        raise CborError(f"reserved additional info {ai} for major type 7 at offset {start}")


def _hashable(k):
    if isinstance(k, list):
        return tuple(_hashable(x) for x in k)
    if isinstance(k, dict):
        raise CborError("map used as a map key is not supported")
    if isinstance(k, Tag):
        return Tag(k.tag, _hashable(k.value))
    return k


def loads(data) -> object:
    r = _Reader(data)
    v = r.item(0)
    if r.left():
        raise CborError(f"{r.left()} trailing byte(s) after the CBOR item")
    return v


# --- self-test ---------------------------------------------------------------------------

def _self_test() -> int:
    # (hex, value) pairs from RFC 8949 Appendix A; "enc" marks ones our encoder reproduces.
    vectors = [
        ("00", 0, True), ("01", 1, True), ("0a", 10, True), ("17", 23, True), ("1818", 24, True),
        ("1819", 25, True), ("1864", 100, True), ("1903e8", 1000, True),
        ("1a000f4240", 1000000, True), ("1b000000e8d4a51000", 1000000000000, True),
        ("1bffffffffffffffff", 18446744073709551615, True),
        ("c249010000000000000000", 18446744073709551616, False),
        ("3bffffffffffffffff", -18446744073709551616, True),
        ("20", -1, True), ("29", -10, True), ("3863", -100, True), ("3903e7", -1000, True),
        ("f90000", 0.0, False), ("f93c00", 1.0, False), ("fb3ff199999999999a", 1.1, True),
        ("f93e00", 1.5, False), ("f97bff", 65504.0, False), ("fa47c35000", 100000.0, False),
        ("fb7e37e43c8800759c", 1.0e300, True), ("f9c400", -4.0, False),
        ("fbc010666666666666", -4.1, True), ("f97c00", math.inf, False),
        ("f4", False, True), ("f5", True, True), ("f6", None, True), ("f7", UNDEFINED, True),
        ("f0", Simple(16), True), ("f8ff", Simple(255), True),
        ("40", b"", True), ("4401020304", b"\x01\x02\x03\x04", True),
        ("60", "", True), ("6161", "a", True), ("6449455446", "IETF", True),
        ("62225c", "\"\\", True), ("62c3bc", "\u00fc", True), ("63e6b0b4", "\u6c34", True),
        ("64f0908591", "\U00010151", True),
        ("80", [], True), ("83010203", [1, 2, 3], True),
        ("8301820203820405", [1, [2, 3], [4, 5]], True),
        ("a0", {}, True), ("a201020304", {1: 2, 3: 4}, True),
        ("a26161016162820203", {"a": 1, "b": [2, 3]}, True),
        ("826161a161626163", ["a", {"b": "c"}], True),
        ("5f42010243030405ff", b"\x01\x02\x03\x04\x05", False),
        ("7f657374726561646d696e67ff", "streaming", False),
        ("9fff", [], False), ("9f018202039f0405ffff", [1, [2, 3], [4, 5]], False),
        ("bf61610161629f0203ffff", {"a": 1, "b": [2, 3]}, False),
        ("c074323031332d30332d32315432303a30343a30305a",
         Tag(0, "2013-03-21T20:04:00Z"), True),
    ]
    bad = 0
    for hx, val, enc in vectors:
        got = loads(bytes.fromhex(hx))
        if got != val or type(got) is not type(val):
            print(f"decode {hx}: got {got!r}, want {val!r}")
            bad += 1
        if enc and dumps(val).hex() != hx:
            print(f"encode {val!r}: got {dumps(val).hex()}, want {hx}")
            bad += 1
    nan = loads(bytes.fromhex("f97e00"))
    if not math.isnan(nan):
        print("decode f97e00: not NaN")
        bad += 1
    for hx in ("", "18", "1c", "5f01ff", "62c3", "a1", "a20102", "8201", "ff", "0000",
               "62c328", "7f4100ff", "a2010201 02".replace(" ", ""), "f818", "9b00000000ffffffff"):
        try:
            loads(bytes.fromhex(hx))
        except CborError:
            continue
        print(f"decode {hx!r}: accepted malformed input")
        bad += 1
    sample = {"va": "mp://farm/echo/dasp/1", "addr": "127.0.0.1:5000", "queue": 3,
              "security": None, "n": [-1, 2 ** 63, -(2 ** 64), 0.5, True, False, b"\x00"]}
    if loads(dumps(sample)) != sample or loads(dumps(sample, canonical=True)) != sample:
        print("round trip failed")
        bad += 1
    print(f"cbor self-test: {'ok' if not bad else f'{bad} failure(s)'}")
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(_self_test())
