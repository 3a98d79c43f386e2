"""How well a store recognises people it was trained on: metrics, and a confusion-matrix plot.

Scored on the held-out split that ``train`` saved (or on any one-folder-per-person gallery), two
ways: the classifier head (``classify``) and 1-nearest-neighbour over face prints of the training
images (``closest``). Held-out images are never in the neighbour index, so nothing finds itself.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from facerank import atomic
from facerank.errors import ImageError, StoreError
from facerank.data.gallery import SPLIT_FILE, TRAIN_FOLDER, read_split, scan_gallery
from facerank.faces.cache import read_file_input
from facerank.search.index import FaceIndex
from facerank.store import FaceStore


@dataclass
class Evaluation:
    images: int                 # scored images
    people: int                 # distinct true people among them
    accuracy: float             # classifier top-1
    top5_accuracy: float        # classifier top-5
    precision: float            # macro over people, classifier
    recall: float
    f1: float
    nearest_neighbour_accuracy: float | None  # 1-NN over the training images' face prints
    skipped: list[tuple[str, str]] = field(default_factory=list)
    unknown_people: list[str] = field(default_factory=list)  # not in the classifier; not scored

    def to_json(self) -> dict:
        return asdict(self)


def evaluate(store: FaceStore | str | Path, gallery: str | Path | None = None, *,
             confusion_png: str | Path | None = None, batch_size: int = 32,
             flip: bool = False) -> Evaluation:
    """Score a store on its saved held-out split, or on every image of ``gallery``.

    With ``flip``, every image (held-out and training) is answered as the mean of itself and its
    mirror image (test-time augmentation): twice the work, to measure what it would buy.

    >>> result = evaluate("faces/", confusion_png="confusion.png")
    >>> result.accuracy, result.f1
    """
    from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

    store = store if isinstance(store, FaceStore) else FaceStore.open(store)
    test, train = _items(store, gallery)
    known = set(store.people)
    unknown = sorted({person for _, person in test if person not in known})
    test = [(path, person) for path, person in test if person in known]
    test_vectors, probabilities, truth, skipped = _embed_items(store, test, batch_size, flip)
    if not truth:
        raise StoreError("nothing to evaluate: no readable held-out image of a known person")
    people = list(store.people)
    label = {person: i for i, person in enumerate(people)}
    y_true = np.array([label[p] for p in truth])
    ranked = np.argsort(-probabilities, axis=1, kind="stable")
    y_pred = ranked[:, 0]
    precision, recall, f1, _ = precision_recall_fscore_support(
        y_true, y_pred, labels=sorted(set(y_true)), average="macro", zero_division=0)

    neighbour_accuracy = None
    if train:
        train_vectors, _, train_people, more = _embed_items(store, train, batch_size, flip)
        skipped += more
        if train_people:
            index = FaceIndex(train_vectors.shape[1])
            index.add(np.arange(len(train_vectors)), train_vectors)
            _, ids = index.search(test_vectors, 1)
            neighbour = [train_people[i] for i in ids[:, 0]]
            neighbour_accuracy = float(np.mean([a == b for a, b in zip(neighbour, truth)]))

    if confusion_png is not None:
        present = sorted(set(y_true) | set(y_pred))
        matrix = confusion_matrix(y_true, y_pred, labels=present)
        plot_confusion(matrix, [people[i] for i in present], Path(confusion_png))
    return Evaluation(
        images=len(truth), people=len(set(truth)),
        accuracy=float(np.mean(y_pred == y_true)),
        top5_accuracy=float(np.mean([t in row[:5] for t, row in zip(y_true, ranked)])),
        precision=float(precision), recall=float(recall), f1=float(f1),
        nearest_neighbour_accuracy=neighbour_accuracy, skipped=skipped,
        unknown_people=unknown)


def _items(store: FaceStore, gallery) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """(test items, train items for the neighbour index) as (path, person) pairs."""
    if gallery is not None:
        # Absolute, as the store records them: a relative gallery must still leave its own
        # photos out of the neighbour index.
        test = [(os.path.abspath(i.path), i.person) for i in scan_gallery(gallery).images]
        test_paths = {path for path, _ in test}
        train = [(r.path, r.person) for r in store.records if r.path not in test_paths]
        return test, train
    split = read_split(store.folder)
    if split is None:
        raise StoreError(f"{store.folder} has no saved held-out split ({TRAIN_FOLDER}/"
                         f"{SPLIT_FILE}); pass a gallery folder of test images to evaluate")
    return list(split.test), list(split.train)


def _embed_items(store: FaceStore, items, batch_size, flip=False):
    vectors, probabilities, people, skipped = [], [], [], []
    for start in range(0, len(items), batch_size):
        images, names = [], []
        for path, person in items[start:start + batch_size]:
            try:
                image, _ = read_file_input(store.faces, path)  # the store's own face step
            except ImageError as error:
                skipped.append((path, error.reason))
                continue
            if image is None:
                skipped.append((path, "no face found"))
            else:
                images.append(image)
                names.append(person)
        if images:
            v, p = store.model.embed_and_classify(images, batch_size=batch_size)
            if flip:
                from PIL import ImageOps

                mirrored = [ImageOps.mirror(image) for image in images]
                v_flip, p_flip = store.model.embed_and_classify(mirrored, batch_size=batch_size)
                v = (v + v_flip) / 2
                if store.model.config.normalize_embeddings:
                    v = v / np.linalg.norm(v, axis=1, keepdims=True)
                p = (p + p_flip) / 2
            vectors.append(v)
            probabilities.append(p)
            people.extend(names)
    if not vectors:
        return np.zeros((0, store.model.config.embedding_dim), np.float32), np.zeros((0, 0)), [], skipped
    return np.concatenate(vectors), np.concatenate(probabilities), people, skipped


def plot_confusion(matrix: np.ndarray, labels: list[str], path: Path) -> None:
    """A confusion matrix as a PNG (true people down, predicted across)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt
    from sklearn.metrics import ConfusionMatrixDisplay

    side = min(4 + 0.25 * len(labels), 20)
    figure, axis = plt.subplots(figsize=(side, side))
    ConfusionMatrixDisplay(matrix, display_labels=labels).plot(
        ax=axis, include_values=len(labels) <= 20, colorbar=False, cmap="Blues",
        xticks_rotation="vertical")
    axis.set_title("Held-out confusion matrix")
    figure.tight_layout()
    atomic.write_with(path, lambda temporary: figure.savefig(temporary, format="png", dpi=100))
    plt.close(figure)
