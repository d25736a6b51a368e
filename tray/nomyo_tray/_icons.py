"""The tray's icon images, drawn with Pillow: a padlock whose shape and colour tell the state.

Rules of this module:

- Each state differs in two ways, so it reads at 16 px and for colour-blind users: locked is a
  closed blue padlock, unlocked an open green one (shackle lifted), no identity a grey closed
  one without a keyhole, no agent a grey one struck through in red.
- Every part has a dark outline and a light or saturated fill, so it stands out on light and on
  dark panels alike. Images are drawn at 4x and downsampled, for clean edges at small sizes.
- ``background`` composites onto an opaque colour, for backends that cannot show alpha (pystray's
  xorg backend pastes the RGB channels and drops the alpha).
"""

from __future__ import annotations

import functools

from PIL import Image, ImageDraw

from nomyo_tray._view import IconKind

__all__ = ["COLORS", "render"]

Color = tuple[int, int, int]

COLORS: dict[IconKind, Color] = {
    IconKind.LOCKED: (47, 111, 222),  # blue
    IconKind.UNLOCKED: (40, 178, 72),  # green
    IconKind.NO_IDENTITY: (158, 158, 158),  # grey
    IconKind.NO_AGENT: (140, 140, 140),  # grey, struck through
}
OUTLINE: Color = (24, 24, 24)
METAL: Color = (205, 205, 205)
SLASH: Color = (229, 57, 53)

_S = 4  # supersampling factor
_BASE = 64  # design grid


def _box(*xy: float) -> list[float]:
    return [v * _S for v in xy]


def _shackle(draw: ImageDraw.ImageDraw, lift: float, open_: bool) -> None:
    """A U-shaped shackle: dark stroke under a lighter one. ``lift`` raises it (open lock)."""
    top = 6 - lift
    left, right, inner_bottom = 18, 46, 30
    for width, color in ((11, OUTLINE), (6, METAL)):
        w = width * _S
        draw.arc(_box(left, top, right, top + 28), 180, 360, fill=color, width=w)
        # legs: the left one always reaches into the body; the right one only when closed
        x0 = left + width / 2 - 0.5
        draw.line(_box(x0, top + 14, x0, inner_bottom), fill=color, width=w)
        x1 = right - width / 2 + 0.5
        bottom = top + 20 if open_ else inner_bottom
        draw.line(_box(x1, top + 14, x1, bottom), fill=color, width=w)


@functools.lru_cache(maxsize=32)
def _draw(kind: IconKind) -> Image.Image:
    img = Image.new("RGBA", (_BASE * _S, _BASE * _S), (0, 0, 0, 0))
    draw = ImageDraw.Draw(img)
    open_ = kind is IconKind.UNLOCKED
    _shackle(draw, lift=9 if open_ else 0, open_=open_)
    draw.rounded_rectangle(
        _box(8, 27, 56, 60), radius=7 * _S, fill=COLORS[kind], outline=OUTLINE, width=3 * _S
    )
    if kind in (IconKind.LOCKED, IconKind.UNLOCKED):  # a keyhole: there is a key to use
        draw.ellipse(_box(27, 35, 37, 45), fill=OUTLINE)
        draw.polygon(_box(29, 42, 35, 42, 36.5, 53, 27.5, 53), fill=OUTLINE)
    if kind is IconKind.NO_AGENT:
        draw.line(_box(6, 58, 58, 6), fill=OUTLINE, width=11 * _S)
        draw.line(_box(6, 58, 58, 6), fill=SLASH, width=6 * _S)
    return img


def render(kind: IconKind, size: int = 64, background: Color | None = None) -> Image.Image:
    """The icon for ``kind`` at ``size`` x ``size``: RGBA, or RGB on ``background``."""
    img = _draw(kind).resize((size, size), Image.Resampling.LANCZOS)
    if background is None:
        return img
    flat = Image.new("RGB", img.size, background)
    flat.paste(img, mask=img.getchannel("A"))
    return flat
