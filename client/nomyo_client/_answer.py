"""The router's answer (PROTOCOL.md), as pure functions: the error of a refused request, the
refusal of an answer the agent could not open, and the completion the caller gets.

Rules of this module: no I/O and no cryptography. A router answer is parsed once, by the agent
that opens it (the package format is ``nomyo_agent.package``'s); only when the agent could not
open it does ``refuse_package`` look at its structure, to name a router that did not send a
package, or sent an older one. A non-200 answer maps by status to the drawn error tree, whatever
its body holds; its ``detail`` only adds to the message.
"""

from __future__ import annotations

from typing import Any, Final

import msgspec

from nomyo_agent import package
from nomyo_agent.package import ALGORITHM, VERSION
from nomyo_client._errors import (
    APIError,
    AuthenticationError,
    ForbiddenError,
    InvalidRequestError,
    RateLimitError,
    SecurityError,
    ServerError,
    ServiceUnavailableError,
)

__all__ = ["error_for_status", "finish_response", "refuse_package"]


_STATUS_ERRORS: Final[dict[int, tuple[type[APIError], str]]] = {
    400: (InvalidRequestError, "the router refused the request as invalid"),
    401: (AuthenticationError, "the router refused the API key"),
    403: (ForbiddenError, "the router refused access"),
    404: (APIError, "the router has no secure completion endpoint here"),
    429: (RateLimitError, "the router is rate limiting this client"),
    500: (ServerError, "the router failed"),
    503: (ServiceUnavailableError, "the router's inference backend is unavailable"),
}


def error_for_status(status: int, body: bytes, retry_after: float | None = None) -> APIError:
    """The exception for a non-200 answer. A body that is not JSON still maps by status."""
    details: dict[str, Any] | None = None
    detail = ""
    try:
        parsed = msgspec.json.decode(body)
    except msgspec.DecodeError:
        parsed = None
    if isinstance(parsed, dict):
        details = parsed
        raw = parsed.get("detail")
        detail = (
            raw
            if isinstance(raw, str)
            else ""
            if raw is None
            else msgspec.json.encode(raw).decode()
        )
    cls, what = _STATUS_ERRORS.get(status, (APIError, "the router answered an unexpected status"))
    message = f"{what} (HTTP {status})"
    if detail:
        message += f": {' '.join(detail.split())}"
    hint = "see /v1/chat/secure_completion in the router's documentation" if status == 404 else None
    error = cls(message, status_code=status, error_details=details, hint=hint)
    if isinstance(error, RateLimitError):
        error.retry_after = retry_after
    return error


def refuse_package(body: bytes) -> None:
    """Raise the ``SecurityError`` that names what is wrong with the structure of an answer the
    agent could not open; return when it is a package (then the key or the tag was wrong)."""
    checked = package.check(body)
    if not isinstance(checked, package.Defect) or checked.kind == "defect":
        return
    if checked.kind == "shape":
        raise SecurityError(
            "the router's answer is not a valid encrypted package",
            status_code=200,
            hint="is the base URL a NOMYO router? the answer was dropped unread",
        )
    raise SecurityError(
        f"the router's package is refused ({checked.reason}); only version {VERSION!r} with "
        f"{ALGORITHM!r} is accepted",
        status_code=200,
        hint="a downgrade is refused; update the client if the router really moved on",
    )


def finish_response(
    plaintext: bytes, payload_id: str, processed_at: float | None
) -> dict[str, Any]:
    """The decrypted completion with the ``_metadata`` fields the public client adds (an
    opened package always has ``ALGORITHM``: the agent refuses any other)."""
    try:
        response = msgspec.json.decode(plaintext)
    except msgspec.DecodeError as exc:
        raise SecurityError("the router's decrypted answer is not JSON", status_code=200) from exc
    if not isinstance(response, dict):
        raise SecurityError("the router's decrypted answer is not a JSON object", status_code=200)
    metadata = response.get("_metadata")
    if not isinstance(metadata, dict):
        metadata = response["_metadata"] = {}
    metadata.update(
        payload_id=payload_id,
        processed_at=processed_at,
        is_encrypted=True,
        encryption_algorithm=ALGORITHM,
    )
    return response
