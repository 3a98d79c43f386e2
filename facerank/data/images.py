"""Any image input → an RGB ``PIL.Image``, or an ``ImageError`` that names the input and the fault.

Accepted inputs: a path (``str`` or ``Path``), raw encoded ``bytes``, a ``PIL.Image`` or a numpy
array (``HxW`` greyscale or ``HxWx3``/``HxWx4``, uint8 or float in [0, 1]). EXIF orientation is
applied, animated images give their first frame, and every mode (greyscale, palette, CMYK, RGBA,
16-bit, float) is converted to 8-bit RGB.

Queries take one image or many, as sentence-transformers' ``encode`` does: ``image_items`` tells
which, and ``load_item`` loads one of many with errors that name its position.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path
from typing import AbstractSet, Iterable, Iterator, Mapping, Union

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from facerank.errors import ImageError

ImageInput = Union[str, Path, bytes, Image.Image, np.ndarray]
#: One image or many: a list, tuple, generator or other iterable of them, or an N x H x W x C array.
ImageInputs = Union[ImageInput, Iterable[ImageInput]]

#: File name endings a gallery scan picks up (lower case).
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".pgm", ".ppm", ".pbm", ".gif", ".bmp",
                            ".webp", ".tif", ".tiff"})

#: Larger images are refused before they are decoded: a 'decompression bomb' of a few KB can
#: otherwise ask for gigabytes. 40 megapixels is above any camera photo people index.
MAX_PIXELS = 40_000_000


def describe(source: ImageInput) -> str:
    """A short name for an input, for messages: the path, or the kind of object."""
    if isinstance(source, (str, Path)):
        return str(source)
    if isinstance(source, bytes):
        return f"<{len(source)} bytes>"
    if isinstance(source, np.ndarray):
        return f"<array {source.shape} {source.dtype}>"
    return f"<{type(source).__name__}>"


def is_image_input(value: object) -> bool:
    """True for one image, as opposed to many: a path, bytes, a PIL image, or an array of one
    image (``HxW``, ``HxWxC``). A 4-D array (``N x H x W x C``) is many.

    >>> is_image_input("a.jpg"), is_image_input(["a.jpg"]), is_image_input(np.zeros((2, 8, 8, 3)))
    (True, False, False)
    """
    if isinstance(value, np.ndarray):
        return value.ndim != 4
    return isinstance(value, (str, Path, bytes, Image.Image))


def image_items(images: ImageInput | Iterable[ImageInput]
                ) -> tuple[bool, Iterator[ImageInput]]:
    """(whether ``images`` is one image, an iterator over the images it holds).

    One image: a path, bytes, a PIL image, an ``HxW``/``HxWxC`` array. Many: a list, tuple,
    any other iterable or generator of those, or an ``N x H x W x C`` array (its rows are
    views, not copies). Nothing is read here, and a generator is consumed only as the iterator
    is, so a caller can stream any number of images through bounded memory. Sets and mappings
    are refused: their order is not the caller's, and answers come back in input order.

    >>> single, items = image_items(["a.jpg", "b.jpg"])
    >>> single, list(items)
    (False, ['a.jpg', 'b.jpg'])
    """
    if is_image_input(images):
        return True, iter([images])
    if isinstance(images, (AbstractSet, Mapping)):
        raise TypeError(f"expected an image or a sequence of images, got a "
                        f"{type(images).__name__}, which has no order to answer in: pass a "
                        "list (e.g. sorted(...))")
    try:
        return False, iter(images)
    except TypeError:
        raise TypeError(f"expected an image (a path, bytes, PIL.Image or numpy array) or an "
                        f"iterable of them, got {type(images).__name__}") from None


def item_name(source: ImageInput, position: int | None) -> str:
    """``describe(source)``, preceded by its position among many (None: the only image).

    >>> item_name("b.jpg", 1)
    'images[1] (b.jpg)'
    """
    return describe(source) if position is None else f"images[{position}] ({describe(source)})"


def load_item(source: ImageInput, position: int | None) -> Image.Image:
    """``load_image`` for the item at ``position`` of many (None: the only image). Its
    ``ImageError`` names the position and the path (and carries ``position``); its
    ``TypeError`` names the position.
    """
    if position is None:
        return load_image(source)
    try:
        return load_image(source)
    except ImageError as error:
        positioned = ImageError(item_name(source, position), error.reason)
        positioned.position = position
        raise positioned from None
    except TypeError as error:
        raise TypeError(f"images[{position}]: {error}") from None


def load_image(source: ImageInput) -> Image.Image:
    """Read one image as 8-bit RGB.

    >>> facerank.load_image("GALLERY/s1/1.pgm")              # a greyscale ORL photo
    <PIL.Image.Image image mode=RGB size=92x112 at ...>
    >>> facerank.load_image(np.zeros((112, 92, 3), np.uint8)).size   # arrays, bytes, PIL too
    (92, 112)

    Raises ``ImageError`` (naming the file) for anything that is not a readable image, and
    ``TypeError`` for inputs of an unsupported type.
    """
    name = describe(source)
    if isinstance(source, np.ndarray):
        return _from_array(source, name)
    if isinstance(source, Image.Image):
        return _to_rgb(source, name)
    if isinstance(source, bytes):
        if not source:
            raise ImageError(name, "empty input (0 bytes)")
        return _decode(io.BytesIO(source), name)
    if isinstance(source, (str, Path)):
        path = Path(source)
        try:
            if path.exists() and not path.is_file() and not path.is_dir():
                # A named pipe or a device would block read() forever: refuse it unread.
                raise ImageError(name, "not a regular file (a pipe, socket or device)")
            with path.open("rb") as handle:
                data = handle.read()
        except FileNotFoundError:
            raise ImageError(name, "no such file") from None
        except IsADirectoryError:
            raise ImageError(name, "is a directory, not an image") from None
        except PermissionError:
            raise ImageError(name, "permission denied") from None
        except OSError as error:
            raise ImageError(name, f"cannot be read ({error.strerror or error})") from None
        if not data:
            raise ImageError(name, "empty file (0 bytes)")
        return _decode(io.BytesIO(data), name)
    raise TypeError(
        f"expected a path, bytes, PIL.Image or numpy array, got {type(source).__name__}")


def _decode(stream: io.BytesIO, name: str) -> Image.Image:
    try:
        with warnings.catch_warnings():
            # Pillow warns (rather than fails) between MAX_PIXELS and twice it; we refuse above
            # our own limit explicitly below, so the warning is noise.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(stream)
            width, height = image.size
            if width * height > MAX_PIXELS:
                raise ImageError(name, f"too large ({width}x{height} pixels; the limit is "
                                       f"{MAX_PIXELS:,}); resize it first")
            image.seek(0)  # first frame of an animation
            image.load()
    except ImageError:
        raise
    except Image.DecompressionBombError:
        raise ImageError(name, "too large to decode safely (decompression bomb)") from None
    except UnidentifiedImageError:
        raise ImageError(name, "not an image, or a format Pillow cannot read") from None
    except (OSError, SyntaxError, ValueError, EOFError, IndexError) as error:
        raise ImageError(name, f"damaged or truncated image ({error})") from None
    return _to_rgb(image, name)


def _to_rgb(image: Image.Image, name: str) -> Image.Image:
    try:
        image = ImageOps.exif_transpose(image)
    except Exception:  # a broken EXIF block should not cost the picture
        pass
    if image.width < 1 or image.height < 1:
        raise ImageError(name, "image has no pixels")
    if image.mode == "RGB":
        return image
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        return _from_array(np.asarray(image), name)
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        # Transparent areas become white, as a viewer would show them, not black.
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def _from_array(array: np.ndarray, name: str) -> Image.Image:
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] not in (3, 4)):
        raise ImageError(name, "expected an HxW, HxWx3 or HxWx4 array")
    if array.size == 0:
        raise ImageError(name, "image has no pixels")
    if array.dtype == np.uint8:
        pixels = array
    elif np.issubdtype(array.dtype, np.floating):
        finite = np.nan_to_num(array.astype(np.float32), nan=0.0, posinf=1.0, neginf=0.0)
        high = 1.0 if finite.max(initial=0.0) <= 1.0 else 255.0
        pixels = np.clip(finite / high * 255.0 + 0.5, 0, 255).astype(np.uint8)
    elif np.issubdtype(array.dtype, np.integer):
        # 16-bit and other integer images: scale by the type's range, not the image's, so that
        # a dark photo stays dark.
        top = 65535 if array.max(initial=0) > 255 else 255
        pixels = np.clip(array.astype(np.float64) / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
    else:
        raise ImageError(name, f"unsupported array dtype {array.dtype}")
    if pixels.ndim == 2:
        pixels = np.stack([pixels] * 3, axis=-1)
    elif pixels.shape[2] == 4:
        alpha = pixels[:, :, 3:4].astype(np.float32) / 255.0
        pixels = (pixels[:, :, :3] * alpha + 255.0 * (1.0 - alpha) + 0.5).astype(np.uint8)
    return Image.fromarray(np.ascontiguousarray(pixels))
