"""Two distance thresholds, calibrated at a chosen false-accept rate: one for pairs, one for
"unknown".

*Pairs* (1:1, ``verify``): pairs of held-out images (the split ``train`` saved; else the indexed
images) give two distributions of distances, same person and different people. ``threshold`` is
the distance below which only ``far`` of the different-people pairs fall.

*Unknown* (1:N, ``identify``): a stranger is compared with every gallery image at once, and only
its *nearest* counts, which lies far closer than a typical pair of two people does; a pair
threshold lets most strangers through a large gallery. So each held-out image is also searched
in the indexed gallery with its own person left out, standing in for a stranger (leave one
person out), and ``unknown_threshold`` is the distance below which only ``far`` of those nearest
strangers fall. A query whose nearest gallery image lies beyond it is answered "unknown".
``identified`` is the cost: the share of held-out photos of gallery people still accepted and
named right. It depends on the gallery's size, so calibrate again once the gallery has changed
much (``gallery_images`` records it). Before the gallery is indexed, or where it holds a single
person, there are no strangers to stand in and "unknown" falls back to the pair threshold.

Both are stored with the store and tied to its model: retraining drops them.

A threshold is only as good as the model under it: where fewer than ``WEAK_TAR`` of the
same-person pairs fall under it, ``Calibration.caveat`` says so in words (``doctor`` measures its
store's model the same way before trusting its neighbours).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from facerank.errors import ImageError, StoreError, UsageError
from facerank.faces.cache import read_file_input
from facerank.data.gallery import read_split

#: Pairwise distances grow as n²; beyond this many images a seeded sample is used.
MAX_IMAGES = 3000
#: Neighbours searched per held-out image for the nearest of another person; a person with more
#: gallery images than this may leave none in reach, and the farthest searched then stands in.
MAX_NEIGHBOURS = 4096
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
    # 1:N, for "unknown": None where no indexed gallery of two or more people stood in.
    unknown_threshold: float | None = None  # unknown when the nearest gallery image is farther
    strangers_accepted: float | None = None  # of the stand-in strangers, accepted at it
    identified: float | None = None   # of held-out photos of gallery people: accepted, named right
    stranger_queries: int = 0         # held-out images searched with their own person left out
    gallery_images: int = 0           # the indexed gallery they were searched in

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
    images, people, paths, skipped = [], [], [], []
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
            paths.append(path)
    vectors = store.model.embed(images)
    try:
        result = calibrate_vectors(vectors, people, far=far, source=source, skipped=skipped)
    except StoreError as error:
        unread = "" if not skipped else (
            f"; {len(skipped)} of its {len(items)} images could not be used (first: "
            f"{skipped[0][0]}: {skipped[0][1]})")
        fix = ("put the held-out images back where train/split.json lists them, or train again"
               if source == "held-out split" else "index more images with `facerank index add`")
        raise StoreError(f"{store.folder}: cannot calibrate on its {source}: {error}{unread}; "
                         f"{fix}") from None
    result = replace(result, **unknown_calibration(store, vectors, people,
                                                   [str(path) for path in paths], far=far))
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


def unknown_calibration(store, vectors: np.ndarray, people, paths, *, far: float = 0.01) -> dict:
    """The 1:N fields of a ``Calibration``: each of ``vectors`` (held-out images of ``people``,
    read from ``paths``) searched in ``store``'s indexed gallery with its own person left out.
    Empty where the gallery is not indexed (or indexed by another model) or holds one person.

    >>> paths = sorted(str(p) for p in Path("GALLERY").rglob("*.pgm"))
    >>> people = [Path(p).parent.name for p in paths]
    >>> fields = unknown_calibration(store, store.embed(paths), people, paths)
    >>> fields["stranger_queries"] == len(paths), 0 <= fields["identified"] <= 1
    (True, True)
    """
    try:
        counts = store.info()["images_per_person"]
        if len(counts) < 2 or len(vectors) == 0:
            return {}
        total = sum(counts.values())
        # Enough neighbours that one of another person is among them, plus the image itself
        # where the held-out images are the indexed ones.
        k = min(total, max(counts.get(person, 0) for person in people) + 2, MAX_NEIGHBOURS)
        found = store.search_vectors(vectors, k=k)
    except StoreError:  # not indexed yet, or indexed by another model
        return {}
    strangers, enrolled_nearest = [], []
    for person, path, matches in zip(people, paths, found):
        # Not the held-out image itself, where the gallery indexed it too (by path, or as a
        # byte-identical copy: the same person at distance 0).
        others = [m for m in matches
                  if not (_same_file(m.path, path) or (m.person == person and m.distance < 1e-6))]
        nearest_stranger = next((m.distance for m in others if m.person != person), None)
        if nearest_stranger is None:
            if len(matches) == total:
                continue  # the whole gallery is this person: no stranger to stand in
            nearest_stranger = matches[-1].distance  # all in reach were this person's
        strangers.append(nearest_stranger)
        if counts.get(person, 0) > len(matches) - len(others):  # enrolled besides this image
            enrolled_nearest.append((person, others[0] if others else None))
    if not strangers:
        return {}
    strangers_sorted = np.sort(np.asarray(strangers))
    threshold = _threshold_at(strangers_sorted, far)
    # An enrolled person's photo counts as identified when its nearest gallery image is theirs
    # (others[0] is, when its person matches) and lies within the threshold.
    named = [nearest is not None and nearest.person == person and nearest.distance <= threshold
             for person, nearest in enrolled_nearest]
    return {"unknown_threshold": threshold,
            "strangers_accepted": float(np.mean(strangers_sorted <= threshold)),
            "identified": float(np.mean(named)) if named else None,
            "stranger_queries": len(strangers), "gallery_images": total}


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


def _same_file(a: str, b: str) -> bool:
    return a == b or Path(a).resolve() == Path(b).resolve()


def _pairs_source(store) -> tuple[list[tuple[str, str]], str]:
    split = read_split(store.folder)
    if split is not None:
        test = list(split.test)
        if len({person for _, person in test}) >= 2 and len(test) > len({p for _, p in test}):
            return test, "held-out split"
    return [(r.path, r.person) for r in store.records], "index"
