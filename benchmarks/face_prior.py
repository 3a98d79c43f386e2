"""A face prior, measured on people it never saw: pretrain on LFW View 1's training people, then
fine-tune and score on others.

    python benchmarks/face_prior.py [--image-size 96] [--epochs 20] [--rounds 1] [--min-photos 2]
                                    [--stages base,lfw-pairs,lfw-identification,orl,lfw-158]

* ``base``: ``facerank.training.pretrain`` on the people of ``peopleDevTrain.txt`` only (those with two or
  more photos train; 5% of them are held out for the per-epoch pair score). The base is cached in
  ``benchmarks/.cache/face_prior/base`` (not committed: ~95 MB); a rerun reuses it, an
  interrupted one resumes from its checkpoint. ``--rounds N`` pretrains N rounds of
  ``--epochs``, each from the round before's base (``pretrain(weights=BASE)``, a fresh one-cycle
  schedule), in ``base-round2``, ``base-round3``...; the later stages use the last round's base.
* ``lfw-pairs``: LFW View 1 verification with the base's own face prints (no fine-tuning): the
  threshold chosen on ``pairsDevTrain.txt``, scored on ``pairsDevTest.txt`` (other people).
* ``lfw-identification``: the View 1 *test* people with >= 10 photos, 70/30, seed 0: fine-tuned
  from the base (``finetune``, picked automatically), from scratch (``scratch``, the default
  without ImageNet weights) and HOG + SVM, all on the same aligned faces.
* ``orl``: ORL's 40 people (none in LFW), 70/30 seed 0: identification from the base, and the
  unknown-people protocol of ``benchmarks/recognition.py`` (enrol 70% of the people, calibrate
  at 1% false accepts on their held-out split, count strangers rejected).
* ``lfw-158``: the recognition benchmark's LFW identification split (158 people with >= 10
  photos, 70/30, seed 0), fine-tuned from another prior, pretrained from random initialisation
  on the LFW people with 2-9 photos (none of the 158), in ``--rounds`` rounds as ``base``
  (cached in ``base-not-158``, ``base-not-158-round2``...).

Writes ``benchmarks/results/face_prior.{md,json}`` and curves under ``results/face_prior/``.
No person whose photos are scored is ever trained on by the base. Every run starts from random
initialisation: no ImageNet weights can be downloaded where this was written.
Data: LFW deep-funneled (Huang et al. 2007, 2012); ORL (AT&T Laboratories Cambridge).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import time
import warnings
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import recognition as rec  # noqa: E402  (the shared splits, baselines and detection cache)

CACHE = HERE / ".cache" / "face_prior"
RESULTS = HERE / "results"
PLOTS = RESULTS / "face_prior"
STAGES = ("base", "lfw-pairs", "lfw-identification", "orl", "lfw-158")


def machine() -> str:
    import torch

    return (f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
            f"torch {torch.__version__}, {torch.get_num_threads()} threads")


# -- stages --------------------------------------------------------------------------------------

def base_of_round(number: int, name: str = "base") -> Path:
    return CACHE / (name if number == 1 else f"{name}-round{number}")


BASE = base_of_round(1)  # the base the later stages use: main() sets the last round's


def stage_base(epochs: int, rounds: int, min_photos: int, image_size: int) -> dict:
    """Pretrain on DevTrain's people, round after round (cached: a finished round is reused, a
    stopped one resumed)."""
    corpus = rec.linked_gallery(rec.lfw_people("peopleDevTrain.txt"), rec.DATA / "lfw" / "images",
                                CACHE / "corpus")
    out = {}
    for number in range(1, rounds + 1):
        out[f"round{number}"] = pretrain_round(corpus, number, epochs, min_photos, image_size)
    return out


def pretrain_round(corpus: Path, number: int, epochs: int, min_photos: int,
                   image_size: int, name: str = "base") -> dict:
    from facerank.training.pretrain import pretrain_recipe

    folder = base_of_round(number, name)
    weights = "none" if number == 1 else str(base_of_round(number - 1, name))
    earlier = base_of_round(number - 1, name) / "faces.sqlite"
    if number > 1 and earlier.exists() and not (folder / "faces.sqlite").exists():
        folder.mkdir(parents=True, exist_ok=True)  # the same corpus: every photo already searched
        shutil.copyfile(earlier, folder / "faces.sqlite")
    done = pretrained(corpus, folder, pretrain_recipe(epochs=epochs, image_size=image_size),
                      weights=weights, min_photos=min_photos)
    plot = f"pretrain-round{number}-curves.png" if name == "base" else f"{name}-round{number}.png"
    shutil.copyfile(folder / "curves.png", PLOTS / plot)
    return done | {"weights": weights}


def pretrained(corpus: Path, folder: Path, config, *, weights: str, min_photos: int = 2) -> dict:
    """The history of the base in ``folder``: pretrained there now, unless a finished run of the
    same recipe is cached (a stopped one of the same recipe resumes; of another, starts afresh)."""
    from facerank.errors import StoreMismatchError
    from facerank.training.pretrain import pretrain
    from facerank.training.recipes import with_new_fields

    history_file = folder / "history.json"
    if history_file.exists() and (folder / "base.json").exists():
        done = json.loads(history_file.read_text())
        if (with_new_fields(done["config"]) == json.loads(json.dumps(config.__dict__))
                and done.get("min_photos", 2) == min_photos):
            return done
    if not (folder / "faces.sqlite").exists():
        rec.seed_detections(folder)  # photos the recognition benchmark already searched

    def run(resume: bool):
        return pretrain(corpus, folder, config, weights=weights, faces=rec.face_step(),
                        min_photos=min_photos, resume=resume,
                        on_epoch=lambda row: print(json.dumps(row), flush=True))
    try:
        result = run(resume=(folder / "checkpoint.pt").exists())
    except StoreMismatchError:  # a stopped run of another recipe: its checkpoint is no use
        print("the checkpoint is of another recipe: starting afresh", flush=True)
        (folder / "checkpoint.pt").unlink()
        result = run(resume=False)
    print(f"{folder.name} pretrained in {result.seconds:.0f} s", flush=True)
    (folder / "checkpoint.pt").unlink(missing_ok=True)  # 280 MB; the base is what is kept
    return json.loads(history_file.read_text())


def base_embedder(flip: bool = False):
    """paths → the base's L2-normalised face prints, through the base's own face step."""
    from PIL import ImageOps

    from facerank.model.base import read_base
    from facerank.faces.cache import DetectionCache, read_file_input
    from facerank.faces.detection import FaceFinder
    from facerank.model.torch_model import FaceModel

    state, config = read_base(BASE)
    model = FaceModel.from_backbone(["(none)"], state, "base", image_size=config.image_size,
                                    crop=config.crop, faces=config.faces)
    finder = FaceFinder(config.faces, size=config.image_size,
                        cache=DetectionCache(BASE / "faces.sqlite"))

    def embed(paths):
        images = [read_file_input(finder, p)[0] for p in paths]
        vectors = model.embed(images)
        if flip:
            vectors = vectors + model.embed([ImageOps.mirror(i) for i in images])
            vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        return vectors
    return embed


def stage_lfw_pairs() -> dict:
    from facerank.quality.verification import distances, plot_distance_histogram, score_pairs

    train_pairs, test_pairs = rec.lfw_pairs()
    out = {}
    for name, flip in (("base", False), ("base_flip", True)):
        embed = base_embedder(flip)
        d_train, d_test = distances(embed, train_pairs), distances(embed, test_pairs)
        score = score_pairs(d_train, train_pairs.same, d_test, test_pairs.same)
        out[name] = score.to_json()
        if not flip:
            plot_distance_histogram(d_test, test_pairs.same, PLOTS / "lfw-pairs-histogram.png",
                                    threshold=score.threshold,
                                    title="LFW View 1 test pairs, face prior (no fine-tuning)")
    return out


def scored(store: Path, trained) -> dict:
    from facerank.quality.evaluate import evaluate
    from facerank.store import FaceStore

    report = evaluate(FaceStore.open(store))
    return {"classify": report.accuracy, "top5": report.top5_accuracy, "f1": report.f1,
            "closest": report.nearest_neighbour_accuracy, "test_images": report.images,
            "train_seconds": trained.seconds, "history": trained.history,
            "weights": trained.weights_origin}


def from_base(gallery: Path, store: Path, **overrides):
    """``facerank train GALLERY --weights BASE``: the finetune recipe and the base's face step."""
    from facerank.training.loop import train
    from facerank.training.recipes import recipe

    shutil.rmtree(store, ignore_errors=True)
    rec.seed_detections(store)
    return train(gallery, store, recipe(str(BASE), **overrides), weights=str(BASE))


