"""1:1 verification quality: are the two photos of a pair the same person?

Pairs come in LFW's format (``pairsDevTrain.txt``, ``pairsDevTest.txt``): a first line with the
count of each kind, then ``name  i  j`` for a same-person pair and ``name1  i  name2  j`` for a
pair of different people, image numbers from 1. The protocol is LFW's: the distance threshold is
chosen on one set of pairs (the best accuracy there) and scored on another, beside ROC AUC and the
true-accept rate at a fixed false-accept rate, which need no threshold.

>>> train = read_pairs("lfw/pairsDevTrain.txt", "lfw/images")
>>> test = read_pairs("lfw/pairsDevTest.txt", "lfw/images")
>>> score = score_pairs(distances(embed, train), train.same, distances(embed, test), test.same)
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from facerank import atomic
from facerank.errors import GalleryError, StoreError


@dataclass(frozen=True)
class Pairs:
    left: tuple[Path, ...]
    right: tuple[Path, ...]
    same: np.ndarray            # bool, one per pair

    @property
    def images(self) -> list[Path]:
        """Every image of the pairs once, in first-seen order."""
        return list(dict.fromkeys(self.left + self.right))


def read_pairs(pairs_file: str | Path, images_root: str | Path, *, suffix: str = ".jpg") -> Pairs:
    """Read an LFW-format pairs file; image paths are ``images_root/name/name_NNNN.jpg``."""
    pairs_file, root = Path(pairs_file), Path(images_root)
    left, right, same = [], [], []
    try:
        lines = pairs_file.read_text("utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as error:
        reason = getattr(error, "strerror", None) or str(error)
        raise GalleryError(f"{pairs_file}: cannot read it as a pairs file ({reason}); pass an "
                           "LFW-format pairs file such as pairsDevTest.txt") from None
    for number, line in enumerate(lines[1:], start=2):
        fields = line.split()
        if not fields:
            continue
        if len(fields) == 3:
            name, i, j = fields
            pair = ((name, i), (name, j))
        elif len(fields) == 4:
            pair = ((fields[0], fields[1]), (fields[2], fields[3]))
        else:
            raise GalleryError(f"{pairs_file}:{number}: expected 'name i j' or "
                               f"'name1 i name2 j', got {line!r}")
        try:
            paths = [root / name / f"{name}_{int(k):04d}{suffix}" for name, k in pair]
        except ValueError:
            raise GalleryError(f"{pairs_file}:{number}: image numbers must be integers, "
                               f"got {line!r}") from None
        left.append(paths[0])
        right.append(paths[1])
        same.append(len(fields) == 3)
    if not same:
        raise GalleryError(f"{pairs_file}: no pairs")
    return Pairs(tuple(left), tuple(right), np.array(same))


def distances(embed: Callable[[Sequence[Path]], np.ndarray], pairs: Pairs) -> np.ndarray:
    """Euclidean distance of each pair, embedding every image once (``embed``: paths → N x D)."""
    images = pairs.images
    vectors = embed(images)
    row = {path: i for i, path in enumerate(images)}
    left = vectors[[row[p] for p in pairs.left]]
    right = vectors[[row[p] for p in pairs.right]]
    return np.linalg.norm(left - right, axis=1)


@dataclass(frozen=True)
class VerificationScore:
    accuracy: float             # on the scored pairs, at the threshold chosen on the others
    threshold: float            # same person when distance <= threshold
    threshold_accuracy: float   # accuracy on the pairs the threshold was chosen on
    auc: float                  # ROC AUC on the scored pairs (threshold-free)
    tar_at_far: float           # true-accept rate at false-accept rate ``far``, scored pairs
    far: float
    pairs: int

    def to_json(self) -> dict:
        return asdict(self)


def best_threshold(distances_: np.ndarray, same: np.ndarray) -> tuple[float, float]:
    """(threshold, accuracy): the distance cut that classifies the most pairs right."""
    order = np.argsort(distances_, kind="stable")
    d, s = distances_[order], same[order]
    # Accepting the first k pairs: right = same pairs among them + different pairs after them.
    right = np.concatenate([[0], np.cumsum(s)]) + (~s).sum() - np.concatenate([[0], np.cumsum(~s)])
    k = int(np.argmax(right))
    if k == 0:
        threshold = float(d[0]) - 1e-6
    elif k == len(d):
        threshold = float(d[-1]) + 1e-6
    else:
        threshold = float((d[k - 1] + d[k]) / 2)  # halfway: the margin both ways
    return threshold, float(right[k] / len(d))


def tar_at_far(distances_: np.ndarray, same: np.ndarray, far: float) -> float:
    """The share of same-person pairs accepted by the strictest-enough threshold that accepts at
    most ``far`` of the different-people pairs."""
    from sklearn.metrics import roc_curve

    false_accept, true_accept, _ = roc_curve(same, -distances_)
    return float(true_accept[np.searchsorted(false_accept, far, side="right") - 1])


def score_pairs(threshold_distances: np.ndarray, threshold_same: np.ndarray,
                test_distances: np.ndarray, test_same: np.ndarray, *, far: float = 0.01
                ) -> VerificationScore:
    """Choose the threshold on one set of pairs, score it on another."""
    threshold, threshold_accuracy = best_threshold(threshold_distances, threshold_same)
    return score_at(threshold, test_distances, test_same, far=far,
                    threshold_accuracy=threshold_accuracy)


def score_at(threshold: float, test_distances: np.ndarray, test_same: np.ndarray, *,
             far: float = 0.01, threshold_accuracy: float = float("nan")) -> VerificationScore:
    """Score pairs at a threshold chosen elsewhere (a calibrated one, a library's default)."""
    from sklearn.metrics import roc_auc_score

    return VerificationScore(
        accuracy=float(np.mean((test_distances <= threshold) == test_same)),
        threshold=float(threshold), threshold_accuracy=threshold_accuracy,
        auc=float(roc_auc_score(test_same, -test_distances)),
        tar_at_far=tar_at_far(test_distances, test_same, far), far=far, pairs=len(test_same))


def plot_roc(curves: dict[str, tuple[np.ndarray, np.ndarray]], path: str | Path,
             title: str = "ROC") -> None:
    """ROC curves (log false-accept rate across) of several ``name: (distances, same)``."""
    from sklearn.metrics import roc_auc_score, roc_curve

    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(6, 5))
    for name, (d, same) in curves.items():
        false_accept, true_accept, _ = roc_curve(same, -d)
        axis.plot(np.maximum(false_accept, 1e-4), true_accept,
                  label=f"{name} (AUC {roc_auc_score(same, -d):.3f})")
    axis.set_xscale("log")
    axis.set_xlim(1e-3, 1)
    axis.set_xlabel("false-accept rate")
    axis.set_ylabel("true-accept rate")
    axis.set_title(title)
    axis.grid(alpha=0.3, which="both")
    axis.legend(fontsize=8, loc="lower right")
    _save(figure, path)


