"""The facerank command line (shipped as ``facerank.cli``): a thin Typer shell over the library."""
