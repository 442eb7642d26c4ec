"""Independent reference codec for MP datagrams (spec: /work/shared/spec/mp-wire.md).

Written from the spec alone, stdlib only, to cross-check the Rust implementation.
It deliberately favours obviousness over speed.

    decode(b: bytes) -> dict      raises MpError on malformed input
    encode(d: dict)  -> bytes     raises MpError on out-of-range fields

Decoded dict keys: kind, version, command, session, transaction, encrypted, crc,
minutes, seconds, ms, dst, src, buffer, total, payload (lowercase hex, without the
buffer header and without the CRC byte). buffer/total are None for a single buffer.
"""

MAX_DATAGRAM = 512
BASIC_HEADER = 12
BUFFER_HEADER = 4

# flags byte (offset 0)
F_MULTI = 0x80
F_ACK = 0x40
F_NAK = 0x20
VERSION_MASK = 0x1F
VERSION = 1

# byte 5 of the sent time
T_ENCRYPTED = 0x80
T_CRC = 0x40

KINDS = {
    "request": 0,
    "ack": F_ACK,
    "nak": F_NAK,
    "reply": F_ACK | F_NAK,  # ACK and NAK both set means REPLY
}
_KIND_BY_BITS = {v: k for k, v in KINDS.items()}

FIELDS = ("kind", "version", "command", "session", "transaction", "encrypted", "crc",
          "minutes", "seconds", "ms", "dst", "src", "buffer", "total", "payload")


class MpError(Exception):
    """Malformed datagram or invalid field; str(e) says why."""


def crc8(data: bytes) -> int:
    """CRC-8/SMBUS: poly 0x07, init 0, no reflection, no final xor."""
    crc = 0
    for byte in data:
        crc ^= byte
        for _ in range(8):
            if crc & 0x80:
                crc = ((crc << 1) ^ 0x07) & 0xFF
            else:
                crc = (crc << 1) & 0xFF
    return crc


def _u16(b: bytes, off: int) -> int:
    return (b[off] << 8) | b[off + 1]


def decode(b: bytes) -> dict:
    b = bytes(b)
    n = len(b)
    if n < BASIC_HEADER:
        raise MpError(f"datagram too short: {n} < {BASIC_HEADER}")
    if n > MAX_DATAGRAM:
        raise MpError(f"datagram too long: {n} > {MAX_DATAGRAM}")

    flags = b[0]
    multi = bool(flags & F_MULTI)
    header = BASIC_HEADER + (BUFFER_HEADER if multi else 0)
    if multi and n < header:
        raise MpError(f"MULTI set but datagram too short for buffer header: {n} < {header}")

    if multi:
        buffer, total = _u16(b, 12), _u16(b, 14)
        if total < 2:
            raise MpError(f"total {total} < 2")
        if buffer >= total:
            raise MpError(f"buffer {buffer} >= total {total}")
    else:
        buffer = total = None

    has_crc = bool(b[5] & T_CRC)
    if has_crc:
        if n < header + 1:
            raise MpError(f"CRC set but no room for CRC byte: {n} < {header + 1}")
        want = crc8(b[:-1])
        if b[-1] != want:
            raise MpError(f"CRC mismatch: got 0x{b[-1]:02x}, computed 0x{want:02x}")

    version = flags & VERSION_MASK
    if version != VERSION:
        raise MpError(f"unsupported version {version}")

    minutes = b[5] & 0x3F
    seconds = b[6] >> 2
    ms = ((b[6] & 0x03) << 8) | b[7]
    if minutes > 59:
        raise MpError(f"minutes {minutes} > 59")
    if seconds > 59:
        raise MpError(f"seconds {seconds} > 59")
    if ms > 999:
        raise MpError(f"ms {ms} > 999")

    end = n - 1 if has_crc else n
    return {
        "kind": _KIND_BY_BITS[flags & (F_ACK | F_NAK)],
        "version": version,
        "command": _u16(b, 1),
        "session": b[3],
        "transaction": b[4],
        "encrypted": bool(b[5] & T_ENCRYPTED),
        "crc": has_crc,
        "minutes": minutes,
        "seconds": seconds,
        "ms": ms,
        "dst": _u16(b, 8),
        "src": _u16(b, 10),
        "buffer": buffer,
        "total": total,
        "payload": b[header:end].hex(),
    }


