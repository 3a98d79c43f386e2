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
* With and without the face step (``facerank.faces.detection``: dlib's HOG detector, the largest face
  aligned on its 5 landmarks): facerank's recipes trained with ``faces="dlib-hog"`` (``*-faces``
  cells) beside the same recipes on whole images (``faces="none"``), and the classical baselines
  on aligned 112 px chips (``*-aligned`` cells) beside the same baselines on whole photos.
* Faces in scenes: held-out ORL and LFW faces pasted into 1280 x 960 photos (1-4 people each);
  detection recall and precision, and per-face identification with the face step (every face
  answered) and without it (the whole scene answered once by the whole-image model).

Every run is one *cell* (a recipe on a split); finished cells are kept in
``benchmarks/.cache/recognition/`` so a rerun only computes what is missing, and ``--jobs N``
workers claim cells in priority order. The cache is not committed: on a fresh checkout the cells
of the published ``results/recognition.json`` are restored from it, not computed again. Models
are not kept, except the face-step models the scene cells reuse (``.cache/recognition/stores``),
and dlib's detections are cached once for all cells (``faces.sqlite``). The report
(``benchmarks/results/recognition.md`` + JSON + PNGs) is written from whatever cells are done.
No ImageNet weights can be downloaded where this was written: every facerank figure is from
random initialisation.

Optional dependencies, never runtime ones: ``scikit-image`` (HOG/LBP baselines), dlib and
its 5-point landmark model for the face step (``dlib-bin``, ``face_recognition_models``), and
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
                        # (whole-image cells only: an aligned chip is already the face)
CHIP = 112              # the classical baselines' aligned chips, in pixels
DETECTIONS = CACHE / "faces.sqlite"   # dlib detections of every photo, shared by the cells
STORES = CACHE / "stores"             # the stores the scene cells reuse
SCENE_SIZE = (1280, 960)
SCENES = 50             # per source (ORL, LFW)
SCENE_SEED = 0
SCENE_IOU = 0.3         # a detection finds a pasted face at this IoU, or with its centre inside
UNKNOWN_SHARE = 0.3     # of ORL's people, never enrolled in the unknown-people test


# -- recipes -------------------------------------------------------------------------------------

def recipe(name: str, seed: int, **overrides):
    """facerank's recipes by benchmark name (``default`` is what ``facerank train`` picks
    without ImageNet weights)."""
    from facerank.training.recipes import preset

    names = {"default": "scratch", "cosface": "scratch", "sgd": "sgd", "freeze": "freeze"}
    extra = {"cosface": dict(loss="cosface", margin=0.2, label_smoothing=0.0),
             "freeze": dict(cached_features=True, feature_views=6)}.get(name, {})
    return preset(names[name], seed=seed, **{**extra, **overrides})


# -- data ----------------------------------------------------------------------------------------

def orl_split(seed: int):
    from facerank.data.gallery import scan_gallery, split_gallery

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
    from facerank.data.images import load_image

    images = [load_image(p) for p in paths]
    if crop < 1.0:
        images = [_center_crop(i, crop) for i in images]
    return images


def _center_crop(image, crop: float):
    from facerank.model.config import centre_square

    return image.crop(tuple(round(x) for x in centre_square(*image.size, crop)))


# -- the face step ---------------------------------------------------------------------------------

def face_step():
    """The benchmark's face step: dlib's HOG detector, the largest face aligned on its 5
    landmarks; a photo without a face is used whole (dlib misses ~3% of ORL's tight crops)."""
    from facerank.faces.detection import FaceStep

    return FaceStep(detector="dlib-hog", no_face="whole")


def aligned_images(paths, size: int = CHIP) -> tuple[list, int]:
    """Each photo's largest face aligned to a ``size`` chip (the whole photo where no face is
    found), exactly as facerank's face step feeds its network; and how many had a face."""
    from concurrent.futures import ThreadPoolExecutor

    from facerank.faces.cache import DetectionCache, read_file_input
    from facerank.faces.detection import FaceFinder

    finder = FaceFinder(face_step(), size=size, cache=DetectionCache(DETECTIONS))
    with ThreadPoolExecutor(2) as pool:  # dlib releases the GIL: detect on both cores
        outcomes = list(pool.map(lambda path: read_file_input(finder, path), list(paths)))
    return [image for image, _ in outcomes], sum(found > 0 for _, found in outcomes)


def seed_detections(store: Path) -> None:
    """Start a store's detection cache (``faces.sqlite``) from the benchmark's, so that no
    photo is searched for faces twice across cells."""
    import sqlite3

    store.mkdir(parents=True, exist_ok=True)
    if not DETECTIONS.exists():
        return
    source, target = sqlite3.connect(DETECTIONS), sqlite3.connect(store / "faces.sqlite")
    try:
        source.backup(target)
    finally:
        source.close()
        target.close()


def keep_detections(store: Path) -> None:
    """Add what a store's face step detected to the benchmark's shared cache."""
    import sqlite3

    from facerank.faces.cache import DetectionCache

    if not (store / "faces.sqlite").exists():
        return
    len(DetectionCache(DETECTIONS))  # creates the file and its table where missing
    connection = sqlite3.connect(DETECTIONS, timeout=60, isolation_level=None)
    try:
        connection.execute("ATTACH DATABASE ? AS store", (str(store / "faces.sqlite"),))
        connection.execute("INSERT OR IGNORE INTO detections SELECT sha256, detector, faces "
                           "FROM store.detections")
    finally:
        connection.close()


def fresh(folder: Path) -> Path:
    """An empty folder (a kept store from an interrupted run is trained again)."""
    shutil.rmtree(folder, ignore_errors=True)
    return folder


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
    from facerank.search.index import FaceIndex

    index = FaceIndex(train_vectors.shape[1])
    index.add(np.arange(len(train_vectors)), np.ascontiguousarray(train_vectors, np.float32))
    _, ids = index.search(np.ascontiguousarray(test_vectors, np.float32), 1)
    return [train_people[i] for i in ids[:, 0]]


def accuracy(predicted, truth) -> float:
    return float(np.mean(np.array(predicted) == np.array(truth)))


# -- cells ---------------------------------------------------------------------------------------

