"""``facerank identify``, ``closest``, ``classify``, ``faces`` and ``verify``: ask about photos.

Each photo argument may be a file, a folder (every image under it, recursively, sorted) or a
quoted glob (``'photos/*.jpg'``): ``facerank.data.photos.expand_photos`` decides which photos
they name. A photo that cannot be read is named on stderr (under ``--json``: its line's
``error``) and the others are still answered; then the exit code is 6. A photo with no face
(and none unreadable) gives 5. ``--json`` prints one JSON line per photo, made by the library's
``to_json`` as the REST API's answers are.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import List, Optional

import typer

from facerank.cli.common import (NO_FACE_EXIT, StoreOption, emit_json, handles_errors,
                                 print_closest, print_people, store_path)

#: Exit code of a batch in which some photos could not be read (every other one was answered).
BATCH_FAILED_EXIT = 6

PhotosArgument = typer.Argument(
    ..., show_default=False,
    help="Photos, folders (every image in them, recursively) or quoted globs ('photos/*.jpg').")
JsonLinesOption = typer.Option(False, "--json", help="Print one JSON line per photo, for "
                               "scripts (the REST API's shape), instead of tables.")
CSV_COLUMNS = ["photo", "face", "box", "person", "probability", "path", "distance", "unknown",
               "no_face", "error"]


@handles_errors
def identify(
    ctx: typer.Context,
    photos: List[Path] = PhotosArgument,
    store: Optional[Path] = StoreOption,
    k: int = typer.Option(5, "-k", help="How many closest gallery images per face."),
    top_k: int = typer.Option(5, "--top-k", help="How many people, with probabilities, per face."),
    largest: bool = typer.Option(False, "--largest", help="Answer for the largest face of each "
                                 "photo only (default: every face, largest first)."),
    all_faces: bool = typer.Option(False, "--all-faces", hidden=True),  # old name; the default now
    as_json: bool = JsonLinesOption,
    csv_file: Optional[Path] = typer.Option(None, "--csv", metavar="FILE", help="Also write one "
                                            "row per face (photo, face, box, person, probability, "
                                            "path, distance, unknown, no_face, error) to FILE."),
):
    """Who is each face (top people with probabilities) and which gallery images are closest.

    Every face of every photo is answered, largest first; the store's face step finds them.
    Exit code 5 when a photo holds no face, 6 when some photos could not be read (the others
    are answered).

    Examples:
      facerank identify photo.jpg --store faces/ -k 5
      facerank identify holiday/ 'scans/*.png' --store faces/ --json
      facerank identify group.jpg --store faces/ --largest --csv answers.csv
    """
    import facerank
    from facerank.data.photos import expand_photos
    from facerank.errors import UsageError

    if ctx.info_name == "query":
        # The old command answered the largest face unless --all-faces: so does its alias.
        largest = not all_faces
        typer.echo("note: `facerank query` is now `facerank identify` (every face by default, "
                   "--largest for the largest; --json prints one line per photo, closest images "
                   "under `matches`); the old name goes in the next version", err=True)
    elif all_faces:
        if largest:
            raise UsageError("--all-faces and --largest contradict each other; every face is "
                             "the default now, so drop --all-faces")
        typer.echo("note: --all-faces is the default now; the option goes in the next version",
                   err=True)
    paths = expand_photos(photos)
    opened = facerank.open(store_path(store))
    if len(opened) == 0:
        typer.echo(f"note: the index of {opened.folder} is empty, so no closest images: run "
                   f"`facerank index build GALLERY --store {opened.folder}`", err=True)
    rows = _csv_writer(csv_file) if csv_file is not None else None
    failed = faceless = 0
    try:
        for answer in opened.identify_each(paths, k=k, top_k=top_k, every=not largest):
            no_face = answer.no_face
            failed += not answer.ok
            faceless += no_face
            if rows is not None:
                _write_rows(rows[0], answer, no_face)
            if as_json:
                _json_line(answer.to_json())
            else:
                _print_answer(answer, no_face)
    finally:
        if rows is not None:
            rows[1].close()
    _finish(failed, faceless, len(paths), as_json=as_json)


@handles_errors
def closest(
    photos: List[Path] = PhotosArgument,
    store: Optional[Path] = StoreOption,
    k: int = typer.Option(5, "-k", help="How many closest gallery images."),
    as_json: bool = JsonLinesOption,
):
    """Which gallery images are closest to each photo's largest face, with their distances.

    Exit code 5 when a photo holds no face, 6 when some photos could not be read.

    Examples:
      facerank closest photo.jpg --store faces/ -k 3
      facerank closest 'new/*.jpg' --store faces/ --json
    """
    import facerank
    from facerank.data.photos import expand_photos
    from facerank.errors import StoreError
    from facerank.store import PhotoMatches

    paths = expand_photos(photos)
    opened = facerank.open(store_path(store))
    if len(opened) == 0:
        raise StoreError(f"the index of {opened.folder} is empty: run `facerank index build "
                         f"GALLERY --store {opened.folder}`")
    failed = faceless = 0
    # The largest face's answer is what `FaceStore.closest` gives; identify_each adds the batch
    # behaviour (unreadable photos reported, not fatal) for one classifier head's extra cost.
    for answer in opened.identify_each(paths, k=k, top_k=1, every=False):
        no_face = answer.no_face
        failed += not answer.ok
        faceless += no_face
        matches = answer.faces[0].matches if answer.faces else []
        if as_json:
            _json_line(PhotoMatches(photo=answer.photo, matches=matches, no_face=no_face,
                                    error=answer.error).to_json())
            continue
        if not answer.ok:
            typer.echo(f"error: {answer.error}", err=True)
            continue
        if no_face:
            _say_no_face(answer.photo, whole=bool(answer.faces))
        if matches:
            print_closest(answer.photo, [m.to_json() for m in matches])
    _finish(failed, faceless, len(paths), as_json=as_json)


@handles_errors
def classify(
    photos: List[Path] = PhotosArgument,
    store: Optional[Path] = StoreOption,
    top_k: int = typer.Option(5, "--top-k", help="How many people with probabilities."),
    as_json: bool = JsonLinesOption,
):
    """Who is it: the top people by the fine-tuned classifier, with probabilities.

    The largest face of each photo answers; no index is needed.

    Exit code 5 when a photo holds no face, 6 when some photos could not be read.

    Example:  facerank classify photo.jpg 'more/*.jpg' --store faces/ --top-k 3 --json
    """
    import facerank
    from facerank.data.photos import expand_photos
    from facerank.errors import ImageError, NoFaceError, UsageError
    from facerank.store import PhotoPeople

    if top_k < 1:
        raise UsageError(f"--top-k must be at least 1, got {top_k}")
    paths = expand_photos(photos)
    opened = facerank.open(store_path(store))
    failed = faceless = 0
    for path in paths:
        people, error = [], None
        try:
            people = opened.classify(path, top_k=top_k)
        except NoFaceError:
            faceless += 1
        except ImageError as problem:  # this photo's alone: the others are still answered
            failed += 1
            error = str(problem)
        if as_json:
            _json_line(PhotoPeople(photo=str(path), people=people, no_face=not people and not error,
                                   error=error).to_json())
        elif error:
            typer.echo(f"error: {error}", err=True)
        elif not people:
            _say_no_face(str(path), whole=False)
        else:
            print_people(str(path), [p.to_json() for p in people])
    _finish(failed, faceless, len(paths), as_json=as_json)


@handles_errors
def faces(
    photos: List[Path] = PhotosArgument,
    store: Optional[Path] = typer.Option(None, "--store", "-s", help="Use this store's face "
                                         "step (default: dlib's HOG detector)."),
    draw: Optional[Path] = typer.Option(None, help="Write the (first) photo with its boxes and "
                                        "landmarks drawn to this PNG."),
    as_json: bool = JsonLinesOption,
):
    """Just the faces: each face's box, confidence and 5 landmarks, largest first.

    Exit code 5 when a photo holds no face, 6 when some photos could not be read.

    Examples:
      facerank faces group.jpg
      facerank faces group.jpg --json --draw boxes.png
    """
    from facerank.data.images import load_image
    from facerank.data.photos import expand_photos
    from facerank.errors import ImageError
    from facerank.faces.detection import detection_finder
    from facerank.model.config import read_config
    from facerank.store import PhotoFaces

    paths = expand_photos(photos)
    finder = detection_finder(read_config(store).faces if store is not None else None)
    failed = faceless = 0
    drawn = False
    for path in paths:
        try:
            image = load_image(path)
            found = finder.find(image)
        except ImageError as problem:
            failed += 1
            if as_json:
                _json_line(PhotoFaces(photo=str(path), faces=[], error=str(problem)).to_json())
            else:
                typer.echo(f"error: {problem}", err=True)
            continue
        faceless += not found
        if draw is not None and not drawn:
            from facerank.faces.drawing import draw_faces

            draw_faces(image, found).save(draw)
            drawn = True
        if as_json:
            _json_line(PhotoFaces(photo=str(path), faces=found, width=image.width,
                                  height=image.height).to_json())
            continue
        typer.echo(f"{path}: {len(found)} face(s)")
        for number, face in enumerate(found):
            eyes = face.to_json()["landmarks"]
            typer.echo(f"  {number + 1}. box {tuple(face.box)} confidence "
                       f"{face.confidence:.2f} eyes {tuple(eyes['left_eye_inner'])} "
                       f"{tuple(eyes['right_eye_inner'])}")
    if drawn and not as_json:
        typer.echo(f"drawn: {draw}")
    _finish(failed, faceless, len(paths), as_json=as_json)


@handles_errors
def verify(
    photo_a: Path = typer.Argument(..., help="First photo."),
    photo_b: Path = typer.Argument(..., help="Second photo."),
    store: Optional[Path] = StoreOption,
    as_json: bool = typer.Option(False, "--json", help="Print JSON for scripts."),
):
    """Same person or not: the distance between two face prints and the threshold used.

    Exit code 0 for the same person, 4 for different people (and 0 when no threshold has been
    calibrated yet: run `facerank calibrate` first), 5 when a photo holds no face.

    Example:  facerank verify a.jpg b.jpg --store faces/
    """
    import facerank
    from facerank.errors import NoFaceError

    opened = facerank.open(store_path(store))
    try:
        verdict = opened.verify(photo_a, photo_b)
    except NoFaceError as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(NO_FACE_EXIT) from None
    distance, threshold, same = verdict.distance, verdict.threshold, verdict.same
    if as_json:
        emit_json(verdict.to_json())
    elif same is None:
        typer.echo(f"distance {distance:.4f}; no threshold calibrated (run `facerank calibrate "
                   f"--store {opened.folder}`)")
    else:
        typer.echo(f"{'same person' if same else 'different people'}: distance {distance:.4f} "
                   f"{'<=' if same else '>'} threshold {threshold:.4f}")
    if same is False:
        raise typer.Exit(4)


# -- printing ------------------------------------------------------------------------------------

def _json_line(value: dict) -> None:
    typer.echo(json.dumps(value, default=str))


def _say_no_face(photo: str, *, whole: bool) -> None:
    typer.echo(f"{photo}: no face found" + ("; answered for the whole image" if whole else ""),
               err=True)


def _print_answer(answer, no_face: bool) -> None:
    if not answer.ok:
        typer.echo(f"error: {answer.error}", err=True)
        return
    if no_face:
        _say_no_face(answer.photo, whole=bool(answer.faces))
    for number, face in enumerate(answer.faces):
        title = answer.photo + (f" face {number + 1} at {tuple(face.box)}" if face.face else "")
        print_people(title, [p.to_json() for p in face.people])
        print_closest(title, [m.to_json() for m in face.matches])
        if face.unknown and face.matches:
            typer.echo(f"unknown: the nearest gallery image is {face.matches[0].distance:.3f} "
                       f"away, beyond the calibrated threshold {answer.threshold:.3f}")
        elif face.unknown:
            typer.echo("unknown: the index holds no gallery image to compare with")


def _finish(failed: int, faceless: int, total: int, *, as_json: bool = False) -> None:
    if failed:
        where = "their lines' error" if as_json else "named above"
        typer.echo(f"{failed} of {total} photo(s) could not be read ({where}); every other "
                   "one was answered", err=True)
        raise typer.Exit(BATCH_FAILED_EXIT)
    if faceless:
        raise typer.Exit(NO_FACE_EXIT)


def _csv_writer(path: Path):
    from facerank.errors import FacerankError

    try:
        handle = path.open("w", newline="", encoding="utf-8")
    except OSError as error:
        raise FacerankError(f"cannot write the CSV file {path} ({error.strerror or error}); "
                            "give --csv a path in a folder you can write to") from None
    writer = csv.writer(handle)
    writer.writerow(CSV_COLUMNS)
    return writer, handle


def _write_rows(writer, answer, no_face: bool) -> None:
    """One row per face; a photo with no face or an error gets one row that says so."""
    if not answer.faces:
        writer.writerow([answer.photo, "", "", "", "", "", "", "", str(no_face).lower(),
                         answer.error or ""])
        return
    for number, face in enumerate(answer.faces):
        top = face.people[0] if face.people else None
        nearest = face.matches[0] if face.matches else None
        writer.writerow([
            answer.photo, number, " ".join(map(str, face.box)) if face.box else "",
            top.person if top else "", f"{top.probability:.6f}" if top else "",
            nearest.path if nearest else "", f"{nearest.distance:.6f}" if nearest else "",
            "" if face.unknown is None else str(face.unknown).lower(), str(no_face).lower(), ""])