def stage_lfw_identification(work: Path, previous: dict) -> dict:
    """From the base, from scratch and HOG + SVM; the last two do not depend on the base and
    are taken from ``previous`` (this stage's last results) where it has them."""
    from facerank.data.gallery import scan_gallery, split_gallery

    people = rec.lfw_people("peopleDevTest.txt", minimum=10)
    gallery = rec.linked_gallery(people, rec.DATA / "lfw" / "images", CACHE / "devtest-gallery")
    split = split_gallery(scan_gallery(gallery), test_fraction=0.3, seed=0)
    out = {"people": len(people), "photos": len(split.train) + len(split.test)}
    trained = from_base(gallery, work / "base-store")
    from facerank.model.base import read_base_config

    out["from_base"] = scored(work / "base-store", trained) | {
        "image_size": read_base_config(BASE).image_size}
    shutil.copyfile(work / "base-store" / "train" / "curves.png",
                    PLOTS / "lfw-identification-from-base-curves.png")
    from dataclasses import asdict

    from facerank.training.recipes import with_new_fields

    config = rec.recipe("default", 0, balanced=True)
    recipe_now = json.loads(json.dumps(asdict(config)))
    earlier = previous.get("from_scratch", {})
    if "config" in earlier and with_new_fields(earlier["config"]) == recipe_now:
        out["from_scratch"] = earlier  # the same recipe: its figures stand
    else:
        scratch = rec.train_and_evaluate(gallery, config, work / "scratch-store", None,
                                         faces=rec.face_step())
        out["from_scratch"] = {k: scratch[k] for k in ("classify", "top5", "f1", "closest",
                                                       "test_images", "train_seconds")}
        out["from_scratch"]["config"] = recipe_now
    out["baselines_aligned"] = previous.get("baselines_aligned") or rec.baselines_on_aligned(split)
    return out


