"""Image loading: every format and mode to RGB; every broken input to an ImageError naming it."""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st
from PIL import Image

from facerank.errors import ImageError
from facerank.data.images import (MAX_PIXELS, image_items, is_image_input, load_image,
                                  load_item)


def _picture(mode="RGB", size=(40, 30)) -> Image.Image:
    gradient = np.linspace(0, 255, size[0] * size[1] * 3).reshape(size[1], size[0], 3)
    return Image.fromarray(gradient.astype(np.uint8)).convert(mode)


@pytest.mark.parametrize("fmt,mode", [
    ("JPEG", "RGB"), ("JPEG", "L"), ("JPEG", "CMYK"), ("PNG", "RGBA"), ("PNG", "P"),
    ("PNG", "L"), ("PNG", "LA"), ("PPM", "L"), ("GIF", "P"), ("BMP", "RGB"), ("WEBP", "RGB"),
    ("TIFF", "RGB"),
])
def test_every_format_and_mode_becomes_rgb(tmp_path, fmt, mode):
    path = tmp_path / f"face.{fmt.lower()}"
    _picture(mode).save(path, format=fmt)
    image = load_image(path)
    assert image.mode == "RGB" and image.size == (40, 30)


def test_sixteen_bit_png_keeps_its_brightness(tmp_path):
    array = np.full((8, 8), 30000, dtype=np.uint16)
    path = tmp_path / "deep.png"
    Image.fromarray(array).save(path)
    pixel = np.asarray(load_image(path))[0, 0]
    assert pixel.tolist() == [117, 117, 117]  # 30000 / 65535 * 255


def test_exif_orientation_is_applied(tmp_path):
    image = _picture(size=(40, 20))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to display
    path = tmp_path / "rotated.jpg"
    image.save(path, exif=exif)
    assert load_image(path).size == (20, 40)


def test_animated_gif_gives_first_frame(tmp_path):
    frames = [Image.new("RGB", (10, 10), colour) for colour in ((255, 0, 0), (0, 0, 255))]
    path = tmp_path / "anim.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:])
    red, green, blue = np.asarray(load_image(path))[5, 5]
    assert red > 200 and blue < 50


def test_same_picture_from_path_bytes_pil_and_array_is_identical(tmp_path):
    path = tmp_path / "a.png"
    _picture().save(path)
    reference = np.asarray(load_image(path))
    for source in (path.read_bytes(), Image.open(path), np.asarray(Image.open(path)), str(path)):
        assert np.array_equal(np.asarray(load_image(source)), reference)


def test_float_and_greyscale_arrays():
    assert load_image(np.ones((5, 6), np.float32)).size == (6, 5)
    assert np.asarray(load_image(np.zeros((5, 6, 1), np.uint8))).max() == 0


@pytest.mark.parametrize("content,reason", [
    (b"", "empty"),
    (b"<html><body>not a photo</body></html>", "not an image"),
])
def test_non_images_are_refused_by_name(tmp_path, content, reason):
    path = tmp_path / "photo.jpg"
    path.write_bytes(content)
    with pytest.raises(ImageError, match=reason) as caught:
        load_image(path)
    assert str(path) in str(caught.value)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_truncated_files_are_refused(tmp_path, fmt):
    buffer = io.BytesIO()
    _picture(size=(200, 200)).save(buffer, format=fmt)
    path = tmp_path / f"cut.{fmt.lower()}"
    path.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    with pytest.raises(ImageError, match="damaged or truncated"):
        load_image(path)


def test_a_named_pipe_is_refused_not_read_forever(tmp_path):
    fifo = tmp_path / "stuck.jpg"
    os.mkfifo(fifo)
    with pytest.raises(ImageError, match="not a regular file"):
        load_image(fifo)


def test_missing_file_and_folder(tmp_path):
    with pytest.raises(ImageError, match="no such file"):
        load_image(tmp_path / "nope.jpg")
    with pytest.raises(ImageError, match="directory"):
        load_image(tmp_path)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads every file")
