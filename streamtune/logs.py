"""Logging, configured once at the entry point: JSON lines for long-running services, plain lines for one-shot
commands, and third-party libraries kept quiet unless asked for with ``-v``.

A JSON line always has ``time`` (UTC, ISO 8601), ``level``, ``component`` (the logger's name: ``inference.service``,
``librdkafka``, ``uvicorn.error``) and ``message``, plus the fields of every ``context(...)`` the line was logged
in (``tenant``, ``query_id``, ``event_id``, ``source`` = ``topic[partition]@offset``) and any ``extra=`` fields.
Settings objects and secrets are never dumped: a pydantic model is written through its redacted JSON dump, a
``SecretStr`` as its mask, and a field named like a secret (``password``, ``api_key``, ...) is masked.

librdkafka's own messages reach the same handler through the ``librdkafka`` logger (``streamtune.kafka`` hands
it to every client it builds; a client serves them on ``poll()``/``flush()``).

Nothing here runs at import: ``configure`` is called by the CLI (or by a test).
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import sys
import warnings
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

from pydantic import BaseModel, SecretStr
from pythonjsonlogger.json import JsonFormatter

from streamtune.settings import LoggingSettings, redacted

__all__ = [
    "KAFKA_LOGGER",
    "OURS",
    "configure",
    "context",
    "json_formatter",
    "kafka_logger",
    "source",
]

OURS = ("streamtune", "streams", "retrieval", "training", "inference", "monitor")
KAFKA_LOGGER = "librdkafka"
# Announcements of a library's future, whoever they are attributed to: the call site is often ours.
_DEPRECATIONS = (DeprecationWarning, PendingDeprecationWarning, FutureWarning)

_CONTEXT: ContextVar[dict[str, Any] | None] = ContextVar("streamtune_log_context", default=None)


def source(topic: str | None, partition: int | None, offset: int | None) -> str:
    """Where a record came from, as every log line and dead letter names it: ``topic[partition]@offset``."""
    return f"{topic}[{partition}]@{offset}"


@contextlib.contextmanager
def context(**fields: Any) -> Iterator[None]:
    """Every line logged inside (this thread or task) carries ``fields``; ``None`` values are left out."""
    token = _CONTEXT.set({**(_CONTEXT.get() or {}), **{k: v for k, v in fields.items() if v is not None}})
    try:
        yield
    finally:
        _CONTEXT.reset(token)


def kafka_logger() -> logging.Logger:
    """The logger librdkafka's messages go to (confluent-kafka's ``logger`` client property)."""
    return logging.getLogger(KAFKA_LOGGER)


class _ContextFilter(logging.Filter):
    """Puts the current ``context(...)`` fields on each record; an explicit ``extra=`` field wins."""

    def filter(self, record: logging.LogRecord) -> bool:
        for key, value in (_CONTEXT.get() or {}).items():
            if not hasattr(record, key):
                setattr(record, key, value)
        return True


def _json_default(value: Any) -> Any:
    if isinstance(value, SecretStr):
        return str(value)  # the mask
    if isinstance(value, BaseModel):
        return redacted(value.model_dump(mode="json"))  # SecretStr fields come out masked
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    return str(value)


class _JsonFormatter(JsonFormatter):
    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        return datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds")

    def process_log_record(self, log_data: dict[str, Any]) -> dict[str, Any]:
        masked: dict[str, Any] = redacted({k: v for k, v in log_data.items() if k not in _BASE_KEYS})
        return {**{k: log_data[k] for k in _BASE_KEYS if k in log_data}, **masked}


_BASE_KEYS = ("time", "level", "component", "message")


def json_formatter() -> logging.Formatter:
    """The formatter of the JSON lines (``time``, ``level``, ``component``, ``message``, context, extras)."""
    return _JsonFormatter(
        ["asctime", "levelname", "name", "message"],
        rename_fields={"asctime": "time", "levelname": "level", "name": "component"},
        json_default=_json_default,
        json_ensure_ascii=False,
    )


class _PlainFormatter(logging.Formatter):
    """``time level component: message`` and, after it, the context fields as ``key=value``."""

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        fields = " ".join(f"{k}={getattr(record, k)}" for k in _CONTEXT.get() or {} if hasattr(record, k))
        return f"{line} [{fields}]" if fields else line


class _StderrHandler(logging.StreamHandler[TextIO]):
    """Writes to whatever ``sys.stderr`` is at the time (a test's captured stream, a redirected one)."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property
    def stream(self) -> TextIO:
        return sys.stderr

    @stream.setter
    def stream(self, value: TextIO) -> None:
        pass


def _our_folders() -> tuple[str, ...]:
    folders = []
    for name in OURS:
        spec = importlib.util.find_spec(name)  # a top-level package: found without importing it
        if spec is not None:
            folders += [str(Path(f).resolve()) + os.sep for f in spec.submodule_search_locations or []]
    return tuple(folders)


def _shown_if_ours(show: Callable[..., None]) -> Callable[..., None]:
    """``warnings.showwarning`` that passes on only warnings raised in our packages' code, deprecations aside."""
    ours = _our_folders()

    def shown(message: Any, category: type[Warning], filename: str, lineno: int, *args: Any, **kwargs: Any) -> None:
        if not issubclass(category, _DEPRECATIONS) and str(Path(filename).resolve()).startswith(ours):
            show(message, category, filename, lineno, *args, **kwargs)

    return shown


def configure(settings: LoggingSettings, *, service: bool) -> None:
    """Give the root logger its one handler (stderr) and set the levels; calling it again replaces it.

    ``service``: a long-running command (``serve``, ``http``, ``train watch``, ``streams run``), which logs JSON
    lines when ``logging.format`` is ``auto``. Ours log at ``logging.level`` (DEBUG with -vv); third-party
    libraries only their errors (with -v: their warnings and info, progress bars and Python warnings too).
    """
    json_lines = settings.format == "json" or (settings.format == "auto" and service)
    handler = _StderrHandler()
    handler.addFilter(_ContextFilter())
    handler.setFormatter(
        json_formatter() if json_lines else _PlainFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    )
    handler.set_name("streamtune")
    root = logging.getLogger()
    for old in [h for h in root.handlers if h.get_name() == "streamtune"]:
        root.removeHandler(old)
    root.addHandler(handler)
    verbose = settings.verbose
    root.setLevel(logging.INFO if verbose else logging.ERROR)
    for name in OURS:
        logging.getLogger(name).setLevel(logging.DEBUG if verbose > 1 else settings.level)
    # the root's level decides, as for other libraries; a one-shot command reports an unreachable broker in the
    # one line it exits with, so librdkafka's own connection errors (one per attempt) wait for -v there
    logging.getLogger(KAFKA_LOGGER).setLevel(logging.NOTSET if service or verbose else logging.CRITICAL)
    # Python warnings become log lines (JSON in services). Unless -v, deprecations and warnings raised in other
    # packages' code (torch kernels, resource warnings) are dropped. Decided where a warning is shown rather than
    # with warnings filters: libraries reset those (apache_beam's annotations module does simplefilter("always")).
    logging.captureWarnings(False)  # the original showwarning back, should this be a second configure
    logging.captureWarnings(True)
    logging.getLogger("py.warnings").setLevel(logging.WARNING)
    if not verbose:
        warnings.showwarning = _shown_if_ours(warnings.showwarning)
