"""ModelRepository: scans a Triton-layout repository, applies version policies, loads, reloads and
unloads models in Triton's control modes, and keeps every other model serving when one fails.

Loading is blocking work (reading files, building sessions) and runs on worker threads; the
swap from old to new versions happens on the event loop, so requests already queued on an old
version finish on it while new requests go to the new one.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from monitoring.observer import ModelEventRecord
from server import model_config
from server.errors import ErrorKind, ServingError
from server.model import ModelVersion, start_version
from server.observers import ObserverFanout
from server.repository_format import ModelConfigError, is_valid_model_name
from server.settings import ModelControlMode
from server.warmup import load_warm_instances, record_warmup

logger = logging.getLogger(__name__)

READY, UNAVAILABLE, LOADING, UNLOADING = "READY", "UNAVAILABLE", "LOADING", "UNLOADING"


@dataclass
class VersionState:
    """A version's state and why (Triton's repository index entry)."""

    state: str
    reason: str = ""


@dataclass
class ModelEntry:
    """Everything the repository knows about one model name."""

    name: str
    source_dir: Path
    live: bool = False
    versions: dict[int, ModelVersion] = field(default_factory=dict)
    states: dict[int, VersionState] = field(default_factory=dict)
    failure: str = ""  # model-level failure (bad config, no versions)
    scan_signature: tuple[Any, ...] = ()
    temporary_dir: Path | None = None


class ModelRepository:
    """Loaded models by name and version, plus the control operations on them."""

    def __init__(
        self,
        root: Path,
        mode: ModelControlMode,
        fanout: ObserverFanout | None = None,
        default_max_batch_size: int = 4,
    ) -> None:
        self.root = Path(root)
        self.mode = mode
        self.fanout = fanout or ObserverFanout()
        self.default_max_batch_size = default_max_batch_size
        self._entries: dict[str, ModelEntry] = {}
        self._lock = asyncio.Lock()
        self._draining: set[asyncio.Task[None]] = set()

    # --- queries (event loop, no awaits) -------------------------------------------------------

    def get(self, name: str, version: str = "") -> ModelVersion:
        """Resolve a request's model and version ('' or -1: the highest READY version)."""
        entry = self._entries.get(name)
        if entry is None or not entry.live:
            raise ServingError(
                ErrorKind.NOT_FOUND, f"Request for unknown model: '{name}' is not found"
            )
        if version in ("", "-1"):
            if not entry.versions:
                reason = entry.failure or "; ".join(
                    s.reason for s in entry.states.values() if s.reason
                )
                raise ServingError(
                    ErrorKind.UNAVAILABLE,
                    f"Request for unknown model: '{name}' has no available versions"
                    + (f" ({reason})" if reason else ""),
                )
            return entry.versions[max(entry.versions)]
        if not version.isdigit():
            raise ServingError(ErrorKind.INVALID_ARG, f"invalid model version '{version}'")
        number = int(version)
        if number in entry.versions:
            return entry.versions[number]
        if number in entry.states:
            raise ServingError(
                ErrorKind.UNAVAILABLE,
                f"Request for unknown model: '{name}' version {number} is not at ready state",
            )
        raise ServingError(
            ErrorKind.NOT_FOUND,
            f"Request for unknown model: '{name}' version {number} is not found",
        )

    def ready_versions(self) -> Iterator[ModelVersion]:
        """Every READY version of every model."""
        for entry in self._entries.values():
            yield from entry.versions.values()

    def pending_request_counts(self) -> list[tuple[str, str, int]]:
        """(model, version, queued requests) for the pending-request gauge."""
        return [(v.name, v.version, v.batcher.pending_count) for v in self.ready_versions()]

    def all_ready(self) -> bool:
        """Strict readiness: every live model has each of its versions READY."""
        return all(
            not entry.failure
            and entry.versions
            and all(
                state.state == READY
                for state in entry.states.values()
                if state.reason != "unloaded"
            )
            for entry in self._entries.values()
            if entry.live
        )

    def index(self, ready_only: bool = False) -> list[dict[str, str]]:
        """Triton's repository index: every model in the repository, per-version state."""
        names = set(self._entries) | set(self._scan_names())
        rows: list[dict[str, str]] = []
        for name in sorted(names):
            entry = self._entries.get(name)
            if entry is None or (not entry.states and not entry.failure):
                if not ready_only:
                    rows.append({"name": name})
                continue
            if entry.failure and not entry.versions and not ready_only:
                rows.append(
                    {"name": name, "version": "", "state": UNAVAILABLE, "reason": entry.failure}
                )
            for number, state in sorted(entry.states.items()):
                if ready_only and state.state != READY:
                    continue
                rows.append(
                    {
                        "name": name,
                        "version": str(number),
                        "state": state.state,
                        "reason": state.reason,
                    }
                )
        return rows

    def _scan_names(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return [p.name for p in self.root.iterdir() if p.is_dir() and is_valid_model_name(p.name)]

    # --- control ------------------------------------------------------------------------------

    async def start(self, load_models: Sequence[str] = ()) -> None:
        """Initial load: everything (none/poll modes) or the --load-model names (explicit)."""
        if self.mode == ModelControlMode.EXPLICIT:
            names = self._scan_names() if "*" in load_models else list(load_models)
        else:
            names = self._scan_names()
        for name in sorted(set(names)):
            try:
                await self.load(name)
            except ServingError as exc:  # logged as a model event, unless nothing was loaded
                if name not in self._entries:
                    logger.error("model '%s' failed to load: %s", name, exc.message)

    async def load(
        self, name: str, config_json: str | None = None, files: Mapping[str, bytes] | None = None
    ) -> None:
        """Load (or reload) a model; raises ServingError when it ends with no READY version."""
        if not is_valid_model_name(name):
            raise ServingError(
                ErrorKind.INVALID_ARG,
                f"invalid model name '{name}': path separators, '..' and hidden "
                "names are not allowed",
            )
        async with self._lock:
            source_dir, temporary = self.root / name, None
            if files:
                if config_json is None:
                    raise ServingError(
                        ErrorKind.INVALID_ARG,
                        "load with 'file:' parameters needs a 'config' parameter",
                    )
                temporary = await asyncio.to_thread(_write_model_files, name, files)
                source_dir = temporary / name
            elif not source_dir.is_dir() and config_json is None:
                raise ServingError(
                    ErrorKind.NOT_FOUND,
                    f"failed to load '{name}', failed to poll from model "
                    "repository: no such model folder",
                )
            await self._load_locked(name, source_dir, config_json, temporary)

    async def _load_locked(
        self, name: str, source_dir: Path, config_json: str | None, temporary: Path | None
    ) -> None:
        entry = self._entries.setdefault(name, ModelEntry(name, source_dir))
        if entry.temporary_dir is not None and entry.temporary_dir != temporary:
            shutil.rmtree(entry.temporary_dir, ignore_errors=True)
        entry.source_dir, entry.temporary_dir, entry.live = source_dir, temporary, True
        started = time.perf_counter()
        try:
            prepared = await asyncio.to_thread(
                model_config.prepare, name, source_dir, config_json, self.default_max_batch_size
            )
        except (ModelConfigError, ServingError, OSError) as exc:
            message = exc.message if isinstance(exc, ServingError) else str(exc)
            if entry.versions:
                logger.error(
                    "reload of '%s' failed, the loaded versions keep serving: %s", name, message
                )
                raise ServingError(
                    ErrorKind.INVALID_ARG, f"failed to load '{name}': {message}"
                ) from exc
            entry.failure = message
            entry.states = {}
            self.fanout.notify(ModelEventRecord(name, "", UNAVAILABLE, reason=message))
            raise ServingError(
                ErrorKind.INVALID_ARG, f"failed to load '{name}': {message}"
            ) from exc
        entry.failure = ""
        entry.scan_signature = prepared.scan_signature
        new_versions: dict[int, ModelVersion] = {}
        new_states: dict[int, VersionState] = {}
        created: list[ModelVersion] = []
        for number in prepared.versions:
            signature = prepared.version_signature(number)
            old = entry.versions.get(number)
            if old is not None and old.signature == signature:
                new_versions[number], new_states[number] = old, VersionState(READY)
                continue
            entry.states[number] = VersionState(LOADING)
            version_path = source_dir / str(number)
            try:
                instances, warmup = await load_warm_instances(
                    name, number, prepared.config, version_path
                )
            except (ServingError, OSError, ValueError) as exc:
                reason = exc.message if isinstance(exc, ServingError) else str(exc)
                if old is not None:  # a failed reload keeps the old version serving
                    logger.error(
                        "reload of '%s' version %d failed, the loaded one keeps serving: %s",
                        name,
                        number,
                        reason,
                    )
                    new_versions[number], new_states[number] = old, VersionState(READY)
                else:
                    new_states[number] = VersionState(UNAVAILABLE, reason)
                    self.fanout.notify(
                        ModelEventRecord(name, str(number), UNAVAILABLE, reason=reason)
                    )
                continue
            new_versions[number] = start_version(
                name,
                number,
                prepared.config,
                version_path,
                instances,
                self.fanout,
                started,
                signature,
            )
            record_warmup(new_versions[number], warmup, self.fanout)
            new_states[number] = VersionState(READY)
            created.append(new_versions[number])
        retired = [v for n, v in entry.versions.items() if new_versions.get(n) is not v]
        for number in entry.states:
            if number not in new_states and entry.states[number].state == READY:
                new_states[number] = VersionState(UNAVAILABLE, "unloaded")
        entry.versions, entry.states = new_versions, new_states
        for old_version in retired:
            if int(old_version.version) not in new_versions:
                self.fanout.notify(
                    ModelEventRecord(name, old_version.version, UNAVAILABLE, reason="unloaded")
                )
            self._retire(old_version)
        for version in created:
            self._announce(version)  # state changes are logged by the observers (once)
        if not new_versions:
            reasons = "; ".join(f"version {n}: {s.reason}" for n, s in new_states.items())
            raise ServingError(
                ErrorKind.INVALID_ARG, f"failed to load '{name}': {reasons or 'no version to load'}"
            )

    def _announce(self, version: ModelVersion) -> None:
        self.fanout.notify(
            ModelEventRecord(
                version.name,
                version.version,
                READY,
                version_path=str(version.version_path),
                load_duration_s=version.load_duration_s,
                inputs={s.name: (s.datatype, s.shape) for s in version.inputs.values()},
                outputs={s.name: (s.datatype, s.shape) for s in version.outputs.values()},
                max_batch_size=version.max_batch_size,
            )
        )

    async def unload(self, name: str) -> None:
        """Unload every version; queued and running requests finish first."""
        if not is_valid_model_name(name):
            raise ServingError(ErrorKind.INVALID_ARG, f"invalid model name '{name}'")
        async with self._lock:
            entry = self._entries.get(name)
            if entry is None or not entry.live:
                return  # Triton answers success for a model that is not loaded
            for version in entry.versions.values():
                self.fanout.notify(
                    ModelEventRecord(name, version.version, UNAVAILABLE, reason="unloaded")
                )
                self._retire(version)
            entry.states = {n: VersionState(UNAVAILABLE, "unloaded") for n in entry.versions}
            entry.versions, entry.live, entry.failure = {}, False, ""
            if entry.temporary_dir is not None:
                shutil.rmtree(entry.temporary_dir, ignore_errors=True)
                entry.temporary_dir = None

    async def poll_once(self) -> None:
        """Poll mode: load new models, reload changed ones, unload removed ones."""
        present = set(self._scan_names())
        for name in sorted(present):
            entry = self._entries.get(name)
            if entry is not None and entry.temporary_dir is None and entry.live:
                signature = await asyncio.to_thread(model_config.scan_signature, self.root / name)
                if signature == entry.scan_signature:
                    continue
                if entry.failure == "" and not entry.versions and not entry.states:
                    continue
            try:
                await self.load(name)
            except ServingError as exc:
                if name not in self._entries:  # else logged as a model event
                    logger.error("poll: %s", exc.message)
                if name in self._entries:  # don't retry an unchanged broken model every poll
                    self._entries[name].scan_signature = await asyncio.to_thread(
                        model_config.scan_signature, self.root / name
                    )
        for name, entry in list(self._entries.items()):
            if entry.live and entry.temporary_dir is None and name not in present:
                await self.unload(name)

    async def poll_forever(self, interval_s: float) -> None:
        """Rescan every `interval_s` seconds until cancelled."""
        while True:
            await asyncio.sleep(interval_s)
            try:
                await self.poll_once()
            except Exception:
                logger.exception("repository poll failed")

    def _retire(self, version: ModelVersion) -> None:
        task = asyncio.get_running_loop().create_task(version.batcher.drain())
        self._draining.add(task)
        task.add_done_callback(self._draining.discard)

    async def close(self) -> None:
        """Drain every version (accepted requests complete) and release all instances."""
        async with self._lock:
            for entry in self._entries.values():
                for version in entry.versions.values():
                    self._retire(version)
                entry.versions = {}
                if entry.temporary_dir is not None:
                    shutil.rmtree(entry.temporary_dir, ignore_errors=True)
        if self._draining:
            await asyncio.gather(*self._draining, return_exceptions=True)


def _write_model_files(name: str, files: Mapping[str, bytes]) -> Path:
    """Write the load API's `file:<version>/<name>` contents into a temporary model folder."""
    root = Path(tempfile.mkdtemp(prefix="ferry-load-"))
    model_dir = (root / name).resolve()
    for relative, content in files.items():
        target = (model_dir / relative).resolve()
        if model_dir not in target.parents:
            shutil.rmtree(root, ignore_errors=True)
            raise ServingError(
                ErrorKind.INVALID_ARG, f"file path '{relative}' leaves the model folder"
            )
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(content)
    return root
