"""The one root exception and its typed subclasses.

Third-party errors (confluent-kafka, weaviate, torch) are wrapped where they enter with
``raise ... from exc`` so that callers handle one family of exceptions::

    StreamtuneError                      every error streamtune raises on purpose
    ├── ConfigError                      a setting that cannot work: names the setting, the value and the fix
    ├── ContractError                    a message that does not match the wire contract (typed reason)
    ├── StackError                       a local-stack component could not be installed, started or stopped
    ├── UnavailableError                 a dependency did not answer or refused: worth retrying later
    │   ├── KafkaUnavailableError        the Kafka cluster
    │   ├── RetrievalError               Weaviate (retrieval/client.py)
    │   └── RetryExhausted               an outage outlasted its give-up time (streamtune/retry.py)
    ├── RegistryError                    an adapter version is missing or an operation is not allowed
    │                                    (training/registry.py)
    └── AnswerFailure                    a query that gets an error answer, with its contract code
                                         (inference/engine.py)

The CLI maps them to exit codes: usage errors 2 (argparse), ``ConfigError`` 78 and
``UnavailableError`` 69 (``sysexits.h``: EX_CONFIG, EX_UNAVAILABLE), every other ``StreamtuneError`` 1.
"""

from __future__ import annotations

__all__ = [
    "ConfigError",
    "ContractError",
    "KafkaUnavailableError",
    "RetryExhausted",
    "StackError",
    "StreamtuneError",
    "UnavailableError",
]


class StreamtuneError(Exception):
    """Root of every error streamtune raises on purpose."""


class ConfigError(StreamtuneError):
    """A setting has a value that cannot work. The message names the setting, the value and the fix."""

    def __init__(self, setting: str, value: object, fix: str) -> None:
        self.setting = setting
        self.value = value
        self.fix = fix
        super().__init__(f"setting {setting}={value!r} is invalid: {fix}")


class ContractError(StreamtuneError):
    """A message does not match the wire contract; ``reason`` says precisely why."""

    def __init__(self, reason: str, *, error_class: str = "ContractError") -> None:
        self.reason = reason
        self.error_class = error_class
        super().__init__(reason)


class StackError(StreamtuneError):
    """A local-stack component could not be installed, started or stopped."""

    def __init__(self, component: str, cause: str, fix: str) -> None:
        self.component = component
        self.cause = cause
        self.fix = fix
        super().__init__(f"{component}: {cause}. Fix: {fix}")


class UnavailableError(StreamtuneError):
    """A dependency (Kafka, Weaviate) could not be reached or refused an operation; a retry may succeed.

    ``component`` (``kafka``, ``weaviate`` or None) lets the CLI name the dependency's address and the fix in the
    one line a one-shot command prints."""

    component: str | None = None


class KafkaUnavailableError(UnavailableError):
    """The Kafka cluster could not be reached or refused an operation."""

    component = "kafka"


class RetryExhausted(UnavailableError):
    """A dependency stayed unavailable past the give-up time; the message names it and the fix."""
