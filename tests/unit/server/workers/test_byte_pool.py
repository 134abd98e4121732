"""The buffered-bytes budgets under `--workers N` are the server's: every worker leases from one
pool (server/workers/byte_pool.py, server/byte_budget.py), so one request may use the whole
budget whichever worker takes it, and the workers together never pass it."""

from __future__ import annotations

import multiprocessing
from pathlib import Path

import pytest

from server.protocol.grpc_wire.limits import RequestBudget
from server.protocol.http_limits import BufferBudget, RequestRejected
from server.workers.byte_pool import SharedBytePool

MiB = 1 << 20


def test_leases_of_every_worker_stay_within_the_capacity(tmp_path: Path) -> None:
    first = SharedBytePool(tmp_path, "http", 2, 0, 100)
    second = SharedBytePool(tmp_path, "http", 2, 1, 100)
    assert first.lease(60)
    assert not second.lease(50)  # 110 would pass 100; nothing leased
    assert second.lease(40)
    assert first.leased() == second.leased() == 100
    first.give_back(60)
    assert second.lease(50)
    assert first.leased() == 90
    for pool in (first, second):
        pool.close()


def test_a_replaced_worker_starts_with_nothing_leased(tmp_path: Path) -> None:
    survivor = SharedBytePool(tmp_path, "grpc", 2, 0, 100)
    killed = SharedBytePool(tmp_path, "grpc", 2, 1, 100)
    assert killed.lease(70) and survivor.lease(10)
    killed.close()  # its process died holding 70 bytes of requests that died with it
    replacement = SharedBytePool(tmp_path, "grpc", 2, 1, 100)
    assert survivor.leased() == 10
    assert replacement.lease(90)
    survivor.close()
    replacement.close()


def _lease_one_byte_at_a_time(
    folder: Path, slot: int, attempts: int, granted: multiprocessing.Queue[int]
) -> None:
    pool = SharedBytePool(folder, "race", 4, slot, 1000)
    granted.put(sum(pool.lease(1) for _ in range(attempts)))
    pool.close()


def test_workers_racing_for_the_last_bytes_never_pass_the_capacity(tmp_path: Path) -> None:
    SharedBytePool(tmp_path, "race", 4, 0, 1000).close()  # zeroed before the race starts
    context = multiprocessing.get_context("fork")
    granted: multiprocessing.Queue[int] = context.Queue()
    racers = [
        context.Process(target=_lease_one_byte_at_a_time, args=(tmp_path, slot, 600, granted))
        for slot in range(4)
    ]
    for racer in racers:
        racer.start()
    totals = [granted.get(timeout=60) for _ in racers]
    for racer in racers:
        racer.join(timeout=60)
    assert sum(totals) == 1000  # 2,400 attempts: exactly the capacity granted, no more


def test_one_http_request_may_use_the_whole_budget_whichever_worker_takes_it(
    tmp_path: Path,
) -> None:
    budgets = [
        BufferBudget(10 * MiB, SharedBytePool(tmp_path, "http", 2, slot, 10 * MiB))
        for slot in range(2)
    ]
    whole = budgets[1].reservation()
    whole.grow(10 * MiB)  # a split budget (5 MiB each) refused this
    with pytest.raises(RequestRejected) as refused:
        budgets[0].reservation().grow(1)
    assert refused.value.status == 503
    assert "10485760 of 10485760 bytes (--http-max-buffered-bytes)" in refused.value.message
    whole.release()
    # the worker that took it keeps one chunk idle (its next requests lease nothing)
    assert budgets[1].granted == budgets[1].chunk
    budgets[0].reservation().grow(10 * MiB - budgets[1].chunk)


def test_http_reservations_across_workers_are_refused_only_past_the_servers_budget(
    tmp_path: Path,
) -> None:
    first, second = (
        BufferBudget(10 * MiB, SharedBytePool(tmp_path, "http", 2, slot, 10 * MiB))
        for slot in range(2)
    )
    held = first.reservation()
    held.grow(6 * MiB)
    with pytest.raises(RequestRejected):
        second.reservation().grow(5 * MiB)  # 11 MiB in all
    other = second.reservation()
    other.grow(3 * MiB)
    held.release()
    # the first worker keeps one chunk idle at most: the second may now take 6 MiB more
    assert first.granted - first.used <= first.chunk
    other.grow(6 * MiB)
    assert second.used == 9 * MiB


def test_small_requests_take_no_lease_after_the_first(tmp_path: Path) -> None:
    pool = SharedBytePool(tmp_path, "http", 2, 0, 1 << 30)
    budget = BufferBudget(1 << 30, pool)
    reservation = budget.reservation()
    reservation.grow(1000)
    leased = pool.leased()
    assert leased == 1000 + budget.chunk  # a chunk ahead
    for _ in range(1000):
        reservation = budget.reservation()
        reservation.grow(1000)
        reservation.release()
    assert pool.leased() == leased


def test_a_single_process_budget_holds_the_whole_capacity_without_a_pool() -> None:
    budget = BufferBudget(100)
    reservation = budget.reservation()
    reservation.grow(100)
    with pytest.raises(RequestRejected):
        budget.reservation().grow(1)
    reservation.release()
    assert budget.granted == 100 and budget.used == 0


def test_grpc_budget_leases_on_the_event_loop_and_while_inflating(tmp_path: Path) -> None:
    first, second = (
        RequestBudget(8 * MiB, SharedBytePool(tmp_path, "grpc", 2, slot, 8 * MiB))
        for slot in range(2)
    )
    assert first.try_charge(5 * MiB)
    assert not second.try_charge(4 * MiB)
    assert second.try_charge_inflating(2 * MiB)
    assert not second.try_charge_inflating(2 * MiB)  # 5 + 2 + 2 > 8
    second.settle_inflated(2 * MiB)
    first.release(5 * MiB)
    assert second.try_charge(5 * MiB)
    assert second.used == 7 * MiB
    assert "8388608 request bytes" in second.exhausted_message()
