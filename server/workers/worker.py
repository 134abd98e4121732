"""A worker process of `ferry serve --workers N`: `python -m server.workers.worker SETTINGS SLOT`,
started by the supervisor with the pickled settings it wrote (in its private 0700 folder)."""

from __future__ import annotations

import dataclasses
import pickle
import sys
from pathlib import Path

from server.app import run_server
from server.settings import ServerSettings


def main(argv: list[str]) -> int:
    # written by our supervisor into its private folder
    settings = pickle.loads(Path(argv[0]).read_bytes())
    assert isinstance(settings, ServerSettings)
    return run_server(dataclasses.replace(settings, worker_slot=int(argv[1])))


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
