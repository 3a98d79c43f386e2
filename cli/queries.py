"""``facerank query``, ``faces``, ``classify`` and ``verify``: ask a store about photos.
"""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from facerank.cli.common import (NO_FACE_EXIT, JsonOption, StoreOption, emit_json, handles_errors, print_closest, print_people, store_path)


@handles_errors
def query(
    photos: List[Path] = typer.Argument(..., help="Photo(s) to look up."),
    store: Optional[Path] = StoreOption,
    k: int = typer.Option(5, "-k", help="How many closest gallery images."),
    top_k: int = typer.Option(5, help="How many people with probabilities."),
    all_faces: bool = typer.Option(False, "--all-faces", help="Answer for every face in each "
                                   "photo (box, who, closest), not just the largest."),
    as_json: bool = JsonOption,
):
    """Who is it (top people with probabilities) and which gallery images are closest.

    The store's face step finds the face first; without --all-faces the largest face answers.
    Exit code 5 when a photo holds no face the store can use.

    Examples:
      facerank query photo.jpg --store faces/ -k 5
      facerank query group.jpg --store faces/ --all-faces --json
    """
    import facerank

    opened = facerank.open(store_path(store))
    step = opened.model.config.faces
    results, faceless = [], []
    for photo in photos:
        answers = opened.identify(photo, k=k, top_k=top_k, every=all_faces)
        if not answers or (step.enabled and answers[0].face is None):
            faceless.append(str(photo))
        faces = [answer.to_json() for answer in answers]
        for face in faces:
            face["closest"] = face.pop("matches")  # the CLI's JSON has always said "closest"
        if all_faces:
            results.append({"photo": str(photo), "faces": faces, "threshold": opened.threshold})
        else:
            results.append({"photo": str(photo), "threshold": opened.threshold,
                            **(faces[0] if faces else {"face": None, "people": [],
                                                       "closest": [], "unknown": None})})
    if as_json:
        emit_json(results if len(results) > 1 else results[0])
    else:
        for result in results:
            answers = result["faces"] if all_faces else ([result] if result["people"] else [])
            if not answers:
                typer.echo(f"{result['photo']}: no face found", err=True)
            for number, answer in enumerate(answers):
                title = result["photo"]
                if answer["face"]:
                    title += f" face {number + 1} at {tuple(answer['face']['box'])}"
                elif step.enabled:
                    typer.echo(f"{result['photo']}: no face found; answered for the whole image",
                               err=True)
                print_people(title, answer["people"])
                print_closest(title, answer["closest"])
                if answer["unknown"]:
                    typer.echo(f"unknown: the nearest gallery image is "
                               f"{answer['closest'][0]['distance']:.3f} away, beyond the "
                               f"calibrated threshold {result['threshold']:.3f}")
    if faceless:
        raise typer.Exit(NO_FACE_EXIT)


@handles_errors
def faces(
    photos: List[Path] = typer.Argument(..., help="Photo(s) to find faces in."),
    store: Optional[Path] = typer.Option(None, "--store", "-s", help="Use this store's face "
                                         "step (default: dlib's HOG detector)."),
    draw: Optional[Path] = typer.Option(None, help="Write the (first) photo with its boxes and "
                                        "landmarks drawn to this PNG."),
    as_json: bool = JsonOption,
):
    """Just the faces: each face's box, confidence and 5 landmarks, largest first.

    Exit code 5 when a photo holds no face.

    Examples:
      facerank faces group.jpg
      facerank faces group.jpg --json --draw boxes.png
    """
    from facerank.model.config import read_config
    from facerank.faces.detection import FaceFinder, face_step
    from facerank.data.images import load_image

    step = read_config(store).faces if store is not None else face_step("dlib-hog")
    if not step.enabled:
        raise ValueError(f"the store {store} has no face step (it was trained with --faces none)")
    finder = FaceFinder(step, size=112)
    results = []
    for number, photo in enumerate(photos):
        image = load_image(photo)
        found = finder.find(image)
        results.append({"photo": str(photo), "width": image.width, "height": image.height,
                        "faces": [face.to_json() for face in found]})
        if draw is not None and number == 0:
            from facerank.faces.drawing import draw_faces

            draw_faces(image, found).save(draw)
    if as_json:
        emit_json(results if len(results) > 1 else results[0])
    else:
        for result in results:
            typer.echo(f"{result['photo']}: {len(result['faces'])} face(s)")
            for number, face in enumerate(result["faces"]):
                eyes = face["landmarks"]
                typer.echo(f"  {number + 1}. box {tuple(face['box'])} confidence "
                           f"{face['confidence']:.2f} eyes {tuple(eyes['left_eye_inner'])} "
                           f"{tuple(eyes['right_eye_inner'])}")
        if draw is not None:
            typer.echo(f"drawn: {draw}")
    if any(not result["faces"] for result in results):
        raise typer.Exit(NO_FACE_EXIT)


@handles_errors
def classify(
    photos: List[Path] = typer.Argument(..., help="Photo(s) to identify."),
    store: Optional[Path] = StoreOption,
    top_k: int = typer.Option(5, help="How many people with probabilities."),
    as_json: bool = JsonOption,
):
    """Who is it: the top people by the fine-tuned classifier, with probabilities.

    Example:  facerank classify photo.jpg --store faces/ --top-k 3 --json
    """
    import facerank

    opened = facerank.open(store_path(store))
    results = [{"photo": str(photo), "people": [vars(p) for p in opened.classify(photo, top_k=top_k)]}
               for photo in photos]
    if as_json:
        emit_json(results if len(results) > 1 else results[0])
        return
    for result in results:
        print_people(result["photo"], result["people"])


@handles_errors
def verify(
    photo_a: Path = typer.Argument(..., help="First photo."),
    photo_b: Path = typer.Argument(..., help="Second photo."),
    store: Optional[Path] = StoreOption,
    as_json: bool = JsonOption,
):
    """Same person or not: the distance between two face prints and the threshold used.

    Exit code 0 for the same person, 4 for different people (and 0 when no threshold has been
    calibrated yet: run `facerank calibrate` first).

    Example:  facerank verify a.jpg b.jpg --store faces/
    """
    import facerank

    opened = facerank.open(store_path(store))
    verdict = opened.verify(photo_a, photo_b)
    distance, threshold, same = verdict.distance, verdict.threshold, verdict.same
    if as_json:
        emit_json(vars(verdict))
    elif same is None:
        typer.echo(f"distance {distance:.4f}; no threshold calibrated (run `facerank calibrate "
                   f"--store {opened.folder}`)")
    else:
        typer.echo(f"{'same person' if same else 'different people'}: distance {distance:.4f} "
                   f"{'<=' if same else '>'} threshold {threshold:.4f}")
    if same is False:
        raise typer.Exit(4)
