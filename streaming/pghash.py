"""PostgreSQL's 64-bit hash functions on whole columns, and the catalog's HyperLogLog registers.

The catalog sketches a column's distinct values with HyperLogLog registers of PostgreSQL's extended
hash functions (``hashtextextended``, ``hashint8extended``, ... with seed 0; see
``connectors.stats._hash_of``), so that registers computed by a SQL scan of a table and registers
computed here, in a stage task, from the rows it stages, merge into one sketch. Every function here
gives, bit for bit, the value the SQL function gives for the same value (tests/test_pghash.py asks
PostgreSQL). They are Bob Jenkins' lookup3 as PostgreSQL's ``hash_bytes_extended`` and
``hash_bytes_uint32_extended`` write it (little-endian), over NumPy arrays: a handful of whole-array
operations per 12 bytes of the longest value, no Python per value.

Pure; runs wherever the row stage runs.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

HLL_P = 14  # the low 14 bits of a hash pick the register ...
HLL_Q = 64 - HLL_P  # ... the other 50 give the rank
HLL_M = 1 << HLL_P

_U32 = np.uint32
_U64 = np.uint64
_START = 0x9E3779B9 + 3923095  # lookup3's initial state, before the length is added
_MASKS = np.array([0, 0xFF, 0xFFFF, 0xFFFFFF, 0xFFFFFFFF], dtype=np.uint32)
_EPOCH_DAYS = 10957  # 1970-01-01 to 2000-01-01, PostgreSQL's epoch
_EPOCH_MICROS = _EPOCH_DAYS * 86_400_000_000


def _rot(x: np.ndarray, k: int) -> np.ndarray:
    return (x << _U32(k)) | (x >> _U32(32 - k))


def _mix(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> None:
    a -= c
    a ^= _rot(c, 4)
    c += b
    b -= a
    b ^= _rot(a, 6)
    a += c
    c -= b
    c ^= _rot(b, 8)
    b += a
    a -= c
    a ^= _rot(c, 16)
    c += b
    b -= a
    b ^= _rot(a, 19)
    a += c
    c -= b
    c ^= _rot(b, 4)
    b += a


def _mix_in(a, b, c, wa, wb, wc) -> None:
    a += wa
    b += wb
    c += wc
    _mix(a, b, c)


def _final(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> None:
    c ^= b
    c -= _rot(b, 14)
    a ^= c
    a -= _rot(c, 11)
    b ^= a
    b -= _rot(a, 25)
    c ^= b
    c -= _rot(b, 16)
    a ^= c
    a -= _rot(c, 4)
    b ^= a
    b -= _rot(a, 14)
    c ^= b
    c -= _rot(b, 24)


def _joined(b: np.ndarray, c: np.ndarray) -> np.ndarray:
    """The 64-bit result of the extended functions: ``b`` high, ``c`` low."""
    return (b.astype(_U64) << _U64(32)) | c.astype(_U64)


def hash_bytes(data: np.ndarray, starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """``hash_bytes_extended(data[start:start + length], seed 0)`` of each (start, length).

    ``data`` is a uint8 array with at least 12 bytes after the last value (reads run past a value's
    end and are masked). Values are hashed side by side, 12 bytes a round; a round takes only the
    values still that long, so the cost follows the bytes hashed.
    """
    n = len(starts)
    if n == 0:
        return np.zeros(0, _U64)
    # Every byte offset as the start of a little-endian uint32 (a strided view, no copy).
    words = np.ndarray(shape=(len(data) - 3,), dtype="<u4", buffer=data, offset=0, strides=(1,))
    blocks = lengths // 12
    rounds = int(blocks.max())
    order = None
    if rounds > 2:  # long values: sorted longest first, round r takes a prefix
        order = np.argsort(-blocks, kind="stable")
        starts, lengths, blocks = starts[order], lengths[order], blocks[order]
        still = n - np.cumsum(np.bincount(blocks, minlength=rounds + 1))
    a = _U32(_START & 0xFFFFFFFF) + lengths.astype(_U32)
    b, c = a.copy(), a.copy()
    for r in range(rounds):
        if order is not None:
            k = int(still[r])
            at = starts[:k] + 12 * r
            _mix_in(a[:k], b[:k], c[:k], words[at], words[at + 4], words[at + 8])
        elif blocks.min() > r:  # every value has a block r
            at = starts + 12 * r
            _mix_in(a, b, c, words[at], words[at + 4], words[at + 8])
        else:
            some = np.flatnonzero(blocks > r)
            at = starts[some] + 12 * r
            aa, bb, cc = a[some], b[some], c[some]
            _mix_in(aa, bb, cc, words[at], words[at + 4], words[at + 8])
            a[some], b[some], c[some] = aa, bb, cc
    tail = starts + 12 * blocks
    rest = lengths - 12 * blocks
    a += words[tail] & _MASKS[np.clip(rest, 0, 4)]
    b += words[tail + 4] & _MASKS[np.clip(rest - 4, 0, 4)]
    c += (words[tail + 8] & _MASKS[np.clip(rest - 8, 0, 3)]) << _U32(8)  # the low byte of c: the length's
    _final(a, b, c)
    if order is None:
        return _joined(b, c)
    out = np.empty(n, _U64)
    out[order] = _joined(b, c)
    return out


def text(values: pa.Array) -> np.ndarray:
    """``hashtextextended(v, 0)`` (a deterministic collation) of each value of a string array
    without NULLs."""
    n = len(values)
    if n == 0:
        return np.zeros(0, _U64)
    width = np.int64 if values.type in (pa.large_string(), pa.large_binary()) else np.int32
    offsets = np.frombuffer(values.buffers()[1], dtype=width, count=n + 1,
                            offset=values.offset * np.dtype(width).itemsize).astype(np.int64)
    body = values.buffers()[2]
    first, last = int(offsets[0]), int(offsets[-1])
    data = np.zeros(last - first + 16, np.uint8)
    if body is not None and last > first:
        data[:last - first] = np.frombuffer(body, dtype=np.uint8, count=last - first, offset=first)
    starts = offsets[:-1] - first
    return hash_bytes(data, starts, offsets[1:] - offsets[:-1])


def uint32(values: np.ndarray) -> np.ndarray:
    """``hash_bytes_uint32_extended(k, 0)``: ``hashint4extended`` of int4 values (as uint32)."""
    a = _U32((_START + 4) & 0xFFFFFFFF) + values.astype(_U32)
    b = np.full(len(values), (_START + 4) & 0xFFFFFFFF, _U32)
    c = b.copy()
    _final(a, b, c)
    return _joined(b, c)


def int4(values: np.ndarray) -> np.ndarray:
    """``hashint4extended(v, 0)`` (dates hash as their days since 2000, booleans as 0 and 1)."""
    return uint32(values.astype(np.int64).astype(_U32))


def int8(values: np.ndarray) -> np.ndarray:
    """``hashint8extended(v, 0)``: the low half folded with the high half (inverted for negatives)."""
    values = values.astype(np.int64)
    low = values.astype(_U32)
    high = (values >> np.int64(32)).astype(_U32)
    low ^= np.where(values >= 0, high, ~high)
    return uint32(low)


def float8(values: np.ndarray) -> np.ndarray:
    """``hashfloat8extended(v, 0)``: the double's 8 bytes; zero (either sign) hashes to the seed, 0."""
    values = np.where(np.isnan(values), np.float64("nan"), values.astype(np.float64))
    data = np.zeros(len(values) * 8 + 16, np.uint8)
    data[:len(values) * 8] = values.astype("<f8").view(np.uint8)
    out = hash_bytes(data, np.arange(len(values), dtype=np.int64) * 8, np.full(len(values), 8, np.int64))
    out[values == 0] = 0
    return out


