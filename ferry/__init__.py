"""The `ferry` command: one front door that mounts each package's commands."""

from server.version import __version__

__all__ = ["__version__"]
