"""Registering and promoting as one transaction, on a real MLflow store (sqlite).

A failure is injected at each registry step of a release; whatever step fails, `champion` and
`challenger` stay where they were and the new version (if it exists yet) says why it was aborted.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from components import names
from components.registry import Registry
from components.release import Release, champion_history, rollback_champion
from components.settings import load_settings

PIPELINE = "shop"  # per test: see the `registry` fixture
_COUNT = 0


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Registry:
    # One store for the module (creating an MLflow database takes seconds); each test gets a
    # pipeline of its own in it.
    return Registry(load_settings(tmp_path_factory.mktemp("release"), env={}))


@pytest.fixture
def registry(store: Registry, monkeypatch: pytest.MonkeyPatch) -> Registry:
    # A fresh pipeline name per test: the module's store keeps the earlier tests' models.
    global _COUNT
    _COUNT += 1
    monkeypatch.setitem(globals(), "PIPELINE", f"shop-{_COUNT}")
    return store


def _source(registry: Registry) -> tuple[str, str]:
    """A run with a (stand-in) model artifact: what a version points at."""
    run_id = registry.start_run(PIPELINE, "retrain", {})
    registry.log_text(run_id, "weights", "model/weights.txt")
    registry.end_run(run_id)
    return f"{registry.client.get_run(run_id).info.artifact_uri}/model", run_id


def release(registry: Registry, promote: bool = True) -> str:
    source, run_id = _source(registry)
    with Release(registry, PIPELINE, by="test") as change:
        version = change.register(source, run_id, {names.TAG_VERDICT: names.VERDICT_PENDING})
        change.tag({f"{names.TAG_GATE_PREFIX}serving": "pass"})
        change.tag({names.TAG_VERDICT: names.VERDICT_PROMOTED if promote else names.VERDICT_REJECTED})
        if promote:
            change.promote(reason="better")
    return version


def aliases(registry: Registry) -> dict[str, str]:
    return {a: str(v) for a, v in registry.client.get_registered_model(f"deepgate-{PIPELINE}").aliases.items()}


def test_a_release_registers_promotes_and_records_the_change(registry: Registry) -> None:
    assert release(registry) == "1"
    assert release(registry) == "2"
    assert aliases(registry) == {"champion": "2", "challenger": "2"}
    [first, second] = champion_history(registry, PIPELINE)
    assert (first.version, first.previous, first.kind, first.by) == ("1", None, "promoted", "test")
    assert (second.version, second.previous, second.reason) == ("2", "1", "better")
    tags = registry.client.get_model_version(f"deepgate-{PIPELINE}", "2").tags
    assert tags[names.TAG_PREVIOUS_CHAMPION] == "1"
    # A rejected candidate moves challenger only.
    release(registry, promote=False)
    assert aliases(registry) == {"champion": "2", "challenger": "3"}


def _fail_on(target: Any, method: str, call: int) -> Callable[..., Any]:
    original = getattr(target, method)
    calls = {"n": 0}

    def failing(*args: Any, **kwargs: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == call:
            raise ConnectionError(f"registry unreachable during {method}")
        return original(*args, **kwargs)

    return failing


# (client method, which call of it fails in the second release, the step it names, version made?)
STEPS = [
    ("create_model_version", 1, "register", False),
    ("set_model_version_tag", 1, "move challenger to v2", True),  # its undo log, written ahead of the move
    ("set_registered_model_alias", 1, "move challenger to v2", True),
    ("set_model_version_tag", 3, "tag deepgate.verdict", True),  # 2nd: the serving tag
    ("set_registered_model_alias", 2, "move champion to v2", True),
    ("set_registered_model_tag", 1, "record the champion change", True),
]


@pytest.mark.parametrize(("method", "call", "step", "created"), STEPS, ids=[f"{s[0]}#{s[1]}" for s in STEPS])
def test_a_failure_at_any_step_leaves_no_alias_moved(
    registry: Registry, monkeypatch: pytest.MonkeyPatch, method: str, call: int, step: str, created: bool
) -> None:
    release(registry)
    before = aliases(registry)
    original = getattr(registry.client, method)
    monkeypatch.setattr(registry.client, method, _fail_on(registry.client, method, call))

    with pytest.raises(ConnectionError, match=f"during {method}") as raised:
        release(registry)

    monkeypatch.setattr(registry.client, method, original)
    assert aliases(registry) == before == {"champion": "1", "challenger": "1"}
    assert [c.version for c in champion_history(registry, PIPELINE)] == ["1"]
    versions = {v.version: v for v in registry.versions(PIPELINE)}
    assert ("2" in versions) is created
    if created:
        tags = versions["2"].tags
        assert tags[names.TAG_VERDICT] == names.VERDICT_ABORTED
        assert tags[names.TAG_REASONS].startswith(f"aborted at '{step}': ConnectionError")
    assert any("rolled back" in note for note in raised.value.__notes__)


def test_an_aborted_version_does_not_count_as_done(registry: Registry, monkeypatch: pytest.MonkeyPatch) -> None:
    source, run_id = _source(registry)
    monkeypatch.setattr(
        registry.client, "set_registered_model_alias", _fail_on(registry.client, "set_registered_model_alias", 1)
    )
    with pytest.raises(ConnectionError), Release(registry, PIPELINE, by="test") as change:
        change.register(source, run_id, {names.TAG_FINGERPRINT: "abc"})
    assert registry.find_by_fingerprint(PIPELINE, "abc") is None  # the next run tries again


def test_rollback_walks_the_history_back(registry: Registry) -> None:
    for _ in range(3):
        release(registry)
    assert rollback_champion(registry, PIPELINE, by="alice", reason="v3 misbehaves").version == "2"
    assert aliases(registry)["champion"] == "2"
    assert rollback_champion(registry, PIPELINE, by="alice", reason="so does v2").version == "1"
    with pytest.raises(ValueError, match="first champion"):
        rollback_champion(registry, PIPELINE, by="alice", reason="again")
    history = champion_history(registry, PIPELINE)
    assert [(c.kind, c.version, c.previous) for c in history] == [
        ("promoted", "1", None),
        ("promoted", "2", "1"),
        ("promoted", "3", "2"),
        ("rollback", "2", "3"),
        ("rollback", "1", "2"),
    ]
    assert history[-1].by == "alice" and history[-1].reason == "so does v2"


def test_rollback_without_a_champion_says_so(registry: Registry) -> None:
    with pytest.raises(ValueError, match="no champion"):
        rollback_champion(registry, PIPELINE, by="alice", reason="-")


def test_two_first_runs_at_once_share_the_experiment(registry: Registry, monkeypatch: pytest.MonkeyPatch) -> None:
    # The first run of a pipeline looks its experiment up, finds none, and creates it; a second
    # worker does the same at the same moment. Here the second's create lands between the
    # first's lookup and its create (the interleaving the integration tier met on PostgreSQL).
    other = Registry(registry.settings)
    lookup = registry.client.get_experiment_by_name
    calls = {"n": 0}

    def looked_up_just_before_the_other_created_it(name: str) -> Any:
        calls["n"] += 1
        if calls["n"] == 1:
            created = other.experiment_id(PIPELINE)
            assert created
            return None
        return lookup(name)

    monkeypatch.setattr(registry.client, "get_experiment_by_name", looked_up_just_before_the_other_created_it)
    assert registry.experiment_id(PIPELINE) == other.experiment_id(PIPELINE)
    assert calls["n"] == 2  # the failed create was followed by a second lookup
