"""Staged column blocks read as PostgreSQL reads their text: typed once, for the catalog and for COPY.

A stage task's clean values are text (or booleans) that the staging table's types accept as they
are. :func:`read` reads a block of them as the PostgreSQL type, exactly as the server would read
the text (``+5`` is 5, ``1.50`` keeps its scale, ``1.234e+02`` is the double 123.4, a timestamp
without a zone is UTC), into NumPy arrays. From that one reading come

* the block's share of the catalog statistics (bounds, sums, value texts as ``value::text``
  prints them, hashes as the catalog's SQL hashes them), for :mod:`streaming.summaries`;
* its values in PostgreSQL's binary COPY format (:meth:`Values.fields`, :meth:`Values.parts`,
  :func:`copy_rows`), which the server stores without parsing text again.

Every reading gives what PostgreSQL gives, value for value (tests/test_summaries.py and
tests/test_vectorized.py ask PostgreSQL); a piece that cannot be computed exactly here says so
(``aggregated``, ``hashes()`` None, ``value_counts()`` None), and the caller leaves it to SQL.

Pure; runs where the row stage runs.
"""

from __future__ import annotations

import datetime as dt
import decimal
import math
from decimal import Decimal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from streaming import pghash

MANY = "many"  # Values.value_counts(): more values than asked for
# Sums are exact: no rounding to the default 28 digits.
EXACT = decimal.Context(prec=1000, Emax=decimal.MAX_EMAX, Emin=decimal.MIN_EMIN)
RAW_LIMIT = 2_000  # distinct spellings of numbers turned into their text one by one, per block
_MAX_I64 = 2**63 - 1
_EPOCH = dt.datetime(1970, 1, 1)
_PG_EPOCH_DAYS = 10957  # 1970-01-01 to 2000-01-01: PostgreSQL's binary dates and timestamps count from 2000
_PG_EPOCH_MICROS = _PG_EPOCH_DAYS * 86_400_000_000
NULL_FIELD = b"\xff\xff\xff\xff"  # a NULL in binary COPY: length -1, no bytes


def read(values: pa.Array, kind: str, scale: int | None = None) -> "Values":
    """A block of staged values (cleaned text, or booleans; NULL for null) read as ``kind``.

    ``scale``: for numerics, the scale earlier blocks were read at (a hint).

    Raises:
        ValueError: ``kind`` is not a type this module reads.
    """
    present = values.drop_null() if values.null_count else values
    reader = _READERS.get(kind)
    if reader is None:
        raise ValueError(f"no reading of {kind} values")
    out = reader(present, kind, scale)
    out.rows = len(values)
    out.valid = values.is_valid().to_numpy(zero_copy_only=False) if values.null_count else None
    return out


