"""``facerank evaluate``, ``calibrate`` and ``doctor``: how good the model is, the unknown-face
threshold, and the gallery's health.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from facerank.cli.common import (JsonOption, StoreOption, emit_json, handles_errors, report_faces,
                                 report_skipped, store_path)


@handles_errors
def calibrate(
    store: Optional[Path] = StoreOption,
    far: float = typer.Option(0.01, help="False-accept rate to calibrate at (0.01 = 1%)."),
    as_json: bool = JsonOption,
):
    """Calibrate the same-person thresholds on held-out images at a chosen false-accept rate.

    Two thresholds: one for a pair of photos (`verify` decides by it), and one for a photo
    against the whole indexed gallery (`identify` answers "unknown" when the nearest gallery
    image lies beyond it). The second needs the gallery indexed first (`facerank index build`),
    and is worth calibrating again once the gallery has grown or shrunk much.

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
    if result.unknown_threshold is None:
        typer.echo("unknown: by the pair threshold, as no indexed gallery of two people or more "
                   "was there to search; run `facerank index build`, then calibrate again")
    else:
        named = ("none of the held-out photos is of a gallery person" if result.identified is None
                 else f"names {result.identified:.1%} of the held-out photos of gallery people "
                 "right")
        typer.echo(f"unknown beyond {result.unknown_threshold:.4f} from the nearest gallery "
                   f"image: accepts {result.strangers_accepted:.2%} of {result.stranger_queries} "
                   f"held-out photos searched with their own person left out (stand-in "
                   f"strangers); {named} ({result.gallery_images} gallery images)")
        typer.echo(f"note: {result.unknown_caveat}")
    report_skipped(result.skipped)
    if result.caveat:
        typer.echo(f"caveat: {result.caveat}")


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
    csv_file: Optional[Path] = typer.Option(None, "--csv", help="Also write one row per held-out "
                                            "photo: truth, answer, probability, rank of the "
                                            "truth, nearest training image, correct."),
    as_json: bool = JsonOption,
):
    """Accuracy, macro precision/recall/F1 and a confusion matrix on held-out images, and which
    photos were wrong; or, with --pairs, 1:1 verification: accuracy, ROC AUC and true accepts at
    1% false accepts.

    Examples:
      facerank evaluate --store faces/ --plot confusion.png --csv photos.csv
      facerank evaluate --store faces/ --pairs lfw/pairsDevTest.txt \
          --threshold-pairs lfw/pairsDevTrain.txt --images lfw/images
    """
    from facerank.quality.evaluate import evaluate as run_evaluation

    folder = store_path(store)
    if pairs is not None and csv_file is not None:
        raise typer.BadParameter("--csv lists held-out photos; it does not apply to --pairs")
    if pairs is not None:
        return _evaluate_pairs(folder, pairs, threshold_pairs, images, flip, plot, as_json)
    from facerank.data.gallery import TRAIN_FOLDER

    plot = plot or folder / TRAIN_FOLDER / "confusion.png"
    if csv_file is not None and csv_file.is_dir():
        raise typer.BadParameter(f"--csv {csv_file} is a folder; give a file name")
    result = run_evaluation(folder, gallery, confusion_png=plot, flip=flip)
    if csv_file is not None:
        result.write_csv(csv_file)
    if as_json:
        emit_json({**result.to_json(), "confusion_png": str(plot),
                   "csv": None if csv_file is None else str(csv_file)})
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
    wrong = [photo for photo in result.photos if not photo.correct]
    if wrong:
        typer.echo(f"wrong ({len(wrong)} of {result.images}):")
        for photo in wrong[:20]:
            nearest = ("" if photo.nearest_person is None else
                       f"; nearest training image {photo.nearest_path} ({photo.nearest_person}, "
                       f"distance {photo.nearest_distance:.3f})")
            typer.echo(f"  {photo.photo}: {photo.person} taken for {photo.predicted} "
                       f"({photo.probability:.0%}; the truth ranked {photo.rank + 1}){nearest}")
        if len(wrong) > 20:
            typer.echo(f"  ... and {len(wrong) - 20} more (use --csv or --json for all)")
    typer.echo(f"confusion matrix: {plot}" + (f"; per photo: {csv_file}" if csv_file else ""))


def _evaluate_pairs(folder: Path, pairs_file: Path, threshold_file: Optional[Path],
                    images: Optional[Path], flip: bool, plot: Optional[Path], as_json: bool):
    from facerank.data.gallery import TRAIN_FOLDER
    from facerank.quality.verification import evaluate_pairs
    from facerank.store import FaceStore

    if images is None:
        raise typer.BadParameter("--pairs needs --images, the folder of NAME/NAME_0001.jpg")
    plot = plot or folder / TRAIN_FOLDER / "pairs.png"
    roc = plot.with_name(plot.stem + "-roc.png")
    score = evaluate_pairs(FaceStore.open(folder), pairs_file, images,
                           threshold_pairs=threshold_file, flip=flip, histogram_png=plot,
                           roc_png=roc)
    if as_json:
        emit_json({**score.to_json(), "histogram_png": str(plot)})
        return
    typer.echo(f"{score.pairs} pairs: accuracy {score.accuracy:.1%} at distance threshold "
               f"{score.threshold:.3f}, ROC AUC {score.auc:.3f}, "
               f"true accepts at {score.far:.0%} false accepts {score.tar_at_far:.1%}")
    typer.echo(f"distance histogram: {plot}; ROC: {roc}")


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
        if report.caveat:
            typer.echo(f"caveat: {report.caveat}")
        summary = report.to_json()["summary"]
        typer.echo("no problems found" if not summary else
                   "found: " + ", ".join(f"{n} {kind}" for kind, n in sorted(summary.items())))
    if report.findings:
        raise typer.Exit(3)
