"""``facerank evaluate``, ``calibrate`` and ``doctor``: how good the model is, the unknown-face
threshold, and the gallery's health.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from facerank.cli.common import (JsonOption, StoreOption, emit_json, handles_errors, report_faces, report_skipped, store_path)


@handles_errors
def calibrate(
    store: Optional[Path] = StoreOption,
    far: float = typer.Option(0.01, help="False-accept rate to calibrate at (0.01 = 1%)."),
    as_json: bool = JsonOption,
):
    """Calibrate the same-person threshold on held-out images at a chosen false-accept rate.

    Afterwards `verify` decides, and `query` answers "unknown" beyond the threshold.

    Example:  facerank calibrate --store faces/ --far 0.01
    """
    import facerank
    from facerank.quality.calibrate import calibrate as run_calibration

    result = run_calibration(facerank.open(store_path(store)), far=far)
    if as_json:
        emit_json(result.to_json())
        return
    typer.echo(f"threshold {result.threshold:.4f} at false-accept rate {result.measured_far:.2%} "
               f"(asked {far:.2%}); accepts {result.tar:.1%} of same-person pairs "
               f"({result.same_pairs} same, {result.different_pairs} different pairs from the "
               f"{result.source})")


@handles_errors
def evaluate(
    gallery: Optional[Path] = typer.Argument(None, help="Test gallery (default: the held-out "
                                             "split saved by train)."),
    store: Optional[Path] = StoreOption,
    plot: Optional[Path] = typer.Option(None, help="Confusion-matrix PNG (default: "
                                        "STORE/train/confusion.png)."),
    pairs: Optional[Path] = typer.Option(None, help="Verification instead: an LFW-format pairs "
                                         "file to score (needs --images)."),
    threshold_pairs: Optional[Path] = typer.Option(
        None, help="With --pairs: the pairs the threshold is chosen on (LFW's pairsDevTrain.txt)"
        "; default: the store's calibrated threshold."),
    images: Optional[Path] = typer.Option(None, help="With --pairs: the folder holding "
                                          "NAME/NAME_0001.jpg."),
    flip: bool = typer.Option(False, "--flip", help="Answer each image as the mean of itself and "
                              "its mirror image (test-time augmentation, twice the work)."),
    as_json: bool = JsonOption,
):
    """Accuracy, macro precision/recall/F1 and a confusion matrix on held-out images; or, with
    --pairs, 1:1 verification: accuracy, ROC AUC and true accepts at 1% false accepts.

    Examples:
      facerank evaluate --store faces/ --plot confusion.png
      facerank evaluate --store faces/ --pairs lfw/pairsDevTest.txt \
          --threshold-pairs lfw/pairsDevTrain.txt --images lfw/images
    """
    from facerank.quality.evaluate import evaluate as run_evaluation

    folder = store_path(store)
    if pairs is not None:
        return _evaluate_pairs(folder, pairs, threshold_pairs, images, flip, plot, as_json)
    from facerank.data.gallery import TRAIN_FOLDER

    plot = plot or folder / TRAIN_FOLDER / "confusion.png"
    result = run_evaluation(folder, gallery, confusion_png=plot, flip=flip)
    if as_json:
        emit_json({**result.to_json(), "confusion_png": str(plot)})
        return
    report_skipped(result.skipped)
    typer.echo(f"{result.images} held-out images of {result.people} people")
    typer.echo(f"  classifier: accuracy {result.accuracy:.1%}, top-5 {result.top5_accuracy:.1%}, "
               f"precision {result.precision:.1%}, recall {result.recall:.1%}, F1 {result.f1:.1%}")
    if result.nearest_neighbour_accuracy is not None:
        typer.echo(f"  1-nearest-neighbour over training images: "
                   f"{result.nearest_neighbour_accuracy:.1%}")
    if result.unknown_people:
        typer.echo(f"  not scored (unknown to the classifier): {', '.join(result.unknown_people)}")
    typer.echo(f"confusion matrix: {plot}")


def _evaluate_pairs(folder: Path, pairs_file: Path, threshold_file: Optional[Path],
                    images: Optional[Path], flip: bool, plot: Optional[Path], as_json: bool):
    from facerank.store import FaceStore
    import numpy as np

    from facerank.quality.verification import (distances, plot_distance_histogram, plot_roc, read_pairs,
                                       score_at, score_pairs)

    if images is None:
        raise typer.BadParameter("--pairs needs --images, the folder of NAME/NAME_0001.jpg")
    store = FaceStore.open(folder)

    def embed(paths):
        vectors = store.embed(list(paths))
        if flip:
            from PIL import ImageOps

            from facerank.data.images import load_image

            mirrored = store.embed([ImageOps.mirror(load_image(p)) for p in paths])
            vectors = (vectors + mirrored) / 2
            vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        return vectors
    test = read_pairs(pairs_file, images)
    d_test = distances(embed, test)
    if threshold_file is not None:
        chosen_on = read_pairs(threshold_file, images)
        score = score_pairs(distances(embed, chosen_on), chosen_on.same, d_test, test.same)
    elif store.threshold is not None:
        score = score_at(store.threshold, d_test, test.same)
    else:
        raise typer.BadParameter("no threshold: pass --threshold-pairs, or run `facerank "
                                 "calibrate` first")
    from facerank.data.gallery import TRAIN_FOLDER

    plot = plot or folder / TRAIN_FOLDER / "pairs.png"
    plot_roc({"facerank": (d_test, test.same)}, plot.with_name(plot.stem + "-roc.png"))
    plot_distance_histogram(d_test, test.same, plot, threshold=score.threshold)
    if as_json:
        emit_json({**score.to_json(), "histogram_png": str(plot)})
        return
    typer.echo(f"{score.pairs} pairs: accuracy {score.accuracy:.1%} at distance threshold "
               f"{score.threshold:.3f}, ROC AUC {score.auc:.3f}, "
               f"true accepts at {score.far:.0%} false accepts {score.tar_at_far:.1%}")
    typer.echo(f"distance histogram: {plot}; ROC: {plot.with_name(plot.stem + '-roc.png')}")


@handles_errors
def doctor(
    gallery: Path = typer.Argument(..., help="Gallery folder to check."),
    store: Optional[Path] = typer.Option(None, "--store", "-s", help="A trained store: also "
                                         "flag images whose nearest neighbours are all of "
                                         "another person."),
    as_json: bool = JsonOption,
):
    """Check a gallery: unreadable files, duplicates, likely mislabels, too few images, odd sizes.

    Exit code 0 when nothing was found, 3 when there are findings.

    Example:  facerank doctor photos/ --store faces/
    """
    from facerank.quality.doctor import diagnose
    from facerank.store import FaceStore

    opened = FaceStore.open(store) if store is not None else None
    report = diagnose(gallery, store=opened)
    if as_json:
        emit_json(report.to_json())
    else:
        typer.echo(f"{report.gallery}: {report.images} images of {report.people} people; "
                   f"{report.faces}")
        report_faces(report.no_face, report.several_faces,
                      whole=opened is None or opened.model.config.faces.no_face == "whole")
        for finding in report.findings:
            typer.echo(f"  [{finding.kind}] {' <-> '.join(finding.paths)}: {finding.detail}")
        summary = report.to_json()["summary"]
        typer.echo("no problems found" if not summary else
                   "found: " + ", ".join(f"{n} {kind}" for kind, n in sorted(summary.items())))
    if report.findings:
        raise typer.Exit(3)
