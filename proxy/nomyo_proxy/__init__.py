"""nomyo-proxy: a local OpenAI-compatible endpoint whose requests the nomyo agent encrypts.

Any app that speaks the OpenAI API (an editor plugin, a chat front end, ``curl``, the ``openai``
SDKs) points its base URL at the proxy and uses a per-app token as its API key::

    $ nomyo-proxy token create editor
    nmyp_...
    $ nomyo-proxy serve
    NOMYO_PROXY_URL=http://127.0.0.1:12480/v1

The proxy is a client of the agent like ``nomyo-chat``: it holds no key, it never imports
``cryptography``, and every request reaches the agent with the token's name (shown in
``nomyo-agent status`` and the audit log). See docs/proxy.md.
"""

from __future__ import annotations

from nomyo_proxy._app import ProxyApp, Settings
from nomyo_proxy._errors import ConfigError, HTTPError, ProxyError, TokenError
from nomyo_proxy._tokens import TokenInfo, TokenStore

__all__ = [
    "ConfigError",
    "HTTPError",
    "ProxyApp",
    "ProxyError",
    "Settings",
    "TokenError",
    "TokenInfo",
    "TokenStore",
]
