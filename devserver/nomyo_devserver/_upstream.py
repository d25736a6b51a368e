"""Forwarding decrypted requests to an OpenAI-compatible server (llama.cpp, Ollama, vLLM).

Rules of this module:

- The upstream gets the plaintext request exactly as the client built it (``model`` replaced
  only when ``--upstream-model`` is set) at ``<url>/v1/chat/completions``; a URL that already
  ends in ``/v1`` or ``/chat/completions`` is used as given.
- Its answer is relayed: a 200 JSON object becomes the sealed answer; any other status is
  relayed with a ``detail`` taken from its JSON (``detail``, ``error.message``, ``error``) or
  its text. An unreachable upstream is a 502, a timed-out one a 504, a 200 that is not a JSON
  object a 502: these are what a gateway answers.
- One pooled ``httpx.Client`` (keep-alive to the model server), shared by request threads.
"""

from __future__ import annotations

from typing import Any

import httpx
import msgspec

__all__ = ["Upstream", "UpstreamError", "endpoint_of"]

_DETAIL_CHARS = 500


class UpstreamError(Exception):
    """The upstream failed; relay ``status`` with ``detail``."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


def endpoint_of(url: str) -> str:
    """The chat-completions URL for a base URL such as ``http://localhost:11434``."""
    url = url.rstrip("/")
    if url.endswith("/chat/completions"):
        return url
    if url.endswith("/v1"):
        return f"{url}/chat/completions"
    return f"{url}/v1/chat/completions"


def _detail(response: httpx.Response) -> str:
    try:
        body = msgspec.json.decode(response.content)
    except msgspec.DecodeError:
        text = response.text.strip()
        return text[:_DETAIL_CHARS] or f"upstream answered {response.status_code}"
    if isinstance(body, dict):
        for value in (body.get("detail"), body.get("error")):
            if isinstance(value, dict) and isinstance(value.get("message"), str):
                return str(value["message"])[:_DETAIL_CHARS]
            if isinstance(value, str):
                return value[:_DETAIL_CHARS]
    return response.text[:_DETAIL_CHARS]


class Upstream:
    """An OpenAI-compatible chat-completions endpoint."""

    def __init__(
        self,
        url: str,
        *,
        api_key: str | None = None,
        model: str | None = None,
        timeout: float = 300.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.endpoint = endpoint_of(url)
        self._model = model
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._client = httpx.Client(
            headers=headers, timeout=timeout, transport=transport, trust_env=False
        )

    def complete(self, request: dict[str, Any]) -> dict[str, Any]:
        """The upstream's ``chat.completion``; raises ``UpstreamError`` to relay a failure."""
        if self._model is not None:
            request = {**request, "model": self._model}
        try:
            response = self._client.post(
                self.endpoint,
                content=msgspec.json.encode(request),
                headers={"Content-Type": "application/json"},
            )
        except httpx.TimeoutException as exc:
            raise UpstreamError(504, f"the upstream model server timed out: {exc}") from exc
        except httpx.HTTPError as exc:
            raise UpstreamError(502, f"the upstream model server is unreachable: {exc}") from exc
        if response.status_code >= 400:
            raise UpstreamError(response.status_code, _detail(response))
        if response.status_code != 200:
            raise UpstreamError(502, f"the upstream answered {response.status_code}, not 200")
        try:
            answer = msgspec.json.decode(response.content)
        except msgspec.DecodeError:
            answer = None
        if not isinstance(answer, dict):
            raise UpstreamError(502, "the upstream answered 200 with something that is not JSON")
        return answer

    def close(self) -> None:
        self._client.close()
