"""What a stage task's staged rows add to the catalog, computed on their Arrow columns as they are staged.

For every staged column a task keeps a :class:`ColumnSummary`: the non-null count, the bounds
(values; the length of text; booleans as 0 and 1), the exact sum of numbers, the exact count of
every value while the column has at most :data:`VALUE_LIMIT` of them, and the HyperLogLog
registers of its values. The driver merges the tasks' summaries (:func:`merge`), and the merge
takes from them what it would otherwise compute by scanning the staged rows in PostgreSQL.

Each piece is exactly what the SQL over the staged rows gives: values are read as PostgreSQL reads
the staged text (so ``+5`` is 5, ``1.50`` keeps its scale, ``1.234e+02`` is the double 123.4), counted
under the text PostgreSQL prints for them (``value::text``), and hashed with PostgreSQL's own hash
functions (:mod:`streaming.pghash`). A piece that cannot be computed exactly for a column (a value
past 64-bit integers, a double too small for a decimal sum, a JSON column) is left out of that
column's summary, and the merge computes it in SQL as before: nothing here is an approximation.

Pure; runs where the row stage runs (executor tasks, or the driver).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import decimal
import math
from decimal import Decimal
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from streaming import pghash

VALUE_LIMIT = 50  # columns with at most this many distinct values keep exact value counts (the catalog's limit)
SAMPLE_ROWS = 10_000  # a column with more than VALUE_LIMIT values in its first rows is counted no further
RAW_LIMIT = 2_000  # distinct spellings of numbers converted to their text one by one, per block
PIECES = frozenset({"aggregate", "values", "registers"})
INTEGERS = ("smallint", "integer", "bigint")
SUMMARIZED = (*INTEGERS, "numeric", "double precision", "date", "timestamp", "timestamptz", "boolean", "text")
_MAX_I64 = 2**63 - 1
MANY = "many"  # value_counts(): more values than VALUE_LIMIT
# Sums and merged sums are exact: no rounding to the default 28 digits.
_EXACT = decimal.Context(prec=1000, Emax=decimal.MAX_EMAX, Emin=decimal.MIN_EMIN)
_EPOCH = dt.datetime(1970, 1, 1)


@dataclasses.dataclass
class ColumnSummary:
    """One column's share of the catalog statistics, from the rows one or more tasks staged.

    Attributes:
        kind: the PostgreSQL type the values were read as.
        count: non-null values.
        lo / hi: the smallest and largest value as ``min``/``max`` return them through psycopg2 (the
            length for text, 0 or 1 for booleans); None without values.
        total: the exact sum of a numeric column (int, or Decimal for numerics and doubles, whose SQL
            sums are numeric); None for other types.
        values: text as PostgreSQL prints it -> rows, while there are at most :data:`VALUE_LIMIT`;
            None past the limit.
        registers: HyperLogLog registers (:mod:`streaming.pghash`) of the values, as bytes.
        exact: the pieces computed exactly ("aggregate": count, bounds and total; "values";
            "registers"); the merge computes the others in SQL.
    """

    kind: str
    count: int = 0
    lo: Any = None
    hi: Any = None
    total: Any = None
    values: dict | None = dataclasses.field(default_factory=dict)
    registers: bytes | None = None
    exact: frozenset = PIECES


class ColumnSummarizer:
    """Accumulates one column's :class:`ColumnSummary` over the blocks a task stages."""

    def __init__(self, kind: str):
        self.summary = ColumnSummary(kind, exact=PIECES if kind in SUMMARIZED else frozenset())
        self._registers = np.zeros(pghash.HLL_M, np.uint8)
        self._sampled = 0  # rows looked at by the sample check of the value counts
        self._scale: int | None = None  # numerics: the scale the blocks so far were read at

    def add(self, values: pa.Array) -> None:
        """Add a block of the column's staged values (cleaned text, or booleans; NULL for null)."""
        s = self.summary
        if not s.exact:
            return
        present = values.drop_null() if values.null_count else values
        if not len(present):
            return
        try:
            typed = _read(present, s.kind, self._scale)
            self._scale = getattr(typed, "scale", None)
            if "aggregate" in s.exact:
                if typed.aggregated:
                    self._aggregate(typed)
                else:
                    s.exact -= {"aggregate"}
            if "values" in s.exact and s.values is not None:
                self._count(typed)
            if "registers" in s.exact:
                # A value set's registers need each value once: while the column is counted (few
                # values), only its distinct spellings are hashed.
                counted = "values" in s.exact and s.values is not None
                hashes = (_read(pc.unique(present), s.kind, self._scale) if counted else typed).hashes()
                if hashes is None:
                    s.exact -= {"registers"}
                else:
                    pghash.registers(hashes, self._registers)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, ValueError, ArithmeticError):
            # Values this module cannot read as PostgreSQL does: the merge's SQL reads the column.
            s.exact = frozenset()

    def _aggregate(self, typed: "_Typed") -> None:
        s = self.summary
        s.count += typed.count
        if typed.lo is not None:
            s.lo = typed.lo if s.lo is None else min(s.lo, typed.lo)
            s.hi = typed.hi if s.hi is None else max(s.hi, typed.hi)
        if typed.total is not None:
            s.total = typed.total if s.total is None else _EXACT.add(s.total, typed.total)

    def _count(self, typed: "_Typed") -> None:
        s = self.summary
        if self._sampled < SAMPLE_ROWS:
            # A column with many values shows it in its first rows: counting stops there.
            head = typed.head(SAMPLE_ROWS - self._sampled)
            self._sampled += head
            if typed.distinct_at_least(head) > VALUE_LIMIT:
                s.values = None
                return
        counted = typed.value_counts()
        if counted is MANY:
            s.values = None
            return
        if counted is None:  # too many spellings to tell how many values they are
            s.exact -= {"values"}
            return
        for text, n in counted:
            s.values[text] = s.values.get(text, 0) + n
        if len(s.values) > VALUE_LIMIT:
            s.values = None

    def result(self) -> ColumnSummary:
        s = self.summary
        if "registers" in s.exact:
            s.registers = self._registers.tobytes()
        if "values" not in s.exact:
            s.values = None
        return s