def stage_lfw_158(work: Path, epochs: int, rounds: int, image_size: int | None) -> dict:
    """The recognition benchmark's LFW identification split (the 158 people with >= 10 photos,
    70/30, seed 0), fine-tuned from a prior pretrained, from random initialisation, on the
    *other* LFW people (those with 2-9 photos): none of the 158 is in its corpus. ``rounds`` as
    the ``base`` stage's, each from the round before."""
    from facerank.training.loop import train
    from facerank.training.recipes import recipe

    scored_people = set(rec.lfw_identification_people())
    root = rec.DATA / "lfw" / "images"
    others = sorted(p.name for p in root.iterdir()
                    if p.name not in scored_people and len(list(p.iterdir())) >= 2)
    corpus = rec.linked_gallery(others, root, CACHE / "corpus-not-158")
    done = [pretrain_round(corpus, number, epochs, 2, image_size, name="base-not-158")
            for number in range(1, rounds + 1)]
    folder = base_of_round(rounds, "base-not-158")
    gallery, split = rec.lfw_identification_split()
    store = work / "store"
    rec.seed_detections(store)
    trained = train(gallery, store, recipe(str(folder)), weights=str(folder))
    out = scored(store, trained)
    assert out["test_images"] == len(split.test), "not the recognition benchmark's split"
    shutil.copyfile(store / "train" / "curves.png", PLOTS / "lfw-158-from-prior-curves.png")
    seconds = [row["seconds"] for each in done for row in each["history"]]
    return {"fine_tuned": out, "prior": {
        "people": done[-1]["people"], "images": done[-1]["images"],
        "config": done[-1]["config"], "rounds": rounds,
        "seconds": sum(each["seconds"] for each in done),
        "median_epoch_seconds": float(np.median(seconds)),
        "last_epoch": done[-1]["history"][-1], "corpus": "LFW people with 2-9 photos",
        "folder": str(folder.relative_to(HERE.parent))}}


