"""ModelRepository: scans a Triton-layout repository, applies version policies, loads, reloads and
unloads models in Triton's control modes, and keeps every other model serving when one fails.

Loading is blocking work (reading files, building sessions) and runs on worker threads; the
swap from old to new versions happens on the event loop, so requests already queued on an old
version finish on it while new requests go to the new one.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hashlib
import logging
import re
import shutil
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from monitoring.observer import ModelEventRecord
from server import model_config
from server.ensemble import (
    composing_models,
    ensemble_steps,
    is_ensemble,
    missing_models_reason,
    step_problem,
)
from server.errors import ErrorKind, ServingError
from server.model import ModelVersion, remote_version, start_version
from server.observers import ObserverFanout
from server.repository_format import (
    MAX_MODEL_NAME_BYTES,
    ModelConfig,
    ModelConfigError,
    is_valid_model_name,
    read_config,
)
from server.runtimes import RuntimeContext, SharedInstances
from server.schedulers import Scheduler
from server.sequence import SequenceBatcher
from server.services import InferenceServices
from server.settings import ModelControlMode
from server.warmup import load_warm_instances, record_warmup

logger = logging.getLogger(__name__)
SETTLE_POLL_S = 0.02  # how often an owner looks whether a version's load has ended
SETTLE_TIMEOUT_S = 120.0


class Placement(Protocol):
    """Where a model runs under --shared-batching (server/workers/remote_model.py)."""

    def owns(self, model: str) -> bool:
        """Whether this worker loads and runs the model."""

    def remote(self, model: str, version: str, config: ModelConfig) -> Scheduler | None:
        """The scheduler of a version another worker runs, or None to load it here."""

    async def verdict(self, model: str, version: str, control_seq: int) -> Verdict:
        """How the owner's load of the version ended in control call `control_seq` (or
        later): (state, reason, `served_digest` of the version it serves)."""

    def shared_instances(
        self, model: str, version: str, config: ModelConfig, digest: str
    ) -> SharedInstances | None:
        """How the version's instance processes are shared across workers (run in the owner,
        attached to elsewhere), or None when they are not (`digest`: its served_digest)."""


READY, UNAVAILABLE, LOADING, UNLOADING = "READY", "UNAVAILABLE", "LOADING", "UNLOADING"
# how an owner's load of a version ended: (state, reason, served_digest of the version it
# serves, "" when none)
Verdict = tuple[str, str, str]


def served_digest(signature: tuple[object, ...]) -> str:
    """A short digest of a version's signature (its config and files), the same in every
    worker: an owner tells the others which version it serves by it."""
    return hashlib.blake2b(repr(signature).encode(), digest_size=8).hexdigest()


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
    composing: tuple[str, ...] = ()  # an ensemble's composing models
    waiting_for_composing: bool = False  # an ensemble unloaded because one of them is not ready


def invalid_name_message(name: str) -> str:
    """Why `name` cannot be loaded, in Triton's words where Triton refuses it too (a name over
    MAX_MODEL_NAME_BYTES is shown cut there)."""
    if not name.strip():
        return "Model name cannot be empty. Please enter a valid name to deploy."
    shown = name[:MAX_MODEL_NAME_BYTES]
    if "/" in name or "\\" in name or ".." in name.strip().split("/"):
        return (
            f"invalid model name '{shown}': model name must not contain path traversal characters"
        )
    if len(name) > MAX_MODEL_NAME_BYTES:
        return f"invalid model name '{shown}...': longer than {MAX_MODEL_NAME_BYTES} characters"
    return (
        f"invalid model name '{shown}': a model name is one folder name of letters, digits, "
        "'_', '-' and '.', not starting with '.'"
    )


# What C++ std::stol accepts, as Triton parses a requested version: leading blanks, a sign,
# digits; anything after the digits is ignored ("1abc" is version 1).
_VERSION_PREFIX = re.compile(r"\s*([+-]?[0-9]+)")
_INT64_MAX = 2**63 - 1


def parse_version(version: str) -> int | None:
    """A requested model version: None for '' (the latest), else a number >= 0; anything
    else is INVALID_ARG, with Triton's messages."""
    if not version:
        return None
    match = _VERSION_PREFIX.match(version)
    if match is None or abs(int(match.group(1))) > _INT64_MAX:
        raise ServingError(
            ErrorKind.INVALID_ARG,
            f"failed to get model version from specified version string '{version}' "
            "(details: stol), version should be an integral value > 0",
        )
    number = int(match.group(1))
    if number < 0:
        raise ServingError(
            ErrorKind.INVALID_ARG,
            f"invalid model version specified '{version}' , version should be an integral "
            "value > 0",
        )
    return number


