"""The ``lens-bias`` command: parse, call the package, print. ``main`` holds the app and the
commands; ``common`` the shared options; ``experiment``, ``pairs`` and ``prune`` their commands."""

from .main import app

__all__ = ["app"]
