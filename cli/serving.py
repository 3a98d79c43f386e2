"""``facerank serve`` and ``demo``: the web page and REST API, and a first run on bundled faces.
"""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from facerank.cli.common import (JsonOption, emit_json, handles_errors, print_closest,
                                 print_people, store_path)
from facerank.errors import FacerankError, MissingExtraError


@handles_errors
def serve(
    stores: Optional[List[Path]] = typer.Option(None, "--store", "-s", help="Store to serve "
                                                "(repeat for several; the page lets users pick)."),
    host: str = typer.Option("127.0.0.1", help="Address to bind; 0.0.0.0 exposes it to the "
                             "network, which needs --token (or --insecure-no-token)."),
    port: int = typer.Option(8000, help="Port to listen on."),
    token: Optional[str] = typer.Option(None, envvar="FACERANK_TOKEN", help="Bearer token "
                                        "required by endpoints that change a store."),
    read_token: Optional[str] = typer.Option(None, envvar="FACERANK_READ_TOKEN", help="Bearer "
                                             "token (or --token) also required to list stores, "
                                             "see thumbnails and ask; the page takes it as "
                                             "http://HOST:PORT/#token=READ_TOKEN."),
    insecure_no_token: bool = typer.Option(False, "--insecure-no-token", help="Serve beyond "
                                           "loopback with no token: anyone who reaches the "
                                           "address may add and remove people."),
    max_upload_mb: float = typer.Option(10.0, help="Largest accepted photo, in MB."),
    max_concurrent: Optional[int] = typer.Option(None, help="Model or store calls run at once "
                                                 "(default 1: each uses every core); more wait their "
                                                 "turn.", show_default=False),
):
    """Serve the web page and REST API (docs at /docs) for one or more stores.

    Needs the serve extra: pip install -e ".[serve]".

    Example:  facerank serve --store faces/ --port 8000
    """
    # Checked before anything loads: a refusal should come at once, not after the model.
    if not token and not _is_loopback(host):
        if not insecure_no_token:
            typer.echo(f"error: refusing to serve on {host} without a token: anyone who can "
                       "reach it could add and remove people. Add --token SECRET (and "
                       "--read-token to guard the answers too), or --insecure-no-token to serve "
                       "it open anyway", err=True)
            raise typer.Exit(2)
        typer.echo(f"warning: serving on {host} without a token (--insecure-no-token): anyone "
                   "who can reach it can add and remove people", err=True)
    try:
        import uvicorn

        from facerank.serve import create_app
    except ImportError as error:
        raise MissingExtraError(f"serving needs the serve extra ({error.name} is missing): "
                                'pip install "facerank[serve]"') from None
    folders = stores or [store_path(None)]
    application = create_app(folders, token=token, read_token=read_token,
                             max_upload_bytes=int(max_upload_mb * 1024 * 1024),
                             max_concurrent=max_concurrent)
    typer.echo(f"serving {', '.join(str(f) for f in folders)} on http://{host}:{port}/", err=True)
    uvicorn.run(application, host=host, port=port, log_level="warning")


def _is_loopback(host: str) -> bool:
    """Whether only this machine can reach ``host`` (a name other than localhost may resolve
    to anything, so it counts as open)."""
    import ipaddress

    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


@handles_errors
def demo(
    gallery: Optional[Path] = typer.Option(None, help="Gallery to demo on (default: the bundled "
                                           "ORL subset).", show_default=False),
    store: Path = typer.Option(Path("facerank-demo"), "--store", "-s", help="Store to create."),
    weights: str = typer.Option("none", help="none (default: works offline), imagenet, or a path."),
    epochs: int = typer.Option(30, help="Training epochs."),
    image_size: int = typer.Option(64, help="Input size in pixels."),
    as_json: bool = JsonOption,
):
    """Train on a small gallery, index its training split, and identify a held-out photo.

    Example:  facerank demo
    """
    from facerank.quality.evaluate import evaluate as run_evaluation
    from facerank.store import FaceStore, PhotoAnswer
    from facerank.training.loop import train as run_training
    from facerank.training.recipes import preset as make_preset

    from facerank.data.gallery import demo_gallery, read_split

    gallery = gallery or demo_gallery()
    if not gallery.is_dir():
        raise FacerankError(f"demo gallery {gallery} not found; pass --gallery FOLDER (one "
                            "sub-folder of images per person)")
    name = "scratch" if weights == "none" else "sgd"
    config = make_preset(name, epochs=epochs, image_size=image_size)
    say = (lambda *_: None) if as_json else typer.echo
    say(f"1/4 training '{name}' preset on {gallery} ({epochs} epochs at {image_size} px, "
        f"weights: {weights}) ...")
    trained = run_training(gallery, store, config, weights=weights, show_progress=not as_json)
    split = read_split(store)
    say(f"2/4 indexing the {len(split.train)} training images ...")
    opened = FaceStore.open(store)
    say(opened.model.config.faces.describe())
    paths, people = zip(*split.train)
    opened.add(paths, person=people)
    # The first held-out photo in which a face is found (ORL's s1/2.pgm, the very first, has
    # none that dlib can see, and a whole frame is not what a face model should be shown).
    photo, truth = next((item for item in split.test if opened.find_faces(item[0])),
                        split.test[0])
    say(f"3/4 asking about {photo}, a photo of {truth} that training never saw:")
    [answer] = opened.identify(photo, k=3, top_k=5, every=False)
    predictions = answer.people
    evaluation = run_evaluation(opened)
    if as_json:
        emit_json({**PhotoAnswer(photo=photo, faces=[answer],
                               threshold=opened.unknown_threshold).to_json(),
                   "truth": truth, "train": trained.to_json(), "evaluation": evaluation.to_json()})
        return
    print_people(photo, [p.to_json() for p in predictions])
    print_closest(photo, [m.to_json() for m in answer.matches])
    verdict = "right" if predictions[0].person == truth else "wrong"
    say(f"the answer is {verdict}: {predictions[0].person} (truth: {truth})")
    say(f"4/4 held-out accuracy over {evaluation.images} unseen photos: classifier "
        f"{evaluation.accuracy:.1%}, nearest neighbour {evaluation.nearest_neighbour_accuracy:.1%} "
        f"(from {'random initialisation' if weights == 'none' else weights} weights)")
    say(f"store left in {store}; try: facerank identify {photo} --store {store}")