class Values:
    """A block's non-null values read as one type (``raw``: their text), with the rows they came from.

    Attributes:
        count: non-null values.
        rows: rows of the block (NULLs included); ``valid``: which are not NULL (None: all).
        lo / hi / total: bounds (text: lengths; booleans: 0/1) and exact sum as SQL's ``min``,
            ``max`` and ``sum`` return them through psycopg2; exact when ``aggregated``.
    """

    def __init__(self, raw: pa.Array, kind: str):
        self.raw, self.kind = raw, kind
        self.count = len(raw)
        self.rows = self.count
        self.valid: np.ndarray | None = None
        self.lo = self.hi = self.total = None
        self.aggregated = True

    # --- the catalog ---------------------------------------------------------------------------
    def keys(self) -> pa.Array:
        """The values as an array whose distinct values are the distinct texts."""
        raise NotImplementedError

    def text(self, key) -> str:
        """The text PostgreSQL prints for the value of a key (``value::text``)."""
        raise NotImplementedError

    def distinct_at_least(self, rows: int) -> int:
        """A lower bound of the distinct texts among the first ``rows`` values."""
        return len(pc.unique(self.keys().slice(0, rows)))

    def value_counts(self, limit: int) -> list[tuple[str, int]] | str | None:
        """(text, rows) of every value; :data:`MANY` past ``limit`` texts; None when that cannot
        be told cheaply."""
        counted = pc.value_counts(self.keys())
        if len(counted) > limit:
            return MANY
        keys, counts = counted.field(0).to_pylist(), counted.field(1).to_pylist()
        return [(self.text(k), n) for k, n in zip(keys, counts)]

    def hashes(self) -> np.ndarray | None:
        """The catalog's hash of every value (``connectors.stats._hash_of``), or None."""
        raise NotImplementedError

    # --- binary COPY ---------------------------------------------------------------------------
    def fields(self) -> np.ndarray | None:
        """Every row's field in binary COPY format as a NumPy structured array (a big-endian 4-byte
        ``length``, then the value in network order), for a block without NULLs of a fixed-width
        type; None for text, whose fields differ in width (see :meth:`parts`)."""
        encoded = self._encode()
        if encoded is None or self.valid is None:
            return encoded
        out = np.zeros(self.rows, encoded.dtype)
        out[self.valid] = encoded
        return out

    def parts(self) -> list[pa.Array]:
        """Every row's field as pieces for :func:`copy_rows` to join: a NULL is written as
        :data:`NULL_FIELD`, and an Arrow NULL piece as nothing."""
        encoded = self.fields()
        width = encoded.dtype.itemsize
        joined = _binary(encoded.view(np.uint8), width, self.rows, _validity(self.valid))
        return [joined.fill_null(NULL_FIELD) if self.valid is not None else joined]

    def _encode(self) -> np.ndarray | None:
        """The fields of the non-null values (see :meth:`fields`)."""
        raise NotImplementedError

    def _fixed(self, present: np.ndarray, fmt: str) -> np.ndarray:
        return _fixed_fields(present, fmt)


def _validity(valid: np.ndarray | None) -> pa.Buffer | None:
    return None if valid is None else pa.array(valid).buffers()[1]


def _binary(data: np.ndarray, width: int, rows: int, validity: pa.Buffer | None) -> pa.Array:
    """Rows of ``width`` bytes each as a binary array (NULL where ``validity`` says), on ``data``'s
    memory (no copy)."""
    offsets = np.arange(0, (rows + 1) * width, width, dtype=np.int32)
    return pa.Array.from_buffers(pa.binary(), rows, [validity, pa.py_buffer(offsets), pa.py_buffer(data)])


class _Text(Values):
    _PREFIX = b""  # bytes a field holds before the text (jsonb: its format's version)

    def __init__(self, raw, kind, scale=None):
        super().__init__(raw, kind)
        lengths = pc.min_max(pc.utf8_length(raw))
        self.lo, self.hi = lengths["min"].as_py(), lengths["max"].as_py()

    def keys(self):
        return self.raw

    def text(self, key):
        return key

    def hashes(self):
        return pghash.text(self.raw)

    def _encode(self):
        return None

    def parts(self):
        # The length (-1 for NULL), then the bytes (an Arrow NULL for NULL: nothing).
        lengths = np.full(self.rows, -1, ">i4")
        sizes = pc.binary_length(self.raw).to_numpy(zero_copy_only=False) + len(self._PREFIX)
        if self.valid is None:
            lengths[:] = sizes
            text = self.raw
        else:
            lengths[self.valid] = sizes
            text = _expand(self.raw, self.valid)
        pieces = [_binary(lengths.view(np.uint8), 4, self.rows, None)]
        if self._PREFIX:
            prefixes = np.frombuffer(self._PREFIX * self.rows, np.uint8)
            pieces.append(_binary(prefixes, len(self._PREFIX), self.rows, _validity(self.valid)))
        return pieces + [text.cast(pa.binary())]


