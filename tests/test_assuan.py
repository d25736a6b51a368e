"""The Assuan codec with bytes only: what goes in, which events come out, which bytes go out.
(The real pinentry programs talking through it are in test_pinentry.py.)"""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from nomyo_agent._assuan import (
    LINE_MAX,
    NEED_DATA,
    Comment,
    Data,
    Err,
    Event,
    Inquire,
    NeedData,
    Ok,
    Reader,
    Status,
    command,
    data,
    escape,
    unescape,
)
from nomyo_agent.errors import PinentryError

# Events with their D payloads decoded, so they outlive the reader's buffer and compare simply.
Seen = Ok | Err | Status | Inquire | Comment | bytes


def events(chunks: list[bytes], size: int = LINE_MAX) -> list[Seen]:
    reader = Reader(memoryview(bytearray(size)), peer="probe")
    seen: list[Seen] = []
    for chunk in chunks:
        rest = chunk
        while rest:
            rest = rest[reader.feed(rest) :]
            while not isinstance(event := reader.next_event(), NeedData):
                seen.append(_kept(event))
    return seen


def _kept(event: Event) -> Seen:
    return unescape(bytes(event.raw)) if isinstance(event, Data) else event


SESSION = (
    b"OK Pleased to meet you, process 4242\n"
    b"# a comment\n"
    b"\n"
    b"S PIN_REPEATED\n"
    b"S SOME_STATUS with text\r\n"
    b"INQUIRE PINENTRY_LAUNCHED 4242 tty 1.2.1\n"
    b"D a%25b%0D%0Ac%e2%82%AC\n"
    b"D second\n"
    b"ERR 83886179 Operation cancelled <Pinentry>\n"
    b"OK\n"
)
SESSION_EVENTS: list[Seen] = [
    Ok(b"Pleased to meet you, process 4242"),
    Comment(b" a comment"),
    Comment(b""),
    Status(b"PIN_REPEATED", b""),
    Status(b"SOME_STATUS", b"with text"),
    Inquire(b"PINENTRY_LAUNCHED", b"4242 tty 1.2.1"),
    b"a%b\r\nc\xe2\x82\xac",
    b"second",
    Err(83886179, "Operation cancelled <Pinentry>"),
    Ok(b""),
]


def test_every_kind_of_line_becomes_its_event() -> None:
    assert events([SESSION]) == SESSION_EVENTS


@given(st.lists(st.integers(0, len(SESSION)), max_size=12))
def test_any_split_of_the_input_gives_the_same_events(cuts: list[int]) -> None:
    edges = [0, *sorted(cuts), len(SESSION)]
    assert events([SESSION[a:b] for a, b in itertools.pairwise(edges)]) == SESSION_EVENTS


def test_one_byte_at_a_time_in_the_smallest_buffer_gives_the_same_events() -> None:
    assert events([SESSION[i : i + 1] for i in range(len(SESSION))]) == SESSION_EVENTS


def test_a_line_of_exactly_the_limit_is_read_and_one_more_byte_is_refused() -> None:
    longest = b"D " + b"x" * (LINE_MAX - 3) + b"\n"
    assert events([longest, b"OK\n"]) == [b"x" * (LINE_MAX - 3), Ok(b"")]
    with pytest.raises(PinentryError, match=f"probe sent a line over {LINE_MAX} bytes"):
        events([b"D " + b"x" * (LINE_MAX - 2) + b"\n"])
    with pytest.raises(PinentryError, match="over 1000 bytes"):
        events([b"D " + b"x" * 5000], size=LINE_MAX * 8)  # no LF yet, but already too long


def test_a_partial_line_waits_for_its_end() -> None:
    reader = Reader(memoryview(bytearray(LINE_MAX)))
    reader.feed(b"OK hal")
    assert reader.next_event() is NEED_DATA
    reader.feed(b"f\nERR")
    assert reader.next_event() == Ok(b"half")
    assert reader.next_event() is NEED_DATA


@pytest.mark.parametrize(
    "line", [b"hello, I am cat\n", b"OKAY\n", b"D\n", b"Dx\n", b"S\n", b"INQUIRE\n"]
)
def test_a_line_that_is_no_assuan_is_refused(line: bytes) -> None:
    with pytest.raises(PinentryError, match="probe does not speak the pinentry protocol"):
        events([line])


@pytest.mark.parametrize("raw", [b"ab%zz", b"ab%2", b"%", b"%g0"])
def test_a_malformed_escape_is_refused(raw: bytes) -> None:
    with pytest.raises(PinentryError, match="malformed escape"):
        unescape(raw)


def test_an_err_without_a_number_is_code_zero() -> None:
    assert events([b"ERR\nERR x y\n"]) == [Err(0, ""), Err(0, "y")]


def test_moved_and_consumed_bytes_are_zeroed_in_the_callers_buffer() -> None:
    buffer = bytearray(LINE_MAX)
    reader = Reader(memoryview(buffer))
    reader.feed(b"D secret\nOK")
    event = reader.next_event()
    assert isinstance(event, Data)
    assert bytes(event.raw) == b"secret"
    reader.free()  # moves "OK" to the front and zeroes where it and the D line were
    assert buffer[:2] == b"OK"
    assert not any(buffer[2:])


def test_a_buffer_below_the_line_limit_is_refused() -> None:
    with pytest.raises(ValueError, match="buffer of 1000 bytes"):
        Reader(memoryview(bytearray(LINE_MAX - 1)))


@given(st.binary(max_size=3000))
def test_escaping_round_trips(raw: bytes) -> None:
    escaped = escape(raw)
    assert unescape(escaped) == raw
    assert b"\n" not in escaped
    assert b"\r" not in escaped
    assert not escaped.endswith(b"\\")


def test_escapes_are_upper_case_and_only_where_needed() -> None:
    assert escape(b"50% a\r\nb\\c\\") == b"50%25 a%0D%0Ab\\c%5C"


def test_commands_escape_and_clip_whole_characters_to_the_line() -> None:
    assert command(b"GETPIN") == b"GETPIN\n"
    assert command(b"SETDESC", "a%b\r\nc") == b"SETDESC a%25b%0D%0Ac\n"
    line = command(b"SETDESC", "€" * 2000)
    assert len(line) <= LINE_MAX
    assert line.endswith(b"\n")
    assert line.count(b"\n") == 1
    line[len(b"SETDESC ") : -1].decode("utf-8")  # no character cut in half


@given(st.binary(max_size=4000))
def test_data_lines_fit_the_limit_and_read_back_as_the_payload(payload: bytes) -> None:
    sent = data(payload)
    assert sent.endswith(b"END\n")
    lines = sent.split(b"\n")[:-2]
    assert all(len(line) + 1 <= LINE_MAX and line.startswith(b"D ") for line in lines)
    read = events([b"\n".join(lines) + b"\n"] if lines else [])
    assert b"".join(e for e in read if isinstance(e, bytes)) == payload
