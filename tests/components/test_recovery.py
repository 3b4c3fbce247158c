"""Crash cleanup on a real MLflow store: dead processes found, their runs KILLED, half-done releases settled.

A release "killed" here is one whose steps ran in this process but never reached the end of
its `with` block, its tags then pointing at a process that is really gone (a child that was
SIGKILLed): exactly the state a SIGKILL leaves. tests/flows/test_crash_resume.py kills a real
`deepgate run`.
"""

from __future__ import annotations

import json
import socket
import subprocess

import psutil
import pytest

from components import names
from components.recovery import ProcessRef, sweep_crashed_runs, this_process
from components.registry import Registry
from components.release import Release, release_log
from components.resume import ResumeError, resolve_resume
from components.settings import load_settings

_COUNT = 0


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Registry:
    return Registry(load_settings(tmp_path_factory.mktemp("recovery"), env={}))


@pytest.fixture
def pipeline() -> str:
    global _COUNT
    _COUNT += 1
    return f"shop-{_COUNT}"


@pytest.fixture(scope="module")
def dead() -> ProcessRef:
    """A process that existed and was SIGKILLed."""
    child = subprocess.Popen(["sleep", "60"])
    ref = ProcessRef(socket.gethostname(), child.pid, psutil.Process(child.pid).create_time())
    child.kill()
    child.wait()
    return ref


def test_a_process_is_alive_gone_recycled_or_elsewhere(dead: ProcessRef) -> None:
    me = this_process()
    assert ProcessRef.parse(me.to_tag()) == ProcessRef(me.host, me.pid, round(me.started, 2))
    assert me.state() == "alive"
    assert dead.state() == "gone"
    # The same pid started at another time is another process: the recorded one is gone.
    assert ProcessRef(me.host, me.pid, me.started - 100).state() == "gone"
    assert ProcessRef("another-host", me.pid, me.started).state() == "elsewhere"
    assert ProcessRef.parse("not a process") is None and ProcessRef.parse(None) is None


def _release_until(registry: Registry, pipeline: str, *, promote: bool) -> Release:
    """A release's steps, its block never left (the process "dies" inside it)."""
    run_id = registry.start_run(pipeline, "retrain", {})
    registry.log_text(run_id, "weights", "model/weights.txt")
    source = f"{registry.client.get_run(run_id).info.artifact_uri}/model"
    change = Release(registry, pipeline, by="test")
    change.register(source, run_id, {names.TAG_VERDICT: names.VERDICT_PENDING})
    if promote:
        change.promote(reason="better")
    return change


def _aliases(registry: Registry, pipeline: str) -> dict[str, str]:
    model = registry.client.get_registered_model(names.registered_model_name(pipeline))
    return {alias: str(version) for alias, version in model.aliases.items()}


def _died(registry: Registry, pipeline: str, version: str, process: ProcessRef) -> None:
    """Make the release's recorded process a dead one (as if its process had been SIGKILLed)."""
    [info] = [v for v in registry.versions(pipeline) if v.version == version]
    log = {**release_log(info), "process": process.to_tag()}  # type: ignore[dict-item]
    registry.set_version_tags(pipeline, version, {names.TAG_RELEASE: json.dumps(log)})


def test_a_release_killed_after_challenger_moved_is_undone(store: Registry, pipeline: str, dead: ProcessRef) -> None:
    with Release(store, pipeline, by="test") as first:  # v1: champion and challenger, finished
        run_id = store.start_run(pipeline, "retrain", {})
        store.log_text(run_id, "weights", "model/weights.txt")
        first.register(f"{store.client.get_run(run_id).info.artifact_uri}/model", run_id, {})
        first.promote(reason="first")
    assert release_log(store.alias_version(pipeline, names.CHAMPION))["state"] == "done"  # type: ignore[arg-type,index]

    _release_until(store, pipeline, promote=False)  # v2 registered, challenger moved, then killed
    assert _aliases(store, pipeline) == {names.CHAMPION: "1", names.CHALLENGER: "2"}
    # Its own process is alive: nothing is touched.
    assert sweep_crashed_runs(store, pipeline, by="flow run x").releases == []
    assert _aliases(store, pipeline)[names.CHALLENGER] == "2"

    _died(store, pipeline, "2", dead)
    report = sweep_crashed_runs(store, pipeline, by="flow run x")
    assert report.releases == ["v2: half-done release undone (challenger back to v1)"]
    assert _aliases(store, pipeline) == {names.CHAMPION: "1", names.CHALLENGER: "1"}
    [v2] = [v for v in store.versions(pipeline) if v.version == "2"]
    assert v2.tags[names.TAG_VERDICT] == names.VERDICT_ABORTED
    assert release_log(v2) == {
        "state": "rolled_back",
        "step": "move challenger to v2",
        "undo": [["challenger", "1"]],
        "process": dead.to_tag(),
    }
    assert v2.tags[names.TAG_REASONS].startswith(f"aborted at 'move challenger to v2': its process {dead.to_tag()}")
    assert sweep_crashed_runs(store, pipeline, by="flow run y").releases == []  # settled once


