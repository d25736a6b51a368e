"""The agent's errors as the client's: ``from_agent_error`` is the one place they are translated.

Rules of this module: the callers raise the result ``from`` the agent's error, never the agent's
error itself. A broken connection is said once (its message already names the cause); a pin
mismatch is a ``RouterKeyChangedError`` that says how to accept a rotated key; an error with no
counterpart is a plain ``AgentError`` that quotes the agent.

Four names of the client's tree (``_errors``) are also class names in ``nomyo_agent.errors``:
``AgentError``, ``AgentUnavailableError``, ``NoIdentityError`` and ``IdentityExistsError``. Each
is the client's view of the agent error of that name, and ``from_agent_error`` turns the one into
the other (``tests/test_client_agent_errors.py`` checks it, and that no other name is shared).
They do not inherit from the agent's classes: the client's tree keeps the seed's base, and a
client error must never be caught by the ``except nomyo_agent.errors...`` clauses that translate
at the boundary. Code using this client catches these; the agent's are for ``AgentConnection``
users.
"""

from __future__ import annotations

from nomyo_agent import errors as agent_errors
from nomyo_client._errors import (
    AgentDeniedError,
    AgentError,
    AgentLockedError,
    AgentProtocolError,
    AgentUnavailableError,
    APIError,
    IdentityExistsError,
    NoIdentityError,
    RouterKeyChangedError,
    SecurityError,
)

__all__ = ["from_agent_error"]


def from_agent_error(exc: agent_errors.AgentError) -> APIError:
    """The client exception for an agent error (raise it ``from exc``)."""
    hint = exc.hint or None
    if isinstance(exc, agent_errors.PinMismatchError):
        origin = exc.origin or "the router"
        return RouterKeyChangedError(
            f"the router key of {origin} differs from the pinned one; nothing was sent",
            origin=origin,
            fingerprint=exc.fingerprint,
            hint=(
                "if the router really rotated its key, run "
                f"`nomyo-agent pins accept {origin}`, then retry"
            ),
        )
    if isinstance(exc, agent_errors.DecryptFailedError):
        return SecurityError(
            "the router's answer could not be decrypted or authenticated",
            hint="the answer was not sealed to this identity, or it was altered in transit",
        )
    if isinstance(exc, agent_errors.BadRouterKeyError):
        return SecurityError(f"the router's public key is unusable: {exc.message}", hint=hint)
    if isinstance(exc, agent_errors.AgentUnavailableError):
        return AgentUnavailableError(exc.message)
    if isinstance(exc, agent_errors.UnsafeSocketError):
        # No agent of ours is there: what listens (or the folder) is not the user's own.
        return AgentUnavailableError(exc.message, hint=hint)
    if isinstance(exc, agent_errors.AgentConnectionError):
        # Its message already says what broke ("lost the agent connection: ...", "the agent
        # closed the connection"): a prefix here would say it twice.
        return AgentError(exc.message, hint=hint)
    if isinstance(exc, agent_errors.LockedError):
        return AgentLockedError(exc.message, hint=hint)
    if isinstance(exc, agent_errors.NoIdentityError):
        return NoIdentityError(exc.message, hint=hint)
    if isinstance(exc, agent_errors.IdentityExistsError):
        return IdentityExistsError(exc.message, hint=hint)
    if isinstance(exc, agent_errors.AppDeniedError):
        return AgentDeniedError(exc.message, hint=hint)
    if isinstance(exc, agent_errors.ProtocolMismatchError):
        return AgentProtocolError(exc.message, hint=hint)
    return AgentError(f"the agent refused: {exc.message}", hint=hint)
