"""Promote a registered version by hand, through the same gates as a retraining, or roll back.

`deepgate promote PIPELINE VERSION` re-runs the evaluation, bias and serving gates for that
version against the current champion, on the version's own data (read back from DVC) and test
split, and moves `champion` only if they pass. `--force --reason TEXT` moves it past failing
gates, and the history records who forced it and why. `deepgate rollback PIPELINE` points
`champion` back at the version it replaced.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from prefect import flow

from components import modeling, names
from components.bias import audit_bias
from components.config import PipelineConfig
from components.promotion import decide_promotion, evaluation_gate
from components.registry import Registry, VersionInfo
from components.release import ChampionChange, Release, rollback_champion
from components.settings import Settings, load_settings
from components.split import split_dataset
from flows.locks import promotion_lock
from flows.retrain import reference_data

CONFIG_ARTIFACT = names.CONFIG_ARTIFACT


class PromotionRefused(RuntimeError):
    """The gates did not pass (or the version cannot be promoted); nothing moved."""


@dataclass
class ManualPromotion:
    """What `deepgate promote` did.

    Attributes:
        pipeline: The pipeline.
        version: The version asked for.
        previous: The champion before (None if there was none).
        promoted: Whether `champion` now points at `version`.
        forced: Whether it was moved past failing gates.
        reasons: One sentence per failed check, or why it passed.
    """

    pipeline: str
    version: str
    previous: str | None
    promoted: bool
    forced: bool
    reasons: list[str] = field(default_factory=list)


def _config_of(registry: Registry, info: VersionInfo) -> PipelineConfig:
    raw = registry.load_run_json(info.run_id, CONFIG_ARTIFACT)
    if raw is None:
        raise PromotionRefused(f"v{info.version} has no {CONFIG_ARTIFACT} on its run: retrain it to promote by hand")
    return PipelineConfig.model_validate(raw)


@flow(name="promote", log_prints=True)
def promote_version(
    pipeline: str, version: str, by: str, force_reason: str | None = None, home: str | None = None
) -> ManualPromotion:
    """Judge `version` against the current champion with the retraining's gates; promote if it passes.

    Args:
        pipeline: The pipeline.
        version: The registered version to promote.
        by: Who asks (recorded in the champion's history).
        force_reason: Promote even if gates fail; the reason is recorded. None: gates decide.
        home: Project workspace.

    Raises:
        PromotionRefused: No such version, an aborted one, or (without force) a failed gate.
    """
    settings = load_settings(Path(home) if home else None)
    registry = Registry(settings)
    info = next((v for v in registry.versions(pipeline) if v.version == str(version)), None)
    if info is None:
        raise PromotionRefused(f"{pipeline} has no version {version}")
    if info.tags.get(names.TAG_VERDICT) == names.VERDICT_ABORTED:
        raise PromotionRefused(f"v{version} was aborted during its release ({info.tags.get(names.TAG_REASONS, '')})")
    # One promotion at a time per pipeline (retrainings too): the champion judged against is
    # the one replaced.
    with promotion_lock(pipeline):
        return _judge_and_promote(settings, registry, pipeline, info, by, force_reason)


def _judge_and_promote(
    settings: Settings, registry: Registry, pipeline: str, info: VersionInfo, by: str, force_reason: str | None
) -> ManualPromotion:
    """Judge `info` against the champion of now and promote it: :func:`promote_version` under the lock."""
    version = info.version
    champion = registry.alias_version(pipeline, names.CHAMPION)
    if champion is not None and champion.version == info.version:
        return ManualPromotion(pipeline, info.version, champion.version, True, False, ["already the champion"])

    config = _config_of(registry, info)
    dataset = reference_data(settings, config, info)
    if dataset is None:
        raise PromotionRefused(f"v{version} records no data version: its gates cannot be re-run")
    indices = split_dataset(dataset, config.data, config.split)
    candidate, _ = registry.load_predictor(f"models:/{names.registered_model_name(pipeline)}/{info.version}")
    champion_model = None
    if champion is not None:
        champion_model, _ = registry.load_predictor(
            f"models:/{names.registered_model_name(pipeline)}/{champion.version}"
        )
    scoring = modeling.score_against(candidate, champion_model, dataset, indices.test, config)
    eval_gate = evaluation_gate(scoring.comparison, config.gates.evaluation, scoring.champion_error)
    bias = audit_bias(**modeling.bias_inputs(candidate, scoring, dataset, indices, config))
    with registry.package(pipeline, info.version) as package:
        serving = modeling.check_serving(
            package, candidate, dataset, indices.test, pipeline, info.version, config.gates.serving
        )
    decision = decide_promotion(
        scoring.comparison.challenger,
        scoring.comparison.champion,
        [eval_gate, bias, serving],
        config.gates.evaluation,
        champion_version=None if champion is None else champion.version,
    )
    previous = None if champion is None else champion.version
    if not decision.promote and force_reason is None:
        raise PromotionRefused(f"v{version} did not pass the gates: " + " | ".join(decision.reasons))
    forced = not decision.promote
    reason = f"forced by {by}: {force_reason}" if forced else " | ".join(decision.reasons)
    with Release(registry, pipeline, by=by, version=info.version) as release:
        release.tag({names.TAG_REASONS: reason[:5000], names.TAG_PROMOTED_BY: by})
        release.promote(reason=reason, kind="forced" if forced else "promoted")
    return ManualPromotion(pipeline, info.version, previous, True, forced, decision.reasons)


def rollback(pipeline: str, by: str, reason: str, home: str | None = None) -> ChampionChange:
    """Point `champion` back at the version it replaced; see :func:`rollback_champion`."""
    return rollback_champion(Registry(load_settings(Path(home) if home else None)), pipeline, by, reason)