def train_and_evaluate(gallery: Path, config, store: Path, plots_prefix: str | None,
                       confusion: bool = True, *, faces) -> dict:
    """Train from random initialisation and score the held-out split. ``faces``: ``"none"``
    (the whole image, as every cell before the face step) or a ``FaceStep``."""
    from facerank.quality.evaluate import evaluate
    from facerank.store import FaceStore
    from facerank.training.loop import train

    with_faces = faces != "none"
    if with_faces:
        seed_detections(store)
    result = train(gallery, store, config, weights="none", faces=faces)
    opened = FaceStore.open(store)
    confusion_png = PLOTS / f"{plots_prefix}-confusion.png" if plots_prefix and confusion else None
    plain = evaluate(opened, confusion_png=confusion_png)
    flipped = evaluate(opened, flip=True)
    if with_faces:
        keep_detections(store)
    if STORES in store.parents:  # a kept model: its 280 MB resume checkpoint is not needed
        (store / "train" / "checkpoint.pt").unlink(missing_ok=True)
    if plots_prefix:
        shutil.copyfile(store / "train" / "curves.png", PLOTS / f"{plots_prefix}-curves.png")
    photos = result.train_images + result.test_images
    face_counts = {"faces": result.faces, "photos": photos,
                   "no_face": len(result.no_face or []),
                   "several_faces": len(result.several_faces or [])} if with_faces else {
                   "faces": "none (whole image)"}
    return {**face_counts, "config": dataclasses.asdict(config), "weights": "none (random init)",
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
    from facerank.data.gallery import scan_gallery

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


def cell_orl_recipe(name: str, seed: int, work: Path, faces: bool = False,
                    **overrides) -> dict:
    """A recipe on ORL, on whole images or (``faces``) through the face step; seed 0's model
    with faces is kept for the scene cells. ``overrides``: recipe fields (a variant's cell)."""
    cell = f"orl-{name}{'-faces' if faces else ''}-seed{seed}"
    kept = faces and seed == 0 and not overrides
    store = fresh(STORES / cell) if kept else work / "store"
    return train_and_evaluate(DATA / "orl", recipe(name, seed, **overrides), store,
                              cell if seed == 0 and not overrides else None,
                              faces=face_step() if faces else "none")


def cell_orl_baselines_aligned(seed: int, work: Path) -> dict:
    """The classical baselines on the face step's aligned chips (ORL's photos are already tight
    crops: this shows what alignment alone changes)."""
    return baselines_on_aligned(orl_split(seed))


def baselines_on_aligned(split) -> dict:
    """Every classical baseline trained and scored on the split's aligned face chips."""
    train_images, found_train = aligned_images(i.path for i in split.train)
    test_images, found_test = aligned_images(i.path for i in split.test)
    train_people, test_people = [i.person for i in split.train], [i.person for i in split.test]
    out = {name: svm_scores(f, train_images, train_people, test_images, test_people)
           for name, f in FEATURES.items()}
    out["faces_found"] = (found_train + found_test) / (len(train_images) + len(test_images))
    return out


#: Recipe settings tried for aligned faces, scored on an inner 80/20 split of ORL seed 0's
#: training photos only (the test photos choose nothing). ``eye_distance`` frames the chip
#: tighter: at the default 0.30 about a fifth of an ORL chip lies outside ORL's tight crop
#: (filled black in training, and with whatever surrounds the face in a scene).
TUNING = {"64px-40ep": {}, "96px-40ep": {"image_size": 96}, "64px-tight": {"eye_distance": 0.40}}


def cell_orl_tune(setting: str, work: Path) -> dict:
    split = orl_split(0)
    gallery = work / "gallery"
    for item in split.train:  # a gallery of links to the training photos: nothing copied
        (gallery / item.person).mkdir(parents=True, exist_ok=True)
        (gallery / item.person / Path(item.path).name).symlink_to(item.path)
    settings = dict(TUNING[setting])
    framing = {k: settings.pop(k) for k in ("eye_distance", "eye_height") if k in settings}
    config = recipe("default", 0, test_fraction=0.2, **settings)
    out = train_and_evaluate(gallery, config, work / "store", None, confusion=False,
                             faces=dataclasses.replace(face_step(), **framing))
    out["validation"] = "inner 80/20 split of ORL seed 0's 280 training photos"
    return out


def unknown_calibration_words(calibration: dict) -> str:
    """How the unknown threshold of an unknown-people cell was calibrated, in a sentence."""
    if calibration.get("unknown_threshold") is None:  # calibrated before 1:N thresholds
        return (f"the pair threshold ({calibration['threshold']:.3f}) was calibrated on the "
                "enrolled people's held-out split at 1% false accepts of pairs (measured there: "
                f"{100 * calibration['measured_far']:.1f}% false, {100 * calibration['tar']:.1f}%"
                " true accepts) and decided \"unknown\" on the nearest gallery photo.")
    return (f"the unknown threshold ({calibration['unknown_threshold']:.3f}) was calibrated at 1% "
            f"false accepts on the enrolled people's {calibration['stranger_queries']} held-out "
            "photos, each searched in the gallery with its own person left out (measured there: "
            f"{100 * calibration['strangers_accepted']:.1f}% of those stand-in strangers "
            f"accepted, {100 * (calibration['identified'] or 0):.1f}% of the photos named right "
            "within it). The stand-ins were trained on; the strangers below never were.")


def cell_orl_unknown(seed: int, work: Path, **overrides) -> dict:
    """Enrol 70% of ORL's people; strangers are the rest, never seen in training."""
    enrolled, strangers = unknown_draw(orl_people(), seed)
    return unknown_protocol(DATA / "orl", enrolled, strangers,
                            recipe("default", seed, **overrides), work)


def orl_people() -> list[str]:
    return sorted(p.name for p in (DATA / "orl").iterdir() if p.is_dir())


def unknown_draw(people: list[str], seed: int) -> tuple[list[str], list[str]]:
    """(enrolled, strangers): ``UNKNOWN_SHARE`` of ``people``, drawn with ``seed``, are never
    enrolled."""
    rng = np.random.default_rng(seed)
    strangers = sorted(rng.choice(people, round(len(people) * UNKNOWN_SHARE), replace=False))
    return [p for p in people if p not in strangers], strangers


#: ``frozen_bn_tail`` settings tried for ``scratch``, on ``orl-unknown-seed0-bn-tail-*`` and
#: chosen there by the gallery's blow-up alone (training photos; see ``chosen_bn_tail``), and on
#: ``orl-unknown-tune-*`` (the protocol inside seed 0's training photos: inconclusive).
BN_TAILS = (0.0, 0.15, 0.25)
BN_TAIL_TRIED = 0.15  # the one chosen, tried as scratch's default on ORL identification too
BN_TAIL_DRAWS = (1, 2)  # which of seed 0's enrolled people play the strangers


def cell_orl_unknown_tune(tail: float, draw: int, work: Path) -> dict:
    enrolled, _ = unknown_draw(orl_people(), 0)
    train_photos = split_gallery_of(linked_gallery(enrolled, DATA / "orl", work / "enrolled"),
                                    seed=0).train
    inner = work / "inner"
    for item in train_photos:  # links to those 196 training photos: nothing copied
        (inner / item.person).mkdir(parents=True, exist_ok=True)
        (inner / item.person / Path(item.path).name).symlink_to(Path(item.path).resolve())
    inner_enrolled, inner_strangers = unknown_draw(enrolled, draw)
    out = unknown_protocol(inner, inner_enrolled, inner_strangers,
                           recipe("default", 0, frozen_bn_tail=tail), work)
    out["validation"] = ("the unknown-people protocol on orl-unknown-seed0's enrolled people's "
                         f"training photos only, strangers drawn with seed {draw}")
    return out


def split_gallery_of(gallery: Path, seed: int):
    """The split ``train`` makes of ``gallery`` with the default recipe's share and ``seed``."""
    from facerank.data.gallery import scan_gallery, split_gallery
    from facerank.training.recipes import TrainConfig

    return split_gallery(scan_gallery(gallery), test_fraction=TrainConfig.test_fraction,
                         seed=seed)


def blow_up(store: Path) -> dict:
    """Largest over median face print norm of the store's training photos, unnormalised."""
    from facerank.faces.cache import read_file_input
    from facerank.model.torch_model import FaceModel
    from facerank.store import FaceStore

    model = FaceModel.load(store)
    model.config = dataclasses.replace(model.config, normalize_embeddings=False)
    finder = FaceStore.open(store).faces
    split = json.loads((store / "train" / "split.json").read_text())
    images = [read_file_input(finder, path)[0] for path, _ in split["train"]]
    norms = np.linalg.norm(model.embed([i for i in images if i is not None]), axis=1)
    median = float(np.median(norms))
    return {"max_over_median": float(norms.max() / median), "median_norm": median,
            "photos_over_10x": int(np.sum(norms > 10 * median)), "photos": int(len(norms))}


def unknown_protocol(root: Path, enrolled: list[str], strangers: list[str], config,
                     work: Path) -> dict:
    """Train on the ``enrolled`` people of ``root`` (whole images), index their training photos,
    calibrate at 1% false accepts, then count the ``strangers``' photos rejected and the enrolled
    people's held-out photos named right."""
    from facerank.quality.calibrate import calibrate
    from facerank.store import FaceStore

    gallery = linked_gallery(enrolled, root, work / "gallery")
    trained = train_and_evaluate(gallery, config, work / "store", None, faces="none")
    store = FaceStore.open(work / "store")
    split = json.loads((work / "store" / "train" / "split.json").read_text())
    # The gallery: the training photos of every enrolled person, as `index build` would add them.
    store.add([path for path, _ in split["train"]], person=[who for _, who in split["train"]])
    calibration = calibrate(store, far=0.01)
    strangers_photos = [str(p) for person in strangers for p in sorted((root / person).iterdir())]
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
            "train": {k: trained[k] for k in ("classify", "closest", "train_seconds")},
            "frozen_bn_tail": config.frozen_bn_tail,
            # The gallery's training photos only: what frozen_bn_tail is chosen by.
            "gallery_blow_up": blow_up(work / "store")}


