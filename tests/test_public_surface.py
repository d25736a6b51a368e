"""Each package's public names, pinned: a change here is an API change and must be deliberate.
The client's hold the seed API's names (``seeds/api-reference.md``) and the ``Transport`` seam."""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest

PUBLIC = {
    "nomyo_agent": [
        "AgentConnection", "AgentError", "AgentUnavailableError", "AsyncAgentConnection",
        "__version__", "protocol", "socket_path",
    ],
    "nomyo_client": [
        "APIConnectionError", "APIError", "AgentDeniedError", "AgentError", "AgentLockedError",
        "AgentProtocolError", "AgentUnavailableError", "Answer", "AuthenticationError",
        "ForbiddenError", "IdentityExistsError", "InvalidRequestError", "NoIdentityError",
        "RateLimitError", "ResponseTooLargeError", "RetryPolicy", "RouterKeyChangedError",
        "SecureChatCompletion", "SecureCompletionClient", "SecurityError", "ServerError",
        "ServiceUnavailableError", "SyncSecureChatCompletion", "TLSError", "Transport",
        "TransportError",
    ],
    "nomyo_tray": ["main"],
    "nomyo_devserver": [
        "DEFAULT_MAX_BODY", "DevServer", "HOOK_PREFIX", "KeyFileError", "TIERS", "UNDECRYPTABLE",
    ],
    "nomyo_proxy": [
        "ConfigError", "HTTPError", "ProxyApp", "ProxyError", "Settings", "TokenError",
        "TokenInfo", "TokenStore",
    ],
}  # fmt: skip


@pytest.mark.parametrize("name", sorted(PUBLIC))
def test_exported_names_are_pinned_and_all_exist(name: str) -> None:
    module = importlib.import_module(name)
    assert sorted(module.__all__) == sorted(PUBLIC[name])
    for attr in module.__all__:
        assert hasattr(module, attr), attr


def test_the_agent_package_and_its_protocol_import_without_cryptography() -> None:
    """Clients, the CLI's client commands and the tray import these: no key library behind them."""
    code = (
        "import sys, nomyo_agent, nomyo_agent.protocol, nomyo_agent.connection, nomyo_agent.errors,"
        " nomyo_agent.package;"
        "print(sorted(m for m in sys.modules if m.startswith('cryptography')))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=30
    )
    assert out.stdout.strip() == "[]"


def test_the_proxy_imports_without_cryptography() -> None:
    """nomyo-proxy is a client: its whole package, CLI and server included, loads no key library
    (tests/test_proxy_refusals.py checks the running process too)."""
    code = (
        "import sys, nomyo_proxy, nomyo_proxy._cli, uvicorn;"
        "print(sorted(m for m in sys.modules if m.startswith(('cryptography', '_cffi'))))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=30
    )
    assert out.stdout.strip() == "[]"