def stage_orl(work: Path, seeds: tuple[int, ...] = (0,), **overrides) -> dict:
    """ORL's 40 people (70/30 splits of ``seeds``; the first is ``identification``), and its
    unknown-people protocol, fine-tuned from the base (``overrides``: recipe fields, as
    ``finetune_bn.py`` asks for)."""
    from facerank.quality.calibrate import calibrate
    from facerank.store import FaceStore

    out = {}
    trained = from_base(rec.DATA / "orl", work / "orl-store", seed=seeds[0], **overrides)
    out["identification"] = scored(work / "orl-store", trained)
    out["identification_seeds"] = {seeds[0]: out["identification"]}
    for seed in seeds[1:]:
        trained = from_base(rec.DATA / "orl", work / f"orl-store-{seed}", seed=seed, **overrides)
        out["identification_seeds"][seed] = scored(work / f"orl-store-{seed}", trained)
    # Unknown people, as recognition.py's orl-unknown cell: 70% enrolled, the rest strangers.
    people = sorted(p.name for p in (rec.DATA / "orl").iterdir() if p.is_dir())
    rng = np.random.default_rng(0)
    strangers = sorted(rng.choice(people, round(len(people) * rec.UNKNOWN_SHARE), replace=False))
    enrolled = [p for p in people if p not in strangers]
    gallery = rec.linked_gallery(enrolled, rec.DATA / "orl", work / "enrolled")
    from_base(gallery, work / "unknown-store", **overrides)
    store = FaceStore.open(work / "unknown-store")
    split = json.loads((work / "unknown-store" / "train" / "split.json").read_text())
    store.add([path for path, _ in split["train"]], person=[who for _, who in split["train"]])
    calibration = calibrate(store, far=0.01)
    stranger_photos = [str(p) for person in strangers
                       for p in sorted((rec.DATA / "orl" / person).iterdir())]
    truth = [who for _, who in split["test"]]
    enrolled_matches = [m[0] for m in store.closest([p for p, _ in split["test"]], k=1)]
    stranger_matches = [m[0] for m in store.closest(stranger_photos, k=1)]
    accepted = [(m.person, who) for m, who in zip(enrolled_matches, truth)
                if not store.is_unknown(m)]
    out["unknown"] = {
        "enrolled_people": len(enrolled), "stranger_people": len(strangers),
        "threshold": calibration.threshold, "calibration": calibration.to_json(),
        "strangers_rejected": float(np.mean([store.is_unknown(m) for m in stranger_matches])),
        "stranger_queries": len(stranger_matches), "enrolled_queries": len(truth),
        "enrolled_accepted": len(accepted) / len(truth),
        "enrolled_accepted_and_right": sum(p == w for p, w in accepted) / len(truth)}
    return out


# -- report --------------------------------------------------------------------------------------

def pct(value) -> str:
    return "" if value is None else f"{100 * value:.1f}%"


