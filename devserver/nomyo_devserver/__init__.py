"""nomyo-devserver: a local NOMYO router for development, demos and tests.

It speaks the secure-completion protocol of PROTOCOL.md (``GET /pki/public_key``,
``POST /v1/chat/secure_completion``) with its own RSA key, answers with a deterministic echo
model or forwards to an OpenAI-compatible server, and has test hooks (model names under
``devserver/``) that make it misbehave on purpose. See ``docs/devserver.md``.

Example::

    from nomyo_devserver import DevServer

    with DevServer(key_bits=2048) as server:
        print(server.url, server.fingerprint)
"""

from __future__ import annotations

from nomyo_devserver._devserver import DevServer
from nomyo_devserver._hooks import PREFIX as HOOK_PREFIX
from nomyo_devserver._keystore import KeyFileError
from nomyo_devserver._router import TIERS, UNDECRYPTABLE
from nomyo_devserver._server import DEFAULT_MAX_BODY

__all__ = ["DEFAULT_MAX_BODY", "HOOK_PREFIX", "TIERS", "UNDECRYPTABLE", "DevServer", "KeyFileError"]
