"""How well a store recognises people it was trained on: metrics, and a confusion-matrix plot.

Scored on the held-out split that ``train`` saved (or on any one-folder-per-person gallery), two
ways: the classifier head (``classify``) and 1-nearest-neighbour over face prints of the training
images (``closest``). Held-out images are never in the neighbour index, so nothing finds itself.
Beside the aggregates, ``Evaluation.photos`` says what happened to each held-out photo: which
ones were wrong, what they were taken for, and which gallery image they were nearest to.
"""

from __future__ import annotations

import os
import csv
import io
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Sequence

import numpy as np

from facerank import atomic
from facerank.errors import ImageError, NoFaceError, StoreError
from facerank.data.gallery import SPLIT_FILE, TRAIN_FOLDER, read_split, scan_gallery
from facerank.faces.cache import read_file_input
from facerank.search.index import FaceIndex
from facerank.store import FaceStore


@dataclass(frozen=True)
class PhotoResult:
    """One held-out photo's answers: the classifier's, and its nearest training image's."""
    photo: str                      # the held-out photo
    person: str                     # who it truly is (its folder)
    predicted: str                  # the classifier's top person
    probability: float              # the classifier's probability for ``predicted``
    rank: int                       # where the truth came among all the classifier's people (0: top)
    nearest_path: str | None        # the nearest training image (None: no neighbour index)
    nearest_person: str | None
    nearest_distance: float | None  # Euclidean, as ``closest`` reports it
    correct: bool                   # predicted == person (rank == 0)

    def to_json(self) -> dict:
        return asdict(self)


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
    photos: list[PhotoResult] = field(default_factory=list)  # one per scored photo, in order

    def to_json(self) -> dict:
        return {**{f.name: getattr(self, f.name) for f in fields(self) if f.name != "photos"},
                "photos": [photo.to_json() for photo in self.photos]}

    def photos_csv(self) -> str:
        """The per-photo results as CSV text, one row per photo (``PhotoResult``'s fields)."""
        out = io.StringIO()
        writer = csv.DictWriter(out, [f.name for f in fields(PhotoResult)], lineterminator="\n")
        writer.writeheader()
        writer.writerows(photo.to_json() for photo in self.photos)
        return out.getvalue()

    def write_csv(self, path: str | Path) -> None:
        """Write ``photos_csv()`` to ``path`` (atomically: a reader never sees half a file)."""
        atomic.write_text(path, self.photos_csv())