def test_a_release_killed_after_recording_the_champion_is_finished_not_undone(
    store: Registry, pipeline: str, dead: ProcessRef
) -> None:
    _release_until(store, pipeline, promote=True)
    _died(store, pipeline, "1", dead)
    report = sweep_crashed_runs(store, pipeline, by="flow run x")
    assert report.releases == ["v1: the release had recorded its champion change; marked done"]
    assert _aliases(store, pipeline) == {names.CHAMPION: "1", names.CHALLENGER: "1"}


def test_an_alias_moved_since_the_kill_is_left_alone(store: Registry, pipeline: str, dead: ProcessRef) -> None:
    _release_until(store, pipeline, promote=False)
    _died(store, pipeline, "1", dead)
    _release_until(store, pipeline, promote=False)  # v2 took challenger since (its process alive)
    report = sweep_crashed_runs(store, pipeline, by="flow run x")
    assert report.releases == [
        "v1: half-done release undone (no alias to put back); left alone: challenger (now v2, moved since)"
    ]
    assert _aliases(store, pipeline) == {names.CHALLENGER: "2"}


def test_running_runs_of_dead_processes_are_killed_others_left(
    store: Registry, pipeline: str, dead: ProcessRef
) -> None:
    def running(process: str) -> str:
        return store.start_run(
            pipeline, "retrain", {names.TAG_PIPELINE: pipeline, names.TAG_PROCESS: process, names.TAG_FLOW_RUN_ID: "f"}
        )

    crashed, mine, remote = running(dead.to_tag()), running(this_process().to_tag()), running("far:1:2.00")
    report = sweep_crashed_runs(store, pipeline, by="flow run x")
    assert [(c.run_id, c.flow_run_id, c.process) for c in report.crashed] == [(crashed, "f", dead.to_tag())]
    assert report.elsewhere == 1
    status = {run: store.run_record(run).status for run in (crashed, mine, remote)}  # type: ignore[union-attr]
    assert status == {crashed: "KILLED", mine: "RUNNING", remote: "RUNNING"}
    assert store.run_record(crashed).tags[names.TAG_OUTCOME] == "crashed"  # type: ignore[union-attr]


def test_resume_accepts_only_a_failed_or_dead_run_of_the_pipeline(
    store: Registry, pipeline: str, dead: ProcessRef
) -> None:
    def run(status: str | None, **tags: str) -> str:
        run_id = store.start_run(pipeline, "retrain", {names.TAG_PIPELINE: pipeline, **tags})
        if status:
            store.end_run(run_id, status)
        return run_id

    failed = run("FAILED", **{names.TAG_FLOW_RUN_ID: "0c9a3f5e-1111-4222-8333-444455556666"})
    source = resolve_resume(store, pipeline, "0c9a3f5e-1111-4222-8333-444455556666")
    assert (source.run_id, source.status) == (failed, "FAILED")
    assert resolve_resume(store, pipeline, run(None, **{names.TAG_PROCESS: dead.to_tag()})).status == "crashed"
    assert resolve_resume(store, pipeline, run("KILLED")).status == "KILLED"

    finished = run("FINISHED", **{names.TAG_OUTCOME: "rejected"})
    with pytest.raises(ResumeError, match=r"did not fail \(it finished: rejected\)"):
        resolve_resume(store, pipeline, finished)
    alive = run(None, **{names.TAG_PROCESS: this_process().to_tag()})
    with pytest.raises(ResumeError, match=r"is still running .*alive"):
        resolve_resume(store, pipeline, alive)
    with pytest.raises(ResumeError, match="is a `tune` run, not a retraining run"):
        resolve_resume(store, pipeline, run("FAILED", **{names.TAG_RUN_KIND: "tune"}))
    with pytest.raises(ResumeError, match=f"is a run of pipeline '{pipeline}', not 'other'"):
        resolve_resume(store, "other", failed)
    with pytest.raises(ResumeError, match="no MLflow run with this id"):
        resolve_resume(store, pipeline, "f" * 32)
