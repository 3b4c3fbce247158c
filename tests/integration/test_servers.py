"""The retrain flow through real servers, selected by settings only; and concurrent retrainings.

Each flow is a `deepgate run` process in its own workspace (as on separate workers), sharing
the session's MLflow server (PostgreSQL + S3 artifacts), Prefect server (PostgreSQL) and DVC
remote (S3). The evidence is read from the stores themselves: SQL on the MLflow database,
object listings of the bucket, a DVC pull into a fresh git clone.
"""

from __future__ import annotations

import hashlib
import itertools
import subprocess
import sys
from pathlib import Path

import httpx
import psycopg2
import pytest
from live_servers import BUCKET, FlowRun, Services, finish_flow, start_flow
from lookup_cases import assert_agrees, populate
from sklego.datasets import load_arrests
from toronto import ANY_CHANGE, toronto_raw

from components import names
from components.champion_lookup import RestLookup, lookup_for
from components.registry import Registry
from components.release import champion_history
from components.settings import load_settings

GIT = ["git", "-c", "user.name=deepgate tests", "-c", "user.email=tests@deepgate.invalid"]


def _pipeline(name: str, **changes: object) -> dict:
    # 2 epochs on 700 rows: seconds of training; a low floor, as in the CLI tests.
    return toronto_raw(**{"name": name, "train.max_epochs": 2, "gates.evaluation.min_accuracy": 0.5, **changes})


def _write_data(workspace: Path) -> None:
    workspace.mkdir(parents=True, exist_ok=True)
    load_arrests(as_frame=True).iloc[:700].to_csv(workspace / "incoming.csv", index=False)


def _ok(run: FlowRun) -> dict:
    assert run.code == 0, run.output[-4000:]
    [summary] = run.summaries
    return summary


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def _db_versions(services: Services, model: str) -> list[tuple[int, str]]:
    """(version, status) rows of a registered model, straight from MLflow's PostgreSQL tables."""
    with psycopg2.connect(services.dsn("mlflow")) as connection, connection.cursor() as cursor:
        cursor.execute("SELECT version, status FROM model_versions WHERE name = %s ORDER BY version", (model,))
        return [(int(v), str(s)) for v, s in cursor.fetchall()]


def _db_champions(services: Services, model: str) -> list[int]:
    with psycopg2.connect(services.dsn("mlflow")) as connection, connection.cursor() as cursor:
        cursor.execute(
            "SELECT version FROM registered_model_aliases WHERE name = %s AND alias = %s", (model, names.CHAMPION)
        )
        return [int(v) for (v,) in cursor.fetchall()]


def _bucket_keys(services: Services, prefix: str) -> list[str]:
    pages = services.s3().get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
    return [item["Key"] for page in pages for item in page.get("Contents", [])]


def _registry(services: Services, workspace: Path) -> Registry:
    return Registry(load_settings(workspace, env={"MLFLOW_TRACKING_URI": services.mlflow_url}))


def _race(services: Services, tmp_path: Path, pipeline: str, count: int) -> list[dict]:
    """`count` retrainings of one pipeline started at once, each in its own git checkout (a worker).

    Every run must finish without error, with its own READY, downloadable version, and the
    promotions must have happened one at a time. Returns the runs' summaries (worker order).
    """
    processes = []
    for seed in range(count):
        workspace = tmp_path / f"worker{seed}"
        _write_data(workspace)
        subprocess.run([*GIT, "init", "-q", str(workspace)], check=True)
        # Another seed: another config, so each run trains and registers its own version.
        processes.append(start_flow(services, workspace, _pipeline(pipeline, **ANY_CHANGE, **{"train.seed": seed})))
    summaries = [_ok(finish_flow(process)) for process in processes]

    # Rows in PostgreSQL (no local store was made): unique versions, all READY, one champion.
    model = names.registered_model_name(pipeline)
    assert not (tmp_path / "worker0" / "mlflow").exists()
    assert sorted(int(s["version"]) for s in summaries) == list(range(1, count + 1))
    assert _db_versions(services, model) == [(v, "READY") for v in range(1, count + 1)]
    [champion] = _db_champions(services, model)
    registry = _registry(services, tmp_path / "worker0")
    assert registry.alias_version(pipeline, names.CHAMPION).version == str(champion)
    keys = _bucket_keys(services, "mlflow/")
    for s in summaries:
        # Artifacts went through the tracking server into the bucket, and come back from it.
        run_id = s["mlflow_run_id"]
        assert any(k.endswith(f"{run_id}/artifacts/summary.json") for k in keys), (run_id, keys[:20])
        assert any(run_id in k and k.endswith(".safetensors") for k in keys), (run_id, keys[:20])
        with registry.package(pipeline, s["version"]) as package:
            assert any(package.rglob("*.safetensors")), s["version"]
        # The flow run is recorded on the Prefect server (PostgreSQL), completed.
        flow_run_id = registry.client.get_run(run_id).data.tags[names.TAG_FLOW_RUN_ID]
        flow_run = httpx.get(f"{services.prefect_api}/flow_runs/{flow_run_id}").json()
        assert flow_run["state_type"] == "COMPLETED", flow_run

    # Every promotion replaced the champion the one before it installed: nobody promoted over a
    # stale champion, so the history is one chain.
    history = champion_history(registry, pipeline)
    promoted = [s for s in summaries if s["outcome"] == "promoted"]
    assert len(history) == len(promoted) >= 1
    assert history[0].previous is None
    for before, after in itertools.pairwise(history):
        assert after.previous == before.version, [c.to_dict() for c in history]
    assert history[-1].version == str(champion)
    # Each promotion was judged against the champion it replaced, re-read under the lock.
    for s in promoted:
        decision = registry.load_run_json(s["mlflow_run_id"], "promotion/decision.json")
        [change] = [c for c in history if c.version == s["version"]]
        assert decision["champion_version"] == change.previous, (decision, change)
    return summaries


