"""Recognition quality on real faces: facerank's recipes beside classical baselines and the
face-trained peer ``face_recognition`` (dlib), on the very same splits and pairs.

    python benchmarks/recognition.py [--jobs 2] [--only orl,lfw] [--lfw-epochs 12]

* ORL (40 people x 10), 70/30 per person, seeds 0, 1, 2: top-1/top-5 and macro P/R/F1 of the
  classifier head, and 1-nearest-neighbour over the training images' face prints (``closest``).
* Unknown people on ORL: enrol 70% of the people, calibrate the threshold on their held-out
  split at 1% false accepts, then query held-out photos of enrolled people and every photo of
  people never enrolled.
* LFW View 1: a model trained only on the people of ``peopleDevTrain.txt``; verification on
  ``pairsDevTest.txt`` at the threshold chosen on ``pairsDevTrain.txt``, ROC AUC, true-accept
  rate at 1% false accepts. Identification on the people with >= 10 images, 70/30.

Every run is one *cell* (a recipe on a split); finished cells are kept in
``benchmarks/.cache/recognition/`` so a rerun only computes what is missing, and ``--jobs N``
workers claim cells in priority order. The report (``benchmarks/results/recognition.md`` + JSON +
PNGs) is written from whatever cells are done. No ImageNet weights can be downloaded where this
was written: every facerank figure is from random initialisation.

Optional dependencies, never runtime ones: ``scikit-image`` (HOG/LBP baselines) and
``face_recognition`` (``pip install face_recognition --no-deps face_recognition_models dlib-bin
"setuptools<81"``: its models package still imports ``pkg_resources``).
Data: ORL (AT&T Laboratories Cambridge); LFW deep-funneled (Huang et al. 2007, 2012).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
DATA = HERE.parent.parent / "shared" / "data"
CACHE = HERE / ".cache" / "recognition"
RESULTS = HERE / "results"
PLOTS = RESULTS / "recognition"
SEEDS = (0, 1, 2)
LFW_CROP = 0.5          # LFW's deep-funneled 250 px frames: the face is the central ~125 px
UNKNOWN_SHARE = 0.3     # of ORL's people, never enrolled in the unknown-people test


# -- recipes -------------------------------------------------------------------------------------

def recipe(name: str, seed: int, **overrides):
    """facerank's recipes by benchmark name (``default`` is what ``facerank train`` picks
    without ImageNet weights)."""
    from facerank.train import preset

    names = {"default": "scratch", "cosface": "scratch", "sgd": "sgd", "freeze": "freeze"}
    extra = {"cosface": dict(loss="cosface", margin=0.2, label_smoothing=0.0),
             "freeze": dict(cached_features=True, feature_views=6)}.get(name, {})
    return preset(names[name], seed=seed, **{**extra, **overrides})


# -- data ----------------------------------------------------------------------------------------

def orl_split(seed: int):
    from facerank.gallery import scan_gallery, split_gallery

    return split_gallery(scan_gallery(DATA / "orl"), test_fraction=0.3, seed=seed)


def linked_gallery(people: list[str], root: Path, folder: Path) -> Path:
    """A gallery folder of links to ``root/<person>`` for the chosen people (nothing copied)."""
    folder.mkdir(parents=True, exist_ok=True)
    for person in people:
        link = folder / person
        if not link.exists():
            link.symlink_to(root / person, target_is_directory=True)
    return folder


def lfw_people(file_name: str, minimum: int = 1) -> list[str]:
    lines = (DATA / "lfw" / file_name).read_text().splitlines()[1:]
    return [name for name, count in (line.split("\t") for line in lines) if int(count) >= minimum]


def lfw_identification_people() -> list[str]:
    root = DATA / "lfw" / "images"
    return sorted(p.name for p in root.iterdir() if len(list(p.iterdir())) >= 10)


def load_images(paths, crop: float = 1.0):
    """Decoded RGB images; with ``crop`` < 1 only their centred square (for the baselines,
    which see what facerank's ``crop`` setting shows the network)."""
    from facerank.images import load_image

    images = [load_image(p) for p in paths]
    if crop < 1.0:
        images = [_center_crop(i, crop) for i in images]
    return images


def _center_crop(image, crop: float):
    from facerank.config import centre_square

    return image.crop(tuple(round(x) for x in centre_square(*image.size, crop)))


# -- classical baselines ---------------------------------------------------------------------------

def pixel_features(images, size=(46, 56)):
    return np.stack([np.asarray(i.convert("L").resize(size), np.float32).ravel() / 255.0
                     for i in images])


def hog_features(images, size=(64, 80)):
    from skimage.feature import hog

    return np.stack([hog(np.asarray(i.convert("L").resize(size), np.float32) / 255.0,
                         orientations=9, pixels_per_cell=(8, 8), cells_per_block=(2, 2))
                     for i in images])


def lbp_features(images, size=(64, 80), grid=(4, 5)):
    """Uniform LBP (8 neighbours, radius 1) histograms over a grid of cells, concatenated."""
    from skimage.feature import local_binary_pattern

    rows = []
    for image in images:
        codes = local_binary_pattern(np.asarray(image.convert("L").resize(size)), 8, 1, "uniform")
        cells = [cell for band in np.array_split(codes, grid[1], axis=0)
                 for cell in np.array_split(band, grid[0], axis=1)]
        rows.append(np.concatenate([np.bincount(c.astype(int).ravel(), minlength=10) / c.size
                                    for c in cells]))
    return np.sqrt(np.stack(rows))  # Hellinger: chi-squared-like distances under an RBF kernel


FEATURES = {"PCA + SVM on pixels": pixel_features, "HOG + SVM": hog_features,
            "LBP + SVM": lbp_features}


def svm_scores(features, train_images, train_people, test_images, test_people) -> dict:
    from sklearn.decomposition import PCA
    from sklearn.metrics import precision_recall_fscore_support
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import SVC

    x_train, x_test = features(train_images), features(test_images)
    components = min(100, len(x_train) - 1, x_train.shape[1])
    model = make_pipeline(StandardScaler(), PCA(components, whiten=True, random_state=0),
                          SVC(kernel="rbf", C=10.0, gamma="scale", class_weight="balanced"))
    model.fit(x_train, train_people)
    predicted = model.predict(x_test)
    p, r, f1, _ = precision_recall_fscore_support(test_people, predicted, average="macro",
                                                  zero_division=0)
    return {"accuracy": float(np.mean(predicted == np.array(test_people))),
            "precision": float(p), "recall": float(r), "f1": float(f1)}


def verification_embedder(features, fit_images):
    """Classical features for pairs: PCA (whitened, fitted on training people) then L2 norm."""
    from sklearn.decomposition import PCA
    from sklearn.preprocessing import StandardScaler

    x = features(fit_images)
    scaler = StandardScaler().fit(x)
    pca = PCA(min(128, len(x) - 1), whiten=True, random_state=0).fit(scaler.transform(x))

    def embed(images):
        v = pca.transform(scaler.transform(features(images)))
        return v / np.linalg.norm(v, axis=1, keepdims=True)
    return embed


# -- the face-trained peer --------------------------------------------------------------------------

def peer_encodings(images) -> tuple[np.ndarray, int]:
    """face_recognition's 128-d encodings, with its own HOG face detector; where it finds no
    face, the whole image is given as the face box (as a user with pre-cropped faces would)."""
    import face_recognition

    vectors, detected = [], 0
    for image in images:
        pixels = np.asarray(image.convert("RGB"))
        boxes = face_recognition.face_locations(pixels)
        if boxes:
            detected += 1
            # The largest face: LFW photos sometimes show someone else in the background.
            boxes = [max(boxes, key=lambda b: (b[2] - b[0]) * (b[1] - b[3]))]
        else:
            boxes = [(0, pixels.shape[1], pixels.shape[0], 0)]
        vectors.append(face_recognition.face_encodings(pixels, boxes)[0])
    return np.array(vectors, np.float32), detected


def nearest_neighbour(train_vectors, train_people, test_vectors) -> list[str]:
    from facerank.index import FaceIndex

    index = FaceIndex(train_vectors.shape[1])
    index.add(np.arange(len(train_vectors)), np.ascontiguousarray(train_vectors, np.float32))
    _, ids = index.search(np.ascontiguousarray(test_vectors, np.float32), 1)
    return [train_people[i] for i in ids[:, 0]]


def accuracy(predicted, truth) -> float:
    return float(np.mean(np.array(predicted) == np.array(truth)))


# -- cells ---------------------------------------------------------------------------------------

def train_and_evaluate(gallery: Path, config, store: Path, plots_prefix: str | None,
                       confusion: bool = True) -> dict:
    from facerank.evaluate import evaluate
    from facerank.store import FaceStore
    from facerank.train import train

    result = train(gallery, store, config, weights="none")
    opened = FaceStore.open(store)
    confusion_png = PLOTS / f"{plots_prefix}-confusion.png" if plots_prefix and confusion else None
    plain = evaluate(opened, confusion_png=confusion_png)
    flipped = evaluate(opened, flip=True)
    if plots_prefix:
        shutil.copyfile(store / "train" / "curves.png", PLOTS / f"{plots_prefix}-curves.png")
    return {"config": dataclasses.asdict(config), "weights": "none (random init)",
            "train_seconds": result.seconds, "kept_epoch": result.kept_epoch,
            "epochs": config.epochs, "history": result.history,
            "classify": plain.accuracy, "top5": plain.top5_accuracy,
            "precision": plain.precision, "recall": plain.recall, "f1": plain.f1,
            "closest": plain.nearest_neighbour_accuracy,
            "classify_flip": flipped.accuracy, "closest_flip": flipped.nearest_neighbour_accuracy,
            "test_images": plain.images}


def cell_orl_baselines(seed: int, work: Path) -> dict:
    split = orl_split(seed)
    train_images, test_images = load_images(i.path for i in split.train), \
        load_images(i.path for i in split.test)
    train_people, test_people = [i.person for i in split.train], [i.person for i in split.test]
    return {name: svm_scores(f, train_images, train_people, test_images, test_people)
            for name, f in FEATURES.items()}


def cell_orl_peer(work: Path) -> dict:
    """The peer on every seed's split; each photo is encoded once."""
    from facerank.gallery import scan_gallery

    started = time.perf_counter()
    paths = [i.path for i in scan_gallery(DATA / "orl").images]
    vectors, detected = peer_encodings(load_images(paths))
    row = {path: i for i, path in enumerate(paths)}
    out = {"faces_detected": detected / len(paths)}
    for seed in SEEDS:
        split = orl_split(seed)
        predicted = nearest_neighbour(vectors[[row[i.path] for i in split.train]],
                                      [i.person for i in split.train],
                                      vectors[[row[i.path] for i in split.test]])
        out[f"seed{seed}"] = {"closest": accuracy(predicted, [i.person for i in split.test])}
    out["seconds"] = round(time.perf_counter() - started, 1)
    return out


def cell_orl_recipe(name: str, seed: int, work: Path) -> dict:
    prefix = f"orl-{name}-seed{seed}" if seed == 0 else None
    return train_and_evaluate(DATA / "orl", recipe(name, seed), work / "store", prefix)


def cell_orl_unknown(seed: int, work: Path) -> dict:
    """Enrol 70% of ORL's people; strangers are the rest, never seen in training."""
    from facerank.calibrate import calibrate
    from facerank.store import FaceStore

    people = sorted(p.name for p in (DATA / "orl").iterdir() if p.is_dir())
    rng = np.random.default_rng(seed)
    strangers = sorted(rng.choice(people, round(len(people) * UNKNOWN_SHARE), replace=False))
    enrolled = [p for p in people if p not in strangers]
    gallery = linked_gallery(enrolled, DATA / "orl", work / "gallery")
    config = recipe("default", seed)
    trained = train_and_evaluate(gallery, config, work / "store", None)
    store = FaceStore.open(work / "store")
    split = json.loads((work / "store" / "train" / "split.json").read_text())
    # The gallery: the training photos of every enrolled person, as `index build` would add them.
    store.add([path for path, _ in split["train"]], person=[who for _, who in split["train"]])
    calibration = calibrate(store, far=0.01)
    strangers_photos = [str(p) for person in strangers
                        for p in sorted((DATA / "orl" / person).iterdir())]
    enrolled_matches = [m[0] for m in store.closest([p for p, _ in split["test"]], k=1)]
    truth = [who for _, who in split["test"]]
    stranger_matches = [m[0] for m in store.closest(strangers_photos, k=1)]
    accepted = [(m.person, who) for m, who in zip(enrolled_matches, truth)
                if not store.is_unknown(m)]
    return {"enrolled_people": len(enrolled), "stranger_people": len(strangers),
            "threshold": calibration.threshold, "calibration": calibration.to_json(),
            "enrolled_queries": len(truth), "enrolled_accepted": len(accepted) / len(truth),
            "enrolled_accepted_and_right": sum(p == w for p, w in accepted) / len(truth),
            "stranger_queries": len(stranger_matches),
            "strangers_rejected": float(np.mean([store.is_unknown(m) for m in stranger_matches])),
            "closest_without_threshold": accuracy([m.person for m in enrolled_matches], truth),
            "train": {k: trained[k] for k in ("classify", "closest", "train_seconds")}}


def lfw_pairs():
    from facerank.verification import read_pairs

    root = DATA / "lfw" / "images"
    return (read_pairs(DATA / "lfw" / "pairsDevTrain.txt", root),
            read_pairs(DATA / "lfw" / "pairsDevTest.txt", root))


def verification_result(embed, name: str, plot: bool) -> dict:
    from facerank.verification import distances, plot_distance_histogram, score_pairs

    train_pairs, test_pairs = lfw_pairs()
    d_train, d_test = distances(embed, train_pairs), distances(embed, test_pairs)
    score = score_pairs(d_train, train_pairs.same, d_test, test_pairs.same)
    if plot:
        plot_distance_histogram(d_test, test_pairs.same, PLOTS / f"lfw-{name}-histogram.png",
                                threshold=score.threshold,
                                title=f"LFW View 1 test pairs: {name}")
    return {**score.to_json(), "test_distances": d_test.round(5).tolist()}


def cell_lfw_baselines_verification(work: Path) -> dict:
    fit_people = lfw_people("peopleDevTrain.txt", minimum=2)
    root = DATA / "lfw" / "images"
    fit_paths = [p for person in fit_people for p in sorted((root / person).iterdir())][::3]
    fit_images = load_images(fit_paths, LFW_CROP)
    out = {}
    for name, features in FEATURES.items():
        name = name.replace(" + SVM", "")
        embedder = verification_embedder(features, fit_images)
        out[name] = verification_result(lambda paths: embedder(load_images(paths, LFW_CROP)),
                                        name.split()[0], plot=False)
    return out


#: face_recognition's documented default tolerance: same person when the distance is <= 0.6.
PEER_TOLERANCE = 0.6


def cell_lfw_peer_verification(work: Path) -> dict:
    """The peer on the test pairs at its own documented threshold (encoding the 2,200 training
    pairs as well would cost ~20 more CPU-minutes at ~4 photos/s for a threshold it documents)."""
    from facerank.verification import distances, plot_distance_histogram, score_at

    started = time.perf_counter()
    _, test_pairs = lfw_pairs()
    detected = []

    def embed(paths):
        vectors, found = peer_encodings(load_images(paths))
        detected.append(found / len(paths))
        return vectors
    d = distances(embed, test_pairs)
    score = score_at(PEER_TOLERANCE, d, test_pairs.same)
    plot_distance_histogram(d, test_pairs.same, PLOTS / "lfw-face_recognition-histogram.png",
                            threshold=PEER_TOLERANCE, title="LFW View 1 test pairs: face_recognition")
    return {**score.to_json(), "test_distances": d.round(5).tolist(),
            "threshold_from": "its documented tolerance", "faces_detected": detected[0],
            "seconds": round(time.perf_counter() - started, 1)}


def cell_lfw_verification(work: Path, epochs: int) -> dict:
    """A CosFace model (a margin separates people never trained on) on DevTrain's 1,184 people
    with two or more photos (6,671); scored on pairs of DevTest's people, never seen."""
    from facerank.store import FaceStore

    gallery = linked_gallery(lfw_people("peopleDevTrain.txt", minimum=2),
                             DATA / "lfw" / "images", work / "gallery")
    # Its 10% held-out split is of the training people, a validation set: it may choose the
    # epoch kept, since what is reported is scored on the pairs of other people.
    config = recipe("cosface", 0, crop=LFW_CROP, balanced=True, epochs=epochs, test_fraction=0.1,
                    keep="best")
    # 1,184 people: a confusion matrix would be a megabyte of noise.
    trained = train_and_evaluate(gallery, config, work / "store", "lfw-verification",
                                 confusion=False)
    model = FaceStore.open(work / "store").model

    def embed(paths, flip=False):
        from PIL import ImageOps

        images = load_images(paths)
        vectors = model.embed(images)
        if flip:
            vectors = vectors + model.embed([ImageOps.mirror(i) for i in images])
            vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        return vectors
    return {"train": {k: v for k, v in trained.items() if k != "history"},
            "history": trained["history"],
            "facerank": verification_result(embed, "facerank", plot=True),
            "facerank_flip": verification_result(lambda p: embed(p, True), "facerank-flip",
                                                 plot=False)}


def lfw_identification_split():
    from facerank.gallery import scan_gallery, split_gallery

    gallery = linked_gallery(lfw_identification_people(), DATA / "lfw" / "images",
                             CACHE / "lfw-identification-gallery")
    return gallery, split_gallery(scan_gallery(gallery), test_fraction=0.3, seed=0)


def cell_lfw_identification(work: Path, epochs: int) -> dict:
    gallery, _ = lfw_identification_split()
    config = recipe("default", 0, crop=LFW_CROP, balanced=True, epochs=epochs)
    return train_and_evaluate(gallery, config, work / "store", "lfw-identification")


def cell_lfw_baselines_identification(work: Path) -> dict:
    _, split = lfw_identification_split()
    train_images = load_images([i.path for i in split.train], LFW_CROP)
    test_images = load_images([i.path for i in split.test], LFW_CROP)
    train_people, test_people = [i.person for i in split.train], [i.person for i in split.test]
    return {name: svm_scores(f, train_images, train_people, test_images, test_people)
            for name, f in FEATURES.items()}


def cell_lfw_peer_identification(work: Path) -> dict:
    _, split = lfw_identification_split()
    train_vectors, _ = peer_encodings(load_images([i.path for i in split.train]))
    test_vectors, _ = peer_encodings(load_images([i.path for i in split.test]))
    predicted = nearest_neighbour(train_vectors, [i.person for i in split.train], test_vectors)
    return {"closest": accuracy(predicted, [i.person for i in split.test])}


def cells(args) -> list[tuple[str, callable]]:
    """Every cell, in the order workers take them: cheap and essential first."""
    orl, lfw = "orl" in args.only, "lfw" in args.only
    out = []
    if orl:
        out += [(f"orl-baselines-seed{s}", lambda w, s=s: cell_orl_baselines(s, w)) for s in SEEDS]
        out += [(f"orl-default-seed{s}", lambda w, s=s: cell_orl_recipe("default", s, w))
                for s in SEEDS]
        out += [("orl-unknown-seed0", lambda w: cell_orl_unknown(0, w))]
    if lfw:
        out += [("lfw-baselines-verification", cell_lfw_baselines_verification),
                ("lfw-baselines-identification", cell_lfw_baselines_identification),
                ("lfw-verification", lambda w: cell_lfw_verification(w, args.lfw_epochs)),
                ("lfw-identification", lambda w: cell_lfw_identification(w, args.lfw_epochs))]
    if orl:
        out += [(f"orl-freeze-seed{s}", lambda w, s=s: cell_orl_recipe("freeze", s, w))
                for s in SEEDS]
    if args.peer:
        out += [("orl-peer", cell_orl_peer)] if orl else []
        out += [("lfw-peer-verification", cell_lfw_peer_verification)] if lfw else []
    if orl:
        out += [("orl-cosface-seed0", lambda w: cell_orl_recipe("cosface", 0, w))]
    if orl:
        out += [(f"orl-sgd-seed{s}", lambda w, s=s: cell_orl_recipe("sgd", s, w)) for s in SEEDS]
    if lfw and args.peer:
        out += [("lfw-peer-identification", cell_lfw_peer_identification)]
    return out


def run_worker(args) -> None:
    """Take unclaimed cells in order; a cell's claim is an exclusively created lock file."""
    import torch

    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    for name, compute in cells(args):
        done, lock = CACHE / f"{name}.json", CACHE / f"{name}.lock"
        if done.exists():
            continue
        try:
            os.close(os.open(lock, os.O_CREAT | os.O_EXCL))
        except FileExistsError:
            continue
        started = time.perf_counter()
        print(f"[{os.getpid()}] {name} ...", flush=True)
        try:
            with tempfile.TemporaryDirectory(prefix=f"facerank-{name}-") as work:
                result = compute(Path(work))
            result["cell_seconds"] = round(time.perf_counter() - started, 1)
            done.write_text(json.dumps(result))
            print(f"[{os.getpid()}] {name} done in {result['cell_seconds']} s", flush=True)
        except ImportError as error:
            print(f"[{os.getpid()}] {name} skipped: {error}", flush=True)
        except Exception:  # one broken cell must not stop the others; its trace says why
            import traceback

            print(f"[{os.getpid()}] {name} FAILED", flush=True)
            traceback.print_exc()
        finally:
            lock.unlink(missing_ok=True)


# -- report --------------------------------------------------------------------------------------

def methods(cell: dict) -> list[tuple[str, dict]]:
    """A baselines cell's (method, scores) pairs, without its bookkeeping (cell_seconds)."""
    return [(name, value) for name, value in cell.items() if isinstance(value, dict)]


def load_cells() -> dict:
    return {p.stem: json.loads(p.read_text()) for p in sorted(CACHE.glob("*.json"))}


def pct(values) -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "—"
    if len(values) == 1:
        return f"{100 * values[0]:.1f}%"
    return f"{100 * np.mean(values):.1f}% ({', '.join(f'{100 * v:.1f}' for v in values)})"


def report(done: dict) -> str:
    lines = ["# Recognition quality on real faces", "",
             f"{platform.machine()}, {os.cpu_count()} cores. **Every facerank figure is from random "
             "initialisation**: no ImageNet weights could be downloaded where this ran. The "
             "method's `sgd` and `freeze` presets assume ImageNet weights and are shown from "
             "scratch only to say how they fare. The peer `face_recognition` (dlib) was trained "
             "on about 3 million faces.", "",
             "Data: ORL face database (AT&T Laboratories Cambridge; Samaria & Harter 1994); "
             "Labeled Faces in the Wild, deep-funneled (Huang, Ramesh, Berg, Learned-Miller 2007; "
             "Huang, Mattar, Lee, Learned-Miller 2012).", "",
             "## ORL identification (40 people, 70/30 per person)", "",
             "Mean over the seeds run, each seed in brackets; 120 held-out photos per seed. "
             "facerank's model is its last epoch's: nothing is chosen on the held-out photos.",
             "",
             "| recipe | seeds | top-1 (classify) | top-5 | macro P | macro R | macro F1 | 1-NN (closest) | flip TTA: classify / closest | train s |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    labels = {"default": "**facerank default** (`scratch`: softmax, label smoothing 0.1, 64 px, 40 ep)",
              "cosface": "`scratch` with a CosFace head (margin 0.2, scale 30)",
              "freeze": "method `freeze` (Adam 1e-4, last stage, 6 ep, 224 px)",
              "sgd": "method `sgd` (SGD 0.01, all layers, 6 ep, 224 px)"}
    for name, label in labels.items():
        runs = [done[f"orl-{name}-seed{s}"] for s in SEEDS if f"orl-{name}-seed{s}" in done]
        seeds = [s for s in SEEDS if f"orl-{name}-seed{s}" in done]
        if not runs:
            lines.append(f"| {label} | not run | | | | | | | | |")
            continue
        lines.append("| " + " | ".join([
            label, ",".join(map(str, seeds)), pct([r["classify"] for r in runs]),
            pct([r["top5"] for r in runs]), pct([r["precision"] for r in runs]),
            pct([r["recall"] for r in runs]), pct([r["f1"] for r in runs]),
            pct([r["closest"] for r in runs]),
            f"{pct([r['classify_flip'] for r in runs]).split()[0]} / "
            f"{pct([r['closest_flip'] for r in runs]).split()[0]}",
            f"{np.mean([r['train_seconds'] for r in runs]):.0f}"]) + " |")
    for baseline in FEATURES:
        runs = [done[f"orl-baselines-seed{s}"][baseline] for s in SEEDS
                if f"orl-baselines-seed{s}" in done]
        if runs:
            lines.append(f"| baseline: {baseline} | {len(runs)} | {pct([r['accuracy'] for r in runs])} "
                         f"| | {pct([r['precision'] for r in runs])} | {pct([r['recall'] for r in runs])} "
                         f"| {pct([r['f1'] for r in runs])} | | | |")
    peer = [done["orl-peer"][f"seed{s}"] for s in SEEDS] if "orl-peer" in done else []
    lines.append(f"| peer: `face_recognition` (dlib), 1-NN on its encodings | "
                 f"{','.join(map(str, SEEDS)) if peer else 'not run'} "
                 f"| | | | | | {pct([r['closest'] for r in peer])} | | |")

    if "orl-unknown-seed0" in done:
        u = done["orl-unknown-seed0"]
        lines += ["", "## Unknown people (ORL, seed 0)", "",
                  f"{u['enrolled_people']} people enrolled (their training photos indexed); the "
                  f"threshold ({u['threshold']:.3f}) was calibrated on the enrolled people's "
                  f"held-out split at 1% false accepts (measured there: "
                  f"{100 * u['calibration']['measured_far']:.1f}% false, "
                  f"{100 * u['calibration']['tar']:.1f}% true accepts). Then every photo of "
                  f"{u['stranger_people']} people never enrolled nor trained on, and the held-out "
                  "photos of enrolled people, were asked `closest`:", "",
                  "| queries | answered | share |", "|---|---|---|",
                  f"| {u['stranger_queries']} photos of strangers | rejected as unknown | "
                  f"{100 * u['strangers_rejected']:.1f}% |",
                  f"| {u['enrolled_queries']} held-out photos of enrolled people | accepted | "
                  f"{100 * u['enrolled_accepted']:.1f}% |",
                  f"| same | accepted *and* named right | {100 * u['enrolled_accepted_and_right']:.1f}% |",
                  f"| same, without a threshold | named right | {100 * u['closest_without_threshold']:.1f}% |"]

    lines += ["", "## LFW View 1 verification (1,000 test pairs; threshold from the 2,200 "
              "training pairs)", ""]
    rows = []
    if "lfw-verification" in done:
        v = done["lfw-verification"]
        t = v["train"]
        rows.append((f"**facerank** `scratch` + CosFace, {t['config'].get('epochs')} epochs on "
                     "DevTrain people, class-balanced (random init)", v["facerank"]))
        rows.append(("facerank, flip test-time augmentation", v["facerank_flip"]))
    if "lfw-baselines-verification" in done:
        for name, r in methods(done["lfw-baselines-verification"]):
            rows.append((f"baseline: {name} (whitened PCA-128)", r))
    if "lfw-peer-verification" in done:
        rows.append(("peer: `face_recognition` (dlib), at its documented tolerance 0.6",
                     done["lfw-peer-verification"]))
    lines += ["| method | accuracy | threshold | ROC AUC | TAR @ 1% FAR |", "|---|---|---|---|---|"]
    lines += [f"| {name} | {100 * r['accuracy']:.1f}% | {r['threshold']:.3f} | {r['auc']:.3f} | "
              f"{100 * r['tar_at_far']:.1f}% |" for name, r in rows] or ["| not run | | | | |"]
    if "lfw-verification" in done:
        lines += ["", "facerank's model is the epoch with the best accuracy on a 10% validation "
                  "split of the DevTrain people's photos; the test pairs are of other people and "
                  "chose nothing."]

    lines += ["", "## LFW identification (158 people with >= 10 photos, 70/30, seed 0)", "",
              "| method | top-1 (classify) | top-5 | macro F1 | 1-NN (closest) |",
              "|---|---|---|---|---|"]
    if "lfw-identification" in done:
        r = done["lfw-identification"]
        lines.append(f"| **facerank default** ({r['epochs']} epochs, class-balanced, random init) | "
                     f"{pct([r['classify']])} | {pct([r['top5']])} | {pct([r['f1']])} | "
                     f"{pct([r['closest']])} |")
    if "lfw-baselines-identification" in done:
        for name, r in methods(done["lfw-baselines-identification"]):
            lines.append(f"| baseline: {name} | {pct([r['accuracy']])} | | {pct([r['f1']])} | |")
    if "lfw-peer-identification" in done:
        lines.append(f"| peer: `face_recognition` (dlib), 1-NN | | | | "
                     f"{pct([done['lfw-peer-identification']['closest']])} |")
    missing = [name for name, _ in cells(argparse.Namespace(only="orl,lfw", peer=True,
                                                            lfw_epochs=0)) if name not in done]
    if missing:
        lines += ["", "Not run (yet): " + ", ".join(f"`{m}`" for m in missing) + "."]
    lines += ["", "Plots: `benchmarks/results/recognition/` (loss and accuracy per epoch, "
              "confusion matrices, ROC, distance histograms)."]
    return "\n".join(lines) + "\n"


def write_report() -> None:
    from facerank.verification import plot_roc

    done = load_cells()
    PLOTS.mkdir(parents=True, exist_ok=True)
    _, test_pairs = lfw_pairs()
    curves = {}
    if "lfw-verification" in done:
        curves["facerank (random init)"] = done["lfw-verification"]["facerank"]
    for name, r in methods(done.get("lfw-baselines-verification", {})):
        curves[name] = r
    if "lfw-peer-verification" in done:
        curves["face_recognition (dlib)"] = done["lfw-peer-verification"]
    if curves:
        plot_roc({n: (np.array(r["test_distances"]), test_pairs.same) for n, r in curves.items()},
                 PLOTS / "lfw-roc.png", title="LFW View 1 test pairs")
    summary = {name: {k: v for k, v in cell.items() if k not in ("history", "test_distances")}
               for name, cell in done.items()}
    (RESULTS / "recognition.json").write_text(json.dumps(summary, indent=1, default=str) + "\n")
    (RESULTS / "recognition.md").write_text(report(done))
    print(RESULTS / "recognition.md")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=2, help="worker processes (default 2)")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch threads per worker (default: cores / jobs)")
    parser.add_argument("--only", default="orl,lfw", help="orl, lfw or both (default)")
    parser.add_argument("--lfw-epochs", type=int, default=5,
                        help="LFW training epochs (default 5: ~30 CPU-minutes for verification)")
    parser.add_argument("--no-peer", dest="peer", action="store_false",
                        help="skip face_recognition")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--report", action="store_true", help="only write the report")
    args = parser.parse_args()
    CACHE.mkdir(parents=True, exist_ok=True)
    PLOTS.mkdir(parents=True, exist_ok=True)
    if args.worker:
        return run_worker(args)
    if not args.report:
        args.threads = args.threads or max(1, (os.cpu_count() or 1) // args.jobs)
        command = [sys.executable, __file__, "--worker", "--only", args.only, "--threads",
                   str(args.threads), "--lfw-epochs", str(args.lfw_epochs)]
        command += [] if args.peer else ["--no-peer"]
        workers = [subprocess.Popen(command) for _ in range(args.jobs)]
        for worker in workers:
            worker.wait()
    write_report()


if __name__ == "__main__":
    main()
