"""The router's wire protocol (PROTOCOL.md) as pure functions: bytes and dicts in, bytes out.

Rules of this module: no I/O and no cryptography (sealing and opening happen in the agent).
Everything a request needs is checked here before anything is sent: the URL scheme, the tier,
``stream``, the payload size; keys that configure the client (``security_tier``, ``api_key``,
``base_url``) never reach the plaintext. A router answer is checked for the package's shape,
version and algorithm before the agent is asked to open it.
"""

from __future__ import annotations

import urllib.parse
import uuid
from collections.abc import Mapping
from typing import Any, Final

import msgspec

from nomyo_agent import errors as agent_errors
from nomyo_agent.origins import DEFAULT_PORTS, canonical_origin
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

__all__ = [
    "ALGORITHM",
    "MAX_PAYLOAD_BYTES",
    "NON_PAYLOAD_KEYS",
    "TIERS",
    "VERSION",
    "build_payload",
    "check_base_url",
    "check_tier",
    "error_for_status",
    "finish_response",
    "new_payload_id",
    "origin_of",
    "parse_package",
    "request_headers",
]

VERSION: Final = "1.0"
ALGORITHM: Final = "hybrid-aes256-rsa4096"
TIERS: Final = ("standard", "high", "maximum")
MAX_PAYLOAD_BYTES: Final = 10 * 1024 * 1024
NON_PAYLOAD_KEYS: Final = frozenset({"security_tier", "api_key", "base_url"})


def check_base_url(base_url: str, allow_http: bool) -> str:
    """The base URL without a trailing slash; plain HTTP only when ``allow_http`` is set."""
    url = base_url.strip().rstrip("/")
    scheme = urllib.parse.urlsplit(url).scheme.lower()
    if scheme == "http" and not allow_http:
        raise SecurityError(
            f"refusing plain http to {url}: the router key could be swapped in transit",
            hint="use https, or pass allow_http=True for a router on your own machine",
        )
    if scheme not in DEFAULT_PORTS:
        raise InvalidRequestError(f"not an http(s) router URL: {base_url!r}", status_code=None)
    origin_of(url)  # a host that has no one canonical origin is refused before anything is sent
    return url


def origin_of(base_url: str) -> str:
    """``HTTPS://Router.Example:443/v1`` -> ``https://router.example``: what the agent pins, in
    the one canonical form that ``nomyo_agent.origins`` defines for both sides."""
    try:
        return canonical_origin(base_url)
    except agent_errors.BadRequestError as exc:
        raise InvalidRequestError(exc.message, status_code=None, hint=exc.hint) from exc


def check_tier(tier: object) -> str | None:
    if tier is None:
        return None
    if tier not in TIERS:
        raise InvalidRequestError(
            f"invalid security_tier {tier!r}: must be one of {', '.join(TIERS)}",
            status_code=None,
            hint="pass security_tier='standard', 'high' or 'maximum', or leave it out",
        )
    return str(tier)


def new_payload_id() -> str:
    return str(uuid.uuid4())


def build_payload(model: str, messages: Any, params: Mapping[str, Any]) -> bytes:
    """The plaintext JSON of the OpenAI request; ``params`` must not hold client-only keys."""
    leaked = NON_PAYLOAD_KEYS.intersection(params)
    if leaked:  # a bug in the caller: these configure the client, they are not for the model
        raise AssertionError(f"client-only keys in the payload: {sorted(leaked)}")
    if params.get("stream"):
        raise InvalidRequestError(
            "stream=True is not supported: routers refuse streaming for encrypted inference",
            status_code=None,
            hint="leave stream out; the whole answer comes back in one response",
        )
    try:
        body = msgspec.json.encode({"model": model, "messages": messages, **params})
    except (TypeError, msgspec.EncodeError) as exc:
        raise InvalidRequestError(f"the request is not JSON-serialisable: {exc}") from exc
    if len(body) > MAX_PAYLOAD_BYTES:
        raise InvalidRequestError(
            f"the request is {len(body)} bytes of JSON, over the {MAX_PAYLOAD_BYTES}-byte limit",
            status_code=None,
        )
    return body


def request_headers(
    payload_id: str, public_key_pem: str, api_key: str | None, tier: str | None
) -> dict[str, str]:
    headers = {
        "Content-Type": "application/octet-stream",
        "X-Payload-ID": payload_id,
        "X-Public-Key": urllib.parse.quote(public_key_pem),
    }
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    if tier:
        headers["X-Security-Tier"] = tier
    return headers


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


class _Sealed(msgspec.Struct):
    ciphertext: str
    nonce: str
    tag: str


class _Package(msgspec.Struct):
    version: str
    algorithm: str
    encrypted_payload: _Sealed
    encrypted_aes_key: str
    processed_at: int | float | None = None


_package_decoder = msgspec.json.Decoder(_Package)


def parse_package(body: bytes) -> tuple[str, int | float | None]:
    """Check a 200 answer's package; returns its ``algorithm`` and ``processed_at``."""
    try:
        package = _package_decoder.decode(body)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise SecurityError(
            "the router's answer is not a valid encrypted package",
            status_code=200,
            hint="is the base URL a NOMYO router? the answer was dropped unread",
        ) from exc
    if package.version != VERSION or package.algorithm != ALGORITHM:
        raise SecurityError(
            f"the router's package uses version {package.version!r} and algorithm "
            f"{package.algorithm!r}; only {VERSION!r} with {ALGORITHM!r} is accepted",
            status_code=200,
            hint="a downgrade is refused; update the client if the router really moved on",
        )
    return package.algorithm, package.processed_at


def finish_response(
    plaintext: bytes, payload_id: str, algorithm: str, processed_at: int | float | None
) -> dict[str, Any]:
    """The decrypted completion with the ``_metadata`` fields the public client adds."""
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
        encryption_algorithm=algorithm,
    )
    return response
