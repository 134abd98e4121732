"""System shared memory regions made the way Triton's examples make them
(`tritonclient.utils.shared_memory`), and always destroyed."""

from __future__ import annotations

import contextlib
import uuid
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

with warnings.catch_warnings():  # tritonclient's shared memory module imports pkg_resources
    warnings.simplefilter("ignore", UserWarning)
    import tritonclient.utils.shared_memory as shm


@dataclass(frozen=True)
class ClientRegion:
    """A POSIX shared memory object created by the client: its key and tritonclient handle."""

    key: str
    byte_size: int
    handle: Any


@contextlib.contextmanager
def client_region(byte_size: int) -> Iterator[ClientRegion]:
    """A fresh shared memory object with a unique key, unlinked at the end of the block."""
    key = f"/ferry_test_{uuid.uuid4().hex[:16]}"
    handle = shm.create_shared_memory_region(key[1:], key, byte_size)
    try:
        yield ClientRegion(key, byte_size, handle)
    finally:
        shm.destroy_shared_memory_region(handle)
