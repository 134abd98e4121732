"""How a lane forms its next batch: Triton's direct and oldest strategies.

Each returns the batch's rows (a None row is a null slot) or, when it should wait for more
requests, no rows and the seconds to wait (None: nothing to wait for)."""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable

from server.sequence.policy import SequencePolicy
from server.sequence.slots import Lane, Step

Rows = list[Step | None]
ShapeKey = Callable[[Step], Hashable]


def direct_rows(lane: Lane, policy: SequencePolicy, key_of: ShapeKey) -> tuple[Rows, float | None]:
    """Slots 0 .. the highest ready one; empty slots (or other shapes) are null rows. Waits for
    `minimum_slot_utilization` of the slots up to `max_queue_delay`."""
    ready = lane.fronts()
    if not ready:
        return [], None
    if policy.max_queue_delay_s > 0 and policy.minimum_slot_utilization > 0:
        waited = time.perf_counter() - min(step.enqueued_at for _, step in ready)
        utilization = len(ready) / max(1, policy.max_batch_size)
        if waited <= policy.max_queue_delay_s and utilization < policy.minimum_slot_utilization:
            return [], policy.max_queue_delay_s - waited
    key = key_of(ready[0][1])
    chosen = [(slot, step) for slot, step in ready if key_of(step) == key]
    rows: Rows = [None] * (chosen[-1][0] + 1)
    for slot, step in chosen:
        rows[slot] = step
    return rows, None


def oldest_rows(lane: Lane, policy: SequencePolicy, key_of: ShapeKey) -> tuple[Rows, float | None]:
    """The oldest front requests of the candidate sequences (one per sequence), as the dynamic
    batcher: a preferred size runs at once, else up to `max_queue_delay` for a fuller batch."""
    fronts = sorted((step for _, step in lane.fronts()), key=lambda s: s.enqueued_at)
    if not fronts:
        return [], None
    capacity = max(1, policy.max_batch_size)
    key = key_of(fronts[0])
    taken: Rows = []
    best_cut = 0
    forced = False
    for step in fronts:
        if len(taken) == capacity:
            break
        if key_of(step) != key:
            forced = True
            break
        taken.append(step)
        if len(taken) in policy.preferred_batch_sizes:
            best_cut = len(taken)
    waited = time.perf_counter() - fronts[0].enqueued_at
    delay = policy.max_queue_delay_s
    if best_cut and waited < delay:
        return taken[:best_cut], None
    if forced or len(taken) >= policy.preferred_batch_sizes[-1] or waited >= delay:
        return taken, None
    return [], delay - waited
