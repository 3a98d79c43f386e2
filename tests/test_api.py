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
    # As sentence-transformers' encode: one image → one vector, a generator → one row each.
    assert facerank.embed(photo).shape == (2048,)
    assert facerank.embed((photo for _ in range(3)), batch_size=2).shape == (3, 2048)
    assert facerank.open() is facerank.open(store.folder)


def test_a_cached_store_sees_changes_made_on_disk(store_copy):
    from facerank.model.torch_model import FaceModel

    store, gallery = store_copy
    first = facerank.open(store.folder)
    store.remove(person="s1")  # another store object: as another process would
    assert len(first) == 40
    assert "s1" not in {m.person for m in facerank.closest(gallery / "s1" / "1.pgm", k=40,
                                                            store=store.folder)}
    retrained = FaceModel.load(store.folder)
    retrained.network.fc.bias.data += 1.0
    retrained.save(store.folder)
    second = facerank.open(store.folder)  # a new model: opened again, and says it is stale
    assert second is not first and second.is_stale and len(second) == 40
