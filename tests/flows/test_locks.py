"""The promotion lock on the embedded default: a Prefect global concurrency limit of one slot."""

from __future__ import annotations

import contextvars
import threading

import pytest
from prefect import get_client
from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate

from flows.locks import ensure_lock, promotion_limit, promotion_lock

pytestmark = [pytest.mark.flow, pytest.mark.usefixtures("prefect_server")]


def test_promotion_lock_lets_one_holder_in_at_a_time() -> None:
    inside: list[str] = []
    first_in, first_may_leave, second_in = threading.Event(), threading.Event(), threading.Event()

    def first() -> None:
        with promotion_lock("locked"):
            inside.append("first in")
            first_in.set()
            first_may_leave.wait()
            inside.append("first out")

    def second() -> None:
        first_in.wait()
        with promotion_lock("locked"):
            inside.append("second in")
            second_in.set()

    # Each thread runs in a copy of this context: the session's Prefect server is a context setting.
    threads = [threading.Thread(target=contextvars.copy_context().run, args=(fn,)) for fn in (first, second)]
    for thread in threads:
        thread.start()
    assert first_in.wait(120)
    # While the first holds the slot, the second waits (it would be in within a second if not).
    assert not second_in.wait(5)
    first_may_leave.set()
    for thread in threads:
        thread.join()
    assert inside == ["first in", "first out", "second in"]

    with get_client(sync_client=True) as client:
        limit = client.read_global_concurrency_limit_by_name(promotion_limit("locked"))
    assert (limit.limit, limit.active, limit.active_slots) == (1, True, 0)


def test_a_lock_with_more_than_one_slot_is_refused() -> None:
    name = promotion_limit("loose")
    with get_client(sync_client=True) as client:
        client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=name, limit=2))
    with pytest.raises(RuntimeError, match=r"must be active with limit 1.*it has limit 2"):
        ensure_lock(name)
