"""The request side of the router's wire protocol (PROTOCOL.md) as pure functions: bytes and dicts
in, bytes out.

Rules of this module: no I/O and no cryptography (sealing and opening happen in the agent).
Everything a request needs is checked here before anything is sent: the URL (scheme, host,
port), the tier, ``stream``, header values, the payload's JSON and size; keys that configure the
client (``security_tier``, ``api_key``, ``base_url``) never reach the plaintext. Every refusal is
an ``InvalidRequestError``: no ``ValueError``, ``TypeError``, ``RecursionError`` or
``UnicodeEncodeError`` of a lower layer escapes. The payload is JSON as the public client's
``json.dumps`` makes it (tuples as arrays, int/float/bool/None keys as strings), except that
text stays UTF-8; what ``json.dumps`` refuses, or would turn into invalid JSON (NaN) or invalid
Unicode (a lone surrogate), is refused, never coerced (msgspec would turn a set into an array,
bytes into base64, a ``Decimal`` into a string and NaN into ``null``, silently). What the
router answers is ``_answer``'s.
"""

from __future__ import annotations

import json
import re
import urllib.parse
import uuid
from collections.abc import Mapping
from typing import Any, Final

from nomyo_agent import errors as agent_errors
from nomyo_agent.origins import DEFAULT_PORTS, canonical_origin
from nomyo_agent.package import ALGORITHM, TIERS, VERSION
from nomyo_client._errors import InvalidRequestError, SecurityError

__all__ = [
    "ALGORITHM",
    "MAX_PAYLOAD_BYTES",
    "NON_PAYLOAD_KEYS",
    "TIERS",
    "VERSION",
    "build_payload",
    "check_base_url",
    "check_header_value",
    "check_tier",
    "encode_json",
    "new_payload_id",
    "origin_of",
    "request_headers",
]

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
        bare = url.split("://", 1)[-1]
        raise InvalidRequestError(
            f"not an http(s) router URL: {base_url!r}",
            status_code=None,
            hint=f"a router URL starts with https:// (or http:// with allow_http=True), "
            f"e.g. https://{bare}",
        )
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
    body = encode_json({"model": model, "messages": messages, **params})
    if len(body) > MAX_PAYLOAD_BYTES:
        raise InvalidRequestError(
            f"the request is {len(body)} bytes of JSON, over the {MAX_PAYLOAD_BYTES}-byte limit",
            status_code=None,
            hint="send less per request: drop or summarise earlier messages, or split the input "
            "over several requests (the router refuses anything larger)",
        )
    return body


class _Unsendable(Exception):
    pass


def _unsendable(value: object) -> Any:
    raise _Unsendable(type(value).__name__)


_FIXES: Final = {
    "set": "pass a list",
    "frozenset": "pass a list",
    "bytes": "decode it to str first",
    "bytearray": "decode it to str first",
    "Decimal": "pass a float or a str",
}
_JSON_TYPES: Final = "str, int, float, bool, None, list or dict"


def _refused(message: str, hint: str) -> InvalidRequestError:
    return InvalidRequestError(message, status_code=None, hint=hint)


def encode_json(document: Any) -> bytes:
    """``document`` as UTF-8 JSON; ``InvalidRequestError`` for anything JSON cannot carry."""
    try:
        text = json.dumps(
            document,
            ensure_ascii=False,
            allow_nan=False,
            separators=(",", ":"),
            default=_unsendable,
        )
    except _Unsendable as exc:
        name = str(exc)
        raise _refused(
            f"the request holds a value of type {name}, which JSON cannot carry",
            _FIXES.get(name, f"convert it to one of {_JSON_TYPES}"),
        ) from None
    except RecursionError:
        raise _refused(
            "the request is nested too deeply to send as JSON", "flatten the nested parameter"
        ) from None
    except ValueError as exc:
        if "circular" in str(exc).lower():
            raise _refused(
                "the request refers to itself (a circular reference)",
                "pass a copy without the reference loop",
            ) from exc
        raise _refused(
            "the request holds NaN or an infinity, which is not valid JSON",
            "pass a finite number, or leave the parameter out",
        ) from exc
    except TypeError as exc:  # json.dumps checks dict keys itself, without calling default
        found = re.search(r"not (\w+)$", str(exc))
        name = found.group(1) if found else "an unsupported type"
        raise _refused(
            f"the request holds a {name} as an object key; JSON keys are strings",
            "use str (or int, float, bool, None) keys",
        ) from exc
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError as exc:
        code = ord(exc.object[exc.start])
        raise _refused(
            f"the request holds a lone surrogate (U+{code:04X}), which is not valid Unicode",
            "the text was probably cut between the two halves of a surrogate pair, or decoded "
            "with errors='surrogateescape'",
        ) from None


def check_header_value(name: str, value: str) -> str:
    """``value`` if it can be sent in an HTTP header: visible ASCII only, no CR, LF or space."""
    if not _HEADER_VALUE.fullmatch(value):
        raise InvalidRequestError(
            f"the {name} cannot be sent in an HTTP header: it holds a CR, LF, space, control "
            "or non-ASCII character",
            status_code=None,
            hint=f"check the {name} for a stray newline from the file or variable it came from",
        )
    return value


_HEADER_VALUE: Final = re.compile(r"[\x21-\x7e]+")


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