def lfw_pairs():
    from facerank.quality.verification import read_pairs

    root = DATA / "lfw" / "images"
    return (read_pairs(DATA / "lfw" / "pairsDevTrain.txt", root),
            read_pairs(DATA / "lfw" / "pairsDevTest.txt", root))


def verification_result(embed, name: str, plot: bool) -> dict:
    from facerank.quality.verification import distances, plot_distance_histogram, score_pairs

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


def cell_lfw_baselines_verification_aligned(work: Path) -> dict:
    """The same baselines, fitted on the same photos, on the face step's aligned chips."""
    fit_people = lfw_people("peopleDevTrain.txt", minimum=2)
    root = DATA / "lfw" / "images"
    fit_paths = [p for person in fit_people for p in sorted((root / person).iterdir())][::3]
    chips, found = {}, []

    def chips_of(paths):
        missing = list(dict.fromkeys(p for p in paths if p not in chips))
        images, faces = aligned_images(missing)
        chips.update(zip(missing, images))
        found.append((faces, len(missing)))
        return [chips[p] for p in paths]
    fit_images = chips_of(fit_paths)
    out = {}
    for name, features in FEATURES.items():
        name = name.replace(" + SVM", "")
        embedder = verification_embedder(features, fit_images)
        out[name] = verification_result(lambda paths: embedder(chips_of(paths)),
                                        f"{name.split()[0]}-aligned", plot=False)
    out["faces_found"] = sum(f for f, _ in found) / max(1, sum(n for _, n in found))
    return out


#: face_recognition's documented default tolerance: same person when the distance is <= 0.6.
PEER_TOLERANCE = 0.6


def cell_lfw_peer_verification(work: Path) -> dict:
    """The peer on the test pairs at its own documented threshold (encoding the 2,200 training
    pairs as well would cost ~20 more CPU-minutes at ~4 photos/s for a threshold it documents)."""
    from facerank.quality.verification import distances, plot_distance_histogram, score_at

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


def cell_lfw_verification(work: Path, epochs: int, faces: bool = False) -> dict:
    """A CosFace model (a margin separates people never trained on) on DevTrain's 1,184 people
    with two or more photos (6,671); scored on pairs of DevTest's people, never seen. With
    ``faces``, trained and queried through the face step (and without the centre crop)."""
    from facerank.faces.cache import read_file_input
    from facerank.store import FaceStore

    gallery = linked_gallery(lfw_people("peopleDevTrain.txt", minimum=2),
                             DATA / "lfw" / "images", work / "gallery")
    # Its 10% held-out split is of the training people, a validation set: it may choose the
    # epoch kept, since what is reported is scored on the pairs of other people.
    config = recipe("cosface", 0, crop=1.0 if faces else LFW_CROP, balanced=True, epochs=epochs,
                    test_fraction=0.1, keep="best")
    name = "lfw-verification-faces" if faces else "lfw-verification"
    # 1,184 people: a confusion matrix would be a megabyte of noise.
    trained = train_and_evaluate(gallery, config, work / "store", name, confusion=False,
                                 faces=face_step() if faces else "none")
    store = FaceStore.open(work / "store")
    model = store.model

    def embed(paths, flip=False):
        from PIL import ImageOps

        # Through the store's own face step (its detections are cached: each photo is
        # searched once); the whole photo for the whole-image model.
        images = ([read_file_input(store.faces, p)[0] for p in paths] if faces
                  else load_images(paths))
        vectors = model.embed(images)
        if flip:
            vectors = vectors + model.embed([ImageOps.mirror(i) for i in images])
            vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        return vectors
    return {"train": {k: v for k, v in trained.items() if k != "history"},
            "history": trained["history"],
            "facerank": verification_result(embed, "facerank-faces" if faces else "facerank",
                                            plot=True),
            "facerank_flip": verification_result(lambda p: embed(p, True), "facerank-flip",
                                                 plot=False)}


def lfw_identification_split():
    from facerank.data.gallery import scan_gallery, split_gallery

    gallery = linked_gallery(lfw_identification_people(), DATA / "lfw" / "images",
                             CACHE / "lfw-identification-gallery")
    return gallery, split_gallery(scan_gallery(gallery), test_fraction=0.3, seed=0)


def lfw_identification_config(epochs: int, faces: bool):
    # An aligned chip is already the face: the centre crop is for whole frames only.
    return recipe("default", 0, crop=1.0 if faces else LFW_CROP, balanced=True, epochs=epochs)


def cell_lfw_identification(work: Path, epochs: int, faces: bool = False) -> dict:
    """The default recipe on LFW's 158 people; with ``faces`` its model is kept for the scenes."""
    gallery, _ = lfw_identification_split()
    cell = "lfw-identification-faces" if faces else "lfw-identification"
    store = fresh(STORES / cell) if faces else work / "store"
    return train_and_evaluate(gallery, lfw_identification_config(epochs, faces), store, cell,
                              faces=face_step() if faces else "none")


def cell_lfw_baselines_identification_aligned(work: Path) -> dict:
    return baselines_on_aligned(lfw_identification_split()[1])


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


# -- faces in scenes -----------------------------------------------------------------------------

LFW_PATCH = 0.6   # of an LFW frame pasted into a scene: the face (~0.5) and a margin


def scene_backgrounds(rng, count: int) -> list:
    """Photo-like backgrounds without faces: LFW photos of people outside the identification
    set, shrunk and blurred until no face is left, then enlarged to the scene's size."""
    from PIL import Image, ImageFilter

    from facerank.data.images import load_image

    known = set(lfw_identification_people())
    root = DATA / "lfw" / "images"
    pool = sorted(p for p in root.iterdir() if p.name not in known)
    out = []
    for i in rng.choice(len(pool), count, replace=False):
        photo = load_image(sorted(pool[i].iterdir())[0]).resize((64, 48), Image.BILINEAR)
        out.append(photo.filter(ImageFilter.GaussianBlur(3)).resize(SCENE_SIZE, Image.BICUBIC))
    return out


