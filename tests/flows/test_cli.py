"""`deepgate` as a user runs it: exit codes, what it prints, and a service that follows @champion.

Commands run in-process through Typer's CliRunner, in a fresh workspace, on the session's one
Prefect server. The pipeline is a tiny CSV one (700 arrests rows, 2 epochs).
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from fastapi.testclient import TestClient
from sklego.datasets import load_arrests
from toronto import ANY_CHANGE, toronto_raw

from components import names
from components.predictor import Predictor
from components.registry import Registry
from components.serving import create_app
from components.settings import load_settings
from flows.cli import champion_loader

pytestmark = [pytest.mark.flow, pytest.mark.usefixtures("prefect_server")]


COMMANDS = ["run", "tune", "status", "promote", "rollback", "serve", "ui", "schedule", "train-worker", "monitor"]


@pytest.fixture(scope="module")
def arrests() -> pd.DataFrame:
    return load_arrests(as_frame=True).iloc[:700].reset_index(drop=True)


def write_pipeline(workspace: Path, frame: pd.DataFrame, **changes: object) -> Path:
    """The user's files: `incoming.csv` and `good.yaml` (the pipeline of test_retrain's csv_pipeline)."""
    frame.to_csv(workspace / "incoming.csv", index=False)
    # 2 epochs land anywhere between 0.57 and 0.74 accuracy depending on the initial weights:
    # a low floor keeps these wiring tests from hinging on it.
    raw = toronto_raw(**{"train.max_epochs": 2, "gates.evaluation.min_accuracy": 0.5, **changes})
    path = workspace / "good.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def status_of(deepgate, pipeline: str) -> list[dict]:
    code, output = deepgate("status", pipeline, "--json")
    assert code == 0, output
    return json.loads(output)[pipeline]["versions"]


def test_run_promotes_then_a_corrupted_file_stops_at_validation(
    workspace: Path, arrests: pd.DataFrame, deepgate
) -> None:
    write_pipeline(workspace, arrests)
    code, output = deepgate("run", "--config", "good.yaml")

    assert code == 0, output
    assert "retraining summary" in output
    [row] = [line for line in output.splitlines() if "toronto" in line and "promoted" in line]
    assert "v1" in row
    [version] = status_of(deepgate, "toronto")
    assert version["version"] == "1"
    assert sorted(version["aliases"]) == [names.CHALLENGER, names.CHAMPION]
    assert version["verdict"] == names.VERDICT_PROMOTED
    assert version["accuracy"] >= 0.5
    gates = dict(version["gates"])
    assert gates.pop("drift") == "not_applicable"  # the first model has no champion to drift from
    assert set(gates.values()) == {"pass"}

    # The same pipeline on a file whose `age` column is gone: stopped before training.
    arrests.drop(columns=["age"]).to_csv(workspace / "incoming.csv", index=False)
    code, output = deepgate("run", "--config", "good.yaml")

    assert code == 2, output
    assert "stopped at gate 'validation'" in output
    assert "age" in output
    assert "nothing was trained or registered, champion unchanged" in output
    [version] = status_of(deepgate, "toronto")
    assert (version["version"], version["verdict"]) == ("1", names.VERDICT_PROMOTED)
    assert names.CHAMPION in version["aliases"]


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["run", "--config", "good.yaml", "--set", "train.dropout=1.5"], "train.dropout"),
        (["run", "nosuch"], "nosuch"),
        (["run", "arrests", "--set", "train.max_epoch=3"], "train.max_epoch"),
        (["run", "--config", "missing.yaml"], "missing.yaml"),
        (["run", "arrests", "--config", "good.yaml"], "not both"),
    ],
    ids=["out-of-range", "unknown-pipeline", "typo-in-override", "no-such-file", "name-and-config"],
)
def test_a_bad_config_exits_1_naming_the_problem(
    workspace: Path, arrests: pd.DataFrame, deepgate, args: list[str], expected: str
) -> None:
    write_pipeline(workspace, arrests)
    code, output = deepgate(*args)
    assert code == 1, output
    assert "error:" in output
    assert expected in output
    assert not (workspace / "mlflow").exists()  # refused before anything ran


def test_an_invalid_value_in_the_file_names_the_field(workspace: Path, arrests: pd.DataFrame, deepgate) -> None:
    write_pipeline(workspace, arrests, **{"train.dropout": 1.5})
    code, output = deepgate("run", "--config", "good.yaml")
    assert code == 1, output
    assert "train.dropout: Input should be less than 1" in output


@pytest.mark.parametrize("command", [None, *COMMANDS])
def test_help_of_every_command(deepgate, command: str | None) -> None:
    code, output = deepgate(*([command] if command else []), "--help")
    assert code == 0, output
    assert "Usage:" in output
    if command is None:
        assert all(c in output for c in COMMANDS)


def assert_the_command_serves(workspace: Path, rows: pd.DataFrame, version: str, rolled_back_to: str) -> None:
    """`deepgate serve` as a process (a supervisor and a lean worker): a cold start, SIGTERM, and a
    restart from its cache, each answering with the champion `version` like the offline model;
    then a restart after the champion was rolled back to `rolled_back_to` while it was down."""
    import os
    import signal
    import socket
    import subprocess
    import sys

    import httpx

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    root = str(Path(__file__).resolve().parents[2])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))}
    argv = [sys.executable, "-m", "flows.cli", "serve", "toronto", "--port", str(port), "--poll", "3600"]
    answers = []
    for start in ("cold", "restart", "rolled back"):
        if start == "rolled back":
            registry = Registry(load_settings(workspace))
            registry.client.set_registered_model_alias(
                names.registered_model_name("toronto"), names.CHAMPION, rolled_back_to
            )
        process = subprocess.Popen(
            argv, env=env, cwd=workspace, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, text=True
        )
        try:
            with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
                for _ in range(1200):
                    assert process.poll() is None, f"deepgate serve exited ({start})"
                    with contextlib.suppress(httpx.HTTPError):
                        ready = client.get("/ready")
                        if ready.status_code == 200:
                            break
                    time.sleep(0.05)
                # The first ready answer already names today's champion: the registry is read
                # before the worker starts, also on a restart with another version cached.
                expected = rolled_back_to if start == "rolled back" else version
                assert ready.json()["version"] == expected, start
                meta = client.get("/metadata").json()
                assert (meta["version"], meta["alias"]) == (expected, names.CHAMPION), start
                columns = [c["name"] for c in meta["input_schema"]]
                answers.append(client.post("/predict", json={"rows": rows[columns].to_dict(orient="records")}).json())
        finally:
            process.send_signal(signal.SIGTERM)
            output = process.communicate(timeout=30)[0]
            assert process.returncode == 0  # the supervisor stops its worker and exits cleanly
        assert "(registry read directly)" in output, output
    assert answers[0]["version"] == version and answers[0] == answers[1]
    assert answers[2]["version"] == rolled_back_to and answers[2] != answers[1]
    # Materialised once from the registry; the restart served it from there.
    served = workspace / ".deepgate" / "serving"
    assert len(list(served.glob(f"toronto-*/v{version}/model.onnx"))) == 1
    assert len(list(served.glob(f"toronto-*/v{rolled_back_to}/model.onnx"))) == 1
    with Registry(load_settings(workspace)).package("toronto", version) as package:
        expected = Predictor.load(package, backend="torch").predict_proba(rows, strict=False)
    np.testing.assert_allclose(answers[0]["probabilities"], expected, rtol=0, atol=1e-5)


def test_serving_follows_the_champion(workspace: Path, tmp_path: Path, arrests: pd.DataFrame, deepgate) -> None:
    write_pipeline(workspace, arrests)
    code, output = deepgate("run", "--config", "good.yaml")
    assert code == 0, output

    registry = Registry(load_settings(workspace))
    service = create_app(
        champion_loader(registry, "toronto", tmp_path / "cache"), pipeline="toronto", poll_seconds=3600
    )
    with TestClient(service) as client:
        meta = client.get("/metadata").json()
        assert (meta["version"], meta["alias"], meta["pipeline"]) == ("1", names.CHAMPION, "toronto")
        # The model's input columns only: the service refuses fields it does not know.
        rows = arrests[[c["name"] for c in meta["input_schema"]]].iloc[:5].to_dict(orient="records")
        assert client.post("/predict", json={"rows": [{**rows[0], "released": "Yes"}]}).status_code == 422
        first = client.post("/predict", json={"rows": rows}).json()
        assert first["version"] == "1"

        # A second version that cannot be rejected for regressing against v1.
        code, output = deepgate(
            "run", "--config", "good.yaml", "--set", "train.seed=1", *(f"--set={k}={v}" for k, v in ANY_CHANGE.items())
        )
        assert code == 0, output
        assert registry.alias_version("toronto", names.CHAMPION).version == "2", output

        assert client.get("/metadata").json()["version"] == "1"  # nothing moves until a poll
        # Requests keep coming while the service swaps to the new champion: none may fail, and
        # each is answered by v1 or v2 (never a mix, never an error).
        answered: list[str] = []
        failures: list[str] = []
        stop = threading.Event()

        def traffic() -> None:
            while not stop.is_set():
                response = client.post("/predict", json={"rows": rows})
                if response.status_code != 200:
                    failures.append(f"{response.status_code} {response.text[:200]}")
                else:
                    answered.append(response.json()["version"])

        sender = threading.Thread(target=traffic)
        sender.start()
        while len(answered) < 5 and not failures:
            time.sleep(0.01)
        assert service.state.refresh() is True
        count = len(answered)
        while len(answered) < count + 5 and not failures:
            time.sleep(0.01)
        stop.set()
        sender.join(30)
        assert failures == [] and set(answered) == {"1", "2"}
        assert set(answered[answered.index("2") :]) == {"2"}
        meta = client.get("/metadata").json()
        assert (meta["version"], meta["data_version"]) == ("2", meta["info"]["data_version"])
        assert meta["trained_at"].startswith("20")
        second = client.post("/predict", json={"rows": rows}).json()

    assert second["version"] == "2"
    with registry.package("toronto", "2") as package:
        expected = Predictor.load(package).predict_records(rows)
    np.testing.assert_allclose(second["probabilities"], expected, rtol=0, atol=1e-6)
    assert not np.allclose(first["probabilities"], second["probabilities"])  # another model answers
    assert_the_command_serves(workspace, arrests.iloc[:5], "2", rolled_back_to="1")


def test_serve_refuses_bad_options_before_starting(deepgate) -> None:
    code, output = deepgate("serve", "toronto", "--unknown-category", "guess")
    assert code == 1 and "--unknown-category must be ignore or error" in output
    code, output = deepgate("serve", "toronto", "--log-predictions", "1.5")
    assert code == 2 and "--log-predictions" in output


def test_promote_by_hand_runs_the_gates_force_needs_a_reason_and_rollback_undoes_it(
    workspace: Path, arrests: pd.DataFrame, deepgate
) -> None:
    write_pipeline(workspace, arrests)
    assert deepgate("run", "--config", "good.yaml")[0] == 0
    # v2 fails its accuracy floor: registered, rejected, not champion.
    write_pipeline(workspace, arrests, **{"train.seed": 1, "gates.evaluation.min_accuracy": 0.99})
    code, output = deepgate("run", "--config", "good.yaml")
    assert code == 0 and "rejected" in output, output

    # The same gates, re-run by hand on v2's own data and config: still refused.
    code, output = deepgate("promote", "toronto", "2")
    assert code == 2, output
    assert "did not pass the gates" in output and "0.99" in output
    code, output = deepgate("promote", "toronto", "2", "--force")
    assert code == 1 and "--force needs --reason" in output, output
    code, output = deepgate("promote", "toronto", "2", "--force", "--reason", "hotfix for the audit", "--by", "alice")
    assert code == 0, output
    assert "v2 is champion (was v1); FORCED past failing gates" in output

    code, output = deepgate("rollback", "toronto", "--reason", "hotfix broke serving", "--by", "bob")
    assert code == 0, output
    assert "champion v2 -> v1 (rollback)" in output
    code, output = deepgate("status", "toronto", "--json")
    history = json.loads(output)["toronto"]["champion_history"]
    assert [(c["kind"], c["previous"], c["version"], c["by"]) for c in history] == [
        ("promoted", None, "1", history[0]["by"]),
        ("forced", "1", "2", "alice"),
        ("rollback", "2", "1", "bob"),
    ]
    assert history[1]["reason"] == "forced by alice: hotfix for the audit"
    code, output = deepgate("status", "toronto")
    assert "champion changes" in output and "hotfix broke serving" in output
    code, output = deepgate("promote", "toronto", "7")
    assert code == 2 and "has no version 7" in output, output
