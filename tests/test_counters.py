"""The counters have one list of fields (``protocol.Counts``): the agent's mutable tallies and the
wire's ``Counters`` are both derived from it, so neither can gain a counter the other lacks."""

from __future__ import annotations

import msgspec
import pytest

from nomyo_agent import protocol as p
from nomyo_agent._state import MutableCounters

GAUGES = ("open_connections", "buffered_bytes", "waiting_for_memory")


def test_the_tallies_and_the_wire_share_the_one_list_of_events() -> None:
    events = p.Counts.__struct_fields__
    assert issubclass(MutableCounters, p.Counts)
    assert issubclass(p.Counters, p.Counts)
    assert MutableCounters.__struct_fields__[: len(events)] == events
    # The wire adds the gauges and nothing else, after the events.
    assert p.Counters.__struct_fields__ == (*events, *GAUGES)


def test_a_counter_added_to_the_list_is_both_counted_and_sent() -> None:
    """What adding a field to ``Counts`` does, shown on a subclass built the same way."""

    class Counts(p.Counts):
        new_event: int = 0

    class Wire(Counts, frozen=True):  # type: ignore[misc]
        open_connections: int = 0

    class Tallies(Counts):
        pass

    tallies = Tallies()
    tallies.new_event += 1
    assert "new_event" in Wire.__struct_fields__
    assert Wire(**msgspec.structs.asdict(tallies)).new_event == 1


def test_a_snapshot_carries_every_tally_and_the_gauges() -> None:
    counters = MutableCounters()
    for number, name in enumerate(p.Counts.__struct_fields__, start=1):
        setattr(counters, name, number)
    counters.gauges = lambda: {name: 100 + i for i, name in enumerate(GAUGES)}
    snapshot = counters.snapshot()
    for number, name in enumerate(p.Counts.__struct_fields__, start=1):
        assert getattr(snapshot, name) == number
    assert [getattr(snapshot, name) for name in GAUGES] == [100, 101, 102]


def test_the_wire_counters_are_frozen_and_round_trip() -> None:
    counters = p.Counters(seals=3, open_connections=2)
    assert msgspec.msgpack.decode(msgspec.msgpack.encode(counters), type=p.Counters) == counters
    with pytest.raises(AttributeError):
        setattr(counters, "seals", 4)  # noqa: B010 - mypy knows it is read-only