def make_scenes(faces: list[tuple[str, str]], source: str, count: int = SCENES,
                seed: int = SCENE_SEED) -> list[dict]:
    """``count`` scenes of ``SCENE_SIZE``, each with 1-4 different people's held-out photos
    ``faces`` ((path, person) pairs) pasted whole (ORL) or their central ``LFW_PATCH`` (LFW): the
    patch 10-40% of the scene's width wide, turned by up to ±10°, where no other patch lies.

    Each photo is used once before any is used again. A scene is ``{"image", "boxes",
    "people", "paths"}``; a box is the pasted patch's bounding box (left, top, right, bottom).
    """
    from PIL import Image

    from facerank.data.images import load_image

    rng = np.random.default_rng(seed)
    backgrounds = scene_backgrounds(rng, count)
    queues: dict[str, list[str]] = {}
    for path, person in faces:
        queues.setdefault(person, []).append(str(path))
    for photos in queues.values():
        rng.shuffle(photos)
    people = sorted(queues)
    used: dict[str, int] = {person: 0 for person in people}
    width, height = SCENE_SIZE
    scenes = []
    for background in backgrounds:
        scene = background.copy()
        boxes, names, paths = [], [], []
        for person in rng.choice(people, int(rng.integers(1, 5)), replace=False):
            photos = queues[person]
            path = photos[used[person] % len(photos)]
            used[person] += 1
            patch = load_image(path)
            if source == "lfw":
                patch = _center_crop(patch, LFW_PATCH)
            for _ in range(200):  # a size and an angle, then a free place for them
                side = rng.uniform(0.10, 0.40) * width
                size = (round(side), round(side * patch.height / patch.width))
                angle = rng.uniform(-10, 10)
                turned = patch.resize(size, Image.LANCZOS).rotate(
                    angle, expand=True, resample=Image.BICUBIC)
                mask = Image.new("L", size, 255).rotate(angle, expand=True,
                                                        resample=Image.BICUBIC)
                w, h = turned.size
                if w >= width or h >= height:
                    continue
                left, top = int(rng.integers(0, width - w)), int(rng.integers(0, height - h))
                box = (left, top, left + w, top + h)
                if any(overlap(box, other) > 0 for other in boxes):
                    continue
                scene.paste(turned, (left, top), mask)
                boxes.append(box)
                names.append(str(person))
                paths.append(path)
                break
        scenes.append({"image": scene, "boxes": boxes, "people": names, "paths": paths})
    return scenes


def overlap(a, b) -> float:
    """The area two boxes (left, top, right, bottom) share."""
    return max(0, min(a[2], b[2]) - max(a[0], b[0])) * max(0, min(a[3], b[3]) - max(a[1], b[1]))


def iou(a, b) -> float:
    shared = overlap(a, b)
    return shared / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - shared)


def match_detections(truth: list, detected: list) -> dict[int, tuple[int, str]]:
    """One-to-one matches {truth index: (detection index, rule)}, best IoU first. A detection
    finds a pasted face when their IoU >= ``SCENE_IOU`` or its centre lies inside the patch's
    box (dlib's box is the face, the pasted patch is the face with hair and margin)."""
    candidates = []
    for t, a in enumerate(truth):
        for d, b in enumerate(detected):
            centre = ((b[0] + b[2]) / 2, (b[1] + b[3]) / 2)
            inside = a[0] <= centre[0] <= a[2] and a[1] <= centre[1] <= a[3]
            score = iou(a, b)
            if score >= SCENE_IOU or inside:
                candidates.append((score, t, d, "iou" if score >= SCENE_IOU else "centre"))
    matched, taken = {}, set()
    for score, t, d, rule in sorted(candidates, reverse=True):
        if t not in matched and d not in taken:
            matched[t] = (d, rule)
            taken.add(d)
    return matched


def indexed_store(folder: Path):
    """A kept store with its training photos in its index (as ``facerank index build`` would
    add them), ready for ``closest`` and ``identify``."""
    from facerank.store import FaceStore

    store = FaceStore.open(folder)
    split = json.loads((folder / "train" / "split.json").read_text())
    store.add([path for path, _ in split["train"]], person=[who for _, who in split["train"]])
    return store, split


def whole_image_store(cell: str, gallery: Path, config) -> tuple[Path, dict]:
    """The whole-image model of ``cell`` (the same recipe, seed and split, ``faces="none"``),
    trained again because cells do not keep their models; kept for the next scene run."""
    from facerank.quality.evaluate import evaluate
    from facerank.store import FaceStore
    from facerank.training.loop import train

    folder = STORES / f"{cell}-whole"
    marker = folder / "benchmark.json"
    if not marker.exists():
        result = train(gallery, fresh(folder), config, weights="none", faces="none")
        (folder / "train" / "checkpoint.pt").unlink(missing_ok=True)
        scored = evaluate(FaceStore.open(folder))
        marker.write_text(json.dumps({"retrained_from": cell, "classify": scored.accuracy,
                                      "closest": scored.nearest_neighbour_accuracy,
                                      "train_seconds": result.seconds}))
    return folder, json.loads(marker.read_text())


def cell_scenes(source: str, work: Path, epochs: int, whole: bool = False) -> dict:
    """Faces in scenes for one source: ORL faces with an ORL model, LFW faces with an LFW
    model, on the same scenes either way. With the face step (``whole=False``) every detected
    face is answered; without it (``whole=True``) the whole-image model answers the whole scene
    once, and that answer is scored against each face in it."""
    faces_cell = {"orl": "orl-default-faces-seed0", "lfw": "lfw-identification-faces"}[source]
    if not (CACHE / f"{faces_cell}.json").exists():
        raise RuntimeError(f"scenes-{source} needs the model of cell {faces_cell}: run it first")
    retrained = None
    if not whole:
        store, split = indexed_store(STORES / faces_cell)
    elif source == "orl":
        folder, retrained = whole_image_store("orl-default-seed0", DATA / "orl",
                                              recipe("default", 0))
        store, split = indexed_store(folder)
    else:
        gallery, _ = lfw_identification_split()
        folder, retrained = whole_image_store("lfw-identification", gallery,
                                              lfw_identification_config(epochs, faces=False))
        store, split = indexed_store(folder)
    # The faces model's split: the held-out photos of ORL seed 0 / of the LFW identification
    # split (the whole-image model was trained on the same split).
    held_out = json.loads((STORES / faces_cell / "train" / "split.json").read_text())["test"]
    scenes = make_scenes([(path, who) for path, who in held_out], source)

    started = time.perf_counter()
    counts = dict(faces=0, detections=0, matched=0, matched_by_iou=0, classify=0, closest=0,
                  photos_reused=0)
    per_face = []  # (pasted width / scene width, found, named right by classify)
    seen = set()
    for number, scene in enumerate(scenes):
        counts["faces"] += len(scene["boxes"])
        for path in scene["paths"]:
            counts["photos_reused"] += path in seen
            seen.add(path)
        if whole:
            answer = store.identify(scene["image"], k=1, top_k=1, every=False)[0]
            counts["classify"] += sum(answer.people[0].person == p for p in scene["people"])
            counts["closest"] += sum(answer.matches[0].person == p for p in scene["people"])
            continue
        answers = [a for a in store.identify(scene["image"], k=1, top_k=1, every=True)
                   if a.face is not None]
        matched = match_detections(scene["boxes"], [a.box for a in answers])
        counts["detections"] += len(answers)
        counts["matched"] += len(matched)
        counts["matched_by_iou"] += sum(rule == "iou" for _, rule in matched.values())
        for t, person in enumerate(scene["people"]):
            right = False
            if t in matched:
                answer = answers[matched[t][0]]
                right = answer.people[0].person == person
                counts["classify"] += right
                counts["closest"] += answer.matches[0].person == person
            box = scene["boxes"][t]
            per_face.append((round((box[2] - box[0]) / SCENE_SIZE[0], 3), t in matched, right))
        if number == 0:
            save_scene_example(scene, answers, source)
    n = counts["faces"]
    out = {"source": source, "scenes": len(scenes), **counts,
           "classify_rate": counts["classify"] / n, "closest_rate": counts["closest"] / n,
           "scene_seconds": round(time.perf_counter() - started, 1)}
    if whole:
        out.update(model=f"{faces_cell.replace('-faces', '')}, trained again (faces=none)",
                   retrained=retrained)
        for key in ("detections", "matched", "matched_by_iou"):
            del out[key]
    else:
        out.update(model=faces_cell, per_face=per_face, recall=counts["matched"] / n,
                   precision=counts["matched"] / max(1, counts["detections"]),
                   classify_of_found=counts["classify"] / max(1, counts["matched"]))
    return out


