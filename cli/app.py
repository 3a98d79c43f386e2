"""``facerank``: train, index, identify, classify, evaluate and demo from the shell.

Every command is a few lines over the library. Errors become one line on stderr, naming the file
and what to do next, and an exit code:

- 0 success;
- 1 a facerank error (missing store, unreadable photo, empty index, ...);
- 2 a usage error (the library's own validation of an argument);
- 3 ``doctor`` found problems in the gallery;
- 4 ``verify``: different people;
- 5 ``identify``, ``closest``, ``classify``, ``faces``, ``verify``: a photo holds no face;
- 6 ``identify``, ``closest``, ``classify``, ``faces``: some photos of the batch could not be read
  (each is named; every other photo was answered).

Set ``FACERANK_DEBUG=1`` or pass ``--debug`` for the full traceback.
"""

from __future__ import annotations

import typer

from facerank.cli import index, quality, queries, serving, training
from facerank.cli.common import debug_mode

app = typer.Typer(
    name="facerank", no_args_is_help=True, add_completion=False,
    help="Fine-tune ResNet50 on your own people, index its face prints, and ask of a photo "
         "who it is and which gallery images are closest.\n\n"
         "Example:  facerank train GALLERY/ --store faces/ && facerank index build GALLERY/ "
         "--store faces/ && facerank identify photo.jpg --store faces/")
index_app = typer.Typer(no_args_is_help=True, help="Build, change and inspect a store's index.")
app.add_typer(index_app, name="index")


@app.callback()
def _main(debug: bool = typer.Option(False, "--debug", help="Show full tracebacks on errors.")):
    if debug:
        debug_mode["on"] = True


app.command()(training.train)
app.command()(training.pretrain)
index_app.command("build")(index.build)
index_app.command("plan")(index.plan)
index_app.command("add")(index.add)
index_app.command("remove")(index.remove)
index_app.command("export")(index.export)
index_app.command("info")(index.info)
app.command()(queries.identify)
app.command()(queries.closest)
app.command()(queries.classify)
app.command()(queries.verify)
app.command()(queries.faces)
app.command("query", hidden=True)(queries.identify)  # the old name, for one version
app.command()(quality.calibrate)
app.command()(training.precision)
app.command()(quality.evaluate)
app.command()(quality.doctor)
app.command()(serving.serve)
app.command()(serving.demo)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