class ModelRepository:
    """Loaded models by name and version, plus the control operations on them."""

    def __init__(
        self,
        root: Path,
        mode: ModelControlMode,
        fanout: ObserverFanout | None = None,
        default_max_batch_size: int = 4,
        cpu_threads: int = 0,
    ) -> None:
        self.root = Path(root)
        # RuntimeContext.cpu_threads of every model's instances (0: the runtime's default)
        self.cpu_threads = cpu_threads
        # --shared-batching: a scheduler for a version another worker runs, None to load it
        self.placement: Placement | None = None
        self._loading: set[str] = set()  # models a load is running for
        # --workers N: the supervisor's number of the control call (load, unload, poll) this
        # worker runs or ran last (its start-up load counts as the last one before it joined),
        # the last one it has completed, and per model the last one whose load of it has ended
        # or that found it unchanged
        self.control_seq = 0
        self.control_done = -1
        self._passed: dict[str, int] = {}
        self.mode = mode
        self.fanout = fanout or ObserverFanout()
        self.default_max_batch_size = default_max_batch_size
        self._entries: dict[str, ModelEntry] = {}
        self._lock = asyncio.Lock()
        self._draining: set[asyncio.Task[None]] = set()
        # the server's inference entry (the data plane sets it): BLS calls and ensemble steps
        self.services: InferenceServices | None = None

    # --- queries (event loop, no awaits) -------------------------------------------------------

    def get(self, name: str, version: str = "") -> ModelVersion:
        """Resolve a request's model and version ('': the highest READY version)."""
        number = parse_version(version)  # as Triton: a bad version string is refused first
        entry = self._entries.get(name)
        if entry is None:
            raise ServingError(
                ErrorKind.NOT_FOUND, f"Request for unknown model: '{name}' is not found"
            )
        if not entry.live:
            raise ServingError(
                ErrorKind.NOT_FOUND,
                f"Request for unknown model: '{name}' has no available versions",
            )
        if number is None:
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

    async def settled_state(self, name: str, version: str, control_seq: int) -> Verdict:
        """How this worker's load of a version ended in control call `control_seq` or a later
        one, once it has (another worker, running that call, asks under --shared-batching):
        (READY, "", the served version's digest) or (UNAVAILABLE, reason, ""). After a failed
        reload the version is READY with the digest of the one it had, which keeps serving.

        Every worker runs each control call, each at its own pace: the question may come
        before this worker has received the call or reached the model in it, while its entry
        still tells how the previous load ended; so it waits for that call's load of the model
        (or for its finding the model unchanged)."""
        number = int(version)
        deadline = time.monotonic() + SETTLE_TIMEOUT_S
        while True:
            entry = self._entries.get(name)
            passed = max(self.control_done, self._passed.get(name, -1)) >= control_seq
            if entry is not None and passed and name not in self._loading:
                if entry.failure and not entry.versions:
                    return UNAVAILABLE, entry.failure, ""
                state = entry.states.get(number)
                if state is not None and state.state not in (LOADING, UNLOADING):
                    served = entry.versions.get(number)
                    digest = "" if served is None else served_digest(served.signature)
                    return state.state, state.reason, digest
            if time.monotonic() >= deadline:
                return UNAVAILABLE, "its owner worker did not load it", ""
            await asyncio.sleep(SETTLE_POLL_S)

    def ready_versions(self) -> Iterator[ModelVersion]:
        """Every READY version of every model."""
        for entry in self._entries.values():
            yield from entry.versions.values()

    def sequence_counts(self) -> list[tuple[str, str, int, int, int, int]]:
        """(model, version, live sequences, starts, ends, idle releases) of the versions that
        run the sequence batcher."""
        rows = []
        for v in self.ready_versions():
            if isinstance(v.scheduler, SequenceBatcher):
                c = v.scheduler.counts()
                rows.append((v.name, v.version, c.active, c.starts, c.ends, c.idle_releases))
        return rows

    def pending_request_counts(self) -> list[tuple[str, str, int]]:
        """(model, version, queued requests) for the pending-request gauge."""
        return [(v.name, v.version, v.scheduler.pending_count) for v in self.ready_versions()]

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
                row = {"name": name, "version": str(number), "state": state.state}
                if state.reason:  # as Triton: no empty reason
                    row["reason"] = state.reason
                rows.append(row)
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

        # ensembles after the models they compose (nested ensembles: _refresh_ensembles)
        def order(name: str) -> tuple[bool, bool, str]:
            return (self._is_ensemble_folder(name), *self._order(name))

        for name in sorted(set(names), key=order):
            try:
                await self.load(name)
            except ServingError as exc:  # logged as a model event, unless nothing was loaded
                if name not in self._entries:
                    logger.error("model '%s' failed to load: %s", name, exc.message)

    def _order(self, name: str) -> tuple[bool, str]:
        """Load order: under --shared-batching the models this worker owns first, since the
        other workers wait for their verdicts (each worker loads one model at a time)."""
        return self.placement is not None and not self.placement.owns(name), name

    def _is_ensemble_folder(self, name: str) -> bool:
        try:
            config = read_config(self.root / name)
        except (ModelConfigError, OSError):
            return False
        return config is not None and is_ensemble(config)

    async def load(
        self, name: str, config_json: str | None = None, files: Mapping[str, bytes] | None = None
    ) -> None:
        """Load (or reload) a model; raises ServingError when it ends with no READY version."""
        if not is_valid_model_name(name):
            raise ServingError(ErrorKind.INVALID_ARG, invalid_name_message(name))
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
            elif not source_dir.is_dir():  # a config alone does not make a model
                raise ServingError(
                    ErrorKind.NOT_FOUND,
                    f"failed to load '{name}', failed to poll from model "
                    "repository: no such model folder",
                )
            try:
                await self._load_locked(name, source_dir, config_json, temporary)
            finally:
                await self._refresh_ensembles()

    async def _load_locked(
        self, name: str, source_dir: Path, config_json: str | None, temporary: Path | None
    ) -> None:
        self._loading.add(name)  # settled_state waits: its entry may still show the last load
        try:
            await self._load_entry(name, source_dir, config_json, temporary)
        finally:
            self._loading.discard(name)
            self._passed[name] = self.control_seq

    def start_control_call(self, seq: int) -> None:
        """--workers N: this worker now runs the supervisor's control call `seq` (at start-up:
        the last call before it joined, which its start-up load stands for)."""
        self.control_seq = seq

    def end_control_call(self) -> None:
        """The control call this worker ran has ended (its start-up load and replay, for the
        call it joined at)."""
        self.control_done = self.control_seq

    async def _load_entry(
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
        entry.scan_signature = prepared.scan_signature
        entry.composing = (
            tuple(composing_models(prepared.config)) if is_ensemble(prepared.config) else ()
        )
        entry.waiting_for_composing = False
        if entry.composing:
            reason, missing = self._composing_problem(prepared.config)
            if reason:
                self._retire_all(entry, reason)
                entry.failure, entry.waiting_for_composing = reason, missing
                self.fanout.notify(ModelEventRecord(name, "", UNAVAILABLE, reason=reason))
                raise ServingError(ErrorKind.INVALID_ARG, f"failed to load '{name}': {reason}")
        entry.failure = ""
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
            placement = self.placement
            remote = placement.remote(name, str(number), prepared.config) if placement else None
            sharing = None  # its instance processes, when the workers share them
            if placement is not None and remote is None:  # this worker owns it
                digest = served_digest(signature)
                sharing = placement.shared_instances(name, str(number), prepared.config, digest)
            if remote is not None:  # another worker loads and runs it (--shared-batching)
                assert placement is not None
                state, reason, served = await placement.verdict(name, str(number), self.control_seq)
                # as the owner: when its load failed, or its reload did and it kept the version
                # it had, the loaded one serves
                kept = state == READY and served != served_digest(signature)
                if (state != READY or kept) and old is not None:
                    new_versions[number], new_states[number] = old, VersionState(READY)
                    continue
                if state != READY:  # the owner's reason, as the owner reports it
                    new_states[number] = VersionState(UNAVAILABLE, reason)
                    self.fanout.notify(
                        ModelEventRecord(name, str(number), UNAVAILABLE, reason=reason)
                    )
                    continue
                # (named by the digest the owner loaded: a model may write into its folder)
                sharing = placement.shared_instances(name, str(number), prepared.config, served)
            if remote is not None and sharing is None:  # requests go to the owner whole
                new_versions[number] = remote_version(
                    name, number, prepared.config, version_path, remote, started, signature
                )
                new_states[number] = VersionState(READY)
                created.append(new_versions[number])
                continue
            try:
                # (with `sharing`, the owner's instance processes: this worker's batcher
                # attaches to them, the owner's starts them)
                context = RuntimeContext(
                    asyncio.get_running_loop(), self.services, self.cpu_threads, sharing
                )
                instances, warmup = await load_warm_instances(
                    name, number, prepared.config, version_path, context
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
                self.services,
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
        """Unload every version; queued and running requests finish first. A name that is not
        loaded (whatever it is) is a success, as in Triton."""
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
            await self._refresh_ensembles()

    # --- ensembles: ready only while every composing model is ---------------------------------

    def _is_ready(self, name: str, version: str = "") -> bool:
        try:
            self.get(name, version)
        except ServingError:
            return False
        return True

    def _composing_problem(self, config: ModelConfig) -> tuple[str, bool]:
        """Why an ensemble cannot serve now ('' when it can), and whether it is a composing
        model not ready (it loads once they are) rather than a step that does not fit its
        model (it loads once its config is fixed)."""
        missing = [m for m in composing_models(config) if not self._is_ready(m)]
        if missing:
            return missing_models_reason(config.name, missing), True
        for step in ensemble_steps(config):
            model = self.get(step.model_name, step.model_version)
            problem = step_problem(
                config.name, step, set(model.inputs), set(model.outputs), model.decoupled
            )
            if problem:
                return problem, False
        return "", False

    def _retire_all(self, entry: ModelEntry, reason: str) -> None:
        for version in entry.versions.values():
            self.fanout.notify(
                ModelEventRecord(entry.name, version.version, UNAVAILABLE, reason=reason)
            )
            self._retire(version)
        entry.states = {n: VersionState(UNAVAILABLE, reason) for n in entry.versions}
        entry.versions = {}

    async def _refresh_ensembles(self) -> None:
        """After a load or unload: ensembles whose composing models went away stop serving;
        ensembles waiting for theirs load once they are all ready (until nothing changes)."""
        changed = True
        while changed:
            changed = False
            for entry in list(self._entries.values()):
                if not entry.live or not entry.composing:
                    continue
                ready = all(self._is_ready(m) for m in entry.composing)
                if entry.versions and not ready:
                    missing = [m for m in entry.composing if not self._is_ready(m)]
                    reason = missing_models_reason(entry.name, missing)
                    self._retire_all(entry, reason)
                    entry.failure, entry.waiting_for_composing = reason, True
                    changed = True
                elif entry.waiting_for_composing and ready:
                    with contextlib.suppress(ServingError):  # failures are model events
                        await self._load_locked(
                            entry.name, entry.source_dir, None, entry.temporary_dir
                        )
                    changed = bool(entry.versions)

    async def poll_once(self) -> None:
        """Poll mode: load new models, reload changed ones, unload removed ones."""
        present = set(self._scan_names())
        for name in sorted(present, key=self._order):
            entry = self._entries.get(name)
            if entry is not None and entry.temporary_dir is None and entry.live:
                signature = await asyncio.to_thread(model_config.scan_signature, self.root / name)
                unchanged = signature == entry.scan_signature or (
                    entry.failure == "" and not entry.versions and not entry.states
                )
                if unchanged:
                    self._passed[name] = self.control_seq
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
        async with self._lock:
            await self._refresh_ensembles()

    async def poll_forever(self, interval_s: float) -> None:
        """Rescan every `interval_s` seconds until cancelled."""
        while True:
            await asyncio.sleep(interval_s)
            try:
                await self.poll_once()
            except Exception:
                logger.exception("repository poll failed")

    def _retire(self, version: ModelVersion) -> None:
        task = asyncio.get_running_loop().create_task(version.scheduler.drain())
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


# errors a client's file path causes (too long, not a directory...): 400, not 500
CLIENT_PATH_ERRNOS = frozenset(
    {errno.ENAMETOOLONG, errno.EINVAL, errno.ENOTDIR, errno.EISDIR, errno.EEXIST, errno.ELOOP}
)


def _write_model_files(name: str, files: Mapping[str, bytes]) -> Path:
    """Write the load API's `file:<version>/<name>` contents into a temporary model folder."""
    root = Path(tempfile.mkdtemp(prefix="ferry-load-"))
    model_dir = (root / name).resolve()
    for relative, content in files.items():
        try:
            target = (model_dir / relative).resolve()
            if model_dir not in target.parents:
                raise ServingError(
                    ErrorKind.INVALID_ARG, f"file path '{relative}' leaves the model folder"
                )
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(content)
        except (OSError, ValueError) as exc:
            shutil.rmtree(root, ignore_errors=True)
            if isinstance(exc, OSError) and exc.errno not in CLIENT_PATH_ERRNOS:
                raise
            reason = exc.strerror if isinstance(exc, OSError) else str(exc)
            raise ServingError(
                ErrorKind.INVALID_ARG, f"invalid file path '{relative[:300]}': {reason}"
            ) from None
        except ServingError:
            shutil.rmtree(root, ignore_errors=True)
            raise
    return root