def save_scene_example(scene: dict, answers: list, source: str) -> None:
    """One scene with its pasted boxes (white) and the face step's answers, for a person to
    look at: written outside the repository, since it is made of the data sets' photos."""
    from PIL import ImageDraw

    from facerank.faces.drawing import draw_faces

    image = draw_faces(scene["image"], [a.face for a in answers],
                       [a.people[0].person for a in answers])
    pen = ImageDraw.Draw(image)
    for box in scene["boxes"]:
        pen.rectangle(box, outline=(255, 255, 255), width=2)
    image.save(Path(tempfile.gettempdir()) / f"facerank-scene-{source}.jpg", quality=85)


def cells(args) -> list[tuple[str, callable]]:
    """Every cell, in the order workers take them: cheap and essential first."""
    orl, lfw = "orl" in args.only, "lfw" in args.only
    epochs = args.lfw_epochs
    # With and without faces: the face step's cells first (the whole-image cells below were
    # run before it existed and are restored from the published results).
    out = []
    if orl:
        out += [(f"orl-baselines-aligned-seed{s}", lambda w, s=s: cell_orl_baselines_aligned(s, w))
                for s in SEEDS]
    if lfw:
        out += [("lfw-baselines-identification-aligned", cell_lfw_baselines_identification_aligned),
                ("lfw-baselines-verification-aligned", cell_lfw_baselines_verification_aligned)]
    if orl:
        out += [("orl-default-faces-seed0", lambda w: cell_orl_recipe("default", 0, w, True)),
                ("scenes-orl", lambda w: cell_scenes("orl", w, epochs))]
    if lfw:
        out += [("lfw-identification-faces", lambda w: cell_lfw_identification(w, epochs, True)),
                ("scenes-lfw", lambda w: cell_scenes("lfw", w, epochs))]
    # Without faces, the scenes need the whole-image models, which cells do not keep: they are
    # trained again (the cost of the cell they come from).
    if orl:
        out += [("scenes-orl-whole", lambda w: cell_scenes("orl", w, epochs, whole=True))]
    if lfw:
        out += [("scenes-lfw-whole", lambda w: cell_scenes("lfw", w, epochs, whole=True)),
                ("lfw-verification-faces", lambda w: cell_lfw_verification(w, epochs, True))]
    if orl:
        out += [(f"orl-default-faces-seed{s}",
                 lambda w, s=s: cell_orl_recipe("default", s, w, True)) for s in SEEDS[1:]]
        out += [(f"orl-tune-faces-{name}", lambda w, name=name: cell_orl_tune(name, w))
                for name in TUNING]
    if orl:
        out += [(f"orl-baselines-seed{s}", lambda w, s=s: cell_orl_baselines(s, w)) for s in SEEDS]
        out += [(f"orl-default-seed{s}", lambda w, s=s: cell_orl_recipe("default", s, w))
                for s in SEEDS]
        out += [("orl-unknown-seed0", lambda w: cell_orl_unknown(0, w))]
        out += [(f"orl-unknown-seed0-bn-tail-{tail}",
                 lambda w, tail=tail: cell_orl_unknown(0, w, frozen_bn_tail=tail))
                for tail in BN_TAILS]
        out += [(f"orl-default{'-faces' if faces else ''}-bn-tail-{BN_TAIL_TRIED}-seed{s}",
                 lambda w, s=s, faces=faces: cell_orl_recipe(
                     "default", s, w, faces, frozen_bn_tail=BN_TAIL_TRIED))
                for faces in (True, False) for s in SEEDS]
        out += [(f"orl-unknown-tune-{tail}-draw{d}",
                 lambda w, tail=tail, d=d: cell_orl_unknown_tune(tail, d, w))
                for d in BN_TAIL_DRAWS for tail in BN_TAILS]
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
    chosen = set(filter(None, args.cells.split(",")))
    for name, compute in cells(args):
        if chosen and name not in chosen:
            continue
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


def restore_published_cells() -> list[str]:
    """Cells in the published results but not in the cache (a fresh checkout: the cache is not
    committed) are restored from ``recognition.json`` rather than computed again; what the
    summary leaves out (per-epoch history, some pair distances) stays out."""
    published = RESULTS / "recognition.json"
    if not published.exists():
        return []
    restored = []
    for name, cell in json.loads(published.read_text()).items():
        if not (CACHE / f"{name}.json").exists():
            cell.setdefault("restored_from", "benchmarks/results/recognition.json")
            (CACHE / f"{name}.json").write_text(json.dumps(cell))
            restored.append(name)
    return restored


def load_cells() -> dict:
    return {p.stem: json.loads(p.read_text()) for p in sorted(CACHE.glob("*.json"))}


def pct(values) -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "—"
    if len(values) == 1:
        return f"{100 * values[0]:.1f}%"
    return f"{100 * np.mean(values):.1f}% ({', '.join(f'{100 * v:.1f}' for v in values)})"


WHOLE = "whole image"
ALIGNED = "aligned face"