def evaluate(store: FaceStore | str | Path, gallery: str | Path | None = None, *,
             confusion_png: str | Path | None = None, batch_size: int = 32,
             flip: bool = False) -> Evaluation:
    """Score a store on its saved held-out split, or on every image of ``gallery``.

    With ``flip``, every image (held-out and training) is answered as the mean of itself and its
    mirror image (test-time augmentation): twice the work, to measure what it would buy.

    >>> result = facerank.evaluate("faces/", confusion_png="confusion.png")
    >>> len(result.photos) == result.images, 0.0 <= result.accuracy <= 1.0
    (True, True)
    >>> wrong = [(p.photo, p.predicted) for p in result.photos if not p.correct]
    """
    from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

    store = store if isinstance(store, FaceStore) else FaceStore.open(store)
    test, train = _items(store, gallery)
    known = set(store.people)
    unknown = sorted({person for _, person in test if person not in known})
    test = [(path, person) for path, person in test if person in known]
    test_vectors, probabilities, scored, skipped = _embed_items(store, test, batch_size, flip)
    if not scored:
        unread = "" if not skipped else (
            f" ({len(skipped)} could not be used, first: {skipped[0][0]}: {skipped[0][1]})")
        where = gallery or f"{store.folder}'s held-out split"
        raise StoreError(f"nothing to evaluate in {where}: no readable image of a person the "
                         f"store knows{unread}; pass a gallery folder of test images of those "
                         "people")
    truth = [person for _, person in scored]
    people = list(store.people)
    label = {person: i for i, person in enumerate(people)}
    y_true = np.array([label[p] for p in truth])
    ranked = np.argsort(-probabilities, axis=1, kind="stable")
    y_pred = ranked[:, 0]
    ranks = np.argmax(ranked == y_true[:, None], axis=1)  # every known person is ranked
    precision, recall, f1, _ = precision_recall_fscore_support(
        y_true, y_pred, labels=sorted(set(y_true)), average="macro", zero_division=0)

    neighbour_accuracy, nearest = None, [(None, None, None)] * len(scored)
    if train:
        train_vectors, _, train_items, more = _embed_items(store, train, batch_size, flip)
        skipped += more
        if train_items:
            index = FaceIndex(train_vectors.shape[1])
            index.add(np.arange(len(train_vectors)), train_vectors)
            found, ids = index.search(test_vectors, 1)
            nearest = [(*train_items[i], float(d)) for i, d in zip(ids[:, 0], found[:, 0])]
            neighbour_accuracy = float(np.mean([n[1] == t for n, t in zip(nearest, truth)]))

    if confusion_png is not None:
        present = sorted(set(y_true) | set(y_pred))
        matrix = confusion_matrix(y_true, y_pred, labels=present)
        plot_confusion(matrix, [people[i] for i in present], Path(confusion_png))
    photos = [PhotoResult(photo=str(path), person=person, predicted=people[predicted],
                          probability=float(row[predicted]), rank=int(rank),
                          nearest_path=near_path, nearest_person=near_person,
                          nearest_distance=near_distance, correct=bool(rank == 0))
              for (path, person), predicted, row, rank, (near_path, near_person, near_distance)
              in zip(scored, y_pred, probabilities, ranks, nearest)]
    return Evaluation(
        images=len(truth), people=len(set(truth)),
        accuracy=float(np.mean(y_pred == y_true)),
        top5_accuracy=float(np.mean(ranks < 5)),
        precision=float(precision), recall=float(recall), f1=float(f1),
        nearest_neighbour_accuracy=neighbour_accuracy, skipped=skipped,
        unknown_people=unknown, photos=photos)


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


def embed_and_classify(model, images: Sequence, *, batch_size: int = 32, flip: bool = False
                       ) -> tuple[np.ndarray, np.ndarray]:
    """(face prints, class probabilities) of network inputs (faces already found) by ``model``.

    With ``flip``, each answer is the mean of the image's and its mirror image's (test-time
    augmentation, twice the work); face prints are then L2-normalised again where the model
    normalises them, so they stay comparable with the index's.

    >>> faces = [item.image for item in store.faces.inputs(facerank.load_image("photo.jpg"))]
    >>> vectors, probabilities = embed_and_classify(store.model, faces, flip=True)
    >>> vectors.shape, probabilities.shape == (1, len(store.model.config.people))
    ((1, 2048), True)
    """
    vectors, probabilities = model.embed_and_classify(list(images), batch_size=batch_size)
    if flip:
        from PIL import ImageOps

        mirrored = [ImageOps.mirror(image) for image in images]
        v_flip, p_flip = model.embed_and_classify(mirrored, batch_size=batch_size)
        vectors = (vectors + v_flip) / 2
        if model.config.normalize_embeddings:
            vectors = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
        probabilities = (probabilities + p_flip) / 2
    return vectors, probabilities


def network_inputs(store: FaceStore, paths: Sequence[str | Path]) -> list:
    """What the network sees of each file: its face through the store's own face step.

    Raises ``ImageError`` for an unreadable file and ``NoFaceError`` where the store's policy
    skips photos without a face.
    """
    images = []
    for path in paths:
        image, _ = read_file_input(store.faces, path)
        if image is None:
            raise NoFaceError(str(path))
        images.append(image)
    return images


def _embed_items(store: FaceStore, items, batch_size, flip=False):
    """(vectors, probabilities, the (path, person) items answered, (path, why) skipped)."""
    vectors, probabilities, answered, skipped = [], [], [], []
    for start in range(0, len(items), batch_size):
        images, kept = [], []
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
                kept.append((path, person))
        if images:
            v, p = embed_and_classify(store.model, images, batch_size=batch_size, flip=flip)
            vectors.append(v)
            probabilities.append(p)
            answered.extend(kept)
    if not vectors:
        return (np.zeros((0, store.model.config.embedding_dim), np.float32), np.zeros((0, 0)),
                [], skipped)
    return np.concatenate(vectors), np.concatenate(probabilities), answered, skipped


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
