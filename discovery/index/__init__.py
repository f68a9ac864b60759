"""The in-memory directory index."""

from discovery.index.table import DirectoryIndex

__all__ = ["DirectoryIndex"]
