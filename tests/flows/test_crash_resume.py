"""A `deepgate run` killed with SIGKILL mid-release, then `deepgate run --resume` of it.

The killed run is a real subprocess on the session's Prefect server, killed by itself where the
flow validates serving: after training, after registering v1 as challenger, before any gate
verdict on serving. The next run must clean up what it left (flow run Crashed, MLflow run
KILLED, the half-done release undone) and, resumed, reuse its model without training while
every gate runs again.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest
import yaml
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
from prefect.settings import get_current_settings
from safetensors.numpy import load_file
from sklego.datasets import load_arrests
from toronto import toronto_raw

from components import modeling, names
from components.config import build_config
from components.registry import Registry
from components.release import release_log
from components.settings import load_settings
from flows.retrain import retrain

pytestmark = [pytest.mark.flow, pytest.mark.usefixtures("prefect_server")]

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
GATES = ["validation", "drift", "labels", "label_noise", "evaluation", "bias", "serving"]


def weights_hash(package: Path) -> str:
    """A hash of the tensors of a model package (names and values, not the file's layout)."""
    digest = hashlib.sha256()
    for name, array in sorted(load_file(str(package / "model.safetensors")).items()):
        digest.update(name.encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


def flow_run_state(flow_run_id: str) -> str:
    with get_client(sync_client=True) as client:
        return str(client.read_flow_run(UUID(flow_run_id)).state_type.value)


def task_run_states(flow_run_id: str) -> dict[str, str]:
    """The state of each task run of a flow run that did not complete, by task name."""
    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[UUID(flow_run_id)])))
    return {
        run.name.rsplit("-", 1)[0]: str(run.state_type.value) for run in runs if run.state_type.value != "COMPLETED"
    }


def test_a_killed_run_is_marked_crashed_and_its_resume_reuses_the_model_and_judges_every_gate(
    workspace: Path, deepgate, monkeypatch: pytest.MonkeyPatch
) -> None:
    load_arrests(as_frame=True).iloc[:700].to_csv(workspace / "incoming.csv", index=False)
    pipeline = workspace / "toronto.yaml"
    raw = toronto_raw(**{"train.max_epochs": 2, "gates.evaluation.min_accuracy": 0.5})
    pipeline.write_text(yaml.safe_dump(raw, sort_keys=False))
    env = {
        **os.environ,
        "DEEPGATE_HOME": str(workspace),
        "PREFECT_API_URL": str(get_current_settings().api.url),  # the session's server: one place to look
        "PYTHONPATH": os.pathsep.join([str(ROOT), str(HERE)]),
    }
    killed = subprocess.run(
        [
            sys.executable,
            str(HERE / "kill_probe.py"),
            "components.modeling.check_serving",
            "run",
            "--config",
            "toronto.yaml",
        ],
        cwd=workspace,
        env=env,
        capture_output=True,
        text=True,
    )
    assert killed.returncode == -signal.SIGKILL, killed.stdout[-2000:] + killed.stderr[-4000:]

    # What SIGKILL leaves: everything still "running", challenger moved by a release never finished.
    registry = Registry(load_settings(workspace))
    [dead] = registry.find_runs("toronto", "attributes.status = 'RUNNING'")
    flow_run_id = dead.tags[names.TAG_FLOW_RUN_ID]
    assert flow_run_state(flow_run_id) == "RUNNING"
    assert task_run_states(flow_run_id) == {"validate_serving": "RUNNING"}  # the stage it died in
    [half] = registry.versions("toronto")
    assert (half.version, half.aliases, release_log(half)["state"]) == ("1", [names.CHALLENGER], "open")  # type: ignore[index]
    with registry.run_artifacts(dead.run_id, names.TRAINED_PACKAGE) as package:
        assert package is not None
        trained = weights_hash(package)

    # A run id that is not one is refused before anything starts, naming the problem.
    code, output = deepgate("run", "--config", "toronto.yaml", "--resume", "0" * 32)
    assert code == 1 and f"--resume {'0' * 32}: no MLflow run with this id" in output

    def no_training(*args: object, **kwargs: object) -> None:
        raise AssertionError("the resumed run trained again")

    monkeypatch.setattr(modeling, "fit_candidate", no_training)
    code, output = deepgate("run", "--config", "toronto.yaml", "--resume", flow_run_id)
    assert code == 0, output

    # Crash cleanup: the flow run Crashed, the MLflow run KILLED, the release undone.
    assert flow_run_state(flow_run_id) == "CRASHED"
    assert task_run_states(flow_run_id) == {"validate_serving": "CRASHED"}
    old = registry.run_record(dead.run_id)
    assert old is not None and (old.status, old.tags[names.TAG_OUTCOME]) == ("KILLED", "crashed")
    assert "marked KILLED by flow run" in old.tags[names.TAG_CRASH]
    aborted, new = registry.versions("toronto")[::-1]
    assert (aborted.version, aborted.aliases, aborted.tags[names.TAG_VERDICT]) == ("1", [], names.VERDICT_ABORTED)
    assert "died" in aborted.tags[names.TAG_REASONS] and release_log(aborted)["state"] == "rolled_back"  # type: ignore[index]

    # The resume: the failed run's model, no epoch trained, and every gate judged on this run.
    assert (new.version, set(new.aliases)) == ("2", {names.CHAMPION, names.CHALLENGER})
    assert release_log(new)["state"] == "done"  # type: ignore[index]
    run = registry.run_record(new.run_id)
    assert run is not None and run.run_id != dead.run_id
    assert run.tags[names.TAG_RESUMED_FROM_RUN] == dead.run_id
    assert run.tags[names.TAG_REUSED] == "validate,train"
    assert run.tags[names.TAG_TRAINED_IN] == new.tags[names.TAG_TRAINED_IN] == dead.run_id
    assert "train.epochs_run" not in registry.client.get_run(new.run_id).data.metrics
    with registry.package("toronto", "2") as package:
        assert weights_hash(package) == trained
    for gate in GATES:
        report = registry.load_run_json(new.run_id, f"gates/{gate}.json")
        assert report is not None and report["status"] in ("pass", "not_applicable"), (gate, report)
    assert f"resumed from MLflow run {dead.run_id}, flow run {flow_run_id}" in output
    assert "reused validate, train; every gate judged again" in output
    assert f"run {dead.run_id} (flow run {flow_run_id}) died with its process" in output

    # Resuming it again: it is no failed run any more to the new one, and a finished run is refused.
    code, output = deepgate("run", "--config", "toronto.yaml", "--resume", new.run_id)
    assert code == 1 and "did not fail (it finished: promoted)" in output


