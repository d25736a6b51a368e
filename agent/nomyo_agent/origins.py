"""A router's origin in one canonical spelling: what the agent pins and what the client names.

Standard library only (the thin client imports it and must not load ``cryptography``).

A pin must not be dodged by writing the same router another way, so every spelling that reaches
the same listener maps to one string, ``scheme://host[:port]``:

- scheme ``http`` or ``https``, lower-case; the default port (80, 443) dropped, any other kept as
  a plain decimal number;
- host names through IDNA (``Bücher.example`` and ``xn--bcher-kva.example`` are one name;
  fullwidth letters, digits and dots fold to ASCII), lower-case, without a trailing dot;
- IP literals in ``ipaddress``'s form: the shorthand IPv4 forms that the C resolver accepts
  (``127.1``, ``2130706433``, ``0x7f.1``, ``0177.0.0.1``) become the dotted quad they denote, an
  IPv4-mapped IPv6 address (``[::ffff:127.0.0.1]``) becomes its IPv4 address, IPv6 is compressed.

Spellings whose canonical form ``getaddrinfo`` would resolve differently are refused rather
than guessed at: an IP literal with a trailing dot (looked up as a name), a numeric-looking
host that is not an address (``256.1.1.1``), an IPv6 zone, characters outside host names
(``%``, spaces), and the four characters that IDNA 2003 (Python's codec) and IDNA 2008 (what
httpx connects to) map differently (``ß``, ``ς``, ZWJ, ZWNJ).

Example::

    >>> canonical_origin("HTTPS://Router.Example.:443/v1")
    'https://router.example'
    >>> canonical_origin("http://0x7f.1:8080")
    'http://127.0.0.1:8080'
"""

from __future__ import annotations

import ipaddress
import re
import socket
import urllib.parse

from nomyo_agent.errors import BadRequestError

__all__ = ["DEFAULT_PORTS", "canonical_host", "canonical_origin"]

DEFAULT_PORTS = {"http": 80, "https": 443}

_NAME = re.compile(r"[a-z0-9_-]+(\.[a-z0-9_-]+)*")
# A host whose last label is numeric is an IPv4 address or nothing (as the URL standard and
# the C resolver read it), never a DNS name.
_NUMERIC_LABEL = re.compile(r"(0x[0-9a-f]*|[0-9]+)")
_IDNA_DEVIATIONS = frozenset("\u00df\u03c2\u200c\u200d")
_HINT = "write the router's URL as https://host[:port], with a plain host name or IP address"


def _refuse(url: str, why: str) -> BadRequestError:
    return BadRequestError(f"not a usable router URL {url!r}: {why}", hint=_HINT)


def _ipv6(url: str, literal: str) -> str:
    if "%" in literal:
        raise _refuse(url, "an IPv6 zone names a link, not a router")
    try:
        address = ipaddress.IPv6Address(literal)
    except ValueError as exc:
        raise _refuse(url, f"{literal!r} is not an IPv6 address") from exc
    mapped = address.ipv4_mapped
    return str(mapped) if mapped is not None else f"[{address.compressed}]"


def _ipv4(url: str, host: str) -> str:
    try:
        return str(ipaddress.IPv4Address(host))
    except ValueError:
        pass
    # The shorthand forms (fewer parts, octal, hex) resolve through inet_aton; so do we.
    try:
        packed = socket.inet_aton(host)
    except OSError as exc:
        raise _refuse(url, f"{host!r} looks numeric but is not an IPv4 address") from exc
    return str(ipaddress.IPv4Address(packed))


def canonical_host(url: str, raw_host: str) -> str:
    """The canonical form of the host part ``raw_host`` of ``url`` (IPv6 in brackets)."""
    if raw_host.startswith("["):
        if not raw_host.endswith("]"):
            raise _refuse(url, "unbalanced brackets")
        return _ipv6(url, raw_host[1:-1])
    if _IDNA_DEVIATIONS & set(raw_host.lower()):
        raise _refuse(url, "IDNA 2003 and 2008 spell this name differently")
    try:
        host = raw_host.encode("idna").decode("ascii").lower()
    except UnicodeError as exc:
        raise _refuse(url, f"{raw_host!r} is not a valid host name") from exc
    dotted = host.endswith(".")
    host = host.removesuffix(".")
    if not _NAME.fullmatch(host):
        raise _refuse(url, f"{raw_host!r} is not a valid host name")
    if _NUMERIC_LABEL.fullmatch(host.rsplit(".", 1)[-1]):
        if dotted:
            raise _refuse(url, "an IP address with a trailing dot is looked up as a name")
        return _ipv4(url, host)
    return host


def canonical_origin(url: str) -> str:
    """``scheme://host[:port]`` for a router URL, per this module's rules; else
    ``BadRequestError``. Any path, query or user part of ``url`` is ignored."""
    try:
        parts = urllib.parse.urlsplit(url.strip())
        port = parts.port
    except ValueError as exc:
        raise _refuse(url, str(exc)) from exc
    scheme = parts.scheme.lower()
    if scheme not in DEFAULT_PORTS:
        raise _refuse(url, "the scheme must be http or https")
    raw_host = parts.netloc.rpartition("@")[2]
    if raw_host.startswith("["):
        raw_host = raw_host[: raw_host.find("]") + 1]
    else:
        raw_host = raw_host.partition(":")[0]
    if not raw_host:
        raise _refuse(url, "no host")
    host = canonical_host(url, raw_host)
    if port == 0:
        raise _refuse(url, "port 0")
    if port is None or port == DEFAULT_PORTS[scheme]:
        return f"{scheme}://{host}"
    return f"{scheme}://{host}:{port}"