def date(days_since_1970: np.ndarray) -> np.ndarray:
    """The catalog's hash of dates: ``hashint4extended`` of the days since 2000-01-01."""
    return int4(days_since_1970.astype(np.int64) - _EPOCH_DAYS)


def timestamp(micros_since_1970: np.ndarray) -> np.ndarray:
    """``timestamp_hash_extended(v, 0)``: ``hashint8extended`` of the microseconds since 2000."""
    return int8(micros_since_1970.astype(np.int64) - _EPOCH_MICROS)


def numeric(digits: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """``hash_numeric_extended(v, 0)`` of numerics given as base-10000 digits and weights.

    ``digits`` holds one row per value, most significant digit first (int16 values 0-9999, any
    leading and trailing zero digits); ``weights[i]`` is the power of 10000 of row ``i``'s first
    digit. Like PostgreSQL, the hash strips leading and trailing zero digits, hashes the digits
    left as int16 bytes, XORs in the weight of the first one, and ignores the sign and the scale;
    zero hashes to ``seed - 1``.
    """
    n, width = digits.shape
    if n == 0:
        return np.zeros(0, _U64)
    nonzero = digits != 0
    any_digit = nonzero.any(axis=1)
    first = np.argmax(nonzero, axis=1)
    last = width - 1 - np.argmax(nonzero[:, ::-1], axis=1)
    row = width * 2 + 4  # bytes a row takes in the flat buffer (room to read past its end)
    data = np.zeros(n * row + 16, np.uint8)
    flat = data[:n * row].reshape(n, row)
    flat[:, :width * 2] = digits.astype("<i2").view(np.uint8).reshape(n, width * 2)
    starts = np.arange(n, dtype=np.int64) * row + first * 2
    lengths = np.where(any_digit, (last - first + 1) * 2, 0).astype(np.int64)
    out = hash_bytes(data, starts, lengths)
    out ^= (weights.astype(np.int64) - first).astype(_U64)
    out[~any_digit] = np.uint64(0xFFFFFFFFFFFFFFFF)
    return out


def registers(hashes: np.ndarray, into: np.ndarray | None = None) -> np.ndarray:
    """HyperLogLog registers of ``hashes`` (uint8, :data:`HLL_M` of them), merged into ``into`` if given:
    the low :data:`HLL_P` bits pick the register, which keeps the highest rank (leading zeros of the
    other :data:`HLL_Q` bits, plus one) among its values, as ``connectors.stats`` reads them in SQL."""
    out = np.zeros(HLL_M, np.uint8) if into is None else into
    if len(hashes):
        index = (hashes & _U64(HLL_M - 1)).astype(np.intp)
        rest = (hashes >> _U64(HLL_P)) & _U64((1 << HLL_Q) - 1)
        # A double holds 50-bit integers exactly, so its binary exponent is the bit length.
        rank = (HLL_Q + 1 - np.frexp(rest.astype(np.float64))[1]).astype(np.uint8)
        np.maximum.at(out, index, rank)
    return out
