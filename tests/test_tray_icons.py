"""The tray's icons are visible and tell the states apart at panel sizes, on light and dark
panels (composited as a panel would, then measured pixel by pixel)."""

from __future__ import annotations

import itertools

import pytest
from PIL import Image, ImageChops, ImageStat

from nomyo_tray._icons import COLORS, render
from nomyo_tray._view import IconKind

LIGHT, DARK = (242, 242, 242), (32, 32, 32)
SIZES = (16, 22, 24, 32)


def pixels(img: Image.Image) -> list[tuple[int, int, int]]:
    raw = img.convert("RGB").tobytes()
    return [(raw[i], raw[i + 1], raw[i + 2]) for i in range(0, len(raw), 3)]


def near(a: tuple[int, int, int], b: tuple[int, int, int], tol: int = 40) -> bool:
    return max(abs(x - y) for x, y in zip(a, b, strict=False)) <= tol


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("panel", [LIGHT, DARK], ids=["light", "dark"])
@pytest.mark.parametrize("kind", list(IconKind), ids=lambda k: k.value)
def test_icon_stands_out_from_the_panel(
    kind: IconKind, panel: tuple[int, int, int], size: int
) -> None:
    px = pixels(render(kind, size, panel))
    contrasted = sum(1 for c in px if not near(c, panel, 60))
    assert contrasted / len(px) >= 0.25, f"{kind.value} nearly invisible at {size} px"


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("panel", [LIGHT, DARK], ids=["light", "dark"])
def test_states_differ_from_each_other(panel: tuple[int, int, int], size: int) -> None:
    imgs = {k: render(k, size, panel) for k in IconKind}
    for a, b in itertools.combinations(IconKind, 2):
        diff = sum(ImageStat.Stat(ImageChops.difference(imgs[a], imgs[b])).mean) / 3
        assert diff >= 15, f"{a.value} and {b.value} look alike at {size} px ({diff:.1f})"


@pytest.mark.parametrize("size", SIZES)
def test_locked_and_unlocked_have_their_own_colour(size: int) -> None:
    # colour is the second cue after shape: blue body for locked, green for unlocked
    for kind, other in ((IconKind.LOCKED, IconKind.UNLOCKED), (IconKind.UNLOCKED, IconKind.LOCKED)):
        px = pixels(render(kind, size, DARK))
        own = sum(1 for c in px if near(c, COLORS[kind]))
        theirs = sum(1 for c in px if near(c, COLORS[other]))
        assert own >= size * size // 8
        assert theirs == 0


def test_no_agent_is_struck_through_in_red() -> None:
    red = (229, 57, 53)
    counts = {k: sum(1 for c in pixels(render(k, 24, LIGHT)) if near(c, red)) for k in IconKind}
    assert counts[IconKind.NO_AGENT] >= 20
    assert all(n == 0 for k, n in counts.items() if k is not IconKind.NO_AGENT)


def test_rgba_by_default_with_transparent_corners() -> None:
    img = render(IconKind.LOCKED, 32)
    assert img.mode == "RGBA"
    assert img.size == (32, 32)
    assert img.getchannel("A").getpixel((0, 31)) == 0