def _pulled_into_a_fresh_clone(services: Services, workspace: Path, clone: Path, pipeline: str, md5: str) -> None:
    """The run's data is in the S3 remote, and `git clone` + `dvc pull` brings back the same bytes."""
    dataset = workspace / "data" / pipeline / "dataset.parquet"
    assert _md5(dataset) == md5
    dvc_keys = _bucket_keys(services, "dvc/")
    assert any(k.endswith(f"{md5[:2]}/{md5[2:]}") for k in dvc_keys), dvc_keys
    subprocess.run([*GIT, "-C", str(workspace), "add", "-A"], check=True)
    subprocess.run([*GIT, "-C", str(workspace), "commit", "-q", "-m", "data versions"], check=True)
    subprocess.run([*GIT, "clone", "-q", str(workspace), str(clone)], check=True)
    assert (clone / "data" / pipeline / "dataset.parquet.dvc").is_file()
    assert not (clone / "data" / pipeline / "dataset.parquet").exists()
    # The clone knows the data by its .dvc file only; the remote is a setting (config.local).
    pull = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, pathlib; from components.versioning import open_repo; "
            "open_repo(pathlib.Path(sys.argv[1]), sys.argv[2]).pull()",
            str(clone),
            services.dvc_remote,
        ],
        env=services.flow_env(clone),
        capture_output=True,
        text=True,
        cwd=clone,
    )
    assert pull.returncode == 0, pull.stderr[-3000:]
    assert _md5(clone / "data" / pipeline / "dataset.parquet") == md5


def test_two_retrainings_at_once_end_to_end_through_the_servers(services: Services, tmp_path: Path) -> None:
    # One test for both: each flow process costs tens of seconds, and the pair covers the single run.
    summaries = _race(services, tmp_path, "race2", 2)
    assert {s["outcome"] for s in summaries} == {"promoted"}
    first = summaries[0]
    _pulled_into_a_fresh_clone(services, tmp_path / "worker0", tmp_path / "clone", "race2", first["data_version"])


@pytest.mark.slow
@pytest.mark.stress  # ~3 minutes: run by .ci/run (`make test-stress`), not by `make test`
def test_five_retrainings_at_once_promote_one_at_a_time(services: Services, tmp_path: Path) -> None:
    _race(services, tmp_path, "race5", 5)


def test_the_rest_lookup_answers_as_the_mlflow_client(services: Services, tmp_path: Path) -> None:
    # `deepgate serve` reads a tracking server through its REST API and artifact proxy, without
    # the MLflow client: the same versions, tags and aliases, and the same package bytes.
    workspace = tmp_path / "workspace"
    workspace.mkdir()
    registry = _registry(services, workspace)
    packages = populate(registry, "lookup")
    lookup = lookup_for(services.mlflow_url)
    assert isinstance(lookup, RestLookup)
    name = names.registered_model_name("lookup")
    assert registry.client.get_model_version_download_uri(name, "2").startswith("mlflow-artifacts:")
    assert_agrees(lookup, registry, "lookup", packages, tmp_path)
    assert any(key.endswith("model/artifacts/package/nested/extra weights.bin") for key in _bucket_keys(services, ""))
    with pytest.raises(OSError):  # a server that does not answer: the supervisor keeps what it serves
        RestLookup("http://127.0.0.1:9", timeout=2).alias_version("lookup", names.CHAMPION)
