"""JSON read and written in C (orjson), wherever that gives exactly what the standard library gives.

The REST source parses every page an API sends and moves each micro-batch's records to the stage
tasks as JSON text: the standard library spends most of an endpoint's CPU time there. orjson is
strict where the standard library is lenient, and that is what makes the two interchangeable: it
refuses ``NaN`` and ``Infinity``, numbers past a double's range and unpaired surrogates, so
whatever it reads the standard library reads the same. The one difference, integers past 64 bits
(which orjson reads as doubles), is ruled out before it reads: a text with a run of 19 or more
digits goes to the standard library. Records read this way are *strict*: written back with
:func:`dumps_strict`, they read as the same values, with :func:`orjson.loads` alone.
"""

from __future__ import annotations

from typing import Any

import orjson

# 19 digits or more: an integer that may not fit 64 bits (or any long digit run, which costs only
# the slower parser). Found as a run of zeros once every digit is one (two passes in C; a regular
# expression tests every digit).
_DIGITS_AS_ZERO = bytes.maketrans(b"123456789", b"000000000")
_LONG_RUN = b"0" * 19


def loads_strict(data: bytes) -> Any:
    """``json.loads(data)``, read in C.

    Raises:
        ValueError: ``data`` holds what only the standard library reads (``NaN``, a number past 64
            bits or a double's range, an unpaired surrogate, text that is not UTF-8) or is no JSON.
    """
    if _LONG_RUN in data.translate(_DIGITS_AS_ZERO):
        raise ValueError("a long run of digits: read by the standard library")
    return orjson.loads(data)


def dumps_strict(value: Any) -> str:
    """JSON text of records :func:`loads_strict` read (compact, UTF-8 as is), written in C. Floats
    may be spelled otherwise than ``json.dumps`` spells them; they read back as the same doubles."""
    return orjson.dumps(value).decode()
