"""The `ferry` command: one front door that mounts each package's commands."""

__version__ = "0.1.0"