def _expand(present: pa.Array, valid: np.ndarray) -> pa.Array:
    """``present`` placed back on the rows ``valid`` marks, NULL elsewhere."""
    index = np.full(len(valid), -1, np.int64)
    index[valid] = np.arange(len(present))
    return present.take(pa.array(index, mask=~valid))


class _Integers(Values):
    _FORMAT = {"smallint": ">i2", "integer": ">i4", "bigint": ">i8"}

    def __init__(self, raw, kind, scale=None):
        super().__init__(raw, kind)
        self.numbers = pc.cast(_unsigned(raw), pa.int64()).to_numpy(zero_copy_only=False)
        if self.count:
            self.lo, self.hi = int(self.numbers.min()), int(self.numbers.max())
        self.total = exact_sum(self.numbers)

    def keys(self):
        return pa.array(self.numbers)

    def text(self, key):
        return str(key)

    def hashes(self):
        return pghash.int8(self.numbers)

    def _encode(self):
        return self._fixed(self.numbers, self._FORMAT[self.kind])


class _Dates(Values):
    def __init__(self, raw, kind, scale=None):
        super().__init__(raw, kind)
        self.days = pc.cast(raw, pa.date32())
        bounds = pc.min_max(self.days)
        self.lo, self.hi = bounds["min"].as_py(), bounds["max"].as_py()

    def keys(self):
        return self.days

    def text(self, key):
        return key.isoformat()

    def _since_1970(self) -> np.ndarray:
        return self.days.cast(pa.int32()).to_numpy(zero_copy_only=False)

    def hashes(self):
        return pghash.date(self._since_1970())

    def _encode(self):
        return self._fixed(self._since_1970().astype(np.int32) - _PG_EPOCH_DAYS, ">i4")


class _Timestamps(Values):
    def __init__(self, raw, kind, scale=None):
        super().__init__(raw, kind)
        self.zoned = kind == "timestamptz"
        self.micros = _micros(raw, self.zoned)
        if self.count:
            self.lo, self.hi = self._datetime(int(self.micros.min())), self._datetime(int(self.micros.max()))

    def _datetime(self, micros: int) -> dt.datetime:
        value = _EPOCH + dt.timedelta(microseconds=micros)
        return value.replace(tzinfo=dt.timezone.utc) if self.zoned else value

    def keys(self):
        return pa.array(self.micros)

    def text(self, key):
        v = _EPOCH + dt.timedelta(microseconds=key)
        out = f"{v.year:04d}-{v.month:02d}-{v.day:02d} {v.hour:02d}:{v.minute:02d}:{v.second:02d}"
        if v.microsecond:
            out += f".{v.microsecond:06d}".rstrip("0")
        return out + ("+00" if self.zoned else "")

    def hashes(self):
        return pghash.timestamp(self.micros)

    def _encode(self):
        return self._fixed(self.micros - _PG_EPOCH_MICROS, ">i8")


class _Booleans(Values):
    def __init__(self, raw, kind, scale=None):
        super().__init__(raw, kind)
        truth = pc.sum(raw.cast(pa.int64())).as_py() or 0
        self.lo = 0 if truth < self.count else 1
        self.hi = 1 if truth else 0

    def keys(self):
        return self.raw

    def text(self, key):
        return "true" if key else "false"

    def _ints(self) -> np.ndarray:
        return self.raw.cast(pa.int8()).to_numpy(zero_copy_only=False)

    def hashes(self):
        return pghash.int4(self._ints())

    def _encode(self):
        return self._fixed(self._ints(), "i1")


class _Decimals(Values):
    """Numbers written in decimal (numeric, double precision), counted by their spellings, each
    spelling turned into its text once."""

    def keys(self):
        return self.raw

    def value_counts(self, limit):
        counted = pc.value_counts(self.raw)
        if len(counted) > RAW_LIMIT:
            # Spellings of one value share its text: so many spellings prove many values only if they
            # are many numbers too.
            return MANY if self.distinct_at_least(self.count) > limit else None
        texts: dict[str, int] = {}
        for raw, n in zip(counted.field(0).to_pylist(), counted.field(1).to_pylist()):
            text = self.text(raw)
            texts[text] = texts.get(text, 0) + n
        return MANY if len(texts) > limit else list(texts.items())

    def distinct_at_least(self, rows):
        # Distinct doubles: a lower bound of the distinct values (two numbers may round to one
        # double), and of the distinct texts.
        return len(pc.unique(pc.cast(_unsigned(self.raw.slice(0, rows)), pa.float64())))


