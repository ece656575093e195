"""One small error hierarchy; every message names the dataset and the file, endpoint or column."""


class DataOpsError(Exception):
    """Base class of every error the product raises on purpose."""


class ConfigError(DataOpsError):
    """The configuration is invalid; nothing starts."""


class SourceError(DataOpsError):
    """A source (file, endpoint) cannot be read."""


class FileRejected(SourceError):
    """A landed file cannot be loaded at all; it goes to ``_rejected/`` with this reason.

    Attributes:
        reason: short machine-readable reason (``empty``, ``binary``, ``encoding`` ...).
        detail: human-readable sentence naming the file and what is wrong.
        diff: for a schema mismatch, what differs from the table (written to the ``.error.json``).
    """

    def __init__(self, reason: str, detail: str, diff: dict | None = None):
        super().__init__(detail)
        self.reason = reason
        self.detail = detail
        self.diff = diff


class SchemaError(DataOpsError):
    """A file or batch does not fit the dataset's schema and the policy forbids evolving it."""


class SinkError(DataOpsError):
    """Writing to PostgreSQL failed."""


class BatchDataError(SinkError):
    """PostgreSQL refused the batch's data (a value it cannot cast, a duplicate key): retrying cannot
    help, so the batch's files are rejected with this reason instead of blocking the dataset."""


class TransientSinkError(SinkError):
    """PostgreSQL is unreachable or asked us to retry; the batch is retried."""


class ShutdownRequested(DataOpsError):
    """The daemon is stopping; a batch that had not started yet is abandoned (it replays on restart)."""
