"""``facerank``: train, index, query, classify, evaluate and demo from the shell.

Every command is a few lines over the library. Errors become one line on stderr and an exit code:
0 success, 1 a facerank error (missing store, unreadable photo, ...), 2 a usage error, 3 (doctor)
the gallery has problems, 4 (verify) different people, 5 (query, faces) a photo with no face.
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
         "--store faces/ && facerank query photo.jpg --store faces/")
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
app.command()(queries.query)
app.command()(queries.faces)
app.command()(queries.classify)
app.command()(queries.verify)
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