def merge(summaries: list[ColumnSummary]) -> ColumnSummary | None:
    """One column's summary over several tasks' (None when they read it as different types)."""
    if not summaries or len({s.kind for s in summaries}) != 1:
        return None
    out = ColumnSummary(summaries[0].kind, exact=frozenset.intersection(*(s.exact for s in summaries)))
    for s in summaries:
        out.count += s.count
        if s.lo is not None:
            out.lo = s.lo if out.lo is None else min(out.lo, s.lo)
            out.hi = s.hi if out.hi is None else max(out.hi, s.hi)
        if s.total is not None:
            out.total = s.total if out.total is None else _EXACT.add(out.total, s.total)
        if out.values is not None:
            if s.values is None:
                out.values = None
            else:
                for text, n in s.values.items():
                    out.values[text] = out.values.get(text, 0) + n
                if len(out.values) > VALUE_LIMIT:
                    out.values = None
    if "registers" in out.exact:
        registers = np.zeros(pghash.HLL_M, np.uint8)
        for s in summaries:
            np.maximum(registers, np.frombuffer(s.registers, np.uint8), out=registers)
        out.registers = registers.tobytes()
    return out


# --- reading a block as PostgreSQL reads it -----------------------------------------------------


class _Typed:
    """A block's non-null values read as one type: their aggregates, value counts and hashes."""

    def __init__(self, raw: pa.Array):
        self.raw = raw
        self.count = len(raw)
        self.lo = self.hi = self.total = None
        self.aggregated = True  # count, bounds and total are exact

    def head(self, rows: int) -> int:
        return min(rows, self.count)

    def keys(self) -> pa.Array:
        """The values as an array whose distinct values are the distinct texts."""
        raise NotImplementedError

    def text(self, key) -> str:
        """The text PostgreSQL prints for the value of a key."""
        raise NotImplementedError

    def distinct_at_least(self, rows: int) -> int:
        """A lower bound of the distinct texts among the first ``rows`` values."""
        return len(pc.unique(self.keys().slice(0, rows)))

    def value_counts(self) -> list[tuple[str, int]] | str | None:
        """(text, rows) of every value, :data:`MANY`, or None when that cannot be told cheaply."""
        counted = pc.value_counts(self.keys())
        if len(counted) > VALUE_LIMIT:
            return MANY
        keys, counts = counted.field(0).to_pylist(), counted.field(1).to_pylist()
        return [(self.text(k), n) for k, n in zip(keys, counts)]

    def hashes(self) -> np.ndarray | None:
        """The catalog's hash of every value (:func:`connectors.stats._hash_of`), or None."""
        raise NotImplementedError


