"""One exception tree for everything the store raises about its own files."""


class StoreError(Exception):
    """Base class of every error lodestore's store raises about a store directory."""


class CorruptStoreError(StoreError):
    """A file or chunk failed its checksum or is malformed.

    The message names the file (and the chunk, where there is one). Never search
    a store that raised this: run `lodestore verify` and restore from a backup.
    """


class UnsupportedFormatError(StoreError):
    """The store was written in a format version (or with a feature) this reader does not know."""


class StoreLockedError(StoreError):
    """Another process holds the store's single-writer lock."""
