"""httpx behind the client's ``Transport``: the adapter over an ``httpx.AsyncClient``, the
wrapping of a caller's client, and the choice of httpx when the environment asks for a proxy.

Pass ``http_client=httpx.AsyncClient(...)`` for proxies, custom certificates or HTTP/2:
``HttpxAdapter`` then does the own pool's job through it. When the environment sets a proxy
(``HTTPS_PROXY``...), which httpx honours and the own pool does not, the client uses httpx by
itself.

Rules of this module: httpx is imported only when a caller gave an httpx client (it is then
imported already) or the environment asks for a proxy, never for anyone else. httpx's
exceptions are translated here into ``_transport``'s; httpx cannot tell whether any of a
request was written before a network error, so such an error counts as sent.
"""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING, cast

from nomyo_client._h11pool import H11Pool
from nomyo_client._transport import (
    Answer,
    AnswerTooLarge,
    ConnectFailed,
    Dropped,
    ProtocolFailure,
    TimedOut,
    Timeouts,
    Transport,
    answer_cap,
    ssl_cause,
    tls_failure,
)

if TYPE_CHECKING:
    import httpx

__all__ = ["HttpxAdapter", "as_transport", "default_http"]


class HttpxAdapter:
    """The ``Transport`` through an ``httpx.AsyncClient`` (closed here only if ``owned``)."""

    def __init__(self, client: httpx.AsyncClient, *, owned: bool = False) -> None:
        self.client = client
        self.owned = owned

    async def request(
        self,
        method: str,
        url: str,
        body: bytes | None,
        headers: dict[str, str],
        *,
        limit: int | None = None,
    ) -> Answer:
        import httpx  # noqa: PLC0415 - the caller has imported it already

        cap = answer_cap(limit)
        try:
            async with self.client.stream(method, url, content=body, headers=headers) as response:
                declared = response.headers.get("content-length", "")
                if declared.isdigit() and int(declared) > cap:
                    raise AnswerTooLarge(f"the answer announces {int(declared)} bytes, over {cap}")
                chunks, size = [], 0
                async for chunk in response.aiter_bytes():
                    size += len(chunk)
                    if size > cap:
                        raise AnswerTooLarge(f"the answer is over {cap} bytes")
                    chunks.append(chunk)
        except httpx.ConnectError as exc:
            tls = ssl_cause(exc)
            if tls is not None:
                raise tls_failure(tls, str(exc) or str(tls)) from exc
            raise ConnectFailed(str(exc) or type(exc).__name__) from exc
        except (httpx.ConnectTimeout, httpx.PoolTimeout) as exc:
            raise ConnectFailed(str(exc) or type(exc).__name__) from exc
        except httpx.TimeoutException as exc:
            raise TimedOut(str(exc) or type(exc).__name__) from exc
        except (httpx.NetworkError, httpx.RemoteProtocolError) as exc:
            # httpx cannot tell whether any of the request was written: treat it as sent.
            raise Dropped(str(exc) or type(exc).__name__) from exc
        except httpx.HTTPError as exc:
            raise ProtocolFailure(str(exc) or type(exc).__name__) from exc
        headers_out = {k.lower(): v for k, v in response.headers.items()}
        return Answer(response.status_code, headers_out, b"".join(chunks))

    async def aclose(self) -> None:
        if self.owned:
            await self.client.aclose()


# Settings the environment gives httpx (trust_env) that the small pool does not implement.
_HTTPX_ENV = ("HTTPS_PROXY", "HTTP_PROXY", "ALL_PROXY")


def as_transport(given: httpx.AsyncClient | Transport) -> Transport:
    """A caller's ``http_client``: an httpx client behind the adapter, a ``Transport`` as is."""
    # An httpx client can only come from a caller that imported httpx: no import of it here
    # (45 ms) for anyone else.
    httpx = sys.modules.get("httpx")
    if httpx is not None and isinstance(given, httpx.AsyncClient):
        return HttpxAdapter(given)
    return cast("Transport", given)  # the httpx case was handled just above


def default_http(timeouts: Timeouts) -> Transport:
    """The small pool, unless the environment asks for a proxy: then httpx."""
    if not any(os.environ.get(name) or os.environ.get(name.lower()) for name in _HTTPX_ENV):
        return H11Pool(timeouts)
    import httpx  # noqa: PLC0415 - only when the environment needs it

    timeout = httpx.Timeout(connect=timeouts.connect, read=timeouts.read,
                            write=timeouts.write, pool=timeouts.connect)  # fmt: skip
    return HttpxAdapter(httpx.AsyncClient(timeout=timeout), owned=True)
