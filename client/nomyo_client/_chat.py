"""``nomyo-chat``: one encrypted chat from the command line, through the agent.

Rules of this module: the answer (or with ``--json`` the whole response) goes to stdout and
nothing else does; an error is one ``nomyo-chat: error: ...`` line on stderr plus a ``hint:``
line, and the exit status says which kind of error it was (see ``EXIT_CODES``).

Example::

    $ echo "What is 2+2?" | nomyo-chat -m Qwen/Qwen3-0.6B --security-tier high
    $ nomyo-chat --base-url http://127.0.0.1:12434 --allow-http -m devserver/echo hello
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Sequence
from typing import Any

from nomyo_agent import __version__
from nomyo_agent.package import TIERS
from nomyo_client._chat_completion import SecureChatCompletion
from nomyo_client._errors import (
    AgentError,
    APIConnectionError,
    APIError,
    InvalidRequestError,
    SecurityError,
)
from nomyo_client._wire import check_base_url

__all__ = ["EXIT_CODES", "main"]

EXIT_CODES = {
    0: "the answer was printed",
    1: "the router refused or failed (HTTP 4xx/5xx), or another API error",
    2: "bad usage: missing prompt or model, invalid option, request refused before sending",
    3: "the agent: not running, locked, no identity, other protocol version",
    4: "a security check failed: plain HTTP, changed router key, bad or forged answer",
    5: "the router could not be reached, or did not answer in time",
    130: "interrupted",
}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nomyo-chat",
        description="Send one end-to-end encrypted chat to a NOMYO router; the key stays in "
        "nomyo-agent.",
        epilog="exit status: " + "; ".join(f"{code} {what}" for code, what in EXIT_CODES.items()),
    )
    parser.add_argument("--version", action="version", version=f"nomyo-chat {__version__}")
    parser.add_argument("prompt", nargs="*", help="the user message (default: read stdin)")
    parser.add_argument(
        "-m", "--model", default=os.environ.get("NOMYO_MODEL"), help="model (env NOMYO_MODEL)"
    )
    parser.add_argument(
        "--base-url",
        default=os.environ.get("NOMYO_BASE_URL", "https://api.nomyo.ai"),
        help="router URL (env NOMYO_BASE_URL; default https://api.nomyo.ai)",
    )
    parser.add_argument(
        "--api-key", default=os.environ.get("NOMYO_API_KEY"), help="API key (env NOMYO_API_KEY)"
    )
    parser.add_argument("--security-tier", choices=TIERS, help="ask the router for this tier")
    parser.add_argument(
        "--allow-http", action="store_true", help="allow plain http (local routers only)"
    )
    parser.add_argument("--system", help="a system message to put first")
    parser.add_argument("--temperature", type=float, help="sampling temperature")
    parser.add_argument("--max-tokens", type=int, help="maximum tokens to generate")
    parser.add_argument(
        "--json", action="store_true", help="print the whole response as JSON, _metadata too"
    )
    return parser


def _exit_code(exc: APIError) -> int:
    if isinstance(exc, AgentError):
        return 3
    if isinstance(exc, SecurityError):
        return 4
    if isinstance(exc, APIConnectionError):
        return 5
    if isinstance(exc, InvalidRequestError) and exc.status_code is None:
        return 2
    return 1


async def _chat(args: argparse.Namespace, prompt: str) -> dict[str, Any]:
    messages = [{"role": "user", "content": prompt}]
    if args.system:
        messages.insert(0, {"role": "system", "content": args.system})
    params: dict[str, Any] = {}
    if args.security_tier:
        params["security_tier"] = args.security_tier
    if args.temperature is not None:
        params["temperature"] = args.temperature
    if args.max_tokens is not None:
        params["max_tokens"] = args.max_tokens
    async with SecureChatCompletion(
        args.base_url, allow_http=args.allow_http, api_key=args.api_key
    ) as client:
        return await client.create(model=args.model, messages=messages, **params)


def _report(exc: APIError) -> None:
    print(f"nomyo-chat: error: {exc.message}", file=sys.stderr)
    if exc.hint:
        # The library's hints name its arguments; here the user typed options.
        hint = exc.hint.replace("allow_http=True", "--allow-http")
        print(f"hint: {hint}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``nomyo-chat``; returns the exit status."""
    parser = _parser()
    args = parser.parse_args(argv)
    prompt = " ".join(args.prompt) if args.prompt and args.prompt != ["-"] else sys.stdin.read()
    if not prompt.strip():
        parser.error("no prompt: pass it as arguments or on stdin")
    if not args.model:
        parser.error("no model: pass -m/--model or set NOMYO_MODEL")
    try:
        try:
            check_base_url(args.base_url, args.allow_http)
        except InvalidRequestError as exc:
            _report(exc)
            return 2  # a bad --base-url is a usage error, known before anything is sent
        response = asyncio.run(_chat(args, prompt.strip()))
    except APIError as exc:
        _report(exc)
        return _exit_code(exc)
    except KeyboardInterrupt:
        return 130
    if args.json:
        json.dump(response, sys.stdout, indent=2, ensure_ascii=False)
        sys.stdout.write("\n")
    else:
        for choice in response.get("choices") or []:
            message = choice.get("message") or {}
            content = message.get("content")
            if content:
                print(content)
            for call in message.get("tool_calls") or []:
                print(json.dumps(call, ensure_ascii=False))
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
