"""The agent's RPC protocol: messages, error codes and framing, with no I/O.

One module above STYLE.md's 250 lines on purpose: it is the single schema of the wire, which
both sides import and a reviewer reads whole; split, a message could drift from its framing.

Rules of this module:

- It imports nothing but msgspec and the standard library, so that a client can import it
  without pulling in ``cryptography`` (the trust boundary of ARCHITECTURE.md).
- Every message is a frozen, tagged ``msgspec.Struct`` that forbids unknown fields. A new field
  gets a default and goes at the end, so that an older peer keeps decoding newer messages of the
  same protocol version; anything else is a new ``PROTOCOL_VERSION``.
- A frame is a 4-byte big-endian length followed by one msgpack message. The length is checked
  against a cap before the body is buffered (see ``FrameReader``). Requests have per-operation
  caps (``request_cap``): only ``seal``, ``open`` and ``import`` carry bulk data; every other
  request fits in ``SMALL_FRAME_BYTES``. A frame longer than that must name its operation first
  (msgspec writes the tag first), so the cap is known from the first bytes of the body.
- Secrets (passphrases) travel only in ``Unlock``/``Generate``/``Import`` when a script chose
  ``--passphrase-stdin``; otherwise the agent asks pinentry itself and they never cross the RPC.

Conversation: the client sends ``Hello`` first (optional but recommended: it checks versions),
then any number of requests, each answered by exactly one response in order. ``Watch`` turns the
connection into a one-way stream of ``StateEvent`` messages until it is closed.

Example::

    >>> frame = encode_frame(Seal(origin="https://r.example", router_key_pem="...",
    ...                           plaintext=b"{}"))
    >>> reader = FrameReader()
    >>> [decode_request(body) for body in reader.feed(frame)][0].origin
    'https://r.example'
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Callable, Iterator, Mapping
from typing import Final, Literal, TypeVar

import msgspec

from nomyo_agent._buffers import copy, fresh
from nomyo_agent._secret import wipe

__all__ = [
    "CAPABILITIES",
    "HEADER",
    "MAX_ANSWER_BYTES",
    "MAX_FRAME_BYTES",
    "PROTOCOL_VERSION",
    "REQUEST_CAPS",
    "SMALL_FRAME_BYTES",
    "Accepted",
    "AppForget",
    "AppInfo",
    "Apps",
    "AppsReply",
    "ClientInfo",
    "Counters",
    "Counts",
    "Error",
    "ErrorCode",
    "FrameError",
    "FrameReader",
    "FrameTooLarge",
    "Generate",
    "Hardening",
    "Hello",
    "HelloReply",
    "IdentityReply",
    "Import",
    "Lock",
    "Ok",
    "Open",
    "OpenReply",
    "PinAccept",
    "PinEntry",
    "PinForget",
    "PinInfo",
    "PinsList",
    "PinsReply",
    "PublicKey",
    "Request",
    "Response",
    "Seal",
    "SealReply",
    "State",
    "StateEvent",
    "Status",
    "StatusReply",
    "Stop",
    "Unlock",
    "Watch",
    "decode_request",
    "decode_response",
    "encode",
    "encode_frame",
    "op_of",
    "request_cap",
    "short_fingerprint",
]

PROTOCOL_VERSION: Final = 1
"""Bumped on any change an older peer could misread. Both sides refuse a different version."""

CAPABILITIES: Final = (
    "seal",
    "open",
    "pins",
    "watch",
    "pinentry",
    "generate",
    "import",
    "app",  # Seal and Open carry the name of the app they serve (a nomyo-proxy token)
    "apps",
)
"""What this agent implements; ``Hello`` exchanges them so clients can feature-test."""

HEADER: Final = struct.Struct(">I")

MAX_ANSWER_BYTES: Final = 64 * 1024 * 1024
"""The largest router answer a client accepts (``nomyo_client``'s transport cap). Every answer
within it must open through the agent, so an ``Open`` frame carries up to this much package."""

_ENVELOPE = 64 * 1024  # msgpack framing around a package or plaintext, and the small fields

MAX_FRAME_BYTES: Final = MAX_ANSWER_BYTES + _ENVELOPE
"""No frame in either direction is longer. The largest are an ``Open`` of a maximal answer and
its ``OpenReply`` (3/4 of that: the package's base64 decoded)."""

SMALL_FRAME_BYTES: Final = 64 * 1024
"""The cap of every request but seal, open and import: a frame of millions of tiny strings in a
``Hello`` must be refused unread, not decoded into a gigabyte of Python objects."""

REQUEST_CAPS: Final[Mapping[str, int]] = {
    # The wire protocol allows 10 MiB of JSON payload; 16 MiB leaves room for msgpack and a margin.
    "seal": 16 * 1024 * 1024,
    "open": MAX_FRAME_BYTES,
    # A PEM private key: RSA-16384 is about 12 KB; passphrases and pinentry settings are small.
    "import": 1024 * 1024,
}


def request_cap(op: str) -> int:
    """The largest request frame body for operation ``op`` (``SMALL_FRAME_BYTES`` by default)."""
    return REQUEST_CAPS.get(op, SMALL_FRAME_BYTES)


class State(enum.StrEnum):
    """What the agent can do right now."""

    NO_IDENTITY = "no-identity"
    LOCKED = "locked"
    UNLOCKED = "unlocked"


class ErrorCode(enum.StrEnum):
    """Typed error codes. Each comes with a human ``message`` and a ``hint`` saying what to do."""

    BAD_REQUEST = "bad_request"  # well-formed frame, invalid message; the connection stays usable
    UNSUPPORTED_PROTOCOL = "unsupported_protocol"
    LOCKED = "locked"
    NO_IDENTITY = "no_identity"
    IDENTITY_EXISTS = "identity_exists"
    BAD_PASSPHRASE = "bad_passphrase"
    PASSPHRASE_REQUIRED = "passphrase_required"
    CANCELLED = "cancelled"  # the user cancelled pinentry
    PINENTRY_FAILED = "pinentry_failed"
    KEYRING_UNAVAILABLE = "keyring_unavailable"
    KEYRING_LOCKED = "keyring_locked"
    CORRUPT_IDENTITY = "corrupt_identity"
    BAD_KEY = "bad_key"  # an imported or given key is unusable (too small, not RSA, not PEM)
    BAD_ROUTER_KEY = "bad_router_key"
    PIN_MISMATCH = "pin_mismatch"
    NOT_PINNED = "not_pinned"
    DECRYPT_FAILED = "decrypt_failed"  # one opaque code for every unwrap, tag or format failure
    TOO_MANY_ATTEMPTS = "too_many_attempts"
    SHUTTING_DOWN = "shutting_down"
    APP_DENIED = "app_denied"  # the user did not allow this app to use the identity (confirm)
    INTERNAL = "internal"
    # Never sent by the agent: raised where they happen (a client, the CLI, the agent at start),
    # so that every class of the error tree has a code of its own to log and to compare.
    BAD_CONFIG = "bad_config"  # config.toml or a setting
    USAGE = "usage"  # the command line (or NOMYO_AGENT_SOCK) cannot work
    ALREADY_RUNNING = "already_running"  # an agent serves the socket or pipe already
    START_FAILED = "start_failed"  # a background agent did not start
    SERVICE_FAILED = "service_failed"  # install-service: the service manager said no
    UNAVAILABLE = "unavailable"  # nothing answers at the socket
    UNSAFE_SOCKET = "unsafe_socket"  # the socket's folder or its peer is not the user's own
    CONNECTION_LOST = "connection_lost"  # the connection broke or spoke garbage


class _Msg(msgspec.Struct, frozen=True, forbid_unknown_fields=True, tag_field="op"):
    """Base of every message; ``op`` carries the tag on the wire."""


# --- requests --------------------------------------------------------------------------------


class PinEntry(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Where the agent should show pinentry: the asking process's display and terminal.

    It comes from the process that asked, not from wherever the agent was started (a service
    manager has no DISPLAY). Keys are environment variable names (``DISPLAY``,
    ``WAYLAND_DISPLAY``, ``DBUS_SESSION_BUS_ADDRESS``, ``XAUTHORITY``, ``TERM``, ``LANG``,
    ``LC_ALL``, ``LC_CTYPE``, ``GPG_TTY``); ``ttyname`` is the asking terminal, if any.
    """

    env: dict[str, str] = {}
    ttyname: str | None = None


class Hello(_Msg, frozen=True, tag="hello"):
    protocol: int = PROTOCOL_VERSION
    client: str = ""
    capabilities: list[str] = []
    # Where this client can show a pinentry, for prompts its later requests cause on this
    # connection (unlock on demand, approval of a new app); None: never prompt for it.
    pinentry: PinEntry | None = None


class Status(_Msg, frozen=True, tag="status"):
    pass


class PublicKey(_Msg, frozen=True, tag="public_key"):
    pass


# Seal and Open omit ``app`` when it is empty, so that a client that names no app sends exactly
# the bytes an agent older than the "app" capability decodes; a client names one only after
# seeing that capability in ``HelloReply``.


class Seal(_Msg, frozen=True, tag="seal", omit_defaults=True):
    """Encrypt ``plaintext`` to ``router_key_pem`` after checking it against the origin's pin.

    ``app`` names the app the connection serves, for status and the audit log, when one process
    speaks for several (nomyo-proxy sends the token's name); display only, never trusted.
    """

    origin: str
    router_key_pem: str
    plaintext: bytes
    app: str = ""


class Open(_Msg, frozen=True, tag="open", omit_defaults=True):
    """Decrypt a package (the JSON bytes of PROTOCOL.md) sealed to our public key."""

    package: bytes
    app: str = ""


class Lock(_Msg, frozen=True, tag="lock"):
    pass


class Unlock(_Msg, frozen=True, tag="unlock"):
    """Unlock: a given passphrase (scripts), else pinentry when ``pinentry`` is set."""

    passphrase: bytes | None = None
    pinentry: PinEntry | None = None


class Generate(_Msg, frozen=True, tag="generate"):
    """Make a new identity. ``passphrase`` b"" or None with no pinentry means no passphrase."""

    bits: int = 4096
    passphrase: bytes | None = None
    pinentry: PinEntry | None = None
    force: bool = False


class Import(_Msg, frozen=True, tag="import"):
    """Import a PEM private key (e.g. the public client's ``client_keys/private_key.pem``).

    ``file_password`` opens the PEM if it is encrypted (when it is None and ``pinentry`` is set,
    the agent asks for it). ``passphrase`` is what to store the key under: None keeps the file's
    password (so an unencrypted file stays unencrypted), b"" stores it with none.
    """

    pem: bytes
    file_password: bytes | None = None
    passphrase: bytes | None = None
    pinentry: PinEntry | None = None
    force: bool = False


class PinsList(_Msg, frozen=True, tag="pins_list"):
    pass


class PinAccept(_Msg, frozen=True, tag="pin_accept"):
    """Accept the key last offered for ``origin`` (after a pin_mismatch), or pin a given one."""

    origin: str
    router_key_pem: str | None = None


class PinForget(_Msg, frozen=True, tag="pin_forget"):
    origin: str


class Apps(_Msg, frozen=True, tag="apps"):
    """List the apps seen since unlock, with the user's decision for each (``confirm``)."""


class AppForget(_Msg, frozen=True, tag="app_forget"):
    """Forget the decision for ``app`` (as ``Apps`` lists it): its next use asks again."""

    app: str


class Watch(_Msg, frozen=True, tag="watch"):
    """Subscribe: the agent answers with a ``StateEvent`` now and on every change after."""


class Stop(_Msg, frozen=True, tag="stop"):
    pass


Request = (
    Hello
    | Status
    | PublicKey
    | Seal
    | Open
    | Lock
    | Unlock
    | Generate
    | Import
    | PinsList
    | PinAccept
    | PinForget
    | Watch
    | Stop
    | Apps
    | AppForget
)

# --- responses -------------------------------------------------------------------------------


class HelloReply(_Msg, frozen=True, tag="hello_reply"):
    protocol: int
    agent_version: str
    capabilities: list[str]
    pid: int
    autostarted: bool = False


class Hardening(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Facts read back from the OS after hardening, never what we merely asked for."""

    not_dumpable: bool
    core_dumps_disabled: bool
    key_memory_locked: bool  # the unlocked key's buffers are mlock()ed
    key_memory_dontdump: bool  # ... and MADV_DONTDUMP
    process_memory_locked: bool  # mlockall() succeeded
    ptrace_denied: bool  # same-uid debuggers cannot attach (follows from not_dumpable on Linux)
    details: list[str] = []  # one line per fact that could not be achieved, and why


class Counts(msgspec.Struct, forbid_unknown_fields=True):
    """The events the agent counts: the one list of them.

    Mutable, because the agent's running tallies (``_state.MutableCounters``) are this class;
    ``Counters``, what status sends, is this class frozen plus the gauges. A counter added here
    is therefore counted and sent, with no second list to forget.
    """

    connections: int = 0
    requests: int = 0
    seals: int = 0
    opens: int = 0
    errors: int = 0
    rejected_peers: int = 0
    failed_unlocks: int = 0
    evicted_connections: int = 0  # closed to make room at the connection cap
    refused_connections: int = 0  # turned away at the cap (every connection was busy)


# msgspec allows a frozen struct over a mutable base (the wire sees the fields in order, events
# first); mypy applies the dataclass rule that forbids it, which does not hold for msgspec.
class Counters(Counts, frozen=True, forbid_unknown_fields=True):  # type: ignore[misc]
    """Status's counters: every event of ``Counts``, then the gauges read when status asks."""

    open_connections: int = 0
    buffered_bytes: int = 0  # frames being received and replies not yet taken, all connections
    waiting_for_memory: int = 0  # connections whose large frame waits for buffer space


class ClientInfo(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    pid: int
    exe: str  # executable name from the peer's credentials (/proc/PID/comm, cmdline)
    last_seen: float  # wall-clock Unix seconds


class StatusReply(_Msg, frozen=True, tag="status_reply"):
    state: State
    pid: int
    protocol: int
    agent_version: str
    socket: str
    fingerprint: str | None  # SHA-256 of the DER SubjectPublicKeyInfo, lower-case hex
    bits: int | None
    passphrase_protected: bool | None
    keyring_backend: str
    idle_timeout: float  # seconds, 0 = off
    max_lifetime: float  # seconds, 0 = off
    idle_left: float | None  # seconds until the idle lock, when unlocked and a timeout is set
    lifetime_left: float | None
    unlocked_at: float | None  # wall-clock Unix seconds
    pin_policy: str
    hardening: Hardening
    counters: Counters
    served_since_unlock: int = 0
    recent_clients: list[ClientInfo] = []
    uptime: float = 0.0
    locked_by: str | None = None  # the reason of the last lock that dropped the key
    session: list[str] = []  # what of the desktop session is followed (lock_on), per bus


class IdentityReply(_Msg, frozen=True, tag="identity_reply"):
    """Answer to PublicKey, Generate and Import."""

    public_key_pem: str
    fingerprint: str
    bits: int
    passphrase_protected: bool


class SealReply(_Msg, frozen=True, tag="seal_reply"):
    package: bytes
    # Our public key at the time of sealing, for the X-Public-Key header; carried here so a client
    # never sends a stale key after the identity changed.
    public_key_pem: str
    fingerprint: str
    pinned: Literal["new", "known", "off"] = "known"


class OpenReply(_Msg, frozen=True, tag="open_reply"):
    plaintext: bytes
    processed_at: float | None = None


class PinInfo(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    origin: str
    fingerprint: str
    first_seen: float
    pending_fingerprint: str | None = None  # a different key offered and refused


class PinsReply(_Msg, frozen=True, tag="pins_reply"):
    pins: list[PinInfo]
    policy: str


class Accepted(_Msg, frozen=True, tag="accepted"):
    """Answer to PinAccept: the origin is now pinned to this key."""

    origin: str
    fingerprint: str


class AppInfo(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    app: str  # the executable path; for interpreters the script: "/x/app.py (/usr/bin/python3)"
    decision: Literal["allowed", "denied", "pending", "not-asked"]
    last_seen: float  # wall-clock Unix seconds
    uses: int = 0  # seals and opens served since unlock


class AppsReply(_Msg, frozen=True, tag="apps_reply"):
    apps: list[AppInfo]
    confirm: str  # the policy: "off", "first-use" or "every-use"


class Ok(_Msg, frozen=True, tag="ok"):
    pass


class Error(_Msg, frozen=True, tag="error"):
    code: ErrorCode
    message: str  # lower-case, no final period (age's style)
    hint: str = ""  # what to do, e.g. "run `nomyo-agent unlock`"
    origin: str | None = None  # for pin_mismatch
    fingerprint: str | None = None  # for pin_mismatch: the refused key


class StateEvent(_Msg, frozen=True, tag="state_event"):
    """Pushed to watchers on every change, and once when the watch starts."""

    state: State
    reason: str  # "watch", "unlock", "lock", "idle_timeout", "max_lifetime", "generate",
    # "import", "pin_mismatch", "stopping", "served"; from the desktop session: "session_lock",
    # "locked_hint", "screensaver", "suspend", "session_end"
    fingerprint: str | None = None
    origin: str | None = None  # for pin_mismatch
    idle_left: float | None = None
    served_since_unlock: int = 0
    recent_clients: list[ClientInfo] = []
    refused_fingerprint: str | None = None  # for pin_mismatch: the router key refused


Response = (
    HelloReply
    | StatusReply
    | IdentityReply
    | SealReply
    | OpenReply
    | PinsReply
    | Accepted
    | Ok
    | Error
    | StateEvent
    | AppsReply
)

# --- encoding and framing --------------------------------------------------------------------

_T = TypeVar("_T")
_encoder = msgspec.msgpack.Encoder()
_REQUEST_OPS = frozenset(t.__struct_config__.tag for t in Request.__args__)
# Annotated: msgspec's stubs before 0.23 type a Decoder of a union as Decoder[Any].
_request_decoder: msgspec.msgpack.Decoder[Request] = msgspec.msgpack.Decoder(Request)
_response_decoder: msgspec.msgpack.Decoder[Response] = msgspec.msgpack.Decoder(Response)


def encode(message: _Msg) -> bytes:
    """The msgpack body of one message, without the length header."""
    return _encoder.encode(message)


def encode_frame(message: _Msg) -> bytearray:
    """One complete frame: length header, then the msgpack body.

    A request over its operation's cap (``request_cap``) or any message over ``MAX_FRAME_BYTES``
    raises ``FrameTooLarge`` here, before anything is sent: the peer would refuse it anyway.
    The body is encoded behind room for the header, with no second copy of a large message.
    """
    buf = bytearray(HEADER.size)
    _encoder.encode_into(message, buf, HEADER.size)
    length = len(buf) - HEADER.size
    op = type(message).__struct_config__.tag
    cap = request_cap(op) if isinstance(op, str) and op in _REQUEST_OPS else MAX_FRAME_BYTES
    if length > cap:
        raise FrameTooLarge(length, cap)
    HEADER.pack_into(buf, 0, length)
    return buf


def _decode(decoder: msgspec.msgpack.Decoder[_T], body: bytes | bytearray | memoryview) -> _T:
    try:
        return decoder.decode(body)
    except msgspec.MsgspecError:
        raise
    except (UnicodeDecodeError, ValueError, TypeError, OverflowError, RecursionError) as exc:
        # msgspec lets a few decoding failures through as builtins (invalid UTF-8 in a str):
        # callers must see one error type for "this body is not a valid message".
        raise msgspec.DecodeError(f"invalid message: {exc}") from exc


def decode_request(body: bytes | bytearray | memoryview) -> Request:
    """Decode one request body; raises ``msgspec.ValidationError``/``DecodeError`` if invalid."""
    return _decode(_request_decoder, body)


def decode_response(body: bytes | bytearray | memoryview) -> Response:
    return _decode(_response_decoder, body)


class FrameError(Exception):
    """The byte stream is not a sequence of frames; the connection must be closed."""


class FrameTooLarge(FrameError):
    def __init__(self, length: int, cap: int = MAX_FRAME_BYTES, op: str | None = None) -> None:
        what = f"{op} frame" if op else "frame"
        super().__init__(f"{what} of {length} bytes is over the {cap}-byte cap")
        self.length = length
        self.cap = cap


# A large request must start with its tag: a map header (fixmap, map16, map32), the key "op" and a
# short string. 48 bytes hold the longest such prefix.
_PEEK = 48


def op_of(prefix: bytes | bytearray) -> str | None:
    """The ``op`` a msgpack body starts with, or None if it does not start with one."""
    first = prefix[0] if prefix else -1
    pos = 1 if 0x80 <= first <= 0x8F else 3 if first == 0xDE else 5 if first == 0xDF else None
    if pos is None or prefix[pos : pos + 3] != b"\xa2op":
        return None
    pos += 3
    if pos >= len(prefix):
        return None
    marker = prefix[pos]
    if 0xA0 <= marker <= 0xBF:
        size, pos = marker - 0xA0, pos + 1
    elif marker == 0xD9 and pos + 1 < len(prefix):
        size, pos = prefix[pos + 1], pos + 2
    else:
        return None
    raw = bytes(prefix[pos : pos + size])
    if len(raw) != size:
        return None
    try:
        return raw.decode("ascii")
    except UnicodeDecodeError:
        return None


class FrameReader:
    """Sans-I/O frame splitter: feed it bytes, get back complete frame bodies.

    ``FrameReader()`` caps every frame at ``max_frame`` (replies, read by clients).
    ``FrameReader(requests=True)`` applies ``request_cap``: a frame longer than
    ``SMALL_FRAME_BYTES`` is held until the first bytes of its body name its operation, and
    refused if that operation's cap is smaller. Then ``admit(length)``, when given, decides
    whether its body may be buffered now (the agent's memory budget); while it says no, the
    frame's first bytes stay held and ``feed(b"")`` asks again.

    A body is handed out as the ``bytearray`` it was received into (no copy); the caller owns it.
    A large body's buffer is not zero-filled up front (``_buffers.fresh``): the bytes received
    fill it (``_buffers.copy``, without the GIL), and it is handed out only once full.
    ``discard()`` wipes a frame left half-read.
    After a ``FrameError`` the reader is unusable, as is the stream it was reading.
    """

    def __init__(
        self,
        max_frame: int = MAX_FRAME_BYTES,
        *,
        requests: bool = False,
        admit: Callable[[int], bool] | None = None,
    ) -> None:
        self._buf = bytearray()  # bytes not yet assigned to a body
        self._body: bytearray | None = None  # the frame in progress, allocated at its length
        self._fill = 0
        self._max = max_frame
        self._requests = requests
        self._admit_hook = admit

    @property
    def pending(self) -> int:
        """Bytes received that do not form a complete frame yet (0 between frames)."""
        return len(self._buf) + self._fill

    def _admit(self) -> int | None:
        """The length of the next frame once it may be read, None while more bytes are needed."""
        if len(self._buf) < HEADER.size:
            return None
        (length,) = HEADER.unpack_from(self._buf)
        cap = self._max
        if length > cap:  # over every cap: no need to wait for the operation's name
            raise FrameTooLarge(length, cap)
        if self._requests and length > SMALL_FRAME_BYTES:
            head = self._buf[HEADER.size : HEADER.size + _PEEK]
            if len(head) < min(_PEEK, length):
                return None
            op = op_of(head)
            cap = min(cap, SMALL_FRAME_BYTES if op is None else request_cap(op))
            if length > cap:
                raise FrameTooLarge(length, cap, op)
            if self._admit_hook is not None and not self._admit_hook(length):
                return None
        return int(length)

    def feed(self, data: bytes | bytearray | memoryview) -> Iterator[bytearray]:
        view = memoryview(data)
        while True:
            if self._body is None:
                self._buf += view
                view = memoryview(b"")
                length = self._admit()
                if length is None:
                    return
                # Not bytearray(length): zero-filling megabytes at once would hold the GIL
                # (the event loop and every worker) for milliseconds.
                self._body = fresh(length)
                taken = min(length, len(self._buf) - HEADER.size)
                self._body[:taken] = self._buf[HEADER.size : HEADER.size + taken]
                self._fill = taken
                rest = self._buf[HEADER.size + taken :]
                # Zero what was consumed before letting go of it: a frame may carry a
                # passphrase or a PEM, and the buffer's memory is reused.
                self._buf[:] = bytes(len(self._buf))
                self._buf = bytearray()
                view = memoryview(rest)
            else:
                room = len(self._body) - self._fill
                taken = min(room, len(view))
                # Not a slice assignment: the first touch of the body's pages would hold the GIL
                # (the event loop's own and every worker's) for about a millisecond a chunk.
                copy(self._body, self._fill, view[:taken])
                self._fill += taken
                view = view[taken:]
            if self._fill < len(self._body):
                return
            body, self._body, self._fill = self._body, None, 0
            yield body

    def discard(self) -> None:
        """Wipe and drop what was received of an unfinished frame (the stream is closing)."""
        if self._body is not None:
            wipe(self._body)
            self._body, self._fill = None, 0
        wipe(self._buf)
        self._buf = bytearray()


def short_fingerprint(fp: str) -> str:
    """The first 16 hex digits of a SHA-256 fingerprint in groups of four, for a tooltip or a
    status line, e.g. ``3f2a:91c0:0d4e:77b1``; the one short form every part shows."""
    return ":".join(fp[i : i + 4] for i in range(0, 16, 4))
