"""A corpus of broken and awkward inputs, made here, through every batch path.

`index build`, `train`, `evaluate` and `doctor` must skip and name what cannot be read, index
everything that can, and never stop part-way.
"""

from __future__ import annotations

import io
import os
import shutil
import warnings
from pathlib import Path

import numpy as np
from PIL import Image

from facerank.quality.doctor import diagnose
from facerank.quality.evaluate import evaluate
from facerank.data.images import MAX_PIXELS
from facerank.store import FaceStore
from facerank.training.loop import train
from facerank.training.recipes import preset

from conftest import EXAMPLE_GALLERY


def _face(person: str = "s1", number: int = 1) -> Image.Image:
    return Image.open(EXAMPLE_GALLERY / person / f"{number}.pgm")


def _encoded(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def make_corpus(root: Path) -> tuple[Path, dict[str, int]]:
    """A gallery whose `odd` person holds every kind of awkward file; returns (root, expected)."""
    faces = iter([_face("s6", n) for n in range(1, 11)] + [_face("s8", n) for n in range(1, 4)])
    face = _face("s8", 5)  # for the broken files
    odd = root / "odd"
    odd.mkdir(parents=True)
    # Each readable file shows a different photo, so that none is another's duplicate.
    readable = {
        "grey.png": _encoded(next(faces).convert("L"), "PNG"),
        "palette.png": _encoded(next(faces).convert("P"), "PNG"),
        "cmyk.jpg": _encoded(next(faces).convert("CMYK"), "JPEG"),
        "rgba.png": _encoded(next(faces).convert("RGBA"), "PNG"),
        "sixteen.png": _encoded(Image.fromarray((np.asarray(next(faces), np.uint16) * 257)), "PNG"),
        "float.tiff": _encoded(Image.fromarray(np.asarray(next(faces), np.float32) / 255.0), "TIFF"),
        "tiny 1x1.png": _encoded(Image.new("RGB", (1, 1)), "PNG"),
        "strip.png": _encoded(Image.new("L", (10, 10000), 128), "PNG"),
    }
    first, second = next(faces), next(faces)
    readable["animated.gif"] = _encoded(first.convert("P"), "GIF", save_all=True,
                                        append_images=[second.convert("P")])
    exif = Image.Exif()
    exif[0x0112] = 8
    readable["exif rotated.jpg"] = _encoded(next(faces).convert("RGB"), "JPEG", exif=exif)
    broken = {
        "empty.jpg": b"",
        "truncated.jpg": _encoded(face.convert("RGB").resize((300, 300)), "JPEG")[:2000],
        "truncated.png": _encoded(face.resize((300, 300)), "PNG")[:3000],
        "text.jpg": b"just some text, renamed",
        "page.jpg": b"<!doctype html><html><body>404</body></html>",
    }
    side = int(MAX_PIXELS ** 0.5) + 10
    broken["bomb.png"] = _encoded(Image.new("1", (side, side)), "PNG")
    for name, data in {**readable, **broken}.items():
        (odd / name).write_bytes(data)
    # A file name that is not valid UTF-8.
    with open(os.path.join(os.fsencode(odd), b"caf\xe9.png"), "wb") as handle:
        handle.write(_encoded(next(faces), "PNG"))
    (odd / "loop").symlink_to(odd)
    (root / "nobody").mkdir()
    (root / "loner").mkdir()
    shutil.copy(EXAMPLE_GALLERY / "s7" / "1.pgm", root / "loner" / "only.pgm")
    for person in ("s1", "s2"):
        shutil.copytree(EXAMPLE_GALLERY / person, root / person,
                        ignore=shutil.ignore_patterns("*.md"))
    expected = {"readable": len(readable) + 1 + 1 + 20, "broken": len(broken)}
    return root, expected


def test_index_build_skips_and_names_every_broken_file(tmp_path, trained):
    gallery, expected = make_corpus(tmp_path / "corpus")
    folder = tmp_path / "store"
    shutil.copytree(trained[0], folder)
    store = FaceStore.open(folder)
    report = store.sync_folder(gallery)
    skipped = {Path(path).name: reason for path, reason in report.skipped}
    assert report.added == expected["readable"]
    assert {"empty.jpg", "truncated.jpg", "truncated.png", "text.jpg", "page.jpg",
            "bomb.png"} <= set(skipped)
    assert "too large" in skipped["bomb.png"] and "empty" in skipped["empty.jpg"]
    assert "nobody" in skipped and "loop" in skipped
    # Everything readable was indexed, with the odd names intact and findable.
    reopened = FaceStore.open(folder)
    names = {Path(r.path).name for r in reopened.records}
    assert os.fsdecode(b"caf\xe9.png") in names and "exif rotated.jpg" in names
    for record in reopened.records:
        if record.person == "odd":
            assert reopened.closest(record.path, k=1)[0].id == record.id


def test_an_unreadable_file_is_skipped(tmp_path, trained, monkeypatch):
    gallery, _ = make_corpus(tmp_path / "corpus")
    secret = gallery / "s1" / "3.pgm"
    if os.geteuid() == 0:
        # Root reads every file whatever its mode, so the refusal is simulated where it starts.
        real_open = Path.open

        def refusing_open(self, *args, **kwargs):
            if self == secret:
                raise PermissionError(13, "Permission denied", str(self))
            return real_open(self, *args, **kwargs)

        monkeypatch.setattr(Path, "open", refusing_open)
    else:
        secret.chmod(0)
    folder = tmp_path / "store"
    shutil.copytree(trained[0], folder)
    report = FaceStore.open(folder).sync_folder(gallery)
    assert any(path == str(secret) and "permission denied" in reason.lower()
               for path, reason in report.skipped)


def test_train_and_evaluate_skip_broken_files(tmp_path):
    gallery, expected = make_corpus(tmp_path / "corpus")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        result = train(gallery, tmp_path / "s", preset("scratch", image_size=32, epochs=1,
                                                       batch_size=8), weights="none")
    assert len(result.skipped) == expected["broken"]
    assert "loner" in result.train_only and set(result.people) == {"s1", "s2", "odd", "loner"}
    scores = evaluate(tmp_path / "s", gallery)
    assert scores.images == expected["readable"] and len(scores.skipped) == expected["broken"]


def test_doctor_finds_what_is_wrong(tmp_path, trained):
    gallery, expected = make_corpus(tmp_path / "corpus")
    shutil.copy(gallery / "s1" / "1.pgm", gallery / "s2" / "mislabelled.pgm")
    Image.open(gallery / "s1" / "2.pgm").resize((80, 96)).convert("RGB").save(
        gallery / "s1" / "resized copy.jpg", quality=80)
    report = diagnose(gallery)
    kinds = {}
    for finding in report.findings:
        kinds.setdefault(finding.kind, []).append(finding)
    assert len(kinds["unreadable"]) == expected["broken"]
    assert any("likely a mislabel" in f.detail for f in kinds["duplicate"])
    assert any(Path(f.paths[0]).name in ("2.pgm", "resized copy.jpg")
               for f in kinds["near_duplicate"])
    assert {Path(f.paths[0]).name for f in kinds["too_few"]} == {"loner"}
    assert {Path(f.paths[0]).name for f in kinds["folder"]} >= {"nobody", "loop"}
    assert {Path(f.paths[0]).name for f in kinds["extreme_size"]} == {"tiny 1x1.png", "strip.png"}
    assert report.to_json()["summary"]["unreadable"] == expected["broken"]


def test_doctor_on_a_clean_gallery_finds_nothing(gallery):
    assert diagnose(gallery).findings == []


def test_doctor_with_a_store_flags_a_likely_mislabel(store_copy):
    store, gallery = store_copy
    # Swap one image of s1 into s3's folder: its neighbours are all s1.
    (gallery / "s1" / "4.pgm").rename(gallery / "s3" / "from_s1.pgm")
    report = diagnose(gallery, store=store)
    flagged = [Path(f.paths[0]).name for f in report.findings if f.kind == "likely_mislabel"]
    assert "from_s1.pgm" in flagged
