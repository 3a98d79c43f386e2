"""The small hierarchy of errors facerank raises for missing or broken state.

Bad *arguments* raise the built-in ``ValueError``/``TypeError``; everything here is about the
world outside the call (a file, a store, a download) and says what to do next. The CLI turns any
``FacerankError`` into one line and a non-zero exit code.
"""

from __future__ import annotations


class FacerankError(Exception):
    """Base class: an error a user can act on, with a message that says how."""


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
