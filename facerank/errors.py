"""The small hierarchy of errors facerank raises.

``UsageError`` is a bad argument (its message names the valid choices; it is also a
``ValueError``); ``MissingExtraError`` an optional extra that is not installed (also an
``ImportError``). The rest are about the world outside the call (a file, a store, a download)
and say what to do next. The CLI turns ``UsageError`` into one line and exit 2, any other
``FacerankError`` into one line and exit 1; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class FacerankError(Exception):
    """Base class: an error a user can act on, with a message that says how."""


class UsageError(FacerankError, ValueError):
    """A bad argument; the message names the valid choices."""


class MissingExtraError(FacerankError, ImportError):
    """An optional extra is not installed; the message names it and the pip command."""


class ImageError(FacerankError):
    """An image cannot be read: missing, unreadable, not an image, truncated, or too large."""

    def __init__(self, source: str, reason: str):
        self.source = source
        self.reason = reason
        super().__init__(f"{source}: {reason}")


class GalleryError(FacerankError):
    """A gallery folder is missing or has no usable one-folder-per-person images."""


class WeightsUnavailableError(FacerankError):
    """Pretrained weights were asked for but cannot be had (no network, no cached file)."""


class StoreError(FacerankError):
    """A store is missing, incomplete or unreadable."""


class StoreMismatchError(StoreError):
    """Parts of a store (or a checkpoint) were made by different models and must not be mixed."""


class StoreLockedError(StoreError):
    """Another process is writing to the store."""


class NoFaceError(ImageError):
    """A photo in which the face step found no face, where the policy says to skip it."""

    def __init__(self, source: str):
        super().__init__(source, "no face found (the store's face step skips photos without "
                                 "one; train with --no-face whole to use the whole image)")
