"""C4-like text into packed token sequences: sources, tokenizers, prepare step, loaders."""

from .config import DataError
from .sources import iter_documents

__all__ = ["DataError", "iter_documents"]