def _int_field(d: dict, name: str, lo: int, hi: int) -> int:
    if name not in d:
        raise MpError(f"missing field {name}")
    v = d[name]
    # bool is an int subclass in Python; a JSON true is not a number here.
    if not isinstance(v, int) or isinstance(v, bool):
        raise MpError(f"field {name} must be an integer, got {v!r}")
    if not lo <= v <= hi:
        raise MpError(f"field {name} = {v} out of range {lo}..{hi}")
    return v


def _bool_field(d: dict, name: str) -> bool:
    if name not in d:
        raise MpError(f"missing field {name}")
    v = d[name]
    if not isinstance(v, bool):
        raise MpError(f"field {name} must be a boolean, got {v!r}")
    return v


_HEX = set("0123456789abcdefABCDEF")


def encode(d: dict) -> bytes:
    if not isinstance(d, dict):
        raise MpError("datagram must be an object")
    # Unknown keys are most likely typos; refuse them rather than silently drop data.
    unknown = set(d) - set(FIELDS)
    if unknown:
        raise MpError(f"unknown field(s) {', '.join(sorted(unknown))}")

    kind = d.get("kind")
    if kind not in KINDS:
        raise MpError(f"field kind must be one of {', '.join(KINDS)}, got {kind!r}")
    version = VERSION if d.get("version") is None else _int_field(d, "version", 0, 31)
    command = _int_field(d, "command", 0, 0xFFFF)
    session = _int_field(d, "session", 0, 0xFF)
    transaction = _int_field(d, "transaction", 0, 0xFF)
    encrypted = _bool_field(d, "encrypted")
    has_crc = _bool_field(d, "crc")
    minutes = _int_field(d, "minutes", 0, 59)
    seconds = _int_field(d, "seconds", 0, 59)
    ms = _int_field(d, "ms", 0, 999)
    dst = _int_field(d, "dst", 0, 0xFFFF)
    src = _int_field(d, "src", 0, 0xFFFF)

    buf_given = d.get("buffer") is not None
    tot_given = d.get("total") is not None
    if buf_given != tot_given:
        raise MpError("fields buffer and total must be given together")
    multi = buf_given
    if multi:
        total = _int_field(d, "total", 2, 0xFFFF)
        buffer = _int_field(d, "buffer", 0, 0xFFFF)
        if buffer >= total:
            raise MpError(f"field buffer = {buffer} must be < total = {total}")

    payload_hex = d.get("payload")
    if not isinstance(payload_hex, str):
        raise MpError(f"field payload must be a hex string, got {payload_hex!r}")
    # bytes.fromhex tolerates whitespace; the wire form does not, so check by hand.
    if len(payload_hex) % 2 or not set(payload_hex) <= _HEX:
        raise MpError("field payload is not valid hex")
    payload = bytes.fromhex(payload_hex)

    out = bytearray()
    out.append((F_MULTI if multi else 0) | KINDS[kind] | version)
    out += command.to_bytes(2, "big")
    out.append(session)
    out.append(transaction)
    out.append((T_ENCRYPTED if encrypted else 0) | (T_CRC if has_crc else 0) | minutes)
    out.append((seconds << 2) | (ms >> 8))
    out.append(ms & 0xFF)
    out += dst.to_bytes(2, "big")
    out += src.to_bytes(2, "big")
    if multi:
        out += buffer.to_bytes(2, "big")
        out += total.to_bytes(2, "big")
    out += payload
    if has_crc:
        out.append(crc8(out))
    if len(out) > MAX_DATAGRAM:
        raise MpError(f"encoded datagram too long: {len(out)} > {MAX_DATAGRAM} (payload too large)")
    return bytes(out)
