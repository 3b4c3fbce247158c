"""The promotion lock on the embedded default (a Prefect global concurrency limit of one slot), and
the retraining that finds, inside it, a champion newer than the one it read at its start.

Concurrent runs against real servers are in tests/integration/test_servers.py.
"""

from __future__ import annotations

import contextvars
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from prefect import get_client
from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
from sklego.datasets import load_arrests
from toronto import ANY_CHANGE, toronto_raw

from components import names
from components.config import build_config
from components.registry import Registry
from components.release import champion_history
from components.settings import load_settings
from flows import retrain as retrain_module
from flows.locks import ensure_lock, promotion_limit, promotion_lock
from flows.retrain import retrain

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


def test_a_champion_installed_meanwhile_is_the_one_the_challenger_is_judged_against(
    workspace: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    load_arrests(as_frame=True).iloc[:700].to_csv(workspace / "incoming.csv", index=False)
    first = retrain(build_config(toronto_raw(), []), home=str(workspace))
    assert (first.outcome, first.version) == ("promoted", "1")
    registry = Registry(load_settings(workspace))
    model = names.registered_model_name("toronto")

    @contextmanager
    def another_run_promotes_first(pipeline: str) -> Iterator[None]:
        # What a concurrent run does meanwhile: register a version (here a copy of v1's model,
        # v3 since this run registered v2) and make it champion, just before this run's lock.
        v1 = registry.alias_version(pipeline, names.CHAMPION)
        assert v1 is not None
        copy = registry.client.create_model_version(model, source=v1.source, run_id=v1.run_id, tags=v1.tags)
        registry.client.set_registered_model_alias(model, names.CHAMPION, str(copy.version))
        with promotion_lock(pipeline):
            yield

    monkeypatch.setattr(retrain_module, "promotion_lock", another_run_promotes_first)
    second = retrain(
        build_config(toronto_raw(), [f"{k}={v}" for k, v in {"train.seed": 1, **ANY_CHANGE}.items()]),
        home=str(workspace),
    )

    assert (second.outcome, second.version, second.champion) == ("promoted", "2", "2")
    assert any("champion moved from v1 to v3 during this run" in note for note in second.notes), second.notes
    decision = registry.load_run_json(second.mlflow_run_id, "promotion/decision.json")
    assert decision["champion_version"] == "3"  # not the v1 it read at its start
    assert [(c.version, c.previous) for c in champion_history(registry, "toronto")] == [("1", None), ("2", "3")]
    # Evaluated and audited twice: against v1, then against v3; the run's record is the second,
    # and the summary lists each gate once, with the verdict that decided.
    gates = [g.gate for g in second.gates]
    assert gates.count("evaluation") == 1 and gates.count("bias") == 1
    assert gates.index("evaluation") < gates.index("bias") < gates.index("serving")
    [evaluation] = [r for r in second.reports if r.gate == "evaluation"]
    assert evaluation.status == "pass"
    metrics = registry.client.get_run(second.mlflow_run_id).data.metrics
    champion_accuracy = metrics["champion.accuracy"]
    assert champion_accuracy == pytest.approx(first.metrics["accuracy"])  # v3 is v1's model: same test rows