class _Text(_Typed):
    def __init__(self, raw):
        super().__init__(raw)
        lengths = pc.min_max(pc.utf8_length(raw))
        self.lo, self.hi = lengths["min"].as_py(), lengths["max"].as_py()

    def keys(self):
        return self.raw

    def text(self, key):
        return key

    def hashes(self):
        return pghash.text(self.raw)


class _Integers(_Typed):
    def __init__(self, raw):
        super().__init__(raw)
        self.numbers = pc.cast(_unsigned(raw), pa.int64()).to_numpy(zero_copy_only=False)
        self.lo, self.hi = int(self.numbers.min()), int(self.numbers.max())
        self.total = _exact_sum(self.numbers)

    def keys(self):
        return pa.array(self.numbers)

    def text(self, key):
        return str(key)

    def hashes(self):
        return pghash.int8(self.numbers)


class _Dates(_Typed):
    def __init__(self, raw):
        super().__init__(raw)
        self.days = pc.cast(raw, pa.date32())
        bounds = pc.min_max(self.days)
        self.lo, self.hi = bounds["min"].as_py(), bounds["max"].as_py()

    def keys(self):
        return self.days

    def text(self, key):
        return key.isoformat()

    def hashes(self):
        return pghash.date(self.days.cast(pa.int32()).to_numpy(zero_copy_only=False))


class _Timestamps(_Typed):
    def __init__(self, raw, zoned: bool):
        super().__init__(raw)
        self.zoned = zoned
        self.micros = _micros(raw, zoned)
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


class _Booleans(_Typed):
    def __init__(self, raw):
        super().__init__(raw)
        truth = pc.sum(raw.cast(pa.int64())).as_py() or 0
        self.lo = 0 if truth < self.count else 1
        self.hi = 1 if truth else 0

    def keys(self):
        return self.raw

    def text(self, key):
        return "true" if key else "false"

    def hashes(self):
        return pghash.int4(self.raw.cast(pa.int32()).to_numpy(zero_copy_only=False))


class _Decimals(_Typed):
    """Numbers written in decimal (numeric, double precision), counted by their spellings, each
    spelling turned into its text once."""

    def keys(self):
        return self.raw

    def value_counts(self):
        counted = pc.value_counts(self.raw)
        if len(counted) > RAW_LIMIT:
            # Spellings of one value share its text: so many spellings prove many values only if they
            # are many numbers too.
            return MANY if self.distinct_at_least(self.count) > VALUE_LIMIT else None
        texts: dict[str, int] = {}
        for raw, n in zip(counted.field(0).to_pylist(), counted.field(1).to_pylist()):
            text = self.text(raw)
            texts[text] = texts.get(text, 0) + n
        return MANY if len(texts) > VALUE_LIMIT else list(texts.items())

    def distinct_at_least(self, rows: int) -> int:
        # Distinct doubles: a lower bound of the distinct values (two numbers may round to one
        # double), and of the distinct texts.
        return len(pc.unique(pc.cast(_unsigned(self.raw.slice(0, rows)), pa.float64())))


