"""`streamtune http`: an OpenAI-compatible HTTP gateway in front of ``queries`` → ``serve`` → ``answers``.

Laid out as vLLM lays out its OpenAI entrypoints: ``app.py`` (the process, the app and its routes),
``protocol.py`` (request bodies and response objects), ``errors.py`` (OpenAI error objects and serve's error
codes), ``auth.py`` (API keys and exposure), ``catalog.py`` (``/v1/models``), ``search.py`` (``/v1/retrieve``),
``feedback.py`` (``/v1/feedback``), ``metrics.py``. The query → answer routing is ``inference.routing``,
shared with `streamtune ask`.

The promise: a chat completion is one ``Query`` produced to ``queries`` and answered by whichever ``serve``
process owns its partition, so every guarantee of the Kafka path holds (a killed ``serve`` loses no query,
adapters are checked at serve's trust boundary), and gateways and servers scale independently. A streamed
completion relays each piece of the answer from ``answer-deltas`` as a chunk the moment it arrives. No request
waits longer than ``http.answer_timeout_s`` (then a 503 says so, or a stream ends with an error chunk), and
the query carries that deadline, so ``serve`` never starts generating an answer nobody waits for. At most
``http.max_in_flight`` completions are answered at once; beyond, a 429 with ``Retry-After`` instead of a
queue without bound.

Who may ask what: an ``Authorization: Bearer <key>`` whose sha256 is in ``http.api_keys`` may use the
tenants listed for it; the tenant is taken from the ``model`` field (``<tenant>`` or
``<tenant>/<version>``) and checked against the key, never trusted from the body alone. With no keys
configured every tenant is open, so the gateway then binds loopback only and refuses any other
``http.host`` at start-up.
"""

from __future__ import annotations

from inference.http.app import Gateway, create_app, main

__all__ = ["Gateway", "create_app", "main"]
