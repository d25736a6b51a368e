"""The agent package's exceptions: one tree, one class per protocol error code.

::

    AgentError                      code, message, hint
     ├── BadRequestError            bad_request
     │    └── ConfigError           bad_config   config.toml or a setting (agent side, at start)
     ├── ProtocolMismatchError      unsupported_protocol
     ├── LockedError                locked
     ├── NoIdentityError            no_identity
     ├── IdentityExistsError        identity_exists
     ├── BadPassphraseError         bad_passphrase
     ├── PassphraseRequiredError    passphrase_required
     ├── PinentryCancelledError     cancelled
     ├── PinentryError              pinentry_failed
     ├── KeyringUnavailableError    keyring_unavailable
     ├── KeyringLockedError         keyring_locked
     ├── CorruptIdentityError       corrupt_identity
     ├── BadKeyError                bad_key
     ├── BadRouterKeyError          bad_router_key
     ├── PinMismatchError           pin_mismatch   (.origin, .fingerprint)
     ├── NotPinnedError             not_pinned
     ├── DecryptFailedError         decrypt_failed
     ├── TooManyAttemptsError       too_many_attempts
     ├── ShuttingDownError          shutting_down
     ├── AppDeniedError             app_denied       the user did not allow this app (confirm)
     ├── InternalError              internal
     ├── UsageError                 usage            the command line cannot work (CLI, exit 2)
     ├── AgentAlreadyRunning        already_running  an agent serves the socket already
     ├── StartFailedError           start_failed     a background agent did not start
     ├── ServiceError               service_failed   install-service: the manager refused
     ├── AgentUnavailableError      unavailable      no agent answers at the socket (clients)
     ├── UnsafeSocketError          unsafe_socket    the socket, its folder or its peer is not
     │                                               the user's own (both sides)
     └── AgentConnectionError       connection_lost  the connection broke or spoke garbage

The codes after ``internal`` are never sent: those errors are raised where they happen. The base
``AgentError`` is never raised itself (a test checks the whole tree against this drawing).
The agent raises the others inside ``dispatch``, which turns them into ``protocol.Error`` replies;
clients turn replies back into the same classes with ``from_reply``. Messages are lower-case with
no final period; hints say what to do.
"""

from __future__ import annotations

from typing import ClassVar

from nomyo_agent.protocol import Error, ErrorCode

__all__ = [
    "AgentAlreadyRunning",
    "AgentConnectionError",
    "AgentError",
    "AgentUnavailableError",
    "AppDeniedError",
    "BadKeyError",
    "BadPassphraseError",
    "BadRequestError",
    "BadRouterKeyError",
    "ConfigError",
    "CorruptIdentityError",
    "DecryptFailedError",
    "IdentityExistsError",
    "InternalError",
    "KeyringLockedError",
    "KeyringUnavailableError",
    "LockedError",
    "NoIdentityError",
    "NotPinnedError",
    "PassphraseRequiredError",
    "PinMismatchError",
    "PinentryCancelledError",
    "PinentryError",
    "ProtocolMismatchError",
    "ServiceError",
    "ShuttingDownError",
    "StartFailedError",
    "TooManyAttemptsError",
    "UnsafeSocketError",
    "UsageError",
    "from_reply",
]


class AgentError(Exception):
    """Base of every agent error. ``str()`` is the message; ``hint`` says what to do."""

    code: ClassVar[ErrorCode] = ErrorCode.INTERNAL
    default_hint: ClassVar[str] = ""

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = self.default_hint if hint is None else hint

    def to_reply(self) -> Error:
        return Error(code=self.code, message=self.message, hint=self.hint)


class BadRequestError(AgentError):
    code = ErrorCode.BAD_REQUEST


class ProtocolMismatchError(AgentError):
    code = ErrorCode.UNSUPPORTED_PROTOCOL
    default_hint = "restart the agent so that it matches the client: `nomyo-agent stop`"


class LockedError(AgentError):
    code = ErrorCode.LOCKED
    default_hint = "run `nomyo-agent unlock` (or unlock from the tray icon)"


class NoIdentityError(AgentError):
    code = ErrorCode.NO_IDENTITY
    default_hint = "run `nomyo-agent keygen`, or `nomyo-agent import client_keys/private_key.pem`"


class IdentityExistsError(AgentError):
    code = ErrorCode.IDENTITY_EXISTS
    default_hint = "pass --force to replace it; the old key is then gone for good"


class BadPassphraseError(AgentError):
    code = ErrorCode.BAD_PASSPHRASE
    default_hint = "try again with the passphrase chosen at keygen or import"


class PassphraseRequiredError(AgentError):
    code = ErrorCode.PASSPHRASE_REQUIRED
    default_hint = "run `nomyo-agent unlock` in a terminal, or pass --passphrase-stdin"


class PinentryCancelledError(AgentError):
    code = ErrorCode.CANCELLED


class PinentryError(AgentError):
    code = ErrorCode.PINENTRY_FAILED
    default_hint = (
        "install pinentry (e.g. `apt install pinentry-gtk2`), set `pinentry` in config.toml, "
        "or pass --passphrase-stdin"
    )


