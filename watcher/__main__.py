"""``python -m watcher`` runs the command-line interface."""

from watcher.cli import main

main()
