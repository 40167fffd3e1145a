"""C4-like text into packed token sequences: sources, tokenizers, prepare step, loaders."""

from .sources import DataError, iter_documents

__all__ = ["DataError", "iter_documents"]