def report(done: dict) -> str:
    lines = ["# Recognition quality on real faces", "",
             f"{platform.machine()}, {os.cpu_count()} cores. **Every facerank figure is from random "
             "initialisation**: no ImageNet weights could be downloaded where this ran. The "
             "method's `sgd` and `freeze` presets assume ImageNet weights and are shown from "
             "scratch only to say how they fare. The peer `face_recognition` (dlib) was trained "
             "on about 3 million faces.", "",
             f"**Input** says what each method saw: *{WHOLE}* (the photo as it is: facerank's "
             "`faces=\"none\"`, the behaviour before the face step; on LFW the central 50% square "
             f"of the frame) or *{ALIGNED}* (the face step, `faces=\"dlib-hog\"`: dlib's HOG "
             "detector finds the largest face and its 5 landmarks align it upright, at the "
             f"model's input size for facerank and at {CHIP} px for the baselines; a photo "
             "without a face found is used whole). Each cell's name is given in brackets; the "
             "whole-image cells are those published before the face step, unchanged.", "",
             "Data: ORL face database (AT&T Laboratories Cambridge; Samaria & Harter 1994); "
             "Labeled Faces in the Wild, deep-funneled (Huang, Ramesh, Berg, Learned-Miller 2007; "
             "Huang, Mattar, Lee, Learned-Miller 2012).", "",
             "## ORL identification (40 people, 70/30 per person)", "",
             "Mean over the seeds run, each seed in brackets; 120 held-out photos per seed. "
             "facerank's model is its last epoch's: nothing is chosen on the held-out photos. "
             "*train s* is wall time on a shared machine: the face-step cells ran while other "
             "jobs kept its 2 cores busy (load 4-9), so their times are not comparable with the "
             "earlier cells'.", "",
             "| recipe | input | seeds | top-1 (classify) | top-5 | macro P | macro R | macro F1 | 1-NN (closest) | flip TTA: classify / closest | train s |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    default = "**facerank default** (`scratch`: softmax, label smoothing 0.1, 64 px, 40 ep)"
    labels = {"default": (default, WHOLE),
              "default-faces": (default, ALIGNED),
              "cosface": ("`scratch` with a CosFace head (margin 0.2, scale 30)", WHOLE),
              "freeze": ("method `freeze` (Adam 1e-4, last stage, 6 ep, 224 px)", WHOLE),
              "sgd": ("method `sgd` (SGD 0.01, all layers, 6 ep, 224 px)", WHOLE)}
    for name, (label, seen) in labels.items():
        runs = [done[f"orl-{name}-seed{s}"] for s in SEEDS if f"orl-{name}-seed{s}" in done]
        seeds = [s for s in SEEDS if f"orl-{name}-seed{s}" in done]
        if not runs:
            lines.append(f"| {label} (`orl-{name}-seed*`) | {seen} | not run | | | | | | | | |")
            continue
        lines.append("| " + " | ".join([
            f"{label} (`orl-{name}-seed*`)", seen, ",".join(map(str, seeds)),
            pct([r["classify"] for r in runs]),
            pct([r["top5"] for r in runs]), pct([r["precision"] for r in runs]),
            pct([r["recall"] for r in runs]), pct([r["f1"] for r in runs]),
            pct([r["closest"] for r in runs]),
            f"{pct([r['classify_flip'] for r in runs]).split()[0]} / "
            f"{pct([r['closest_flip'] for r in runs]).split()[0]}",
            f"{np.mean([r['train_seconds'] for r in runs]):.0f}"]) + " |")
    for cell, seen in (("orl-baselines", WHOLE), ("orl-baselines-aligned", ALIGNED)):
        for baseline in FEATURES:
            runs = [done[f"{cell}-seed{s}"][baseline] for s in SEEDS if f"{cell}-seed{s}" in done]
            if runs:
                lines.append(
                    f"| baseline: {baseline} (`{cell}-seed*`) | {seen} | {len(runs)} | "
                    f"{pct([r['accuracy'] for r in runs])} | | "
                    f"{pct([r['precision'] for r in runs])} | {pct([r['recall'] for r in runs])} "
                    f"| {pct([r['f1'] for r in runs])} | | | |")
    peer = [done["orl-peer"][f"seed{s}"] for s in SEEDS] if "orl-peer" in done else []
    lines.append(f"| peer: `face_recognition` (dlib), 1-NN on its encodings (`orl-peer`) | its "
                 f"own detector + alignment | {','.join(map(str, SEEDS)) if peer else 'not run'} "
                 f"| | | | | | {pct([r['closest'] for r in peer])} | | |")
    found = [done[f"orl-default-faces-seed{s}"] for s in SEEDS
             if f"orl-default-faces-seed{s}" in done]
    if found:
        r = found[0]
        lines += ["", f"ORL's photos are tight 92 x 112 crops: dlib found a face in "
                  f"{r['photos'] - r['no_face']} of {r['photos']} "
                  f"({100 * (1 - r['no_face'] / r['photos']):.1f}%); the rest were used whole "
                  "(policy `whole`)."]

    if "orl-unknown-seed0" in done:
        u = done["orl-unknown-seed0"]
        lines += ["", "## Unknown people (ORL, seed 0; whole image, `orl-unknown-seed0`)", "",
                  f"{u['enrolled_people']} people enrolled (their training photos indexed); "
                  f"{unknown_calibration_words(u['calibration'])} Then every photo of "
                  f"{u['stranger_people']} people never enrolled nor trained on, and the held-out "
                  "photos of enrolled people, were asked `closest`:", "",
                  "| queries | answered | share |", "|---|---|---|",
                  f"| {u['stranger_queries']} photos of strangers | rejected as unknown | "
                  f"{100 * u['strangers_rejected']:.1f}% |",
                  f"| {u['enrolled_queries']} held-out photos of enrolled people | accepted | "
                  f"{100 * u['enrolled_accepted']:.1f}% |",
                  f"| same | accepted *and* named right | {100 * u['enrolled_accepted_and_right']:.1f}% |",
                  f"| same, without a threshold | named right | {100 * u['closest_without_threshold']:.1f}% |"]
    lines += bn_tail_report(done)

    lines += ["", "## LFW View 1 verification (1,000 test pairs; threshold from the 2,200 "
              "training pairs)", ""]
    rows = []
    for cell, seen in (("lfw-verification", WHOLE), ("lfw-verification-faces", ALIGNED)):
        if cell in done:
            v = done[cell]
            t = v["train"]
            rows.append((f"**facerank** `scratch` + CosFace, {t['config'].get('epochs')} epochs "
                         f"on DevTrain people, class-balanced, random init (`{cell}`)", seen,
                         v["facerank"]))
            rows.append((f"facerank, flip test-time augmentation (`{cell}`)", seen,
                         v["facerank_flip"]))
    for cell, seen in (("lfw-baselines-verification", WHOLE),
                       ("lfw-baselines-verification-aligned", ALIGNED)):
        for name, r in methods(done.get(cell, {})):
            rows.append((f"baseline: {name} (whitened PCA-128) (`{cell}`)", seen, r))
    if "lfw-peer-verification" in done:
        rows.append(("peer: `face_recognition` (dlib), at its documented tolerance 0.6 "
                     "(`lfw-peer-verification`)", "its own detector + alignment",
                     done["lfw-peer-verification"]))
    lines += ["| method | input | accuracy | threshold | ROC AUC | TAR @ 1% FAR |",
              "|---|---|---|---|---|---|"]
    lines += [f"| {name} | {seen} | {100 * r['accuracy']:.1f}% | {r['threshold']:.3f} | "
              f"{r['auc']:.3f} | {100 * r['tar_at_far']:.1f}% |" for name, seen, r in rows] \
        or ["| not run | | | | | |"]
    if "lfw-verification" in done or "lfw-verification-faces" in done:
        lines += ["", "facerank's model is the epoch with the best accuracy on a 10% validation "
                  "split of the DevTrain people's photos; the test pairs are of other people and "
                  "chose nothing."]
    if "lfw-verification-faces" in done:
        t = done["lfw-verification-faces"]["train"]
        lines += ["", f"With faces: dlib found a face in {t['photos'] - t['no_face']} of the "
                  f"{t['photos']} training photos; {t['several_faces']} held several (the "
                  "largest was kept)."]

    lines += ["", "## LFW identification (158 people with >= 10 photos, 70/30, seed 0)", "",
              "| method | input | top-1 (classify) | top-5 | macro F1 | 1-NN (closest) |",
              "|---|---|---|---|---|---|"]
    for cell, seen in (("lfw-identification", WHOLE), ("lfw-identification-faces", ALIGNED)):
        if cell in done:
            r = done[cell]
            lines.append(f"| **facerank default** ({r['epochs']} epochs, class-balanced, random "
                         f"init) (`{cell}`) | {seen} | {pct([r['classify']])} | "
                         f"{pct([r['top5']])} | {pct([r['f1']])} | {pct([r['closest']])} |")
    for cell, seen in (("lfw-baselines-identification", WHOLE),
                       ("lfw-baselines-identification-aligned", ALIGNED)):
        for name, r in methods(done.get(cell, {})):
            lines.append(f"| baseline: {name} (`{cell}`) | {seen} | {pct([r['accuracy']])} | | "
                         f"{pct([r['f1']])} | |")
    if "lfw-peer-identification" in done:
        lines.append(f"| peer: `face_recognition` (dlib), 1-NN (`lfw-peer-identification`) | its "
                     f"own detector + alignment | | | | "
                     f"{pct([done['lfw-peer-identification']['closest']])} |")
    if "lfw-identification-faces" in done:
        r = done["lfw-identification-faces"]
        lines += ["", f"With faces: dlib found a face in {r['photos'] - r['no_face']} of "
                  f"{r['photos']} photos ({100 * (1 - r['no_face'] / r['photos']):.1f}%); "
                  f"{r['several_faces']} held several (the largest was kept)."]

    lines += scenes_report(done)
    lines += tuning_report(done)

    missing = [name for name, _ in cells(argparse.Namespace(only="orl,lfw", peer=True,
                                                            lfw_epochs=0)) if name not in done]
    if missing:
        lines += ["", "Not run (yet): " + ", ".join(f"`{m}`" for m in missing) + "."]
    lines += ["", "Plots: `benchmarks/results/recognition/` (loss and accuracy per epoch, "
              "confusion matrices, ROC, distance histograms)."]
    return "\n".join(lines) + "\n"


def scenes_report(done: dict) -> list[str]:
    lines = ["", "## Faces in scenes (made by the benchmark, seed 0)", "",
             f"{SCENES} scenes per source, {SCENE_SIZE[0]} x {SCENE_SIZE[1]}: 1-4 different "
             "people's held-out photos (the test split of ORL seed 0, and of the LFW identification split) "
             "pasted at random places, no two overlapping, each 10-40% of the scene's width wide "
             "and turned by up to ±10°, onto a blurred LFW photo of someone else. ORL scenes hold "
             f"whole ORL photos, LFW scenes the central {LFW_PATCH:.0%} of LFW frames. Separate "
             "scene sets: ORL faces are answered by the ORL models, LFW faces by the LFW models; "
             "with and without faces answer the very same scenes. A detection finds a pasted face "
             f"when their boxes' IoU is >= {SCENE_IOU} **or** the detected box's centre lies "
             "inside the pasted photo's box (one-to-one, best IoU first).", "",
             f"*With the face step* (`scenes-*`): the *{ALIGNED}* model of the cell named answers "
             "every face dlib finds (`FaceStore.identify(scene, every=True)`); a pasted face it "
             f"did not find counts as wrong. *Without* (`scenes-*-whole`): the *{WHOLE}* model of "
             "the cell named answers the whole scene once, and that single answer is scored "
             "against each face in the scene. Per-face accuracy is over all pasted faces; 1-NN "
             "searches the model's own index of its training split's photos. Both models are "
             "from random initialisation.", "",
             "| source | pasted faces | detections | recall | precision | with faces: top-1 (classify) | with faces: 1-NN (closest) | without faces: top-1 | without faces: 1-NN |",
             "|---|---|---|---|---|---|---|---|---|"]
    notes = []
    for source in ("orl", "lfw"):
        w, wo = done.get(f"scenes-{source}"), done.get(f"scenes-{source}-whole")
        if not w and not wo:
            lines.append(f"| {source.upper()} | not run | | | | | | | |")
            continue
        first = w or wo
        cells_ = " + ".join(f"`{c}`" for c in (f"scenes-{source}", f"scenes-{source}-whole")
                            if c in done)
        row = [f"{source.upper()} ({cells_})", f"{first['faces']} in {first['scenes']} scenes"]
        row += ([str(w["detections"]), pct([w["recall"]]), pct([w["precision"]]),
                 pct([w["classify_rate"]]), pct([w["closest_rate"]])] if w
                else ["", "", "", "not run", "not run"])
        row += ([pct([wo["classify_rate"]]), pct([wo["closest_rate"]])] if wo
                else ["not run", "not run"])
        lines.append("| " + " | ".join(row) + " |")
        note = f"- {source.upper()}: "
        if w:
            note += (f"With faces, the model of `{w['model']}`; {w['matched_by_iou']} of "
                     f"{w['matched']} matches by IoU, the rest by centre; top-1 over the faces "
                     f"found: {pct([w['classify_of_found']])}. ")
            if w.get("per_face"):
                faces = np.array(w["per_face"], dtype=float)
                bands = []
                for low, high, label in ((0.0, 0.2, "under 20% of the scene's width"),
                                         (0.2, 0.3, "20-30% wide"), (0.3, 1.0, "30% or wider")):
                    inside = faces[(faces[:, 0] >= low) & (faces[:, 0] < high)]
                    if len(inside):
                        bands.append(f"{pct([inside[:, 1].mean()])} found and "
                                     f"{pct([inside[:, 2].mean()])} named right (top-1) of "
                                     f"{len(inside)} {label}")
                note += "By size (the rotated patch's box): " + "; ".join(bands) + ". "
        if wo:
            again, published = wo["retrained"], done.get(wo["retrained"]["retrained_from"])
            note += (f"Without faces, `{wo['model']}`: cells keep no model, so it was trained "
                     "again with the same recipe, seed and split; on the held-out photos "
                     f"themselves it scores {pct([again['classify']])} top-1 / "
                     f"{pct([again['closest']])} 1-NN")
            note += (f" (the published cell: {pct([published['classify']])} / "
                     f"{pct([published['closest']])}). " if published else ". ")
        if first["photos_reused"]:
            note += (f"{first['photos_reused']} pasted faces reuse a held-out photo already "
                     "pasted (people are drawn more often than they have held-out photos).")
        notes.append(note)
    return lines + [""] + notes


def bn_tail_report(done: dict) -> list[str]:
    """``scratch``'s ``frozen_bn_tail``, chosen by the gallery's blow-up (training photos only);
    the test figures of every setting beside it."""
    seed0 = [(tail, name, done[name]) for tail, name in bn_tail_cells()
             if "gallery_blow_up" in done.get(name, {})]
    chosen = chosen_bn_tail([(tail, r) for tail, _, r in seed0])
    inner = [(tail, d, done[f"orl-unknown-tune-{tail}-draw{d}"]) for tail in BN_TAILS
             for d in BN_TAIL_DRAWS if f"orl-unknown-tune-{tail}-draw{d}" in done]
    if not seed0 and not inner:
        return []
    lines = ["", "### Batch norm frozen for the last epochs (`frozen_bn_tail`)", "",
             "`frozen_bn_tail`: the last share of the 40 epochs trains with batch norm frozen at "
             "the statistics learnt so far, so the weights settle on the normalisation queries "
             "get. It is chosen by the gallery's blow-up alone: the largest face print norm of "
             "the enrolled people's training photos, embedded as queries are (before L2 "
             "normalisation), over the median; the smallest wins, the smaller tail on a tie "
             "within 10%. The strangers and held-out photos choose nothing; their figures are "
             "shown for every setting. "
             f"Chosen by that rule: **{chosen}**; `scratch`'s default: **{scratch_tail()}** "
             "(the identification table below is why).", ""]
    if seed0:
        lines += ["| frozen_bn_tail (cell) | gallery blow-up (photos over 10x) | unknown "
                  "threshold | strangers rejected | enrolled named right | 1-NN without "
                  "threshold | classify top-1 |", "|---|---|---|---|---|---|---|"]
        lines += [f"| {tail} (`{name}`) | {r['gallery_blow_up']['max_over_median']:,.2f} "
                  f"({r['gallery_blow_up']['photos_over_10x']} of "
                  f"{r['gallery_blow_up']['photos']}) | "
                  f"{r['calibration']['unknown_threshold']:.3f} | "
                  f"{100 * r['strangers_rejected']:.1f}% | "
                  f"{100 * r['enrolled_accepted_and_right']:.1f}% | "
                  f"{100 * r['closest_without_threshold']:.1f}% | "
                  f"{100 * r['train']['classify']:.1f}% |"
                  for tail, name, r in seed0]
    lines += bn_tail_identification(done)
    if inner:
        first = inner[0][2]
        lines += ["", "Tried first, and inconclusive: the same protocol inside "
                  "`orl-unknown-seed0`'s training photos only (of its "
                  f"{first['enrolled_people'] + first['stranger_people']} enrolled people, "
                  f"{first['stranger_people']} play the strangers, drawn with the seed in the "
                  f"cell's name; {first['enrolled_people']} are enrolled, 70/30 over their 7 "
                  "photos). With so few photos the models are weak, and this validation "
                  "favoured no tail: without one, as many or more enrolled photos were named "
                  "right on both draws. The blow-up rule above was adopted after it:", "",
                  "| frozen_bn_tail (cell) | unknown threshold | strangers rejected | enrolled "
                  "named right | classify top-1 |", "|---|---|---|---|---|"]
        lines += [f"| {tail} (`orl-unknown-tune-{tail}-draw{d}`) | "
                  f"{r['calibration']['unknown_threshold']:.3f} | "
                  f"{100 * r['strangers_rejected']:.1f}% | "
                  f"{100 * r['enrolled_accepted_and_right']:.1f}% | "
                  f"{100 * r['train']['classify']:.1f}% |" for tail, d, r in inner]
    return lines


def bn_tail_identification(done: dict) -> list[str]:
    """ORL identification, seeds 0-2, with the tail the blow-up rule chose and without it."""
    rows = []
    for faces, seen in (("", WHOLE), ("-faces", ALIGNED)):
        for label, pattern in (("no tail (`scratch` as it is)", f"orl-default{faces}-seed{{}}"),
                               (f"frozen_bn_tail {BN_TAIL_TRIED}",
                                f"orl-default{faces}-bn-tail-{BN_TAIL_TRIED}-seed{{}}")):
            runs = [done[pattern.format(s)] for s in SEEDS if pattern.format(s) in done]
            if len(runs) == len(SEEDS):
                rows.append(f"| {seen} | {label} (`{pattern.format('*')}`) | "
                            f"{pct([r['classify'] for r in runs])} | "
                            f"{pct([r['closest'] for r in runs])} |")
    if not rows:
        return []
    return ["", f"ORL identification (40 people, 70/30, seeds {', '.join(map(str, SEEDS))}) "
            "with and without the tail:", "",
            "| input | recipe (cells) | top-1 (classify) | 1-NN (closest) |", "|---|---|---|---|",
            *rows]


def chosen_bn_tail(runs: list[tuple[float, dict]]) -> float | None:
    """The rule ``bn_tail_report`` states: the smallest gallery blow-up, the smaller tail on a
    tie within 10%."""
    if not runs:
        return None
    least = min(r["gallery_blow_up"]["max_over_median"] for _, r in runs)
    return min(tail for tail, r in runs if r["gallery_blow_up"]["max_over_median"] <= 1.1 * least)


def scratch_tail() -> float:
    from facerank.training.recipes import PRESETS

    return PRESETS["scratch"].frozen_bn_tail


def bn_tail_cells() -> list[tuple[float, str]]:
    return [(tail, f"orl-unknown-seed0-bn-tail-{tail}") for tail in BN_TAILS]


def tuning_report(done: dict) -> list[str]:
    runs = [(name, done[f"orl-tune-faces-{name}"]) for name in TUNING
            if f"orl-tune-faces-{name}" in done]
    lines = ["", "## Recipe settings for aligned faces (ORL seed 0, validation inside the "
             "training split)", "",
             "Trained on 80% of ORL seed 0's 280 training photos and scored on the other 20% "
             "(the 120 test photos were not used). Tried: "
             + ", ".join(f"`{name}` ("
                         + (", ".join(f"{k}={v}" for k, v in TUNING[name].items()) or "the default")
                         + ")" for name in TUNING) + ".",
             ""]
    if not runs:
        return lines + ["Not run (yet): no setting was chosen; the default recipe is used above."]
    lines += ["| setting (cell) | validation top-1 | 1-NN | train s |", "|---|---|---|---|"]
    lines += [f"| {name} (`orl-tune-faces-{name}`) | {pct([r['classify']])} | "
              f"{pct([r['closest']])} | {r['train_seconds']:.0f} |" for name, r in runs]
    return lines


def write_report() -> None:
    from facerank.quality.verification import plot_roc

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
    # Cells restored from the published summary lack some distances: keep the plot made then.
    if curves and all("test_distances" in r for r in curves.values()):
        plot_roc({n: (np.array(r["test_distances"]), test_pairs.same) for n, r in curves.items()},
                 PLOTS / "lfw-roc.png", title="LFW View 1 test pairs")
    faces = {}
    for cell, seen in (("lfw-verification", WHOLE), ("lfw-verification-faces", ALIGNED)):
        if cell in done:
            faces[f"facerank, {seen}"] = done[cell]["facerank"]
    for cell, seen in (("lfw-baselines-verification", WHOLE),
                       ("lfw-baselines-verification-aligned", ALIGNED)):
        if cell in done and "test_distances" in done[cell].get("HOG", {}):
            faces[f"HOG, {seen}"] = done[cell]["HOG"]
    if any(ALIGNED in name for name in faces):
        plot_roc({n: (np.array(r["test_distances"]), test_pairs.same) for n, r in faces.items()},
                 PLOTS / "lfw-roc-faces.png",
                 title="LFW View 1 test pairs, with and without the face step")
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
    parser.add_argument("--cells", default="",
                        help="only these cells (comma-separated names), e.g. to compute one again "
                             "after deleting its .cache/recognition/NAME.json")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--report", action="store_true", help="only write the report")
    args = parser.parse_args()
    CACHE.mkdir(parents=True, exist_ok=True)
    PLOTS.mkdir(parents=True, exist_ok=True)
    STORES.mkdir(parents=True, exist_ok=True)
    if args.worker:
        return run_worker(args)
    restored = restore_published_cells()
    if restored:
        print(f"restored from recognition.json: {', '.join(restored)}", flush=True)
    if not args.report:
        args.threads = args.threads or max(1, (os.cpu_count() or 1) // args.jobs)
        command = [sys.executable, __file__, "--worker", "--only", args.only, "--threads",
                   str(args.threads), "--lfw-epochs", str(args.lfw_epochs)]
        command += [] if args.peer else ["--no-peer"]
        command += ["--cells", args.cells] if args.cells else []
        workers = [subprocess.Popen(command) for _ in range(args.jobs)]
        for worker in workers:
            worker.wait()
    write_report()


if __name__ == "__main__":
    main()
