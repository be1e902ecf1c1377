"""streamtune: keep a language model current with a live Kafka event stream."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("streamtune")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+source"

__all__ = ["__version__"]