class _Numerics(_Decimals):
    """Numerics as 64-bit integers at one scale (the largest the values were written with)."""

    def __init__(self, raw, scale: int | None = None):
        super().__init__(raw)
        self.scale, self.unscaled = _unscaled(raw, scale)
        self.total = Decimal(_exact_sum(self.unscaled)).scaleb(-self.scale, _EXACT)
        # The bounds as written (their own scale, as SQL's min and max return them).
        self.lo = Decimal(_numeric_text(raw[int(np.argmin(self.unscaled))].as_py()))
        self.hi = Decimal(_numeric_text(raw[int(np.argmax(self.unscaled))].as_py()))

    def text(self, key):
        return _numeric_text(key)

    def hashes(self):
        # Base-10000 digits aligned on the decimal point: the scale rounded up to a multiple of 4,
        # the value scaled by the rest. Scaled, it could pass 64 bits, so its halves are scaled
        # apart: value = high * 10^8 + low, and 10^8 is two base-10000 digits.
        aligned = -(-self.scale // 4) * 4
        factor = 10 ** (aligned - self.scale)
        value = np.abs(self.unscaled).astype(np.uint64)  # the sign is not hashed (zero: no digits)
        biggest = int(value.max()) * factor if len(value) else 0
        width = max(1, -(-len(str(biggest)) // 4))  # base-10000 digits of the largest value
        if width <= 4:  # below 10^16 after scaling: one 64-bit integer holds it
            rest = value * np.uint64(factor)
            digits = np.empty((len(value), width), np.int16)
            for j in range(width - 1, -1, -1):
                digits[:, j] = rest % np.uint64(10000)
                rest = rest // np.uint64(10000)
        else:
            low = (value % np.uint64(100_000_000)) * np.uint64(factor)
            high = (value // np.uint64(100_000_000)) * np.uint64(factor) + low // np.uint64(100_000_000)
            digits = np.empty((len(value), width), np.int16)
            digits[:, width - 1] = low % np.uint64(10000)
            digits[:, width - 2] = (low // np.uint64(10000)) % np.uint64(10000)
            for j in range(width - 3, -1, -1):
                digits[:, j] = high % np.uint64(10000)
                high = high // np.uint64(10000)
        return pghash.numeric(digits, np.full(len(value), width - 1 - aligned // 4, np.int64))


class _Doubles(_Decimals):
    def __init__(self, raw):
        super().__init__(raw)
        self.numbers = pc.cast(_unsigned(raw), pa.float64()).to_numpy(zero_copy_only=False)
        self.lo, self.hi = float(self.numbers.min()), float(self.numbers.max())
        self.total = _float8_numeric_sum(self.numbers)
        self.aggregated = self.total is not None

    def text(self, key):
        return float8_text(float(key))

    def hashes(self):
        return pghash.float8(self.numbers)


def _read(present: pa.Array, kind: str, scale: int | None = None) -> _Typed:
    if kind == "text":
        return _Text(present)
    if kind in INTEGERS:
        return _Integers(present)
    if kind == "numeric":
        return _Numerics(present, scale)
    if kind == "double precision":
        return _Doubles(present)
    if kind == "date":
        return _Dates(present)
    if kind in ("timestamp", "timestamptz"):
        return _Timestamps(present, kind == "timestamptz")
    if kind == "boolean":
        return _Booleans(present)
    raise ValueError(f"no summary of {kind} values")


def _unsigned(raw: pa.Array) -> pa.Array:
    """Values without a leading ``+``, which PostgreSQL accepts and Arrow's casts do not."""
    if pc.any(pc.starts_with(raw, "+")).as_py():
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
        scale = _largest_scale(text)
        decimals = pc.cast(text, pa.decimal128(38, scale))
    words = np.frombuffer(decimals.buffers()[1], np.int64, count=2 * len(decimals),
                          offset=decimals.offset * 16).reshape(-1, 2)
    low, high = words[:, 0], words[:, 1]
    if not np.array_equal(high, low >> np.int64(63)):
        raise OverflowError("a numeric past 64 bits")
    return scale, low.copy()


def _largest_scale(text: pa.Array) -> int:
    """The largest scale among decimal texts (``1.50`` has 2, ``1.5e-3`` 4, ``1e5`` 0)."""
    lowered = pc.utf8_lower(text)
    exponent = np.zeros(len(text), np.int64)
    if pc.any(pc.match_substring(lowered, "e")).as_py():
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
    return int(max(0, (np.where(point >= 0, length - point - 1, 0) - exponent).max()))


def _exact_sum(numbers: np.ndarray) -> int:
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


def _float8_numeric_sum(numbers: np.ndarray) -> Decimal | None:
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
        total = _EXACT.add(total, Decimal(_exact_sum(mantissa[exponent == e])).scaleb(e, _EXACT))
    scale = max(0, int((-(exponent + zeros)).max()))
    return total.quantize(Decimal(1).scaleb(-scale), context=_EXACT)


def _numeric_text(raw: str) -> str:
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
    with decimal.localcontext(_EXACT):
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
