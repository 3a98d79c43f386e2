"""What every command shares: the store and --json options, error handling, printing.

Commands parse, call the library and print; ``handles_errors`` turns the library's errors into
one line on stderr and an exit code (see ``facerank.cli.app``).
"""

from __future__ import annotations

import functools
import json
import os
import warnings
from pathlib import Path
from typing import Optional

import typer

from facerank.errors import FacerankError, UsageError

debug_mode = {"on": bool(os.environ.get("FACERANK_DEBUG"))}

StoreOption = typer.Option(None, "--store", "-s", help="Store folder (default: $FACERANK_STORE, "
                           "else ./facerank-store).", show_default=False)
JsonOption = typer.Option(False, "--json", help="Print JSON for scripts instead of tables.")


def handles_errors(command):
    """Turn the library's bad-argument errors (``UsageError``) into one line and exit 2, its
    other errors (a missing file, a locked store, a missing extra) into one line and exit 1.

    Anything else (``TypeError``, ``KeyError``...) is a bug, not the user's doing: it keeps its
    traceback rather than pass for a usage error.
    """

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            with warnings.catch_warnings():
                if not debug_mode["on"]:
                    warnings.simplefilter("ignore", UserWarning)
                return command(*args, **kwargs)
        except FacerankError as error:
            if debug_mode["on"]:
                raise
            typer.echo(f"error: {error}", err=True)
            raise typer.Exit(2 if isinstance(error, UsageError) else 1) from None
        except KeyboardInterrupt:
            typer.echo("interrupted", err=True)
            raise typer.Exit(130) from None

    return wrapper


def store_path(store: Optional[Path]) -> Path:
    from facerank.api import default_store_path

    return store if store is not None else default_store_path()


def emit_json(value) -> None:
    typer.echo(json.dumps(value, indent=2, default=str))


def console():
    from rich.console import Console

    return Console()


NO_FACE_EXIT = 5


def report_faces(no_face, several_faces, whole: bool) -> None:
    """Name the gallery photos the face step found no face in, or several."""
    for paths, what in ((no_face, "no face found" + (" (the whole image was used)" if whole
                                                     else " (skipped)")),
                        (several_faces, "several faces (the largest was taken as the person)")):
        if paths:
            typer.echo(f"{len(paths)} photo(s) with {what}:", err=True)
            for path in paths[:10]:
                typer.echo(f"  {path}", err=True)
            if len(paths) > 10:
                typer.echo(f"  ... and {len(paths) - 10} more (use --json for all)", err=True)


def report_skipped(skipped) -> None:
    if skipped:
        typer.echo(f"skipped {len(skipped)} file(s):", err=True)
        for path, reason in skipped[:20]:
            typer.echo(f"  {path}: {reason}", err=True)
        if len(skipped) > 20:
            typer.echo(f"  ... and {len(skipped) - 20} more (use --json for all)", err=True)


def print_people(photo: str, people: list[dict]) -> None:
    from rich.table import Table

    table = Table(title=f"who is {photo}", title_justify="left")
    table.add_column("#", justify="right")
    table.add_column("person")
    table.add_column("probability", justify="right")
    table.add_column("")
    for p in people:
        table.add_row(str(p["rank"] + 1), p["person"], f"{p['probability']:.1%}",
                      "█" * round(p["probability"] * 20))
    console().print(table)
def print_closest(photo: str, matches: list[dict]) -> None:
    from rich.table import Table

    table = Table(title=f"closest gallery images to {photo}", title_justify="left")
    table.add_column("#", justify="right")
    table.add_column("person")
    table.add_column("distance", justify="right")
    table.add_column("path", overflow="fold")
    for m in matches:
        table.add_row(str(m["rank"] + 1), m["person"], f"{m['distance']:.4f}", m["path"])
    console().print(table)
