"""The supervisor's Triton trace file: the workers' traces, ids renumbered as one server's."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from server.workers.trace_file import TraceFileWriter


def trace(local_id: int, model: str, parent: int | None = None) -> list[dict[str, Any]]:
    header: dict[str, Any] = {"id": local_id, "model_name": model, "model_version": 1}
    if parent is not None:
        header["parent_id"] = parent
    return [header, {"id": local_id, "timestamps": [{"name": "REQUEST_START", "ns": 1}]}]


def test_ids_are_renumbered_per_message_and_steps_keep_their_parent(tmp_path: Path) -> None:
    writer = TraceFileWriter()
    path = str(tmp_path / "trace.json")
    writer.add(path, 0, trace(1, "mlp"))  # worker 0's first trace
    writer.add(path, 0, trace(1, "mlp"))  # worker 1's first trace: the same local id
    writer.add(path, 0, trace(7, "pipeline") + trace(8, "step", parent=7))  # an ensemble
    writer.close()
    entries = json.loads(Path(path).read_text())
    headers = [(e["id"], e["model_name"], e.get("parent_id")) for e in entries if "model_name" in e]
    assert headers == [(1, "mlp", None), (2, "mlp", None), (3, "pipeline", None), (4, "step", 3)]
    assert [e["id"] for e in entries if "timestamps" in e] == [1, 2, 3, 4]


def test_log_frequency_counts_every_workers_traces(tmp_path: Path) -> None:
    writer = TraceFileWriter()
    path = tmp_path / "trace.json"
    for _ in range(5):
        writer.add(str(path), 2, trace(1, "mlp"))
    writer.close()
    sizes = [len(json.loads((tmp_path / f"trace.json.{n}").read_text())) for n in range(3)]
    assert sizes == [4, 4, 2] and not path.exists()  # two traces a file, the last one at close
