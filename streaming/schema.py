"""Type inference over text values: classify, join (widen) and check against a fixed type.

Values reach PostgreSQL as text and are cast there, so inference only has to answer one question per
column: which PostgreSQL type accepts every value seen, without losing information? Types form a
small lattice; :func:`join` is its least upper bound. Checks run a whole chunk of a column through
one compiled regular expression (C speed) and fall back to value-by-value classification only for
chunks that do not fit, so the common case costs no Python per value.

Runs on executors (inside file tasks) and on the driver; everything here is pure.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from collections.abc import Iterable, Sequence

TEXT = "text"
# Widening chains: a column of an existing table may move up its chain, never across chains.
SAFE_WIDENING = {
    "smallint": ("integer", "bigint", "numeric"),
    "integer": ("bigint", "numeric"),
    "bigint": ("numeric",),
    "real": ("double precision",),
    "date": ("timestamp",),
}

_MONTH_DAY = r"(?:(?:0[1-9]|1[0-2])-(?:0[1-9]|1\d|2[0-8])|(?:0[13-9]|1[0-2])-(?:29|30)|(?:0[13578]|1[02])-31)"
_DAY = rf"(?!0000)\d{{4}}-{_MONTH_DAY}"
_TIME = r"[T ](?:[01]\d|2[0-3]):[0-5]\d(?::[0-5]\d(?:\.\d{1,6})?)?"
_ZONE = r"(?:Z|[+-](?:0\d|1[0-5])(?::?[0-5]\d)?)"  # PostgreSQL accepts offsets up to 15:59
_INT9 = r"[+-]?(?:0|[1-9]\d{0,8})"
_INT18 = r"[+-]?(?:0|[1-9]\d{0,17})"
_DECIMAL = r"[+-]?(?:(?:0|[1-9]\d*)\.\d*|\.\d+)"
# A double holds any decimal of at most 15 significant digits exactly (as text round trip); longer
# mantissas are numeric. The lookahead bounds digits plus point to 16 characters.
_SHORT = r"(?=[\d.]{1,16}(?:[eE\n]|\Z))"
_DECIMAL15 = rf"[+-]?{_SHORT}(?:(?:0|[1-9]\d*)\.\d*|\.\d+)"
_FLOAT = rf"[+-]?{_SHORT}(?:(?:0|[1-9]\d*)(?:\.\d*)?|\.\d+)[eE][+-]?\d{{1,2}}"


def _value_patterns(day: str, decimal15: str, floating: str) -> dict[str, str]:
    """One pattern per type: what a single value of that type looks like, from the dialect's patterns
    of a day, a decimal a double holds exactly and a number with an exponent."""
    return {
        "integer": _INT9,
        "bigint": _INT18,
        "numeric": rf"(?:{_INT18}|{_DECIMAL}|{floating})",
        "double precision": rf"(?:{_INT9}|{decimal15}|{floating})",
        "date": day,
        "timestamp": rf"{day}(?:{_TIME})?",
        "timestamptz": rf"{day}{_TIME}{_ZONE}",
    }


def _short_decimal(chars: int) -> str:
    """``(?:0|[1-9]\\d*)\\.\\d*|\\.\\d+`` of at most ``chars`` digits and points, without a lookahead."""
    alternatives = [rf"0\.\d{{0,{chars - 2}}}", rf"\.\d{{1,{chars - 1}}}"]
    alternatives += [rf"[1-9]\d{{{k - 1}}}\.\d{{0,{chars - 1 - k}}}" for k in range(1, chars)]
    return "(?:" + "|".join(alternatives) + ")"


# Python's patterns (fast path, no calendar check for 29 February, which goes to the slow path).
_VALUE = _value_patterns(_DAY, _DECIMAL15, _FLOAT)
# The same patterns for RE2 (Arrow's compute kernels, see streaming.vectorized), which has no
# lookarounds: the year 0000 is spelled out as the years it excludes, and the bound of 16 digits and
# points as the positions the point can take. tests/test_vectorized.py checks both accept the same.
RE2_VALUE = _value_patterns(
    rf"(?:[1-9]\d{{3}}|0[1-9]\d{{2}}|00[1-9]\d|000[1-9])-{_MONTH_DAY}",
    rf"[+-]?{_short_decimal(16)}",
    rf"[+-]?(?:0|[1-9]\d{{0,15}}|{_short_decimal(16)})[eE][+-]?\d{{1,2}}")
_CHUNK = {t: re.compile(rf"(?:{p})(?:\n(?:{p}))*") for t, p in _VALUE.items()}
_ONE = {t: re.compile(p) for t, p in _VALUE.items()}
_INT_ANY = re.compile(r"[+-]?(?:0|[1-9]\d*)")
_DEC_ANY = re.compile(_DECIMAL)
_FLOAT_ANY = re.compile(r"[+-]?(?:(?:0|[1-9]\d*)(?:\.\d*)?|\.\d+)[eE][+-]?\d+")
_DATE_SHAPE = re.compile(r"(?!0000)\d{4}-\d{2}-\d{2}")
_TS_SHAPE = re.compile(r"(\d{4}-\d{2}-\d{2})[T ](\d{2}):(\d{2})(?::(\d{2})(?:\.\d{1,6})?)?(" + _ZONE + ")?")

INT32 = 2**31 - 1
INT64 = 2**63 - 1


def join(a: str | None, b: str | None) -> str:
    """Least upper bound of two inferred types (``None`` = only NULLs seen so far)."""
    if a is None:
        return b or TEXT
    if b is None or a == b:
        return a
    pair = {a, b}
    ints = ("smallint", "integer", "bigint", "numeric")
    if pair <= set(ints):
        return max(pair, key=ints.index)
    if pair <= {"smallint", "integer", "real", "double precision"}:
        return "double precision"
    if pair <= {"bigint", "numeric", "real", "double precision"}:
        return "numeric"
    if pair == {"date", "timestamp"}:
        return "timestamp"
    return TEXT


def classify(value: str, bool_tokens: frozenset[str]) -> str:
    """The narrowest type that holds ``value`` (already trimmed, never a null token) losslessly."""
    if value.lower() in bool_tokens:
        return "boolean"
    if _INT_ANY.fullmatch(value):
        digits = value.lstrip("+-")
        if len(digits) > 18 and abs(int(value)) > INT64:
            return TEXT  # very long digit strings are identifiers, not numbers
        return "integer" if abs(int(value)) <= INT32 else "bigint"
    if _DEC_ANY.fullmatch(value):
        return "numeric"
    if _FLOAT_ANY.fullmatch(value):
        mantissa = re.split("[eE]", value)[0]
        digits = sum(c.isdigit() for c in mantissa.lstrip("+-0."))
        f = float(value)
        zero = not any(c in "123456789" for c in mantissa)
        if digits > 15 or (f == 0.0 and not zero) or not (zero or 1e-300 < abs(f) < 1e300):
            return "numeric"  # more digits or range than a double holds exactly
        return "double precision"
    if _DATE_SHAPE.fullmatch(value):
        return "date" if _valid_date(value) else TEXT
    match = _TS_SHAPE.fullmatch(value)
    if match and _valid_date(match.group(1)) and int(match.group(2)) < 24 and int(match.group(3)) < 60 \
            and int(match.group(4) or 0) < 60:
        return "timestamptz" if match.group(5) else "timestamp"
    return TEXT


def _valid_date(text: str) -> bool:
    try:
        dt.date.fromisoformat(text)
    except ValueError:
        return False
    return True


def fits(value: str, target: str, bool_tokens: frozenset[str]) -> bool:
    """Whether PostgreSQL casts ``value`` to ``target`` exactly (used for hinted and table types)."""
    if target == TEXT:
        return True
    if target == "jsonb":
        try:
            json.loads(value)
        except ValueError:
            return False
        return True
    if target == "boolean":
        return value.lower() in bool_tokens
    if target in _INT_RANGE:
        return bool(_INT_LOOSE.fullmatch(value)) and abs(int(value)) <= _INT_RANGE[target]
    if target == "numeric":
        return bool(_INT_LOOSE.fullmatch(value) or _DEC_LOOSE.fullmatch(value) or _FLOAT_ANY.fullmatch(value))
    if target in ("real", "double precision"):
        if not (_INT_LOOSE.fullmatch(value) or _DEC_LOOSE.fullmatch(value) or _FLOAT_ANY.fullmatch(value)):
            return False
        f = abs(float(value))
        limit = 1e38 if target == "real" else 1e308
        return f == 0.0 or (1 / limit < f < limit)
    return classify(value, bool_tokens) in _TEMPORAL_ACCEPTS.get(target, ())


_INT_LOOSE = re.compile(r"[+-]?\d+")
_DEC_LOOSE = re.compile(r"[+-]?(?:\d+\.\d*|\.\d+)")
_TEMPORAL_ACCEPTS = {
    "date": ("date",),
    "timestamp": ("date", "timestamp"),
    "timestamptz": ("date", "timestamp", "timestamptz"),
}
_INT_RANGE = {"smallint": 32767, "integer": INT32, "bigint": INT64}


class ColumnTyper:
    """Tracks one column's type across chunks of values.

    Args:
        fixed: a type the values must fit; failing values are reported as bad rows. With ``loose``
            (a type set in config) it accepts whatever PostgreSQL casts exactly (``007`` as 7);
            otherwise (a table's type that may not change) only lossless values.
        widen_from: the table's current type when it may widen along :data:`SAFE_WIDENING`; values
            fitting no safe widening are reported as bad rows.
        formats: extra date/timestamp formats (``strptime`` directives) besides ISO 8601; a column
            uses one of them, recorded in :attr:`format`.
        Neither ``fixed`` nor ``widen_from``: a new column, typed by the join of everything seen
        (mixed values become text).

    Attributes:
        current: the type so far (None while only NULLs were seen).
        wanted: for a fixed, non-loose type, the safe widening some values would have needed.
        format: the non-ISO date format the column's values use, if any.
    """

    __slots__ = ("current", "fixed", "loose", "widenable", "bool_tokens", "_bool_chunk", "formats", "format",
                 "wanted")
    checks = True  # whether check() looks at the values (False: every value fits, as a subclass knows)
    jsonb_as_is = False  # whether its values are JSON that jsonb takes as they are (staged as jsonb)

    def __init__(self, bool_tokens: frozenset[str], fixed: str | None = None, widen_from: str | None = None,
                 loose: bool = False, formats: Sequence[str] = ()):
        self.bool_tokens = bool_tokens
        value = "|".join(re.escape(t) for t in sorted(bool_tokens, key=len, reverse=True))
        self._bool_chunk = re.compile(rf"(?i:{value})(?:\n(?i:{value}))*") if bool_tokens else None
        self.fixed = fixed
        self.loose = loose and fixed is not None
        self.current = fixed or widen_from
        self.widenable = (widen_from,) + SAFE_WIDENING.get(widen_from, ()) if widen_from else None
        self.formats = tuple(formats)
        self.format: str | None = None
        self.wanted: str | None = None

    def check(self, values: Sequence[str | None], joined: str | None = None, has_null: bool = True) -> list[int]:
        """Observe a chunk (``None`` = NULL); return the positions of values that cannot be loaded.

        ``joined`` is the non-NULL values joined by newlines, when the caller already has it.
        """
        current = self.current
        if current == TEXT:
            return []
        present = values if not has_null else [v for v in values if v is not None]
        if not present:
            return []
        if current is None:  # a new column's first values: guess from the first, confirm below
            current = self._classify(present[0])
        if self._chunk_fits(present, current, joined):
            self.current = current
            return []
        bad = []
        for i, value in enumerate(values):
            if value is None or self._value_fits(value, current):
                continue
            kind = self._classify(value)
            wider = join(current, kind)
            if self.fixed is not None:
                if not self.loose and wider in SAFE_WIDENING.get(self.fixed, ()):
                    self.wanted = join(self.wanted, wider) if self.wanted else wider
                bad.append(i)
            elif self.widenable is not None and wider not in self.widenable:
                bad.append(i)
            else:
                current = wider
        self.current = current
        return bad

    def guess(self, value: str) -> str:
        """The type a new column's first value suggests (what :meth:`check` starts from)."""
        return self._classify(value)

    def _classify(self, value: str) -> str:
        kind = classify(value, self.bool_tokens)
        if kind == TEXT and self.formats:
            for fmt in ((self.format,) if self.format else self.formats):
                parsed = _parse_with(value, fmt)
                if parsed is not None:
                    self.format = fmt
                    return parsed
        return kind

    def _chunk_fits(self, present: Sequence[str], target: str, joined: str | None) -> bool:
        pattern = self._bool_chunk if target == "boolean" else _CHUNK.get(target)
        if pattern is None:
            return all(self._value_fits(v, target) for v in present)
        if joined is None:
            joined = "\n".join(present)
        # A value holding a line break would look like two values; the count check catches that.
        if pattern.fullmatch(joined) is not None and joined.count("\n") == len(present) - 1:
            return True
        return self.format is not None and all(self._value_fits(v, target) for v in present)

    def _value_fits(self, value: str, target: str) -> bool:
        pattern = _ONE.get(target)
        if pattern is not None and pattern.fullmatch(value):
            return True
        if self.format is not None and target in _TEMPORAL_ACCEPTS:
            kind = _parse_with(value, self.format)
            if kind is not None:
                return kind in _TEMPORAL_ACCEPTS[target]
        if self.loose:  # a configured type: whatever PostgreSQL casts exactly
            return fits(value, target, self.bool_tokens)
        # An inferred or table type: only values that keep all their information (007 is not 7).
        if target == TEXT:
            return True
        if target == "boolean":
            return value.lower() in self.bool_tokens
        kind = classify(value, self.bool_tokens)
        return kind != "boolean" and join(kind, target) == target

    def describe_failure(self, value: str) -> str:
        target = self.fixed or self.current or TEXT
        if self.loose:
            return f"value {_short(value)} is not a valid {self.fixed} (type set in config)"
        kind = classify(value, self.bool_tokens)
        if self.fixed is not None:
            return f"value {_short(value)} ({kind}) does not fit column type {target}, which may not change"
        return f"value {_short(value)} does not fit column type {target} and {kind} is not a safe widening of it"


_TIME_DIRECTIVES = ("%H", "%I", "%M", "%S", "%f", "%p")


def _parse_with(value: str, fmt: str) -> str | None:
    """'date' or 'timestamp' if ``value`` parses with the strptime format ``fmt``, else None."""
    try:
        dt.datetime.strptime(value, fmt)
    except ValueError:
        return None
    return "timestamp" if any(d in fmt for d in _TIME_DIRECTIVES) else "date"


# strptime directive -> PostgreSQL to_timestamp pattern, for formats a user may configure.
# %y is left out: Python and PostgreSQL disagree on the century of two-digit years.
PG_FORMAT = {"%Y": "YYYY", "%m": "MM", "%d": "DD", "%H": "HH24", "%I": "HH12", "%M": "MI",
             "%S": "SS", "%f": "US", "%p": "AM", "%b": "Mon", "%B": "Month", "%j": "DDD", "%%": "%"}


def pg_format(fmt: str) -> str:
    """The PostgreSQL ``to_timestamp`` pattern of a strptime format (validated by the config)."""
    out, i = [], 0
    while i < len(fmt):
        if fmt[i] == "%":
            out.append(PG_FORMAT[fmt[i:i + 2]])
            i += 2
        else:
            out.append('"' + fmt[i] + '"' if fmt[i].isalpha() else fmt[i])
            i += 1
    return "".join(out)


def _short(value: str, limit: int = 60) -> str:
    return repr(value if len(value) <= limit else value[:limit] + "…")


def bool_token_set(true_tokens: Iterable[str], false_tokens: Iterable[str]) -> frozenset[str]:
    return frozenset(t.lower() for t in (*true_tokens, *false_tokens))