def report(results: dict) -> str:
    rounds = {k: v for k, v in results.get("base", {}).items() if k.startswith("round")}
    options = "".join(
        f" --{flag} {value}" for flag, value, default in (
            ("image-size", max((b["config"]["image_size"] for b in rounds.values()), default=64),
             64),
            ("min-photos", max((b.get("min_photos", 2) for b in rounds.values()), default=2), 2),
            ("rounds", len(rounds) or 1, 1)) if value != default)
    lines = ["# A face prior: pretrained on LFW's View 1 training people, scored on others", "",
             f"{results.get('machine', '')}. Every network starts from random initialisation "
             "(no ImageNet weights could be downloaded where this ran). Reproduce: "
             f"`python benchmarks/face_prior.py{options}`.", "",
             "Data: Labeled Faces in the Wild, deep-funneled (Huang, Ramesh, Berg, Learned-Miller "
             "2007; Huang, Mattar, Lee, Learned-Miller 2012); ORL (AT&T Laboratories Cambridge; "
             "Samaria & Harter 1994). LFW is a research benchmark, not a measure of fitness for "
             "commercial use.", ""]
    for name, base in sorted(rounds.items()):
        history = base["history"]
        seconds = [row["seconds"] for row in history]
        origin = ("random initialisation" if base["weights"] == "none"
                  else f"the previous round's base (`--weights {Path(base['weights']).name}`)")
        lines += [f"## Pretraining, {name} (`facerank pretrain`, from {origin})", "",
                  f"{base['people']} people with >= {base.get('min_photos', 2)} photos of "
                  "`peopleDevTrain.txt`, "
                  f"{base['images']} photos, aligned by the face step; {len(base['held_out_people'])} "
                  f"more of those people held out for the per-epoch score ({base['pairs']} pairs); "
                  + (f"{base['dropped_people']} people with fewer than "
                     f"{base.get('min_photos', 2)} photos not used. "
                     if base["dropped_people"] else "")
                  + "Recipe: "
                  f"{base['config']['loss']} (margin {base['config']['margin']}, scale "
                  f"{base['config']['scale']}), {base['config']['image_size']} px, batch "
                  f"{base['config']['batch_size']}, {base['config']['epochs']} epochs, "
                  "class-balanced, AdamW one-cycle.", "",
                  f"Time on this machine: {np.median(seconds):.0f} s per epoch (median), "
                  f"{sum(seconds) / 60:.0f} min for {len(seconds)} epochs of training "
                  f"({base['seconds'] / 60:.0f} min in all with face detection and scoring). "
                  "The median is the quiet machine's figure: the total includes epochs slowed "
                  "by other work sharing the 2 cores.",
                  "",
                  "| epoch | loss | train top-1 | held-out people's pairs: accuracy* | AUC |",
                  "|---|---|---|---|---|"]
        lines += [f"| {row['epoch']} | {row['train_loss']:.3f} | {pct(row['train_accuracy'])} | "
                  f"{pct(row.get('pair_accuracy'))} | {row.get('pair_auc', 0):.3f} |"
                  for row in history]
        lines += ["", "*at the best threshold on those same pairs: a progress signal, not a test "
                  "score.", ""]
    pairs = results.get("lfw-pairs")
    if pairs:
        lines += ["## LFW View 1 verification (1,000 test pairs of people the base never saw)", "",
                  f"Base: `{pairs.get('base_folder', '')}`. "
                  "Threshold chosen on the 2,200 training pairs. Before the face prior: 55.3% "
                  "(`scratch` + CosFace on whole images); HOG baseline 73.8%; goal >= 80%.", "",
                  "| face prints | accuracy | threshold | ROC AUC | TAR @ 1% FAR |",
                  "|---|---|---|---|---|"]
        for name, label in (("base", "the base, no fine-tuning"),
                            ("base_flip", "the base, flip test-time averaging")):
            s = pairs[name]
            lines.append(f"| {label} | {pct(s['accuracy'])} | {s['threshold']:.3f} | "
                         f"{s['auc']:.3f} | {pct(s['tar_at_far'])} |")
        lines.append("")
    ident = results.get("lfw-identification")
    if ident:
        lines += [f"## LFW identification: View 1 test people with >= 10 photos ({ident['people']} "
                  f"people, {ident['photos']} photos, 70/30, seed 0)", "",
                  "| method | top-1 (classify) | top-5 | macro F1 | 1-NN (closest) | train s |",
                  "|---|---|---|---|---|---|"]
        size = ident["from_base"].get("image_size") or max(
            base["config"]["image_size"] for base in rounds.values())
        for key, label in (("from_base", f"facerank, fine-tuned from the base (`finetune`, "
                                         f"{size} px)"),
                           ("from_scratch", "facerank from scratch (`scratch`, 64 px, 40 ep)")):
            r = ident[key]
            lines.append(f"| {label} | {pct(r['classify'])} | {pct(r['top5'])} | "
                         f"{pct(r['f1'])} | {pct(r['closest'])} | {r['train_seconds']:.0f} |")
        for name in ("HOG + SVM", "PCA + SVM on pixels", "LBP + SVM"):
            r = ident["baselines_aligned"][name]
            lines.append(f"| baseline: {name} | {pct(r['accuracy'])} | | {pct(r['f1'])} | | |")
        lines += ["", "All on the same aligned faces (dlib HOG + 5-point alignment). Base: "
                  f"`{ident.get('base_folder', '')}`.", ""]
    wide = results.get("lfw-158")
    if wide:
        r, prior = wide["fine_tuned"], wide["prior"]
        cells = json.loads((RESULTS / "recognition.json").read_text())
        hog_whole = cells["lfw-baselines-identification"]["HOG + SVM"]["accuracy"]
        hog_aligned = cells["lfw-baselines-identification-aligned"]["HOG + SVM"]["accuracy"]
        scratch = cells["lfw-identification-faces"]
        lines += ["## LFW identification, 158 people: the recognition benchmark's split, from a "
                  "prior on the other LFW people", "",
                  f"Prior: `facerank pretrain --weights none` on the {prior['people']} LFW people "
                  f"with 2-9 photos ({prior['images']} photos; none of the 158 is among them), "
                  f"{prior['config']['image_size']} px, "
                  + (f"{prior.get('rounds', 1)} rounds of {prior['config']['epochs']} epochs "
                     "(each from the round before's base), " if prior.get("rounds", 1) > 1
                     else f"{prior['config']['epochs']} epochs, ")
                  + f"{prior['median_epoch_seconds']:.0f} s per epoch (median), "
                  f"{prior['seconds'] / 60:.0f} min in all; then `facerank train --weights` "
                  "(`finetune`) on the 158 people's 70% and scored on their 30% "
                  f"({r['test_images']} photos, seed 0).", "",
                  "| method | top-1 (classify) | top-5 | macro F1 | 1-NN (closest) | train s |",
                  "|---|---|---|---|---|---|",
                  f"| facerank, fine-tuned from that prior | {pct(r['classify'])} | "
                  f"{pct(r['top5'])} | {pct(r['f1'])} | {pct(r['closest'])} | "
                  f"{r['train_seconds']:.0f} |",
                  f"| facerank from scratch, 5 epochs (`lfw-identification-faces`) | "
                  f"{pct(scratch['classify'])} | {pct(scratch['top5'])} | {pct(scratch['f1'])} | "
                  f"{pct(scratch['closest'])} | {scratch['train_seconds']:.0f} |",
                  f"| baseline: HOG + SVM, whole photos / aligned faces | {pct(hog_whole)} / "
                  f"{pct(hog_aligned)} | | | | |", "",
                  "The last two rows are `benchmarks/results/recognition.json`'s.", ""]
    orl = results.get("orl")
    if orl:
        r, u = orl["identification"], orl["unknown"]
        lines += ["## ORL (40 people the base never saw), fine-tuned from the base", "",
                  f"Base: `{orl.get('base_folder', '')}`.", "",
                  "| measure | figure | goal |", "|---|---|---|",
                  f"| identification top-1, 70/30 seed 0 (classify) | {pct(r['classify'])} | "
                  ">= 99.5% |",
                  f"| identification 1-NN (closest) | {pct(r['closest'])} | |",
                  *seeds_rows(orl),
                  f"| strangers rejected at 1% false accepts ({u['stranger_queries']} photos of "
                  f"{u['stranger_people']} people never enrolled) | {pct(u['strangers_rejected'])}"
                  " | >= 90% |",
                  f"| enrolled people's held-out photos accepted and named right | "
                  f"{pct(u['enrolled_accepted_and_right'])} | |", "",
                  f"{u['enrolled_people']} people enrolled; "
                  f"{rec.unknown_calibration_words(u['calibration'])}", ""]
    return "\n".join(lines) + "\n"


