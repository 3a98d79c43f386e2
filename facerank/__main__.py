"""``python -m facerank`` runs the command line."""

from facerank.cli.app import main

main()
