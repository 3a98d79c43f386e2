"""A same-person distance threshold, calibrated at a chosen false-accept rate.

Pairs of held-out images (the split ``train`` saved; else the indexed images) give two
distributions of distances: same person and different people. The threshold is the distance
below which only ``far`` of the different-people pairs fall. It is stored with the store and
tied to its model: ``verify`` uses it, and queries whose nearest gallery image lies beyond it
are answered "unknown" rather than with the nearest stranger.

A threshold is only as good as the model under it: where fewer than ``WEAK_TAR`` of the
same-person pairs fall under it, ``Calibration.caveat`` says so in words (``doctor`` measures its
store's model the same way before trusting its neighbours).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from facerank.errors import ImageError, StoreError, UsageError
from facerank.faces.cache import read_file_input
from facerank.data.gallery import read_split

#: Pairwise distances grow as n²; beyond this many images a seeded sample is used.
MAX_IMAGES = 3000
#: Below this share of same-person pairs accepted at the chosen false-accept rate, the model
#: barely separates people: the threshold would answer most true matches "unknown".
WEAK_TAR = 0.5


@dataclass(frozen=True)
class Calibration:
    threshold: float        # same person when distance <= threshold
    far: float              # asked-for false-accept rate
    measured_far: float     # share of different-people pairs accepted at the threshold
    tar: float              # share of same-person pairs accepted at the threshold
    same_pairs: int
    different_pairs: int
    source: str             # "held-out split" or "index"
    # (file, why) for the images left out: unreadable, or no face where the store skips those.
    skipped: list[tuple[str, str]] = field(default_factory=list)
    # Set when tar < WEAK_TAR: what that means for the answers, and what to do about it.
    caveat: str | None = None

    def to_json(self) -> dict:
        return asdict(self)


def calibrate(store, *, far: float = 0.01, save: bool = True) -> Calibration:
    """Choose the verification threshold of ``store`` at false-accept rate ``far``.

    >>> result = facerank.calibrate(store, far=0.01, save=False)  # save=True (default) keeps it
    >>> result.threshold > 0, 0 <= result.tar <= 1   # result.caveat: None, or why to doubt it
    (True, True)
    """
    if not 0.0 < far < 1.0:
        raise UsageError(f"far must be between 0 and 1, got {far}")
    items, source = _pairs_source(store)
    if len(items) > MAX_IMAGES:
        chosen = np.random.default_rng(0).choice(len(items), MAX_IMAGES, replace=False)
        items = [items[i] for i in sorted(chosen)]
    images, people, skipped = [], [], []
    for path, person in items:
        try:
            image, _ = read_file_input(store.faces, path)  # the store's own face step
        except ImageError as error:
            skipped.append((str(path), error.reason))
            continue
        if image is None:
            skipped.append((str(path), "no face found"))
        else:
            images.append(image)
            people.append(person)
    try:
        result = calibrate_vectors(store.model.embed(images), people, far=far, source=source,
                                   skipped=skipped)
    except StoreError as error:
        unread = "" if not skipped else (
            f"; {len(skipped)} of its {len(items)} images could not be used (first: "
            f"{skipped[0][0]}: {skipped[0][1]})")
        fix = ("put the held-out images back where train/split.json lists them, or train again"
               if source == "held-out split" else "index more images with `facerank index add`")
        raise StoreError(f"{store.folder}: cannot calibrate on its {source}: {error}{unread}; "
                         f"{fix}") from None
    if save:
        store.set_calibration({k: v for k, v in result.to_json().items() if k != "skipped"})
    return result


def calibrate_vectors(vectors: np.ndarray, people, *, far: float = 0.01, source: str = "vectors",
                      skipped=()) -> Calibration:
    """The threshold at false-accept rate ``far`` over every pair of ``vectors`` (one row per
    image, ``people[i]`` the person of row ``i``): what ``calibrate`` computes from a store.

    >>> paths = sorted(Path("GALLERY").rglob("*.pgm"))
    >>> result = calibrate_vectors(store.embed(paths), [p.parent.name for p in paths])
    >>> 0 < result.threshold, result.same_pairs > 0
    (True, True)
    """
    if not 0.0 < far < 1.0:
        raise UsageError(f"far must be between 0 and 1, got {far}")
    vectors = np.asarray(vectors, dtype=np.float64)
    labels = np.asarray(people)
    if len(labels) != len(vectors):
        raise UsageError(f"{len(vectors)} vectors but {len(labels)} people; give one per vector")
    squared = (vectors ** 2).sum(1)
    distances = np.sqrt(np.maximum(squared[:, None] + squared[None] - 2 * vectors @ vectors.T, 0))
    upper = np.triu_indices(len(vectors), 1)
    same_person = labels[upper[0]] == labels[upper[1]]
    same, different = distances[upper][same_person], distances[upper][~same_person]
    if len(same) == 0 or len(different) == 0:
        raise StoreError(f"calibration needs two images of one person and two people; the "
                         f"{source} gives {len(same)} same-person and {len(different)} "
                         "different pairs")
    threshold = _threshold_at(np.sort(different), far)
    tar = float(np.mean(same <= threshold))
    return Calibration(threshold=threshold, far=far,
                       measured_far=float(np.mean(different <= threshold)), tar=tar,
                       same_pairs=int(len(same)), different_pairs=int(len(different)),
                       source=source, skipped=list(skipped), caveat=weak_model_caveat(tar, far))


def weak_model_caveat(tar: float, far: float) -> str | None:
    """Words for a threshold that accepts fewer than ``WEAK_TAR`` of same-person pairs, or None.

    >>> weak_model_caveat(0.2, 0.01)
    'weak model: at 1% false accepts it accepts only 20% of same-person pairs, ...'
    """
    if tar >= WEAK_TAR:
        return None
    return (f"weak model: at {far * 100:g}% false accepts it accepts only {tar:.0%} of "
            "same-person pairs, so most true matches will be answered unknown and this "
            "threshold means little; train longer or from better weights (imagenet, or a face "
            "base from `facerank pretrain`), then calibrate again")


def _threshold_at(different_sorted: np.ndarray, far: float) -> float:
    """The largest threshold that accepts at most ``far`` of the different-people pairs."""
    accepted = int(np.floor(far * len(different_sorted)))
    if accepted == 0:
        return float(np.nextafter(different_sorted[0], 0.0))
    # Halfway between the last accepted and the first refused pair: the margin both ways.
    return float((different_sorted[accepted - 1] + different_sorted[accepted]) / 2)


def _pairs_source(store) -> tuple[list[tuple[str, str]], str]:
    split = read_split(store.folder)
    if split is not None:
        test = list(split.test)
        if len({person for _, person in test}) >= 2 and len(test) > len({p for _, p in test}):
            return test, "held-out split"
    return [(r.path, r.person) for r in store.records], "index"