class _Numerics(_Decimals):
    """Numerics as 64-bit integers at one scale (the largest the block's values were written
    with), where they fit; written back digit by digit from their text where they do not."""

    def __init__(self, raw, kind, scale=None):
        super().__init__(raw, kind)
        self._digit_rows: tuple[np.ndarray, int] | None = None
        try:
            self.scale, self.unscaled = _unscaled(raw, scale)
        except (pa.ArrowInvalid, OverflowError):  # more than 64 bits at one scale
            self.scale, self.unscaled, self.aggregated = scale, None, False
            return
        self.total = Decimal(exact_sum(self.unscaled)).scaleb(-self.scale, EXACT)
        if self.count:  # the bounds as written (their own scale, as SQL's min and max return them)
            self.lo = Decimal(numeric_text(raw[int(np.argmin(self.unscaled))].as_py()))
            self.hi = Decimal(numeric_text(raw[int(np.argmax(self.unscaled))].as_py()))

    def text(self, key):
        return numeric_text(key)

    def _digits(self) -> tuple[np.ndarray, int]:
        """Base-10000 digits of the values' magnitudes aligned on the decimal point (one row each,
        most significant first) and the weight of the first column (computed once: both the COPY
        fields and the hashes use them)."""
        if self._digit_rows is None:
            self._digit_rows = self._compute_digits()
        return self._digit_rows

    def _compute_digits(self) -> tuple[np.ndarray, int]:
        # The scale rounded up to a multiple of 4, the value scaled by the rest. Scaled, it could pass
        # 64 bits, so its halves are scaled apart: value = high * 10^8 + low, and 10^8 is two digits.
        aligned = -(-self.scale // 4) * 4
        factor = 10 ** (aligned - self.scale)
        value = np.abs(self.unscaled).astype(np.uint64)
        biggest = int(value.max()) * factor if len(value) else 0
        width = max(1, -(-len(str(biggest)) // 4))
        digits = np.empty((len(value), width), np.int16)
        if width <= 4:  # below 10^16 after scaling: one 64-bit integer holds it
            rest = value * np.uint64(factor)
            for j in range(width - 1, -1, -1):
                digits[:, j] = rest % np.uint64(10000)
                rest = rest // np.uint64(10000)
        else:
            low = (value % np.uint64(100_000_000)) * np.uint64(factor)
            high = (value // np.uint64(100_000_000)) * np.uint64(factor) + low // np.uint64(100_000_000)
            digits[:, width - 1] = low % np.uint64(10000)
            digits[:, width - 2] = (low // np.uint64(10000)) % np.uint64(10000)
            for j in range(width - 3, -1, -1):
                digits[:, j] = high % np.uint64(10000)
                high = high // np.uint64(10000)
        return digits, width - 1 - aligned // 4

    def hashes(self):
        if self.unscaled is None:
            return None
        digits, weight = self._digits()
        hashes = pghash.numeric(digits, np.full(len(digits), weight, np.int64))
        # PostgreSQL's numeric hash leaves out the sign: the catalog hashes a negative value's hash
        # again, as an int8 (see connectors.stats._hash_of).
        negative = self.unscaled < 0
        if negative.any():
            hashes[negative] = pghash.int8(hashes[negative].view(np.int64))
        return hashes

    def _encode(self):
        if self.unscaled is None:
            return None
        digits, weight = self._digits()
        width = digits.shape[1]
        fields = np.empty(self.count, dtype=[("length", ">i4"), ("ndigits", ">i2"), ("weight", ">i2"),
                                             ("sign", ">u2"), ("dscale", ">i2"), ("digits", ">i2", (width,))])
        fields["length"] = 8 + 2 * width
        fields["ndigits"] = width
        fields["weight"] = weight
        # PostgreSQL strips leading and trailing zero digits itself; the scale is each value's own.
        fields["sign"] = np.where(self.unscaled < 0, 0x4000, 0)
        fields["dscale"] = _scales(_unsigned(self.raw))
        fields["digits"] = digits
        return fields

    def parts(self):
        if self.unscaled is not None:
            return super().parts()
        # Past 64 bits: one value at a time, from its decimal digits.
        values = iter(_numeric_field(Decimal(numeric_text(v))) for v in self.raw.to_pylist())
        valid = self.valid if self.valid is not None else np.ones(self.rows, bool)
        return [pa.array([next(values) if ok else NULL_FIELD for ok in valid], pa.binary())]

    def fields(self):
        return None if self.unscaled is None else super().fields()


def _numeric_field(value: Decimal) -> bytes:
    """One numeric in binary COPY format, from its decimal digits."""
    sign, digits, exponent = value.as_tuple()
    scale = max(0, -exponent)
    text = ("".join(map(str, digits)) + "0" * max(0, exponent)).rjust(scale + 1, "0")
    integer, fraction = (text[:len(text) - scale], text[len(text) - scale:]) if scale else (text, "")
    integer = integer.lstrip("0")
    integer = "0" * (-len(integer) % 4) + integer
    fraction = fraction + "0" * (-len(fraction) % 4)
    groups = [int(integer[i:i + 4]) for i in range(0, len(integer), 4)] + \
             [int(fraction[i:i + 4]) for i in range(0, len(fraction), 4)]
    weight = len(integer) // 4 - 1
    head = len(groups).to_bytes(2, "big") + weight.to_bytes(2, "big", signed=True) + \
        (0x4000 if sign else 0).to_bytes(2, "big") + scale.to_bytes(2, "big")
    body = head + b"".join(g.to_bytes(2, "big") for g in groups)
    return len(body).to_bytes(4, "big") + body


class _Doubles(_Decimals):
    def __init__(self, raw, kind, scale=None):
        super().__init__(raw, kind)
        self.numbers = pc.cast(_unsigned(raw), pa.float64()).to_numpy(zero_copy_only=False)
        if self.count:
            self.lo, self.hi = float(self.numbers.min()), float(self.numbers.max())
        self.total = float8_numeric_sum(self.numbers)
        self.aggregated = self.total is not None

    def text(self, key):
        return float8_text(float(key))

    def hashes(self):
        return pghash.float8(self.numbers)

    def _encode(self):
        return self._fixed(self.numbers, ">f8")


class _Json(_Text):
    """JSON text the row stage wrote itself, staged as ``jsonb``: PostgreSQL parses it as it takes the
    rows (in the stage tasks' sessions, once), not in each of the merge's statements that read it.
    Not read for the catalog (its statistics are SQL's, see :data:`KINDS`)."""

    _PREFIX = b"\x01"  # jsonb's binary input: a version byte, then the JSON text

    def __init__(self, raw, kind, scale=None):
        Values.__init__(self, raw, kind)
        self.aggregated = False

    def hashes(self):
        return None


_READERS = {"text": _Text, "smallint": _Integers, "integer": _Integers, "bigint": _Integers, "numeric": _Numerics,
            "double precision": _Doubles, "date": _Dates, "timestamp": _Timestamps, "timestamptz": _Timestamps,
            "boolean": _Booleans, "jsonb": _Json}
# The types whose values this module reads as PostgreSQL does (the catalog's summaries); jsonb is
# only staged.
KINDS = frozenset(_READERS) - {"jsonb"}


def copy_rows(positions: pa.Array, columns: list[Values]) -> bytes:
    """Rows in PostgreSQL's binary COPY format (no file header or trailer: :data:`COPY_HEADER`,
    :data:`COPY_TRAILER`): the field count, the positions (``_ord bigint``), then each column's
    field, in the order given (the COPY's column list must name them so).

    Runs of columns with a fixed-width value in every row are laid out as one NumPy record per row;
    text and columns with NULLs are joined to those records row by row.
    """
    rows = len(positions)
    if not rows:
        return b""
    pieces: list[pa.Array] = []
    run: list[tuple[str, np.ndarray]] = [("count", np.full(rows, 1 + len(columns), ">i2")),
                                         ("ord", _fixed_fields(positions.to_numpy(zero_copy_only=False), ">i8"))]
    for column in columns:
        fields = column.fields() if column.valid is None else None
        if fields is not None:
            run.append((f"f{len(run)}", fields))
            continue
        if run:
            pieces.append(_records(run, rows))
            run = []
        pieces += column.parts()
    if run:
        pieces.append(_records(run, rows))
    if len(pieces) == 1:
        return _bytes(pieces[0])
    return _bytes(pc.binary_join_element_wise(*pieces, b"", null_handling="skip"))


def _records(run: list[tuple[str, np.ndarray]], rows: int) -> pa.Array:
    """Fields laid out one record per row, as a binary array of the records."""
    records = np.empty(rows, [(name, fields.dtype) for name, fields in run])
    for name, fields in run:
        records[name] = fields
    return _binary(records.view(np.uint8), records.dtype.itemsize, rows, None)


def _bytes(array: pa.Array) -> bytes:
    """The bytes of a binary array's values, end to end."""
    offsets = np.frombuffer(array.buffers()[1], np.int32, count=len(array) + 1, offset=array.offset * 4)
    return array.buffers()[2].slice(int(offsets[0]), int(offsets[-1] - offsets[0])).to_pybytes()


def _fixed_fields(values: np.ndarray, fmt: str) -> np.ndarray:
    fields = np.empty(len(values), dtype=[("length", ">i4"), ("value", fmt)])
    fields["length"] = np.dtype(fmt).itemsize
    fields["value"] = values
    return fields


def fixed_width(kind: str) -> bool:
    """Whether every value of ``kind`` has a field of one width within a block (the types read here
    but text)."""
    return kind in KINDS and kind != "text"


COPY_HEADER = b"PGCOPY\n\xff\r\n\x00" + b"\x00\x00\x00\x00" + b"\x00\x00\x00\x00"  # signature, flags, no extension
COPY_TRAILER = b"\xff\xff"


# --- reading text -------------------------------------------------------------------------------


def _unsigned(raw: pa.Array) -> pa.Array:
    """Values without a leading ``+``, which PostgreSQL accepts and Arrow's casts do not."""
    if len(raw) and pc.any(pc.starts_with(raw, "+")).as_py():
        return pc.replace_substring_regex(raw, r"^\+", "")
    return raw


_ZONE = r"(?:Z|[+-]\d\d(?::?\d\d)?)$"
_TIMED = r"[T ]\d\d:\d\d"


def _micros(raw: pa.Array, zoned: bool) -> np.ndarray:
    """Microseconds since 1970 of timestamps as PostgreSQL reads them (zone-less ones as UTC)."""
    if not zoned:
        return pc.cast(raw, pa.timestamp("us")).cast(pa.int64()).to_numpy(zero_copy_only=False)
    has_zone = pc.and_(pc.match_substring_regex(raw, _TIMED), pc.match_substring_regex(raw, _ZONE))
    out = np.empty(len(raw), np.int64)
    mask = has_zone.to_numpy(zero_copy_only=False)
    if mask.any():
        out[mask] = pc.cast(raw.filter(has_zone), pa.timestamp("us", "UTC")).cast(pa.int64()).to_numpy(
            zero_copy_only=False)
    if not mask.all():
        plain = raw.filter(pc.invert(has_zone))
        out[~mask] = pc.cast(plain, pa.timestamp("us")).cast(pa.int64()).to_numpy(zero_copy_only=False)
    return out


def _unscaled(raw: pa.Array, scale: int | None) -> tuple[int, np.ndarray]:
    """(scale, each value times 10^scale as an int64): numerics as Arrow reads them exactly, at
    ``scale`` if every value fits it, else at the largest scale a value was written with.

    Raises:
        pa.ArrowInvalid / OverflowError: a value needs more than 38 digits, or 64 bits at that scale.
    """
    text = _unsigned(raw)
    decimals = None
    if scale is not None:
        try:
            decimals = pc.cast(text, pa.decimal128(38, scale))
        except pa.ArrowInvalid:  # a value written with more decimals than the blocks before
            decimals = None
    if decimals is None:
        scale = int(_scales(text).max()) if len(text) else 0
        decimals = pc.cast(text, pa.decimal128(38, scale))
    words = np.frombuffer(decimals.buffers()[1], np.int64, count=2 * len(decimals),
                          offset=decimals.offset * 16).reshape(-1, 2)
    low, high = words[:, 0], words[:, 1]
    if not np.array_equal(high, low >> np.int64(63)):
        raise OverflowError("a numeric past 64 bits")
    return scale, low.copy()


def _scales(text: pa.Array) -> np.ndarray:
    """Each decimal text's scale, as PostgreSQL keeps it (``1.50`` 2, ``1.5e-3`` 4, ``1e5`` 0)."""
    lowered = text
    exponent = np.zeros(len(text), np.int64)
    if pc.any(pc.match_substring(text, "e", ignore_case=True)).as_py():
        lowered = pc.utf8_lower(text)
        split = pc.split_pattern(lowered, "e", max_splits=1)
        lengths = pc.list_value_length(split).to_numpy(zero_copy_only=False)
        flat = pc.list_flatten(split)
        starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
        has = lengths == 2
        exponent[has] = pc.cast(_unsigned(flat.take(pa.array(starts[has] + 1))), pa.int64()).to_numpy(
            zero_copy_only=False)
        lowered = flat.take(pa.array(starts))
    point = pc.find_substring(lowered, ".").to_numpy(zero_copy_only=False)
    length = pc.utf8_length(lowered).to_numpy(zero_copy_only=False).astype(np.int64)
    return np.maximum(0, np.where(point >= 0, length - point - 1, 0) - exponent)


# --- exact sums and PostgreSQL's texts -----------------------------------------------------------


def exact_sum(numbers: np.ndarray) -> int:
    """The exact sum of int64 values (summed in chunks small enough not to overflow)."""
    if not len(numbers):
        return 0
    biggest = int(max(abs(int(numbers.min())), abs(int(numbers.max())), 1))
    chunk = _MAX_I64 // biggest
    if chunk >= len(numbers):
        return int(numbers.sum())
    if chunk < 64:
        return sum(int(v) for v in numbers.tolist())
    return sum(int(numbers[i:i + chunk].sum()) for i in range(0, len(numbers), chunk))


def float8_numeric_sum(numbers: np.ndarray) -> Decimal | None:
    """The exact sum of doubles as SQL's ``sum(x::numeric)`` takes them: each double printed with 15
    significant digits (``%.15g``), as a numeric. None where that cannot be told exactly here (a
    value near the rounding point of its 15th digit, or too large or small to scale)."""
    x = numbers[numbers != 0]
    if not len(x):
        return Decimal(0)
    size = np.abs(x)
    if size.min() < 1e-280 or size.max() > 1e280:
        return None
    # Each value as m * 10^e with m of 15 digits: scaled by a power of ten (exact up to 10^22, so
    # one rounding, an error below 0.07; below 0.2 past that) and rounded to an integer.
    exponent = np.floor(np.log10(size)).astype(np.int64) - 14
    for _ in range(3):
        power = np.power(10.0, np.abs(exponent))
        with np.errstate(over="ignore"):
            scaled = np.where(exponent <= 0, x * power, x / power)
        mantissa = np.rint(scaled)
        # log10 a hair off near a power of ten: a digit too many, or too few.
        shift = (np.abs(scaled) >= 1e15).astype(np.int64) - (np.abs(scaled) < 1e14)
        if not shift.any():
            break
        exponent = exponent + shift
    else:
        return None
    if np.abs(scaled - mantissa).max() >= 0.3:
        return None  # the 15th digit's rounding is too close to call
    mantissa = mantissa.astype(np.int64)
    # The scale of each printed value: no trailing zeros (as %g prints); counted 8, 4, 2, 1 at a time.
    zeros = np.zeros(len(mantissa), np.int64)
    rest = np.abs(mantissa)
    for step in (8, 4, 2, 1):
        ends = rest % 10**step == 0
        zeros += ends * step
        rest = np.where(ends, rest // 10**step, rest)
    total = Decimal(0)
    for e in np.unique(exponent).tolist():
        total = EXACT.add(total, Decimal(exact_sum(mantissa[exponent == e])).scaleb(e, EXACT))
    scale = max(0, int((-(exponent + zeros)).max()))
    return total.quantize(Decimal(1).scaleb(-scale), context=EXACT)


def numeric_text(raw: str) -> str:
    """A numeric as PostgreSQL prints it: positional, the scale it was written with, no negative zero."""
    value = Decimal(raw)
    text = format(value, "f")
    return text.lstrip("-") if value == 0 else text


def float8_text(value: float) -> str:
    """A double as PostgreSQL prints it (``extra_float_digits`` 1, the default): the shortest digits
    that read back as the same double, positional for decimal exponents -4 to 14, else ``1.5e+20``."""
    if value == 0:
        return "-0" if math.copysign(1.0, value) < 0 else "0"
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "Infinity" if value > 0 else "-Infinity"
    sign, digits, exponent = _shortest(value)
    point = exponent + len(digits) - 1  # the exponent of the first digit
    prefix = "-" if sign else ""
    if -4 <= point < 15:
        if exponent >= 0:
            return prefix + digits + "0" * exponent
        if point >= 0:
            return prefix + digits[:point + 1] + "." + digits[point + 1:]
        return prefix + "0." + "0" * (-point - 1) + digits
    mantissa = digits[0] + ("." + digits[1:] if len(digits) > 1 else "")
    return f"{prefix}{mantissa}e{'-' if point < 0 else '+'}{abs(point):02d}"


def _shortest(value: float) -> tuple[int, str, int]:
    """(sign, digits, exponent) of the shortest decimal strictly nearer ``value`` than any other
    double. Python's ``repr`` may also take a decimal exactly halfway to a neighbour (it reads back
    by rounding half to even); PostgreSQL's shortest-digits printer never does, and then prints the
    nearest decimal of the next length that is strictly inside."""
    sign, digits, exponent = Decimal(repr(value)).as_tuple()
    shown = "".join(map(str, digits)).rstrip("0")
    exponent += len(digits) - len(shown)
    exact = Decimal(value)
    with decimal.localcontext(EXACT):
        candidate = Decimal((sign, tuple(map(int, shown)), exponent))
        below, above = (exact + Decimal(math.nextafter(value, -math.inf))) / 2, \
            (exact + Decimal(math.nextafter(value, math.inf))) / 2
        if below < candidate < above:
            return sign, shown, exponent
        for length in range(len(shown) + 1, 18):
            sign, digits, exponent = Decimal(f"{value:.{length - 1}e}").as_tuple()
            candidate = Decimal((sign, digits, exponent))
            if below < candidate < above:
                shown = "".join(map(str, digits)).rstrip("0")
                return sign, shown, exponent + len(digits) - len(shown)
    return sign, shown, exponent
