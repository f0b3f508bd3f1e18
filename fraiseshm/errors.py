"""Every exception fraiseshm raises, and nothing else.

One base class, builtins mixed in where they fit, and messages that say what
happened, the numbers, and the fix. The HTTP layer maps these to status codes
and GraphQL error bodies in one place (fraiseshm/http/errors.py).
"""

from __future__ import annotations


class FraiseshmError(Exception):
    """Base class of every fraiseshm error."""


# --- configuration -----------------------------------------------------------


class ConfigError(FraiseshmError, ValueError):
    """A setting is missing or invalid; the message names the field and its source."""


class SchemaError(FraiseshmError, ValueError):
    """The SDL or its directives do not describe a servable schema."""


class SchemaCheckFailed(SchemaError):
    """The SDL does not match the database (start-up check); one message lists every problem."""


class StartupFailed(FraiseshmError, RuntimeError):
    """The master cannot start (gunicorn prints RuntimeError messages without a traceback)."""


# --- shared-memory arena -----------------------------------------------------


class ArenaError(FraiseshmError):
    """Base class of the arena's errors."""


class ArenaNotFound(ArenaError, FileNotFoundError):
    """No arena of that name exists in /dev/shm."""


class ArenaLayoutMismatch(ArenaError):
    """The segment was created by another layout version or is not an arena."""


class ArenaTooSmall(ArenaError, OSError):
    """/dev/shm cannot hold an arena of the configured size."""


class ArenaUnlinked(ArenaError):
    """The arena's name was removed under a running service (RemoveIPC, rm)."""


class EntryTooLarge(ArenaError, ValueError):
    """A value is larger than the arena's maximum entry size; serve it uncached."""


class ArenaCorrupt(ArenaError):
    """check() found a broken invariant."""


# --- coalescing --------------------------------------------------------------


class CoalesceTimeout(FraiseshmError, TimeoutError):
    """A follower waited past the coalescing timeout for a leader's result."""


class LeaderFailed(FraiseshmError):
    """The leader of a coalesced flight failed; followers get its error once."""


# --- database ----------------------------------------------------------------


class DatabaseUnavailable(FraiseshmError, ConnectionError):
    """PostgreSQL cannot be reached right now."""


class MutationFailed(FraiseshmError):
    """A mutation function raised inside PostgreSQL."""


class DatabaseError(FraiseshmError):
    """A read failed inside PostgreSQL; the detail is in the log, not in the reply."""


class ReplicaPromoted(DatabaseError):
    """The server behind a replica DSN is no longer in recovery: its data may have diverged."""


# --- requests ----------------------------------------------------------------


class RequestError(FraiseshmError, ValueError):
    """The client sent something we cannot serve (bad JSON, bad GraphQL, ...)."""


class BodyTooLarge(RequestError):
    """The request body is larger than the configured limit."""


class MethodNotAllowed(RequestError):
    """A mutation over GET, or an unsupported HTTP method."""


class LimitExceeded(RequestError):
    """A document or request is over a cost limit; ``setting`` names the limit."""

    def __init__(self, message: str, setting: str) -> None:
        super().__init__(f"{message} (FRAISESHM_{setting.upper()})")
        self.setting = setting


class JSONTooDeep(RequestError):
    """JSON in a body, in variables or in a token nests deeper than max_json_depth."""


class PersistedQueryError(RequestError):
    """A persisted query cannot run: unknown hash, hash mismatch, not in the allow-list, APQ off."""

    def __init__(self, message: str, code: str, status: int) -> None:
        super().__init__(message)
        self.code = code
        self.status = status


class BatchError(RequestError):
    """A batch (a JSON array of requests) is malformed, empty or larger than max_batch_size."""


class RequestTimeout(FraiseshmError, TimeoutError):
    """A request ran past its deadline (request_timeout); its database work was cancelled."""


class Unauthenticated(FraiseshmError, PermissionError):
    """A bearer token is present but not valid (bad signature, expired, unsigned, wrong audience...)."""


class NotAuthorized(FraiseshmError, PermissionError):
    """An admin endpoint was called without the admin token."""


# --- cascade -----------------------------------------------------------------


class CascadeError(FraiseshmError, ValueError):
    """A mutation's cascade is missing, malformed or truncated."""


class PushRefused(FraiseshmError):
    """A cascadeUpdates subscription cannot be served; code is the graphql-ws close code."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
