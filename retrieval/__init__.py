"""Weaviate: the chunk collection, writes to it, and search over it (``Retriever``: text → hits)."""

from retrieval.client import RetrievalError, connect
from retrieval.retriever import Retriever

__all__ = ["RetrievalError", "Retriever", "connect"]
