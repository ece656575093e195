"""Identifier normalization shared by CSV headers, JSON keys and dataset names.

Every name that becomes a PostgreSQL identifier goes through :func:`normalize_identifier`; a list of
column names goes through :func:`normalize_columns`, which also makes them unique.
"""

from __future__ import annotations

import functools
import hashlib
import re
import unicodedata

MAX_IDENTIFIER_BYTES = 63  # PostgreSQL's NAMEDATALEN - 1

_CAMEL_1 = re.compile(r"([A-Z]+)([A-Z][a-z])")
_CAMEL_2 = re.compile(r"([a-z0-9])([A-Z])")
_NON_WORD = re.compile(r"[^a-z0-9]+")
# Latin letters that Unicode does not decompose into a base letter and accents (ß, æ, ø, ł ...), and
# the German umlauts, which are written out (ä -> ae) rather than stripped of their dots.
_LETTERS = {
    "ß": "ss", "ẞ": "SS", "ä": "ae", "ö": "oe", "ü": "ue", "Ä": "AE", "Ö": "OE", "Ü": "UE", "æ": "ae", "Æ": "AE",
    "œ": "oe", "Œ": "OE", "ø": "o", "Ø": "O", "ł": "l", "Ł": "L", "đ": "d", "Đ": "D", "ð": "d", "Ð": "D",
    "þ": "th", "Þ": "TH", "ı": "i", "ħ": "h", "Ħ": "H", "ŧ": "t", "Ŧ": "T", "ŋ": "ng", "Ŋ": "NG", "ĸ": "q",
}


def _transliterate(name: str) -> str:
    if name.isascii():
        return name
    text = unicodedata.normalize("NFC", name)
    out = []
    for i, ch in enumerate(text):
        letters = _LETTERS.get(ch, ch)
        # Äpfel -> Aepfel but ÄPFEL -> AEPFEL, so that camel-case splitting still sees one word.
        if len(letters) > 1 and letters.isupper() and text[i + 1:i + 2].islower():
            letters = letters.capitalize()
        out.append(letters)
    return "".join(out)


@functools.lru_cache(maxsize=8192)
def normalize_identifier(name: str, transliterate: bool = True) -> str:
    """Turn any header or key into a lowercase ASCII snake_case identifier of at most 63 bytes.

    ``Amount (USD)`` becomes ``amount_usd``, ``OrderID`` becomes ``order_id``, ``Prénom`` becomes
    ``prenom``, ``Größe`` becomes ``groesse`` and ``2024 total`` becomes ``_2024_total``. Letters
    without a Latin transliteration (Greek, Cyrillic, CJK ...) are dropped; a name with nothing
    usable left returns ``""``, and callers decide what a blank name becomes. Names over 63 bytes
    are truncated and end with a short hash of the full name, so two long names that share a prefix
    stay distinct. ``transliterate=False`` is the rule before letters were written out (accents
    dropped, ``Größe`` -> ``groe``), which names of existing tables and columns keep.
    """
    text = _transliterate(name) if transliterate else name
    ascii_name = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")
    snake = _CAMEL_2.sub(r"\1_\2", _CAMEL_1.sub(r"\1_\2", ascii_name)).lower()
    snake = _NON_WORD.sub("_", snake).strip("_")
    if snake and snake[0].isdigit():
        snake = "_" + snake
    return _fit(snake, name)


def _fit(identifier: str, original: str) -> str:
    if len(identifier) <= MAX_IDENTIFIER_BYTES:
        return identifier
    digest = hashlib.sha1(original.encode("utf-8")).hexdigest()[:8]
    return identifier[: MAX_IDENTIFIER_BYTES - 9].rstrip("_") + "_" + digest


def normalize_columns(headers: list[str]) -> list[str]:
    """Normalize a header row into unique column names, in order.

    Blank names become ``column_<position>`` (1-based); a repeated name gets ``_2``, ``_3`` ... in order
    of appearance, never colliding with a name that appears elsewhere in the header.
    """
    return unique_names([normalize_identifier(h) or f"column_{i}" for i, h in enumerate(headers, start=1)])


def nested_identifier(path: tuple[str, ...], transliterate: bool = True) -> str:
    """The column of a nested JSON field: each key normalized, joined by ``__`` (``owner.login`` ->
    ``owner__login``)."""
    return _fit("__".join(normalize_identifier(part, transliterate) or "field" for part in path), ".".join(path))


def keep_table_names(names: list[str], earlier: list[str], table: dict) -> list[str]:
    """Columns of an existing table keep their names.

    ``earlier`` holds each name under the rule before transliteration (``normalize_identifier(...,
    transliterate=False)``): a header ``Größe`` loads into a table's existing ``groe`` column
    rather than adding ``groesse`` beside it.
    """
    if not table:
        return names
    out = list(names)
    for i, (name, old) in enumerate(zip(names, earlier)):
        if name not in table and old and old != name and old in table and old not in out:
            out[i] = old
    return out


def unique_names(base: list[str]) -> list[str]:
    """Make normalized names unique in order: a repeated name gets ``_2``, ``_3`` ..."""
    taken = set(base)
    seen: set[str] = set()
    result = []
    for name in base:
        if name in seen:
            n = 2
            while (candidate := _fit(f"{name}_{n}", f"{name}_{n}")) in taken:
                n += 1
            name = candidate
            taken.add(name)
        seen.add(name)
        result.append(name)
    return result


def normalize_dataset_name(name: str) -> str:
    """The table name of a dataset (a landing folder or an endpoint name).

    Table names keep the rule without transliteration (``Größe`` -> ``groe``): a dataset's table,
    inbox and checkpoint are found by this name, so it must not change for existing deployments.
    """
    table = normalize_identifier(name, transliterate=False)
    if not table:
        raise ValueError(f"dataset name {name!r} has no letters or digits to build a table name from")
    return table
