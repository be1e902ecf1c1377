"""Weaviate: the chunk collection and search over it."""

from retrieval.client import RetrievalError, connect

__all__ = ["RetrievalError", "connect"]
