"""Large buffers made and filled without holding the GIL for long (``_buffers``), and the frame
reader that receives into them: what it hands out is what was sent, byte for byte, a large copy
lets other threads run, and a frame left half-read is wiped."""

from __future__ import annotations

import array
import os
import threading
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nomyo_agent import _buffers
from nomyo_agent import protocol as p
from nomyo_agent._buffers import COPY_FROM, FRESH_FROM, copy, fresh, join


def test_a_fresh_buffer_has_its_length_and_is_zeroed_when_small() -> None:
    assert fresh(10) == bytearray(10)
    big = fresh(FRESH_FROM + 3)
    assert type(big) is bytearray
    assert len(big) == FRESH_FROM + 3
    assert fresh(FRESH_FROM) is not fresh(FRESH_FROM)  # each call its own memory


@settings(deadline=None, max_examples=30)
@given(st.lists(st.integers(0, 3 * FRESH_FROM // 2), max_size=4), st.booleans())
def test_join_is_the_plain_join_at_every_size(sizes: list[int], as_views: bool) -> None:
    pieces = [os.urandom(size) for size in sizes]
    given_pieces = [memoryview(piece) for piece in pieces] if as_views else pieces
    joined = join(given_pieces)
    assert joined == b"".join(pieces)
    assert type(joined) is (bytes if len(joined) < FRESH_FROM else bytearray)


def test_join_takes_views_of_any_format_as_their_bytes() -> None:
    words = array.array("I", range(FRESH_FROM // 4 + 5))
    assert join([memoryview(words), b"x"]) == words.tobytes() + b"x"


@settings(deadline=None, max_examples=40)
@given(
    st.integers(0, 3 * COPY_FROM),
    st.integers(0, 100),
    st.sampled_from(["bytes", "bytearray", "view"]),
)
def test_copy_is_the_slice_assignment_at_every_size(size: int, at: int, kind: str) -> None:
    data = os.urandom(size)
    src = {"bytes": data, "bytearray": bytearray(data), "view": memoryview(b"xx" + data)[2:]}[kind]
    dst = bytearray(os.urandom(at + size + 7))
    expected = bytearray(dst)
    expected[at : at + size] = data
    copy(dst, at, src)
    assert dst == expected


def test_copy_refuses_what_does_not_fit_and_a_read_only_target() -> None:
    with pytest.raises(ValueError, match="do not fit"):
        copy(bytearray(COPY_FROM), 1, bytes(COPY_FROM))
    with pytest.raises(BufferError):
        copy(memoryview(bytes(2 * COPY_FROM)), 0, bytes(COPY_FROM))


def _stamp_when_woken(woken: threading.Event, ran_at: list[float]) -> None:
    woken.wait()
    ran_at.append(time.perf_counter())


def test_a_large_copy_lets_another_thread_take_the_gil() -> None:
    """The other thread is woken just before the copy: it can only run before the copy ends if
    the copy let go of the GIL (the interpreter would ask this thread to let go only after the
    switch interval, 5 ms, and a C call that holds the GIL cannot be asked at all). A busy
    machine may not give it a core in time, so up to five tries; a copy that holds the GIL
    fails every one."""
    if _buffers._api is None:
        pytest.fail("CPython's C API is not reachable: copy cannot let go of the GIL here")
    src, dst = os.urandom(32 * 1024 * 1024), fresh(32 * 1024 * 1024)
    for _ in range(5):
        woken, ran_at = threading.Event(), []
        other = threading.Thread(target=_stamp_when_woken, args=(woken, ran_at))
        other.start()
        time.sleep(0.05)  # it waits on the event, without the GIL
        woken.set()
        start = time.perf_counter()
        copy(dst, 0, src)
        end = time.perf_counter()
        other.join()
        assert dst == src
        if start < ran_at[0] < end:
            return
    pytest.fail("no other thread ran during any of five 32 MiB copies")


@pytest.mark.parametrize("chunk", [1000, 256 * 1024, 3 * 1024 * 1024])
def test_a_large_frame_comes_out_as_it_was_sent(chunk: int) -> None:
    request = p.Open(package=os.urandom(3 * FRESH_FROM))
    frame = p.encode_frame(request) + p.encode_frame(p.Status())
    reader = p.FrameReader(requests=True)
    bodies = [
        body for at in range(0, len(frame), chunk) for body in reader.feed(frame[at : at + chunk])
    ]
    assert [p.decode_request(body) for body in bodies] == [request, p.Status()]
    assert reader.pending == 0


def test_a_frame_left_half_read_is_wiped_and_dropped(monkeypatch: pytest.MonkeyPatch) -> None:
    wiped: list[bytearray] = []
    real = p.wipe

    def spy(obj: bytearray) -> None:
        real(obj)
        wiped.append(obj)

    monkeypatch.setattr(p, "wipe", spy)
    prompt = b"a private prompt " * (FRESH_FROM // 16)
    secret = p.encode_frame(p.Seal(origin="https://r", router_key_pem="pem", plaintext=prompt))
    reader = p.FrameReader(requests=True)
    half = len(secret) // 2
    assert list(reader.feed(secret[:half])) == []
    assert reader.pending == half - p.HEADER.size  # the body received so far
    reader.discard()
    assert reader.pending == 0
    body = next(obj for obj in wiped if len(obj) == len(secret) - p.HEADER.size)
    assert not any(body)  # the prompt's bytes received so far are zero
    # The reader starts afresh: the next frame is read whole.
    assert [p.decode_request(b) for b in reader.feed(p.encode_frame(p.Lock()))] == [p.Lock()]
