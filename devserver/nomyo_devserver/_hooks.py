"""Test hooks: model names under ``devserver/`` that make the router misbehave on purpose.

Rules of this module:

- A hook is chosen by the request's ``model``, inside the encrypted payload, so a client needs
  no extra knob to be tested against a broken router. The request is still fully checked
  first (auth, headers, package): a hook replaces only the answer.
- Names are parsed strictly; an unknown ``devserver/...`` name is a 400, never silently the
  echo model, so a typo in a test cannot pass by accident.

=================================  ============================================================
``devserver/echo``                 the echo model, even when an upstream is configured
``devserver/status-NNN``           status NNN (400-599) with ``{"detail": ...}``
``devserver/status-NNN-after-S``   the same with ``Retry-After: S``
``devserver/flaky-NNN-K``          status NNN for the first K attempts of each X-Payload-ID,
                                   then the echo answer (retries reuse the id)
``devserver/html-500``             500 with an HTML page, as a crashed proxy answers
``devserver/garbage``              200 whose body is not JSON
``devserver/truncated``            200 with the answer package cut in half
``devserver/bad-tag``              200 with one bit of the GCM tag flipped
``devserver/other-recipient``      200 with the answer sealed to another key (the router's)
``devserver/bad-version``          200 with a well-sealed package of version ``"0.9"``
``devserver/bad-algorithm``        200 with a well-sealed package of another algorithm
``devserver/drop``                 the connection is closed without an answer
``devserver/slow-MS``              the echo answer after MS milliseconds (at most 600000)
=================================  ============================================================
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["PREFIX", "Hook", "parse_hook"]

PREFIX = "devserver/"
_MAX_SLOW_MS = 600_000
_SIMPLE = {
    "echo",
    "html-500",
    "garbage",
    "truncated",
    "bad-tag",
    "other-recipient",
    "bad-version",
    "bad-algorithm",
    "drop",
}
_STATUS = re.compile(r"status-([45]\d\d)(?:-after-(\d{1,4}))?")
_FLAKY = re.compile(r"flaky-([45]\d\d)-(\d{1,3})")
_SLOW = re.compile(r"slow-(\d{1,6})")


@dataclass(frozen=True, slots=True)
class Hook:
    """A parsed hook: ``kind`` is the name's stem (``status``, ``flaky``, ``slow``, ``drop``...)."""

    kind: str
    status: int = 0
    retry_after: int | None = None
    times: int = 0
    delay: float = 0.0


def parse_hook(model: str) -> Hook | None:
    """The hook a model name selects; None for an ordinary model name.

    Raises ``ValueError`` for a ``devserver/`` name that is not a hook.
    """
    if not model.startswith(PREFIX):
        return None
    name = model[len(PREFIX) :]
    if name in _SIMPLE:
        return Hook(name)
    if m := _STATUS.fullmatch(name):
        after = int(m.group(2)) if m.group(2) is not None else None
        return Hook("status", status=int(m.group(1)), retry_after=after)
    if m := _FLAKY.fullmatch(name):
        return Hook("flaky", status=int(m.group(1)), times=int(m.group(2)))
    if (m := _SLOW.fullmatch(name)) and int(m.group(1)) <= _MAX_SLOW_MS:
        return Hook("slow", delay=int(m.group(1)) / 1000)
    raise ValueError(f"unknown test hook {model!r}: see `nomyo-devserver --help-hooks`")