class KeyringUnavailableError(AgentError):
    code = ErrorCode.KEYRING_UNAVAILABLE
    default_hint = (
        "start a Secret Service (gnome-keyring, KeePassXC) in this session, then restart the "
        "agent (`nomyo-agent stop`); on a headless machine keep the key in a passphrase-"
        'protected file instead: `keystore = "file"` in config.toml, or '
        "`nomyo-agent start --keystore file` (docs/running.md)"
    )


class KeyringLockedError(AgentError):
    code = ErrorCode.KEYRING_LOCKED
    default_hint = "unlock your login keyring (e.g. log in again, or open Seahorse) and retry"


class CorruptIdentityError(AgentError):
    code = ErrorCode.CORRUPT_IDENTITY
    default_hint = "re-import the key with `nomyo-agent import PATH --force`"


class BadKeyError(AgentError):
    code = ErrorCode.BAD_KEY


class BadRouterKeyError(AgentError):
    code = ErrorCode.BAD_ROUTER_KEY
    default_hint = "the router's /pki/public_key did not give a usable RSA key; check the base URL"


class PinMismatchError(AgentError):
    code = ErrorCode.PIN_MISMATCH

    def __init__(
        self,
        message: str,
        hint: str | None = None,
        *,
        origin: str | None = None,
        fingerprint: str | None = None,
    ) -> None:
        super().__init__(message, hint)
        self.origin = origin
        self.fingerprint = fingerprint

    def to_reply(self) -> Error:
        return Error(
            code=self.code,
            message=self.message,
            hint=self.hint,
            origin=self.origin,
            fingerprint=self.fingerprint,
        )


class NotPinnedError(AgentError):
    code = ErrorCode.NOT_PINNED
    default_hint = "`nomyo-agent pins list` shows the pinned origins"


class DecryptFailedError(AgentError):
    code = ErrorCode.DECRYPT_FAILED


class TooManyAttemptsError(AgentError):
    code = ErrorCode.TOO_MANY_ATTEMPTS
    default_hint = "wait a moment: failed unlocks are delayed increasingly"


class ShuttingDownError(AgentError):
    code = ErrorCode.SHUTTING_DOWN
    default_hint = "the agent is stopping; retry once it has been started again"


class InternalError(AgentError):
    code = ErrorCode.INTERNAL


class ConfigError(BadRequestError):
    """config.toml or a setting is invalid."""

    code = ErrorCode.BAD_CONFIG


class UsageError(AgentError):
    """The command line (or NOMYO_AGENT_SOCK) cannot work; nothing was sent: exit 2."""

    code = ErrorCode.USAGE


class AgentAlreadyRunning(AgentError):
    code = ErrorCode.ALREADY_RUNNING
    default_hint = "use that agent (`nomyo-agent status`), or stop it first: `nomyo-agent stop`"


class StartFailedError(AgentError):
    """A background agent (``nomyo-agent start``, auto-start, the tray) did not start, or the
    service manager handed over a socket the agent cannot serve on."""

    code = ErrorCode.START_FAILED


class ServiceError(AgentError):
    """``install-service``: the service manager could not be reached or refused the units."""

    code = ErrorCode.SERVICE_FAILED


class AgentUnavailableError(AgentError):
    """Nothing answers at the socket (client side)."""

    code = ErrorCode.UNAVAILABLE
    default_hint = "start it with `nomyo-agent start` (or `eval $(nomyo-agent start)`)"


class UnsafeSocketError(AgentError):
    """The socket's folder is a symlink, another user's or open to others, or the process at
    the socket runs as another uid: nothing is sent there (client side), nothing is served there
    (agent side)."""

    code = ErrorCode.UNSAFE_SOCKET
    default_hint = (
        "another user may be impersonating your agent: do not use it; set XDG_RUNTIME_DIR or "
        "NOMYO_AGENT_SOCK to a folder of your own (mode 0700)"
    )


class AgentConnectionError(AgentError):
    """The connection broke, timed out or carried something that is not our protocol."""

    code = ErrorCode.CONNECTION_LOST
    default_hint = "check `nomyo-agent status`; restart the agent if it persists"


class AppDeniedError(AgentError):
    code = ErrorCode.APP_DENIED
    default_hint = (
        "the user did not allow this app to use the identity until the next lock; "
        "`nomyo-agent apps forget APP` asks again"
    )


_BY_CODE: dict[ErrorCode, type[AgentError]] = {
    cls.code: cls
    for cls in (
        BadRequestError,
        ProtocolMismatchError,
        LockedError,
        NoIdentityError,
        IdentityExistsError,
        BadPassphraseError,
        PassphraseRequiredError,
        PinentryCancelledError,
        PinentryError,
        KeyringUnavailableError,
        KeyringLockedError,
        CorruptIdentityError,
        BadKeyError,
        BadRouterKeyError,
        NotPinnedError,
        DecryptFailedError,
        TooManyAttemptsError,
        ShuttingDownError,
        InternalError,
        AppDeniedError,
    )
}


def from_reply(reply: Error) -> AgentError:
    """The exception for an ``Error`` reply, with its message and hint as the agent sent them."""
    if reply.code is ErrorCode.PIN_MISMATCH:
        return PinMismatchError(
            reply.message, reply.hint, origin=reply.origin, fingerprint=reply.fingerprint
        )
    return _BY_CODE.get(reply.code, InternalError)(reply.message, reply.hint)
