"""One canonical router origin for the agent's pins and the client: a pin cannot be dodged by
spelling the same router differently, and different routers never share a pin."""

from __future__ import annotations

import ipaddress
import subprocess
import sys

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from hypothesis import given
from hypothesis import strategies as st

from nomyo_agent import _keys
from nomyo_agent import protocol as p
from nomyo_agent.errors import BadRequestError, PinMismatchError
from nomyo_agent.origins import canonical_origin
from nomyo_client import InvalidRequestError
from nomyo_client._wire import origin_of
from support.agent import RunningAgent

PINNED = "https://127.0.0.1:8443"
# Every spelling the review used to get a second pin for the same router.
SAME_ROUTER = [
    "https://127.0.0.1:8443/v1",
    "HTTPS://127.0.0.1:8443",
    "https://127.1:8443",
    "https://2130706433:8443",
    "https://0x7f.1:8443",
    "https://0x7f000001:8443",
    "https://0177.0.0.1:8443",
    "https://127.0.1:8443",
    "https://[::ffff:127.0.0.1]:8443",
    "https://[::FFFF:7f00:1]:8443",
    "https://\uff11\uff12\uff17.\uff10.\uff10.\uff11:8443",  # fullwidth digits
    "https://127\u30020\uff0e0\uff611:8443",  # ideographic and fullwidth full stops
    "https://127.0.0.1:08443",
    "https://user@127.0.0.1:8443/x?y#z",
]
DISTINCT = [
    "https://127.0.0.2:8443",
    "https://127.0.0.1:8444",
    "http://127.0.0.1:8443",
    "https://127.0.0.1",
    "https://[::1]:8443",
    "https://localhost:8443",
]
NAMES = [
    ("https://Router.Example", "https://router.example"),
    ("https://router.example.", "https://router.example"),
    ("https://router.example:443/v1", "https://router.example"),
    ("http://router.example:80", "http://router.example"),
    ("https://B\u00fccher.example", "https://xn--bcher-kva.example"),
    ("https://XN--BCHER-KVA.example.", "https://xn--bcher-kva.example"),
    ("https://\uff52\uff4f\uff55\uff54\uff45\uff52.example", "https://router.example"),
    ("https://[0:0::1]:8443", "https://[::1]:8443"),
]
REFUSED = [
    "ftp://router.example",
    "https://",
    "not a url",
    "https://h:99999",
    "https://h:0",
    "https://127.0.0.1.:8443",  # resolved as a name, not as the address
    "https://256.1.1.1",
    "https://1.2.3.4.5",
    "https://router.example..",
    "https://a b",
    "https://127%2e0.0.1",
    "https://[fe80::1%25eth0]",
    "https://fa\u00df.example",  # IDNA 2003 says fass, IDNA 2008 (httpx) says xn--fa-hia
    "https://[::1",
]


@pytest.mark.parametrize("url", SAME_ROUTER)
def test_spellings_of_one_router_are_one_origin(url: str) -> None:
    assert canonical_origin(url) == PINNED
    assert origin_of(url) == PINNED


@pytest.mark.parametrize(("url", "origin"), NAMES)
def test_names_are_canonical(url: str, origin: str) -> None:
    assert canonical_origin(url) == origin
    assert origin_of(url) == origin


def test_distinct_routers_stay_distinct() -> None:
    origins = [canonical_origin(u) for u in [PINNED, *DISTINCT]]
    assert len(set(origins)) == len(origins)


@pytest.mark.parametrize("url", REFUSED)
def test_ambiguous_or_bad_spellings_are_refused(url: str) -> None:
    with pytest.raises(BadRequestError) as info:
        canonical_origin(url)
    assert info.value.hint
    with pytest.raises(InvalidRequestError):
        origin_of(url)


@given(st.integers(min_value=0, max_value=2**32 - 1), st.sampled_from(["http", "https"]))
def test_every_ipv4_form_of_an_address_is_one_origin(value: int, scheme: str) -> None:
    address = ipaddress.IPv4Address(value)
    a, b, c, d = address.packed
    forms = [
        str(address),
        str(value),
        hex(value),
        f"{a}.{(b << 16) | (c << 8) | d}",
        f"{a}.{b}.{(c << 8) | d}",
        ".".join(f"0{x:o}" for x in address.packed),
        f"[::ffff:{address}]",
    ]
    expected = f"{scheme}://{address}:8443"
    for form in forms:
        assert canonical_origin(f"{scheme}://{form}:8443") == expected, form


@given(st.from_regex(r"[a-z][a-z0-9-]{0,10}(\.[a-z][a-z0-9-]{0,10}){0,3}", fullmatch=True))
def test_canonical_form_is_a_fixed_point(name: str) -> None:
    origin = canonical_origin(f"HTTPS://{name.upper()}.:443/x")
    assert origin == f"https://{name}"
    assert canonical_origin(origin) == origin


def test_the_module_imports_without_cryptography() -> None:
    code = (
        "import sys, nomyo_agent.origins;"
        "print(sorted(m for m in sys.modules if m.startswith('cryptography')))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=30
    )
    assert out.stdout.strip() == "[]"


def _seal(agent: RunningAgent, origin: str, pem: str) -> p.SealReply:
    with agent.connect() as conn:
        return conn.call(p.Seal(origin=origin, router_key_pem=pem, plaintext=b"{}"), p.SealReply)


def test_after_a_key_change_every_spelling_is_refused(agent: RunningAgent) -> None:
    agent.keygen()
    old = _keys.public_pem(rsa.generate_private_key(65537, 2048).public_key())
    new = _keys.public_pem(rsa.generate_private_key(65537, 2048).public_key())
    assert _seal(agent, PINNED, old).pinned == "new"
    for url in SAME_ROUTER:
        with pytest.raises(PinMismatchError) as info:
            _seal(agent, url, new)
        assert info.value.origin == PINNED, url
        assert _seal(agent, url, old).pinned == "known"
    for url in DISTINCT:
        assert _seal(agent, url, new).pinned == "new", url
    with agent.connect() as conn:
        pins = conn.call(p.PinsList(), p.PinsReply).pins
    assert sorted(pin.origin for pin in pins) == sorted(
        {PINNED, *(canonical_origin(u) for u in DISTINCT)}
    )
