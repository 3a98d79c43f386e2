"""Gallery scanning and the stratified split."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from facerank.errors import GalleryError, StoreError
from facerank.data.gallery import scan_gallery, split_gallery


def _make(root, layout: dict[str, int]):
    for person, count in layout.items():
        (root / person).mkdir(parents=True)
        for i in range(count):
            Image.new("RGB", (8, 8), (i, i, i)).save(root / person / f"{i}.png")
    return root


def test_scan_lists_people_ignores_non_images_and_reports_problems(tmp_path):
    _make(tmp_path, {"ada": 3, "bob": 2})
    (tmp_path / "ada" / "notes.txt").write_text("not an image")
    (tmp_path / "empty").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "stray.png")
    (tmp_path / "ada" / "loop").symlink_to(tmp_path / "ada")
    gallery = scan_gallery(tmp_path)
    assert gallery.people == ["ada", "bob"]
    assert len(gallery) == 5
    reasons = " ".join(reason for _, reason in gallery.problems)
    assert "no images" in reasons and "outside any person" in reasons
    assert "symbolic links" in reasons


def test_missing_or_empty_gallery_is_a_clear_error(tmp_path):
    with pytest.raises(GalleryError, match="does not exist"):
        scan_gallery(tmp_path / "nowhere")
    with pytest.raises(GalleryError, match="no images"):
        scan_gallery(tmp_path)


def test_split_is_stratified_seeded_and_reports_singletons(tmp_path):
    gallery = scan_gallery(_make(tmp_path, {"ada": 10, "bob": 4, "cy": 1}))
    split = split_gallery(gallery, test_fraction=0.3, seed=3)
    tested = [i.person for i in split.test]
    assert tested.count("ada") == 3 and tested.count("bob") == 1 and "cy" not in tested
    assert split.train_only == ("cy",)
    assert set(split.train) | set(split.test) == set(gallery.images)
    assert not set(split.train) & set(split.test)
    assert split == split_gallery(gallery, test_fraction=0.3, seed=3)
    assert split != split_gallery(gallery, test_fraction=0.3, seed=4)


def test_split_rejects_bad_fraction(tmp_path):
    gallery = scan_gallery(_make(tmp_path, {"ada": 2}))
    with pytest.raises(ValueError, match="test_fraction"):
        split_gallery(gallery, test_fraction=1.0)


def test_saved_split_paths_are_absolute_so_other_directories_can_read_them(tmp_path,
                                                                          monkeypatch):
    from facerank.data.gallery import GalleryImage, read_split, write_split

    (tmp_path / "photos" / "ada").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    write_split(tmp_path / "store", [GalleryImage(Path("photos/ada/1.jpg"), "ada")],
                [GalleryImage(Path("photos/ada/2.jpg"), "ada")], seed=0, test_fraction=0.3)
    split = read_split(tmp_path / "store")
    assert split.train == ((str(tmp_path / "photos" / "ada" / "1.jpg"), "ada"),)
    assert Path(split.test[0][0]).is_absolute()
    assert read_split(tmp_path / "nowhere") is None
    (tmp_path / "store" / "train" / "split.json").write_text("{")
    with pytest.raises(StoreError, match="damaged"):
        read_split(tmp_path / "store")
