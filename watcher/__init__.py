"""watcher: watch container image tags and record every digest change."""

__version__ = "0.1.0"