def test_unreadable_file(tmp_path):
    path = tmp_path / "secret.png"
    _picture().save(path)
    path.chmod(0)
    with pytest.raises(ImageError, match="permission denied"):
        load_image(path)


def test_decompression_bomb_is_refused_before_decoding(tmp_path):
    side = int(MAX_PIXELS ** 0.5) + 100
    path = tmp_path / "bomb.png"
    Image.new("1", (side, side)).save(path)  # a few KB on disk, 40+ megapixels decoded
    assert path.stat().st_size < 1_000_000
    with pytest.raises(ImageError, match="too large"):
        load_image(path)


def test_wrong_type_is_a_type_error():
    with pytest.raises(TypeError, match="expected a path"):
        load_image(42)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=2048))
def test_fuzzed_bytes_only_raise_image_error(data):
    try:
        assert load_image(data).mode == "RGB"
    except ImageError:
        pass


_JPEG = io.BytesIO()
_picture(size=(32, 32)).save(_JPEG, format="JPEG")


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.integers(0, len(_JPEG.getvalue()) - 1), st.integers(0, 255)),
                max_size=12))
def test_fuzzed_real_jpeg_only_raises_image_error(mutations):
    data = bytearray(_JPEG.getvalue())
    for position, value in mutations:
        data[position] = value
    try:
        assert load_image(bytes(data)).mode == "RGB"
    except ImageError:
        pass


# -- one image or many (the way queries take them) ------------------------------------------------

@pytest.mark.parametrize("value,single,count", [
    ("a.jpg", True, 1), (Path("a.jpg"), True, 1), (b"\x89PNG", True, 1),
    (Image.new("RGB", (4, 4)), True, 1), (np.zeros((4, 4), np.uint8), True, 1),
    (np.zeros((4, 4, 3), np.uint8), True, 1), (np.zeros((2, 4, 4, 3), np.uint8), False, 2),
    (["a.jpg", "b.jpg"], False, 2), (("a.jpg",), False, 1),
    ((name for name in ["a.jpg", "b.jpg", "c.jpg"]), False, 3), (iter([]), False, 0), ([], False, 0),
])
def test_one_image_or_many(value, single, count):
    """One path is one image (never its characters); a 4-D array, like a list, is many."""
    assert is_image_input(value) is single
    found_single, items = image_items(value)
    assert found_single is single and len(list(items)) == count


def test_a_batch_array_gives_its_rows_as_views_and_a_generator_is_not_read_ahead():
    batch = np.arange(2 * 4 * 4 * 3, dtype=np.uint8).reshape(2, 4, 4, 3)
    _, items = image_items(batch)
    rows = list(items)
    assert len(rows) == 2 and all(row.shape == (4, 4, 3) and np.shares_memory(row, batch) for row in rows)
    pulled = []

    def photos():
        for name in ("a.jpg", "b.jpg"):
            pulled.append(name)
            yield name

    _, items = image_items(photos())
    assert pulled == []            # nothing read until asked
    assert next(items) == "a.jpg" and pulled == ["a.jpg"]


@pytest.mark.parametrize("value,message", [
    (42, "got int"), (None, "got NoneType"), ({"a.jpg", "b.jpg"}, "no order"),
    ({"a.jpg": 1}, "no order"),
])
def test_neither_an_image_nor_many_is_a_type_error(value, message):
    with pytest.raises(TypeError, match=message):
        image_items(value)


def test_an_item_of_many_is_named_by_its_position_and_path(tmp_path):
    missing = tmp_path / "gone.jpg"
    with pytest.raises(ImageError) as caught:
        load_item(missing, 3)
    assert str(caught.value) == f"images[3] ({missing}): no such file"
    assert caught.value.position == 3 and caught.value.reason == "no such file"
    with pytest.raises(ImageError, match=r"^images\[1\] \(<array \(4, 4, 2\) uint8>\): expected"):
        load_item(np.zeros((4, 4, 2), np.uint8), 1)
    with pytest.raises(TypeError, match=r"^images\[7\]: expected a path"):
        load_item(42, 7)
    with pytest.raises(ImageError, match=f"^{missing}: no such file"):  # the only image: no position
        load_item(missing, None)
