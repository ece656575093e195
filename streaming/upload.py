"""Uploads over HTTP, the part every source that takes files shares: ``PUT`` / ``GET
/datasets/<dataset>/files/<file>`` are served by the daemon's HTTP server (:mod:`streaming.health`)
with an *uploads* object a source provides (:meth:`streaming.sources.Source.uploads`), which says
where the bytes go. This module holds what the HTTP side needs of it: which names are plain, and
the refusals answered with an HTTP status.

An uploads object has ``authorize(header)``, ``target(dataset, filename) -> (dataset, filename)``,
``check_size(content_length, chunked) -> int``, ``receive(dataset, filename, size, body) -> dict``
and ``where(dataset, filename) -> dict``; each raises :class:`UploadRefused` to answer an error.

Runs on the driver, in the HTTP server's request threads.
"""

from __future__ import annotations

_RESERVED = ("_", ".")


class UploadRefused(Exception):
    """An upload answered with an HTTP error: ``code`` and a JSON-able ``body``."""

    def __init__(self, code: int, message: str, **extra):
        super().__init__(message)
        self.code = code
        self.body = {"error": message, **extra}


def plain_name(name: str, what: str) -> str:
    """``name`` if it is a plain file or folder name, else :class:`UploadRefused` (400).

    Refused: empty names, ``.`` and ``..``, names with ``/``, ``\\``, NUL or other control characters,
    hidden names (leading ``.``) and names the landing folder reserves for itself (leading ``_``).
    """
    if not name or name in (".", ".."):
        raise UploadRefused(400, f"{what} name is empty or a path component ({name!r})")
    if any(c in name for c in "/\\") or any(ord(c) < 32 or ord(c) == 127 for c in name):
        raise UploadRefused(400, f"{what} name {name!r} must be a plain name (no /, \\, NUL or control characters)")
    if name.startswith(_RESERVED) or name.startswith("~$"):
        raise UploadRefused(400, f"{what} name {name!r} is hidden or reserved (leading '.', '_' or '~$')")
    if len(name.encode("utf-8", "surrogatepass")) > 255:
        raise UploadRefused(400, f"{what} name is longer than 255 bytes")
    return name
