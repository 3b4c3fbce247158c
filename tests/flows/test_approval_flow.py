"""`promote.approval: required`: the flow pauses for a person and acts on the answer.

The flow runs in a thread on the session's Prefect server; the test plays the approver with
Prefect's own `resume_flow_run`, as the UI or `prefect flow-run resume` would.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any
from uuid import UUID

import pandas as pd
import pytest
from prefect.client.orchestration import get_client
from prefect.flow_runs import resume_flow_run
from sklego.datasets import load_arrests
from toronto import toronto_raw

from components import names
from components.config import build_config
from components.registry import Registry
from components.settings import load_settings
from flows.retrain import retrain

pytestmark = [pytest.mark.flow, pytest.mark.usefixtures("prefect_server")]


@pytest.fixture(scope="module")
def arrests() -> pd.DataFrame:
    return load_arrests(as_frame=True).iloc[:700].reset_index(drop=True)


def start(workspace: Path, arrests: pd.DataFrame, timeout_s: int = 300) -> tuple[threading.Thread, dict[str, Any]]:
    """Start a retraining that needs approval; returns the thread and where its outcome lands."""
    arrests.to_csv(workspace / "incoming.csv", index=False)
    raw = toronto_raw(**{"promote": {"approval": "required", "approval_timeout_s": timeout_s, "approval_poll_s": 1}})
    config = build_config(raw)
    outcome: dict[str, Any] = {}

    def work() -> None:
        try:
            outcome["summary"] = retrain(config, home=str(workspace))
        except BaseException as error:  # reported by the test
            outcome["error"] = error

    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    return thread, outcome


def paused_run(registry: Registry, outcome: dict[str, Any]) -> tuple[str, UUID]:
    """Wait until the flow waits for approval: the version and its flow run."""
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        assert "error" not in outcome, outcome.get("error")
        waiting = [
            v for v in registry.versions("toronto") if v.tags.get(names.TAG_VERDICT) == names.VERDICT_AWAITING_APPROVAL
        ]
        if waiting:
            run_id = UUID(waiting[0].tags[names.TAG_FLOW_RUN_ID])
            with get_client(sync_client=True) as client:
                state = client.read_flow_run(run_id).state
            if state is not None and state.is_paused():
                return waiting[0].version, run_id
        time.sleep(0.5)
    raise AssertionError("the flow never paused for approval")


def finish(thread: threading.Thread, outcome: dict[str, Any]) -> Any:
    thread.join(timeout=240)
    assert not thread.is_alive(), "the flow did not finish after the answer"
    assert "error" not in outcome, outcome.get("error")
    return outcome["summary"]


def test_an_approved_candidate_becomes_champion_with_the_approver_recorded(
    workspace: Path, arrests: pd.DataFrame
) -> None:
    thread, outcome = start(workspace, arrests)
    registry = Registry(load_settings(workspace))
    version, flow_run = paused_run(registry, outcome)
    assert registry.alias_version("toronto", names.CHAMPION) is None  # nothing moves while it waits

    resume_flow_run(flow_run, run_input={"approver": "alice", "approve": True, "comment": "checked the card"})
    summary = finish(thread, outcome)

    assert (summary.outcome, summary.champion) == ("promoted", version)
    tags = registry.alias_version("toronto", names.CHAMPION).tags
    assert tags[names.TAG_APPROVAL_BY] == "alice"
    assert tags[names.TAG_APPROVAL_DECISION] == "approved"
    assert tags[names.TAG_VERDICT] == names.VERDICT_PROMOTED
    assert "approved by alice: checked the card" in summary.reasons


def test_an_approval_for_a_version_no_longer_the_challenger_is_refused(workspace: Path, arrests: pd.DataFrame) -> None:
    thread, outcome = start(workspace, arrests)
    registry = Registry(load_settings(workspace))
    version, flow_run = paused_run(registry, outcome)
    # Meanwhile another version became the challenger.
    model = names.registered_model_name("toronto")
    other = registry.client.create_model_version(model, source=registry.versions("toronto")[0].source)
    registry.client.set_registered_model_alias(model, names.CHALLENGER, other.version)

    resume_flow_run(flow_run, run_input={"approver": "alice", "approve": True})
    summary = finish(thread, outcome)

    assert summary.outcome == "rejected"
    assert registry.alias_version("toronto", names.CHAMPION) is None
    tags = {v.version: v.tags for v in registry.versions("toronto")}[version]
    assert tags[names.TAG_APPROVAL_DECISION] == "refused"
    assert summary.reasons == [f"approval by alice for v{version} refused: the challenger is now v{other.version}"]


def test_no_answer_before_the_timeout_leaves_the_champion_unchanged(workspace: Path, arrests: pd.DataFrame) -> None:
    thread, outcome = start(workspace, arrests, timeout_s=3)
    summary = finish(thread, outcome)

    assert summary.outcome == "rejected"
    assert summary.reasons == ["no approval within 3s: champion unchanged"]
    registry = Registry(load_settings(workspace))
    assert registry.alias_version("toronto", names.CHAMPION) is None
    [version] = registry.versions("toronto")
    assert version.tags[names.TAG_APPROVAL_DECISION] == "timeout"