def plot_distance_histogram(d: np.ndarray, same: np.ndarray, path: str | Path, *,
                            threshold: float | None = None, title: str = "Pair distances") -> None:
    """Distances of same-person and different-people pairs, overlaid, with the threshold."""
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(6, 4))
    bins = np.linspace(float(d.min()), float(d.max()), 40)
    axis.hist(d[same], bins=bins, alpha=0.6, label=f"same person ({int(same.sum())})")
    axis.hist(d[~same], bins=bins, alpha=0.6, label=f"different people ({int((~same).sum())})")
    if threshold is not None:
        axis.axvline(threshold, color="black", linestyle="--", label=f"threshold {threshold:.3f}")
    axis.set_xlabel("distance")
    axis.set_ylabel("pairs")
    axis.set_title(title)
    axis.legend(fontsize=8)
    _save(figure, path)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    return pyplot


def _save(figure, path: str | Path) -> None:
    figure.tight_layout()
    atomic.write_with(Path(path), lambda temporary: figure.savefig(temporary, format="png",
                                                                   dpi=100))
    _pyplot().close(figure)


def evaluate_pairs(store, pairs_file: str | Path, images_root: str | Path, *,
                   threshold_pairs: str | Path | None = None, far: float = 0.01,
                   flip: bool = False, batch_size: int = 32,
                   histogram_png: str | Path | None = None, roc_png: str | Path | None = None
                   ) -> VerificationScore:
    """Score ``store`` on LFW-format pairs: at the threshold chosen on ``threshold_pairs``, else
    at the store's calibrated threshold; ``flip`` answers each image as the mean of itself and
    its mirror image. Optionally plots the distance histogram and the ROC curve.

    >>> evaluate_pairs(store, "lfw/pairsDevTest.txt", "lfw/images",
    ...                threshold_pairs="lfw/pairsDevTrain.txt").accuracy
    """
    from facerank.quality.evaluate import embed_and_classify, network_inputs

    if threshold_pairs is None and store.threshold is None:
        raise StoreError(f"{store.folder} has no calibrated threshold to score the pairs at: "
                         "pass pairs to choose it on (LFW's pairsDevTrain.txt; --threshold-pairs)"
                         f", or run `facerank calibrate --store {store.folder}` first")

    def embed(paths):
        paths = list(paths)
        missing = next((path for path in paths if not path.is_file()), None)
        if missing is not None:
            raise GalleryError(f"{missing}: no such image; the images folder ({images_root}) "
                               "must hold NAME/NAME_0001.jpg for every name in the pairs file")
        return np.concatenate([
            embed_and_classify(store.model, network_inputs(store, paths[i:i + batch_size]),
                               batch_size=batch_size, flip=flip)[0]
            for i in range(0, len(paths), batch_size)])

    test = read_pairs(pairs_file, images_root)
    d_test = distances(embed, test)
    if threshold_pairs is not None:
        chosen_on = read_pairs(threshold_pairs, images_root)
        score = score_pairs(distances(embed, chosen_on), chosen_on.same, d_test, test.same,
                            far=far)
    else:
        score = score_at(store.threshold, d_test, test.same, far=far)
    if roc_png is not None:
        plot_roc({"facerank": (d_test, test.same)}, roc_png)
    if histogram_png is not None:
        plot_distance_histogram(d_test, test.same, histogram_png, threshold=score.threshold)
    return score