def seeds_rows(orl: dict) -> list[str]:
    """Top-1 and 1-NN over every seed the stage ran, as 'mean (each seed)'."""
    runs = orl.get("identification_seeds", {})
    if len(runs) < 2:
        return []
    each = [runs[k] for k in sorted(runs, key=int)]

    def spread(key: str) -> str:
        return (f"{100 * np.mean([r[key] for r in each]):.1f}% "
                f"({', '.join(f'{100 * r[key]:.1f}' for r in each)})")
    seeds = ", ".join(str(k) for k in sorted(runs, key=int))
    return [f"| identification top-1, seeds {seeds} (mean, then each) | {spread('classify')} | "
            ">= 99.5% |", f"| identification 1-NN, seeds {seeds} | {spread('closest')} | |"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=20, help="pretraining epochs per round")
    parser.add_argument("--rounds", type=int, default=1,
                        help="pretraining rounds, each from the previous round's base")
    parser.add_argument("--min-photos", type=int, default=2,
                        help="pretrain on the people with at least this many photos")
    parser.add_argument("--image-size", type=int, default=None,
                        help="aligned face size in px (default: pretrain's, 64)")
    parser.add_argument("--stages", default=",".join(STAGES))
    parser.add_argument("--report", action="store_true", help="only rewrite the report")
    args = parser.parse_args()
    global BASE
    BASE = base_of_round(args.rounds)
    warnings.filterwarnings("ignore", message="training from random initialisation")
    PLOTS.mkdir(parents=True, exist_ok=True)
    CACHE.mkdir(parents=True, exist_ok=True)
    results_file = RESULTS / "face_prior.json"
    results = json.loads(results_file.read_text()) if results_file.exists() else {}
    results["machine"] = machine()
    if not args.report:
        for stage in args.stages.split(","):
            if stage not in STAGES:
                raise SystemExit(f"unknown stage {stage!r}; stages: {', '.join(STAGES)}")
            print(f"== {stage}", flush=True)
            work = CACHE / "work" / stage
            shutil.rmtree(work, ignore_errors=True)
            work.mkdir(parents=True)
            started = time.perf_counter()
            previous = results.get(stage, {})
            results[stage] = (stage_base(args.epochs, args.rounds, args.min_photos,
                                         args.image_size) if stage == "base" else
                              stage_lfw_pairs() if stage == "lfw-pairs" else
                              stage_lfw_identification(work, previous)
                              if stage == "lfw-identification" else
                              stage_lfw_158(work, args.epochs, args.rounds, args.image_size)
                              if stage == "lfw-158" else stage_orl(work, rec.SEEDS))
            if stage not in ("base", "lfw-158"):
                results[stage]["base_folder"] = str(BASE.relative_to(HERE.parent))
            results[stage]["stage_seconds"] = round(time.perf_counter() - started, 1)
            shutil.rmtree(work, ignore_errors=True)
            # Paths relative to the repository: the file names this machine's folders nowhere.
            (RESULTS / "face_prior.json").write_text(
                json.dumps(results, indent=1).replace(f"{HERE.parent}/", ""))
    (RESULTS / "face_prior.md").write_text(report(results))
    print(report(results))


if __name__ == "__main__":
    main()
