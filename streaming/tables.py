"""Readable tables for the terminal (``dataops catalog show``, ``dataops status``).

Values of any kind (timestamps, lists, dicts, numbers, None) become short text through :func:`cell`;
tables wrap their widest columns to fit the terminal, 100 columns when the output is not one.
Plain text, no colours or box characters, so the output pipes and diffs well.
"""

from __future__ import annotations

import datetime as dt
import decimal
import json
import re
import shutil
import sys
import textwrap
from collections.abc import Iterable, Mapping, Sequence

DEFAULT_WIDTH = 100
GAP = "  "


def width() -> int:
    """The terminal's width when stdout is one (at most 160), else :data:`DEFAULT_WIDTH`."""
    if sys.stdout.isatty():
        return max(60, min(160, shutil.get_terminal_size((DEFAULT_WIDTH, 24)).columns))
    return DEFAULT_WIDTH


def cell(value) -> str:
    """One value as table text: ISO timestamps (UTC marked ``Z``), ``yes``/``no``, joined lists."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, dt.datetime):
        if value.tzinfo is not None:
            value = value.astimezone(dt.timezone.utc).replace(tzinfo=None)
            return value.isoformat(sep=" ", timespec="seconds") + "Z"
        return value.isoformat(sep=" ", timespec="seconds")
    if isinstance(value, (dt.date, dt.time)):
        return value.isoformat()
    if isinstance(value, dt.timedelta):
        return f"{value.total_seconds():.3f}s"
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 1 else f"{value:.6g}"
    if isinstance(value, decimal.Decimal):
        return f"{value:f}" if abs(value) < 10 ** 12 else f"{value:.6g}"
    if isinstance(value, (list, tuple, set)):
        return ", ".join(cell(v) for v in value)
    if isinstance(value, Mapping):
        return json.dumps(value, default=str, ensure_ascii=False)
    return str(value)


def render_table(rows: Sequence[Mapping], columns: Iterable[str] | None = None, title: str | None = None,
                 max_width: int | None = None) -> str:
    """``rows`` as a table with a header; ``columns`` picks and orders them (default: every key, in order).

    Each column is as wide as its longest value or header word; when they do not all fit, the widest
    are narrowed first and their values wrap. Numbers are right-aligned.
    """
    if columns is None:
        columns = list(dict.fromkeys(k for r in rows for k in r))
    columns = list(columns)
    cells = [[cell(r.get(name)) for name in columns] for r in rows]
    headers = [str(name) for name in columns]  # as in --json; they break after an underscore
    needed = [max([len(c[i]) for c in cells] + [len(w) for w in _words(headers[i])] + [1])
              for i in range(len(columns))]
    cap = _cap(needed, (max_width or width()) - len(GAP) * (len(columns) - 1))
    widths = [min(n, cap) for n in needed]
    numeric = [any(isinstance(r.get(name), (int, float, decimal.Decimal)) and not isinstance(r.get(name), bool)
                   for r in rows) and all(r.get(name) is None or isinstance(r.get(name), (int, float, decimal.Decimal))
                                          for r in rows) for name in columns]
    lines = [title] if title else []
    lines += _row_lines([_header_lines(h, w) for h, w in zip(headers, widths)], widths, numeric, header=True)
    lines.append(GAP.join("-" * w for w in widths))
    for row in cells:
        lines += _row_lines([_fold(v, w) for v, w in zip(row, widths)], widths, numeric)
    return "\n".join(line.rstrip() for line in lines)


def render_fields(fields: Mapping, title: str | None = None, max_width: int | None = None) -> str:
    """A mapping as two columns, name and value (long values wrap)."""
    names = [str(k) for k in fields]
    key_width = max([len(n) for n in names] + [1])
    value_width = max(20, (max_width or width()) - key_width - len(GAP))
    lines = [title] if title else []
    for name, value in zip(names, fields.values()):
        folded = _fold(cell(value), value_width)
        lines.append(f"{name.ljust(key_width)}{GAP}{folded[0]}".rstrip())
        lines += [f"{' ' * key_width}{GAP}{more}" for more in folded[1:]]
    return "\n".join(lines)


def _row_lines(parts: list[list[str]], widths: list[int], numeric: list[bool], header: bool = False) -> list[str]:
    height = max(len(p) for p in parts)
    if header:  # header lines sit at the bottom, next to the rule
        parts = [[""] * (height - len(p)) + p for p in parts]
    return [GAP.join((p[i] if i < len(p) else "").rjust(w) if num else (p[i] if i < len(p) else "").ljust(w)
                     for p, w, num in zip(parts, widths, numeric)) for i in range(height)]


def _words(header: str) -> list[str]:
    return re.findall(r"[^_ ]+[_ ]?", header) or [header]


def _header_lines(header: str, width: int) -> list[str]:
    lines = [""]
    for word in _words(header):
        if lines[-1] and len(lines[-1]) + len(word.rstrip()) > width:
            lines.append("")
        lines[-1] += word
    return [line.rstrip() for line in lines]


def _fold(text: str, width: int) -> list[str]:
    """``text`` in lines of at most ``width``: broken at spaces where possible, else cut."""
    out = []
    for line in text.splitlines() or [""]:
        out += textwrap.wrap(line, width, break_long_words=True, break_on_hyphens=False) or [""]
    return out


def render_document(doc: Mapping, title: str | None = None, max_width: int | None = None) -> str:
    """Every part of a document: its plain values as fields, each list of records as a table of its
    own, each nested mapping as fields; new parts show up without code of their own."""
    plain = {k: v for k, v in doc.items() if not _records(v) and not isinstance(v, Mapping)}
    parts = [render_fields(plain, title=title, max_width=max_width)] if plain else []
    for key, value in doc.items():
        if isinstance(value, Mapping):
            parts.append(render_fields(value, title=key, max_width=max_width))
        elif _records(value):
            parts.append(render_table(value, title=key, max_width=max_width))
    return "\n".join(parts)


def _cap(needed: list[int], room: int) -> int:
    """The largest width ``cap`` with ``sum(min(n, cap) for n in needed) <= room`` (at least 4)."""
    cap = max(needed, default=1)
    while cap > 4 and sum(min(n, cap) for n in needed) > room:
        cap -= 1
    return cap


def _records(value) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(v, Mapping) for v in value)
