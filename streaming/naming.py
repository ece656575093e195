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


@functools.lru_cache(maxsize=8192)
def normalize_identifier(name: str) -> str:
    """Turn any header or key into a lowercase ASCII snake_case identifier of at most 63 bytes.

    ``Amount (USD)`` becomes ``amount_usd``, ``OrderID`` becomes ``order_id``, ``Prénom`` becomes
    ``prenom`` and ``2024 total`` becomes ``_2024_total``. A name with nothing usable left returns ``""``;
    callers decide what a blank name becomes. Names over 63 bytes are truncated and end with a short
    hash of the full name, so two long names that share a prefix stay distinct.
    """
    ascii_name = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode("ascii")
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


def nested_identifier(path: tuple[str, ...]) -> str:
    """The column of a nested JSON field: each key normalized, joined by ``__`` (``owner.login`` ->
    ``owner__login``)."""
    return _fit("__".join(normalize_identifier(part) or "field" for part in path), ".".join(path))


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
    """The table name of a dataset (a landing folder or an endpoint name)."""
    table = normalize_identifier(name)
    if not table:
        raise ValueError(f"dataset name {name!r} has no letters or digits to build a table name from")
    return table
