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

from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field, replace

import numpy as np

from facerank.errors import ImageError, StoreError, UsageError
from facerank.faces.cache import read_file_input
from facerank.data.gallery import read_split
from facerank.store.results import file_sha256

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
    # 1:N, for "unknown": None where no indexed gallery of two or more people stood in.
    unknown_threshold: float | None = None  # unknown when the nearest gallery image is farther
    strangers_accepted: float | None = None  # of the stand-in strangers, accepted at it
    identified: float | None = None   # of held-out photos of gallery people: accepted, named right
    stranger_queries: int | None = None  # held-out images searched, own person left out
    gallery_images: int | None = None    # the indexed gallery they were searched in
    unknown_caveat: str | None = None    # what the unknown threshold's rate rests on

    def to_json(self) -> dict:
        return asdict(self)


def calibrate(store, *, far: float = 0.01, save: bool = True, unknown: bool = True
              ) -> Calibration:
    """Choose the thresholds of ``store`` at false-accept rate ``far``: for pairs (``verify``)
    and, with ``unknown`` and an indexed gallery, for "unknown" answers (see the module).

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
    if unknown:
        result = replace(result, **_unknown_calibration(store, vectors, people,
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


def _unknown_calibration(store, vectors: np.ndarray, people: list[str], paths: list[str], *,
                         far: float) -> dict:
    """The 1:N fields of a ``Calibration``: each of ``vectors`` (held-out images of ``people``,
    read from ``paths``) searched in ``store``'s indexed gallery with its own person left out.
    Empty where the gallery is not indexed (or indexed by another model) or holds one person."""
    try:
        if len(store) == 0 or len(vectors) == 0:
            return {}
        records = store.records
        counts = Counter(record.person for record in records)
        if len(counts) < 2:
            return {}
        # The gallery's copies of each held-out file (same bytes, any path): not its neighbours.
        ids_by_content = defaultdict(set)
        for record in records:
            ids_by_content[record.sha256].add(record.id)
        own_copies = [ids_by_content.get(file_sha256(path), set()) for path in paths]
        by_person = defaultdict(list)
        for row, person in enumerate(people):
            by_person[person].append(row)
        found: list = [None] * len(people)
        for person, rows in by_person.items():
            # Enough neighbours that one of another person is among them, copies aside.
            k = min(len(records), counts.get(person, 0) + max(len(own_copies[r]) for r in rows)
                    + 1)
            for row, matches in zip(rows, store.search_vectors(vectors[rows], k=k)):
                found[row] = matches
    except StoreError:  # not indexed yet, or indexed by another model
        return {}
    strangers, enrolled_nearest, unreached = [], [], 0
    for person, copies, matches in zip(people, own_copies, found):
        others = [m for m in matches if m.id not in copies]
        nearest_stranger = next((m.distance for m in others if m.person != person), None)
        if nearest_stranger is None:
            unreached += 1  # an approximate index gave too few neighbours: not counted
            continue
        strangers.append(nearest_stranger)
        if counts.get(person, 0) > len(copies):  # enrolled besides this very photo
            enrolled_nearest.append((person, others[0]))
    if not strangers:
        return {}
    strangers_sorted = np.sort(np.asarray(strangers))
    threshold = _threshold_at(strangers_sorted, far)
    # An enrolled person's photo counts as identified when its nearest gallery image (copies of
    # itself aside) is theirs and lies within the threshold.
    named = [nearest.person == person and nearest.distance <= threshold
             for person, nearest in enrolled_nearest]
    return {"unknown_threshold": threshold,
            "strangers_accepted": float(np.mean(strangers_sorted <= threshold)),
            "identified": float(np.mean(named)) if named else None,
            "stranger_queries": len(strangers), "gallery_images": len(records),
            "unknown_caveat": unknown_caveat(len(strangers), far, unreached,
                                             identified=np.mean(named) if named else None)}


def unknown_caveat(stand_ins: int, far: float, unreached: int = 0, *,
                   identified: float | None = None) -> str:
    """What the unknown threshold's false-accept rate rests on, in words (always said: the
    stand-in strangers are people the model was trained on), and what it costs where it names
    fewer than ``WEAK_TAR`` of the gallery people's held-out photos right.

    >>> unknown_caveat(84, 0.01)
    'the stand-in strangers are held-out photos of people the model was trained on, ...'
    >>> "most true matches" in unknown_caveat(84, 0.01, identified=0.05)
    True
    """
    words = ("the stand-in strangers are held-out photos of people the model was trained on, "
             "whom training pushed apart: people it never saw lie closer to the gallery, so "
             "more of them than the asked rate are accepted (measured on ORL, 28 people "
             "enrolled from a face prior: 13% of 12 never-seen people's photos accepted where "
             "none of 84 stand-ins were)")
    if stand_ins * far < 1:
        words += (f"; {stand_ins} stand-ins cannot measure a rate of {far:g}, so the threshold "
                  "sits just under the closest one")
    if unreached:
        words += (f"; {unreached} held-out photos found no other person among their neighbours "
                  "in the (approximate) index and were left out")
    if identified is not None and identified < WEAK_TAR:
        words += (f"; it names only {identified:.0%} of the gallery people's held-out photos "
                  "right, so most true matches would be answered unknown: a few gallery photos "
                  "lie nearest to everyone (a network trained on batch statistics to its last "
                  "epoch can blow some face prints up at query time: train again with "
                  "`--frozen-bn-tail 0.15`, or fine-tune from a face base), or the model "
                  "separates its people poorly")
    return words


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