def test_resume_names_what_is_wrong_with_the_run(workspace: Path, deepgate) -> None:
    load_arrests(as_frame=True).iloc[:50].to_csv(workspace / "incoming.csv", index=False)
    (workspace / "toronto.yaml").write_text(yaml.safe_dump(toronto_raw(), sort_keys=False))
    code, output = deepgate("run", "--config", "toronto.yaml", "--resume", "yesterday")
    assert code == 1 and "not a run id" in output
    flow_run = "3f0c8a8e-5b7e-4c1e-9a53-1f1b2c3d4e5f"
    code, output = deepgate("run", "--config", "toronto.yaml", "--resume", flow_run)
    assert code == 1 and "no MLflow run records this Prefect flow run" in output
    registry = Registry(load_settings(workspace))
    other = registry.start_run("arrests", "retrain-x", {names.TAG_PIPELINE: "arrests", names.TAG_FLOW_RUN_ID: flow_run})
    registry.end_run(other, "FAILED")
    code, output = deepgate("run", "--config", "toronto.yaml", "--resume", flow_run)
    assert code == 1 and f"run {other} is a run of pipeline 'arrests', not 'toronto'" in output
    code, output = deepgate("run", "arrests", "mnist", "--resume", other)
    assert code == 1 and "--resume takes one pipeline, not 2" in output


def test_a_retried_flow_run_resumes_its_own_failed_attempt(workspace: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # What `prefect flow-run retry` (or the flow's own retries) does: the same flow run again.
    load_arrests(as_frame=True).iloc[:700].to_csv(workspace / "incoming.csv", index=False)
    config = build_config(toronto_raw(**{"train.max_epochs": 2, "gates.evaluation.min_accuracy": 0.5}), [])
    calls = {"serving": 0, "fits": 0}
    check_serving, fit_candidate = modeling.check_serving, modeling.fit_candidate

    def unreachable_once(*args: Any, **kwargs: Any) -> Any:
        calls["serving"] += 1
        if calls["serving"] == 1:
            raise ConnectionError("serving host unreachable")
        return check_serving(*args, **kwargs)

    def counted(*args: Any, **kwargs: Any) -> Any:
        calls["fits"] += 1
        return fit_candidate(*args, **kwargs)

    monkeypatch.setattr(modeling, "check_serving", unreachable_once)
    monkeypatch.setattr(modeling, "fit_candidate", counted)
    summary = retrain.with_options(retries=1, retry_delay_seconds=0)(config, home=str(workspace))

    assert calls == {"serving": 2, "fits": 1}  # failed once, retried once, trained once
    registry = Registry(load_settings(workspace))
    [failed] = registry.find_runs("toronto", "attributes.status = 'FAILED'")
    assert summary.resumed_from is not None and summary.resumed_from.startswith(f"MLflow run {failed.run_id}")
    assert (summary.outcome, summary.version, summary.reused) == ("promoted", "2", ["validate", "train"])
    aborted, promoted = registry.versions("toronto")[::-1]
    assert aborted.tags[names.TAG_VERDICT] == names.VERDICT_ABORTED  # the first attempt's release, rolled back
    assert promoted.tags[names.TAG_TRAINED_IN] == failed.run_id and names.CHAMPION in promoted.aliases
