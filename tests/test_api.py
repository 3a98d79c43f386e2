"""Module-level functions over the default store."""

from __future__ import annotations

import facerank


def test_module_functions_use_the_default_store(store_copy, monkeypatch):
    store, gallery = store_copy
    monkeypatch.setenv("FACERANK_STORE", str(store.folder))
    photo = gallery / "s3" / "5.pgm"
    assert facerank.default_store_path() == store.folder
    assert facerank.closest(photo, k=1)[0].path == str(photo)
    assert facerank.classify(photo, top_k=2)[0].person in store.people
    assert facerank.embed([photo, photo]).shape == (2, 2048)
    assert facerank.open() is facerank.open(store.folder)


def test_a_store_changed_on_disk_is_reopened(store_copy):
    store, gallery = store_copy
    first = facerank.open(store.folder)
    store.remove(person="s1")
    second = facerank.open(store.folder)
    assert second is not first and len(second) == 40
