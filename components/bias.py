"""Bias gate: group fairness of a binary classifier, per sensitive column and per pair (Fairlearn).

What is audited. Each *partition* of the test rows is one sensitive column (`colour`) or, with
`gate.intersections`, one pair of them (`colour x sex`, groups such as `Black & Female`). For
each partition a Fairlearn ``MetricFrame`` tabulates, per group, the count, accuracy,
selection rate (share predicted positive), true-positive rate and false-positive rate. From
the groups with at least `min_group_size` rows come two figures:

- the demographic-parity ratio: lowest / highest selection rate (the four-fifths rule);
- the equalized-odds difference: the larger of the TPR gap and the FPR gap between groups.

Checks, all on the same test rows:

- ``demographic_parity_ratio(P)`` >= `min_demographic_parity_ratio`; None fails closed.
- ``equalized_odds_difference(P)`` <= `max_equalized_odds_difference`; None = not checked.
- Given the champion's predictions: ``no_regression_demographic_parity_ratio(P)``, the ratio
  may fall by at most `max_fairness_regression` (and the equalized-odds difference may rise
  by at most as much, when it is checked). None fails closed, as the evaluation gate's
  `max_regression` does. Without champion predictions only the absolute checks apply.
- Groups below `min_group_size` are left out of the figures (their rates are noise) and named
  in a ``groups_too_small(P)`` warning: reported, never silently passed. A sensitive column
  with fewer than two groups large enough fails closed; an intersection that thin is a warning
  (its columns are judged on their own, and pairs thin out fast).

Point estimate, not interval bound. Every threshold is held against the point estimate; the
seeded bootstrap interval is reported beside it. The four-fifths rule is defined on observed
rates, and a lower bound held to 0.8 would fail fair models for want of rows: the gate would
judge the sample size rather than the model. Measured: in the 20-case test (1,000 rows, two
groups) every fair set has a point ratio >= 0.91 and every disparate one <= 0.68, so the point
estimate separates them with a wide margin, while one fair set (difference 0.043, ratio 0.91)
has a lower bound of 0.78 and would fail on it; on arrests the colour ratio 0.835 has a lower
bound of 0.767 (396 rows in the smaller group). The interval tells a reader how firm a verdict
near the threshold is.

Intervals: percentile intervals over `n_bootstrap` resamples of the test rows. One set of
resampled index arrays serves every partition and every model (candidate, champion,
mitigated), so the champion comparison is a paired bootstrap of the difference.

Mitigation (`gate.mitigation: threshold_optimizer`): Fairlearn's ``ThresholdOptimizer``
(demographic parity) is fitted on the candidate's validation-split probabilities and applied
to its test-split probabilities; the report shows fairness and accuracy with and without it.
It informs, it does not change the verdict: see :data:`SERVING_NOTE`.

The audit covers binary classifiers only: for multiclass labels it returns a not-applicable
report saying so.
"""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal

import numpy as np
import pandas as pd
from fairlearn.metrics import MetricFrame
from fairlearn.postprocessing import ThresholdOptimizer
from matplotlib.figure import Figure
from sklearn.base import BaseEstimator

from components.config import BiasGate
from components.gates import Check, GateReport, threshold_check

MISSING_GROUP = "(missing)"
_RATES = ("accuracy", "selection_rate", "tpr", "fpr")
_WITH_INTERVALS = ("selection_rate", "tpr", "fpr")
# Regression figures are rounded before the tolerance test, as in the evaluation gate: a drop
# of exactly the tolerance must pass despite float noise.
_DIGITS = 10
# Resampled index arrays are drawn in chunks of at most this many elements (1 MB of int64):
# memory stays bounded on a large test set, and small chunks stay in cache (measured on
# arrests: 0.11 s CPU per audit against 0.16 s with 16 MB chunks; the resamples are the same).
_CHUNK_ELEMENTS = 131_072

SERVING_NOTE = (
    "A threshold optimizer applies a different, randomised threshold per group, so it needs each "
    "row's sensitive attributes at prediction time. The served model does not receive them (they are "
    "audited, not fed to it) and this audit does not change it: the figures with mitigation show what a "
    "post-processed model would do; serving it would need the attributes in every request, and the same "
    "request could get different answers."
)


@dataclass(frozen=True)
class Estimate:
    """A figure with its bootstrap percentile interval (bounds None when not computable).

    Attributes:
        value: The point estimate on the audited rows; None when undefined (e.g. 0/0).
        low: Lower interval bound.
        high: Upper interval bound.
    """

    value: float | None
    low: float | None = None
    high: float | None = None

    def text(self) -> str:
        """`0.6200 [0.5500, 0.7000]`, or `n/a`."""
        if self.value is None:
            return "n/a"
        if self.low is None or self.high is None:
            return f"{self.value:.4f}"
        return f"{self.value:.4f} [{self.low:.4f}, {self.high:.4f}]"


@dataclass
class PartitionFairness:
    """The fairness figures of one partition (a sensitive column or a pair of them).

    Attributes:
        columns: The sensitive column(s) that define the groups.
        judged: Groups large enough to enter the figures.
        too_small: Groups left out, as `name (count)`.
        dp_ratio: Demographic-parity ratio of the candidate.
        eo_diff: Equalized-odds difference of the candidate.
        champion_dp_ratio: The champion's ratio on the same rows, when given.
        champion_eo_diff: The champion's difference on the same rows, when given.
        dp_ratio_drop: Champion ratio - candidate ratio (positive = worse), paired bootstrap.
        eo_diff_rise: Candidate difference - champion difference (positive = worse).
    """

    columns: list[str]
    judged: list[str]
    too_small: list[str]
    dp_ratio: Estimate
    eo_diff: Estimate
    champion_dp_ratio: Estimate | None = None
    champion_eo_diff: Estimate | None = None
    dp_ratio_drop: Estimate | None = None
    eo_diff_rise: Estimate | None = None


@dataclass
class MitigationOutcome:
    """Fairness and accuracy of the model with and without a mitigation.

    Attributes:
        method: `threshold_optimizer`.
        constraint: The fairness constraint it enforces (`demographic_parity`).
        objective: What it maximises under that constraint (`balanced_accuracy_score`).
        fit_rows: Validation rows it was fitted on.
        error: Why it could not be evaluated (then the figures below are empty).
        overall_before: Test accuracy, balanced accuracy and selection rate as served.
        overall_after: The same figures with the mitigation.
        dp_ratio_after: Partition -> demographic-parity ratio with the mitigation.
        eo_diff_after: Partition -> equalized-odds difference with the mitigation.
        note: What the mitigation means for serving.
    """

    method: str
    constraint: str
    objective: str
    fit_rows: int
    error: str | None = None
    overall_before: dict[str, Estimate] = field(default_factory=dict)
    overall_after: dict[str, Estimate] = field(default_factory=dict)
    dp_ratio_after: dict[str, Estimate] = field(default_factory=dict)
    eo_diff_after: dict[str, Estimate] = field(default_factory=dict)
    note: str = SERVING_NOTE


@dataclass(frozen=True)
class MitigationData:
    """What a threshold optimizer needs beyond the audited (test) rows.

    Attributes:
        test_scores: The candidate's probability of the positive class on the audited rows.
        val_true: True class indices on the validation rows.
        val_scores: The candidate's probability of the positive class on the validation rows.
        val_sensitive: The sensitive columns on the validation rows (same columns as audited).
    """

    test_scores: np.ndarray
    val_true: np.ndarray
    val_scores: np.ndarray
    val_sensitive: pd.DataFrame


@dataclass
class BiasReport(GateReport):
    """A :class:`GateReport` that also carries the per-group tables and the fairness figures.

    Attributes:
        groups: Partition -> one dict per group: group, count, accuracy, selection_rate, tpr,
            fpr (None when undefined), their `*_ci` intervals, judged (False when too small).
        partitions: Partition -> its :class:`PartitionFairness`.
        accuracy: Overall test accuracy of the candidate, with its interval.
        mitigation: With and without the configured mitigation, when it ran.
        method: How the figures were estimated and decided (resamples, confidence, seed).
    """

    groups: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    partitions: dict[str, PartitionFairness] = field(default_factory=dict)
    accuracy: Estimate | None = None
    mitigation: MitigationOutcome | None = None
    method: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The gate's JSON form plus the tables, figures with intervals, and mitigation."""
        return {
            **super().to_dict(),
            "groups": self.groups,
            "partitions": {name: asdict(p) for name, p in self.partitions.items()},
            "accuracy": None if self.accuracy is None else asdict(self.accuracy),
            "mitigation": None if self.mitigation is None else asdict(self.mitigation),
            "method": self.method,
        }

    def to_markdown(self) -> str:
        """The checks, the figures per partition, one table per partition, and the mitigation."""
        lines = [super().to_markdown()]
        if self.method:
            lines += ["", _method_sentence(self.method)]
        if self.partitions:
            lines += ["", *_partitions_markdown(self.partitions)]
        for name, rows in self.groups.items():
            lines += ["", f"#### `{name}` by group", ""]
            lines += ["| group | count | accuracy | selection rate | TPR | FPR | judged |", "|" + "---|" * 7]
            lines += [_group_row_markdown(row) for row in rows]
        if self.mitigation is not None:
            lines += ["", *_mitigation_markdown(self.mitigation, self.partitions)]
        return "\n".join(lines)


# --- markdown -------------------------------------------------------------------------------


def _method_sentence(method: dict[str, Any]) -> str:
    if not method["resamples"]:
        return "Thresholds are held against point estimates; no intervals (`n_bootstrap: 0`)."
    return (
        f"Thresholds are held against point estimates; brackets hold {method['confidence']:.0%} bootstrap "
        f"percentile intervals ({method['resamples']} resamples of the test rows, seed {method['seed']})."
    )


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def _group_row_markdown(row: dict[str, Any]) -> str:
    cells = [_fmt(row["accuracy"])]
    for key in _WITH_INTERVALS:
        low, high = row.get(f"{key}_ci") or (None, None)
        cells.append(Estimate(row[key], low, high).text())
    judged = "yes" if row["judged"] else "too small to judge"
    return f"| {row['group']} | {row['count']} | {' | '.join(cells)} | {judged} |"


def _partitions_markdown(partitions: dict[str, PartitionFairness]) -> list[str]:
    champion = any(p.champion_dp_ratio is not None for p in partitions.values())
    header = "| partition | groups judged | demographic-parity ratio | equalized-odds difference |"
    rule = "|---|---|---|---|"
    if champion:
        header += " champion DP ratio | champion EO difference | DP ratio drop | EO difference rise |"
        rule += "---|---|---|---|"
    lines = ["#### Fairness by partition", "", header, rule]
    for name, p in partitions.items():
        cells = [name, str(len(p.judged)), p.dp_ratio.text(), p.eo_diff.text()]
        if champion:
            extra = (p.champion_dp_ratio, p.champion_eo_diff, p.dp_ratio_drop, p.eo_diff_rise)
            cells += ["" if e is None else e.text() for e in extra]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _mitigation_markdown(m: MitigationOutcome, partitions: dict[str, PartitionFairness]) -> list[str]:
    constraint, objective = m.constraint.replace("_", " "), m.objective.removesuffix("_score").replace("_", " ")
    title = f"#### Mitigation: `{m.method}` ({constraint}, best {objective}), fitted on {m.fit_rows} validation rows"
    if m.error is not None:
        return [title, "", f"Not evaluated: {m.error}"]
    lines = [title, "", "| figure | without | with |", "|---|---|---|"]
    for key, label in _OVERALL.items():
        lines.append(f"| {label} | {m.overall_before[key].text()} | {m.overall_after[key].text()} |")
    for name, p in partitions.items():
        if name in m.dp_ratio_after:
            dp, eo = m.dp_ratio_after[name], m.eo_diff_after[name]
            lines.append(f"| demographic-parity ratio ({name}) | {p.dp_ratio.text()} | {dp.text()} |")
            lines.append(f"| equalized-odds difference ({name}) | {p.eo_diff.text()} | {eo.text()} |")
    return [*lines, "", f"_Serving: {m.note}_"]


# --- partitions and the per-group tables (Fairlearn MetricFrame) ----------------------------


@dataclass(frozen=True)
class _Partition:
    name: str
    columns: tuple[str, ...]
    rows: list[dict[str, Any]]  # the per-group table, one dict per group
    cells: np.ndarray  # (groups, 4) counts of TN, FP, FN, TP per group, from the MetricFrame
    codes: np.ndarray  # per row, the index of its group in `rows`

    @property
    def judged(self) -> np.ndarray:
        return np.array([row["judged"] for row in self.rows], dtype=bool)


def _group_labels(column: pd.Series) -> np.ndarray:
    # Missing membership is a group of its own, so those rows are audited, not dropped.
    return column.astype(object).where(column.notna(), MISSING_GROUP).astype(str).to_numpy()


def _labels_frame(sensitive: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame({str(c): _group_labels(sensitive[c]) for c in sensitive.columns})


def _cells(y_true: np.ndarray, y_pred: np.ndarray) -> np.ndarray:
    """Counts of TN, FP, FN, TP on 0/1 arrays: the one metric the MetricFrame computes.

    Every rate is derived from these counts by :func:`_rates`, for the table, the figures and
    every bootstrap replicate alike. One cheap metric keeps the MetricFrame fast (Fairlearn's
    rate functions call sklearn per group), and an undefined rate (the TPR of a group with no
    positive labels) stays NaN instead of Fairlearn's 0, which would invent a gap.
    """
    return np.bincount(2 * np.asarray(y_true) + np.asarray(y_pred), minlength=4)


def _finite(value: float) -> float | None:
    value = float(value)
    return value if math.isfinite(value) else None


def _group_table(
    truth: np.ndarray, pred: np.ndarray, frame: pd.DataFrame, min_size: int
) -> tuple[list[dict[str, Any]], np.ndarray]:
    """Fairlearn's disaggregation of the cell counts by group, as table rows and a count array."""
    by_group = MetricFrame(metrics={"cells": _cells}, y_true=truth, y_pred=pred, sensitive_features=frame).by_group
    # With several columns Fairlearn lists every combination, also those no row has (as NaN).
    by_group = by_group[by_group["cells"].map(lambda v: isinstance(v, np.ndarray))]
    cells = np.stack(by_group["cells"].to_numpy()).astype(float)
    rates = _rates(cells)
    rows = []
    for g, group in enumerate(by_group.index):
        name = " & ".join(str(v) for v in group) if isinstance(group, tuple) else str(group)
        count = int(cells[g].sum())
        row: dict[str, Any] = {"group": name, "count": count}
        row.update({k: _finite(rates[k][g]) for k in _RATES})
        row["judged"] = count >= min_size
        rows.append(row)
    return rows, cells


def _partitions(
    truth: np.ndarray, pred: np.ndarray, labels: pd.DataFrame, intersections: bool, min_size: int
) -> list[_Partition]:
    sets: list[tuple[str, ...]] = [(c,) for c in labels.columns]
    if intersections:
        sets += list(itertools.combinations(labels.columns, 2))
    partitions = []
    for columns in sets:
        frame = labels[list(columns)]
        rows, cells = _group_table(truth, pred, frame, min_size)
        row_names = frame.iloc[:, 0] if len(columns) == 1 else frame.iloc[:, 0] + " & " + frame.iloc[:, 1]
        codes = pd.Categorical(row_names, categories=[r["group"] for r in rows]).codes.astype(np.int64)
        partitions.append(_Partition(" x ".join(columns), columns, rows, cells, codes))
    return partitions


# --- counts, rates and the bootstrap --------------------------------------------------------
# Every figure comes from counts of the four (truth, prediction) cells per group: the point
# estimate from the rows themselves, each bootstrap replicate from one resampled index array.


def _cell_keys(codes: np.ndarray, truth: np.ndarray, pred: np.ndarray) -> np.ndarray:
    # 4 * group + cell, where cell 0 = TN, 1 = FP, 2 = FN, 3 = TP.
    return codes * 4 + 2 * truth + pred


def _bootstrap_counts(keys: list[np.ndarray], widths: list[int], resamples: int, seed: int) -> list[np.ndarray]:
    """Cell counts per resample for each key array, all resampled with the same index arrays.

    Returns:
        One array per key, shape (resamples, width).
    """
    n = len(keys[0])
    rng = np.random.default_rng(seed)
    out = [np.empty((resamples, w)) for w in widths]
    chunk = max(1, _CHUNK_ELEMENTS // n)
    for start in range(0, resamples, chunk):
        r = min(chunk, resamples - start)
        index = rng.integers(0, n, size=(r, n))
        offset = np.arange(r)[:, None]
        for key, width, target in zip(keys, widths, out, strict=True):
            flat = (offset * width + key[index]).ravel()
            target[start : start + r] = np.bincount(flat, minlength=r * width).reshape(r, width)
    return out


def _rates(counts: np.ndarray) -> dict[str, np.ndarray]:
    """Per-group rates from cell counts of shape (..., groups, 4); NaN where undefined."""
    tn, fp, fn, tp = (counts[..., i] for i in range(4))
    with np.errstate(invalid="ignore", divide="ignore"):
        return {
            "accuracy": (tn + tp) / (tn + fp + fn + tp),
            "selection_rate": (fp + tp) / (tn + fp + fn + tp),
            "tpr": tp / (tp + fn),
            "fpr": fp / (fp + tn),
        }


def _spread(values: np.ndarray) -> np.ndarray:
    # Highest minus lowest over the defined groups (last axis); NaN with fewer than two.
    defined = ~np.isnan(values)
    high = np.where(defined, values, -np.inf).max(axis=-1)
    low = np.where(defined, values, np.inf).min(axis=-1)
    return np.where(defined.sum(axis=-1) >= 2, high - low, np.nan)


def _dp_ratio(rates: dict[str, np.ndarray], judged: np.ndarray) -> np.ndarray:
    selection = rates["selection_rate"][..., judged]
    with np.errstate(invalid="ignore", divide="ignore"):
        # NaN when nobody is selected (0/0) or a judged group is empty in a resample.
        return selection.min(axis=-1) / selection.max(axis=-1)


def _eo_diff(rates: dict[str, np.ndarray], judged: np.ndarray) -> np.ndarray:
    # fmax ignores a NaN side: with positives in only one group the FPR gap still counts.
    return np.fmax(_spread(rates["tpr"][..., judged]), _spread(rates["fpr"][..., judged]))


_OVERALL = {"accuracy": "accuracy", "balanced_accuracy": "balanced accuracy", "selection_rate": "selection rate"}


def _overall(counts: np.ndarray) -> dict[str, np.ndarray]:
    """Accuracy, balanced accuracy and selection rate over all rows, from per-group counts."""
    rates = {k: v[..., 0] for k, v in _rates(counts.sum(axis=-2, keepdims=True)).items()}
    # Balanced accuracy too: on imbalanced labels (arrests: 83% favourable) a post-processor
    # that selects everyone gains plain accuracy and perfect parity; this figure exposes it.
    rates["balanced_accuracy"] = (rates["tpr"] + 1 - rates["fpr"]) / 2
    return rates


def _interval(samples: np.ndarray, confidence: float) -> tuple[float | None, float | None]:
    finite = samples[np.isfinite(samples)]
    # An interval from a minority of the resamples would describe some other sample.
    if len(finite) == 0 or len(finite) < len(samples) / 2:
        return None, None
    tail = (1 - confidence) / 2
    low, high = np.quantile(finite, [tail, 1 - tail])
    return float(low), float(high)


def _estimate(point: np.ndarray | float, samples: np.ndarray, confidence: float) -> Estimate:
    value = _finite(float(point))
    if value is None:
        return Estimate(None)
    return Estimate(value, *_interval(samples, confidence))


_Figure = Callable[[dict[str, np.ndarray], np.ndarray], np.ndarray]


@dataclass(frozen=True)
class _Counts:
    point: np.ndarray  # (groups, 4)
    boot: np.ndarray  # (resamples, groups, 4)

    def estimate(
        self, figure: _Figure, judged: np.ndarray, confidence: float, minus: _Counts | None = None
    ) -> Estimate:
        """`figure(rates, judged)` on the point and every replicate; `minus` gives a paired difference."""
        point, boot = figure(_rates(self.point), judged), figure(_rates(self.boot), judged)
        if minus is not None:
            point = point - figure(_rates(minus.point), judged)
            boot = boot - figure(_rates(minus.boot), judged)
        return _estimate(point, boot, confidence)


def _count_models(
    partitions: list[_Partition], truth: np.ndarray, models: dict[str, np.ndarray], gate: BiasGate
) -> dict[tuple[str, str], _Counts]:
    """Point and bootstrap cell counts for every (partition, model) pair, paired resamples."""
    pairs = [(p, name) for p in partitions for name in models]
    keys = [_cell_keys(p.codes, truth, models[name]) for p, name in pairs]
    widths = [4 * len(p.rows) for p, _ in pairs]
    boots = _bootstrap_counts(keys, widths, gate.n_bootstrap, gate.seed)
    counts = {}
    for (p, name), key, width, boot in zip(pairs, keys, widths, boots, strict=True):
        # The audited model's counts are the MetricFrame's; the others' are counted the same way.
        point = p.cells if name == "candidate" else np.bincount(key, minlength=width).reshape(-1, 4).astype(float)
        counts[(p.name, name)] = _Counts(point, boot.reshape(gate.n_bootstrap, len(p.rows), 4))
    return counts


def _add_row_intervals(p: _Partition, counts: _Counts, confidence: float) -> None:
    rates = _rates(counts.boot)
    for g, row in enumerate(p.rows):
        for key in _WITH_INTERVALS:
            low, high = _interval(rates[key][:, g], confidence) if row[key] is not None else (None, None)
            row[f"{key}_ci"] = None if low is None else [low, high]


# --- checks ---------------------------------------------------------------------------------


def _too_small(p: _Partition) -> list[str]:
    return [f"{r['group']} ({r['count']})" for r in p.rows if not r["judged"]]


def _with_interval(check: Check, estimate: Estimate) -> Check:
    if estimate.low is None:
        return check
    return replace(check, detail=f"{check.detail} (interval [{estimate.low:.4f}, {estimate.high:.4f}])")


def _absolute_checks(p: _Partition, fairness: PartitionFairness, gate: BiasGate) -> list[Check]:
    dp_name, eo_name = f"demographic_parity_ratio({p.name})", f"equalized_odds_difference({p.name})"
    if len(fairness.judged) < 2:
        detail = f"{p.name}: fewer than two groups with >= {gate.min_group_size} rows, so parity cannot be judged"
        # A column fails closed; a pair that thin is a warning: its columns are judged alone.
        severity: Literal["fail", "warn"] = "fail" if len(p.columns) == 1 else "warn"
        checks = [Check(dp_name, False, detail, None, gate.min_demographic_parity_ratio, severity)]
        if gate.max_equalized_odds_difference is not None:
            checks.append(Check(eo_name, False, detail, None, gate.max_equalized_odds_difference, severity))
        return checks
    what = f"{p.name}: demographic-parity ratio (min/max selection rate)"
    dp = threshold_check(dp_name, fairness.dp_ratio.value, gate.min_demographic_parity_ratio, at_least=True, what=what)
    checks = [_with_interval(dp, fairness.dp_ratio)]
    if gate.max_equalized_odds_difference is not None:
        what = f"{p.name}: equalized-odds difference (max TPR/FPR gap)"
        eo = threshold_check(
            eo_name, fairness.eo_diff.value, gate.max_equalized_odds_difference, at_least=False, what=what
        )
        checks.append(_with_interval(eo, fairness.eo_diff))
    return checks


def _regression_check(
    name: str, what: str, candidate: Estimate, champion: Estimate, change: Estimate, tolerance: float | None
) -> Check:
    """`change` is how much worse the candidate is (positive = worse), held to `tolerance`."""
    if champion.value is None:
        return Check(name, True, f"{what}: the champion's figure is undefined on these rows, so nothing to compare")
    worse = None if change.value is None else round(change.value, _DIGITS)
    check = threshold_check(name, worse, tolerance, at_least=False, what=f"{what} worsening against the champion")
    if tolerance is None or worse is None:
        return check
    interval = "" if change.low is None else f" (interval [{change.low:+.4f}, {change.high:+.4f}])"
    verdict = "within" if check.passed else "more than"
    detail = (
        f"{what} {_fmt(candidate.value)} vs champion {champion.value:.4f} on the same test rows: "
        f"worse by {worse:+.4f}{interval}, {verdict} the allowed {tolerance:.4f}"
    )
    return replace(check, detail=detail)


def _regression_checks(p: _Partition, f: PartitionFairness, gate: BiasGate) -> list[Check]:
    if len(f.judged) < 2 or f.champion_dp_ratio is None or f.dp_ratio_drop is None:
        return []
    checks = [
        _regression_check(
            f"no_regression_demographic_parity_ratio({p.name})",
            f"{p.name}: demographic-parity ratio",
            f.dp_ratio,
            f.champion_dp_ratio,
            f.dp_ratio_drop,
            gate.max_fairness_regression,
        )
    ]
    # The equalized-odds difference is only held to the champion when it is gated at all.
    if gate.max_equalized_odds_difference is not None and f.champion_eo_diff and f.eo_diff_rise:
        checks.append(
            _regression_check(
                f"no_regression_equalized_odds_difference({p.name})",
                f"{p.name}: equalized-odds difference",
                f.eo_diff,
                f.champion_eo_diff,
                f.eo_diff_rise,
                gate.max_fairness_regression,
            )
        )
    return checks


def _too_small_check(p: _Partition, gate: BiasGate) -> list[Check]:
    small = _too_small(p)
    if not small:
        return []
    detail = f"{p.name}: too small to judge (< {gate.min_group_size} rows), left out of the figures: {', '.join(small)}"
    return [Check(f"groups_too_small({p.name})", False, detail, severity="warn")]


# --- mitigation -----------------------------------------------------------------------------


class _ScoreAsPrediction(BaseEstimator):
    """A fitted stand-in estimator whose prediction is its one input column: the model's score.

    ThresholdOptimizer post-processes an estimator's scores; handing it the probabilities as X
    lets it work on any model (here a torch network) without wrapping that model in sklearn.
    """

    def fit(self, x: np.ndarray, y: np.ndarray | None = None) -> _ScoreAsPrediction:
        return self

    def predict(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(x)[:, 0]

    def __sklearn_is_fitted__(self) -> bool:
        return True


def threshold_optimizer_predictions(
    val_truth: np.ndarray,
    val_scores: np.ndarray,
    val_groups: pd.DataFrame,
    test_scores: np.ndarray,
    test_groups: pd.DataFrame,
    seed: int,
) -> np.ndarray:
    """Fairlearn's ThresholdOptimizer (demographic parity), fitted on validation, applied to test.

    The groups are the intersections of all sensitive columns given (Fairlearn combines the
    columns of a frame), so one set of thresholds serves every column and pair.

    Args:
        val_truth: 0/1 labels (1 = favourable) of the validation rows.
        val_scores: The model's probability of the favourable class on the validation rows.
        val_groups: Group labels of the validation rows, one column per sensitive column.
        test_scores: The model's probability of the favourable class on the test rows.
        test_groups: Group labels of the test rows, same columns.
        seed: Seeds its randomised predictions (it mixes two thresholds for some groups).

    Returns:
        0/1 predictions (1 = favourable) on the test rows.

    Raises:
        ValueError: A test group never seen in validation (Fairlearn would silently never
            select it), or data Fairlearn cannot fit (e.g. one label only).
    """
    unseen = set(map(tuple, test_groups.to_numpy())) - set(map(tuple, val_groups.to_numpy()))
    if unseen:
        names = ", ".join(sorted(" & ".join(g) for g in unseen))
        raise ValueError(f"test groups absent from the validation split, so no threshold was fitted for them: {names}")
    optimizer = ThresholdOptimizer(
        estimator=_ScoreAsPrediction(),
        constraints="demographic_parity",
        # Balanced accuracy, as the project trains (balanced class weights) and gates (macro-F1,
        # beating the majority class): under plain accuracy on imbalanced labels the optimum is
        # often to select everyone, which is "fair" and useless.
        objective="balanced_accuracy_score",
        prefit=True,
        predict_method="predict",
    )
    scores = np.asarray(val_scores, dtype=float)[:, None]
    optimizer.fit(scores, np.asarray(val_truth, dtype=int), sensitive_features=val_groups)
    predicted = optimizer.predict(
        np.asarray(test_scores, dtype=float)[:, None], sensitive_features=test_groups, random_state=seed
    )
    return np.asarray(predicted).astype(np.int64)


def _mitigated(
    data: MitigationData | None, labels: pd.DataFrame, positive: int, gate: BiasGate, n: int
) -> tuple[np.ndarray | None, MitigationOutcome | None, list[Check]]:
    """The mitigated test predictions (when they could be made), the outcome shell, a warning."""
    if gate.mitigation == "none":
        return None, None, []
    if data is None:
        detail = f"mitigation {gate.mitigation} is configured but no validation scores were given, so it was not run"
        return None, None, [Check("mitigation", False, detail, severity="warn")]
    outcome = MitigationOutcome(gate.mitigation, "demographic_parity", "balanced_accuracy_score", len(data.val_true))
    try:
        if not (len(data.test_scores) == n and len(data.val_true) == len(data.val_scores) == len(data.val_sensitive)):
            raise ValueError("the mitigation's score and label arrays do not match the audited and validation rows")
        val_labels = _labels_frame(data.val_sensitive[list(labels.columns)])
        val_truth = (np.asarray(data.val_true) == positive).astype(np.int64)
        predicted = threshold_optimizer_predictions(
            val_truth, data.val_scores, val_labels, data.test_scores, labels, gate.seed
        )
    except (ValueError, KeyError) as error:
        outcome.error = str(error)
        detail = f"mitigation {gate.mitigation} could not be evaluated: {error}"
        return None, outcome, [Check("mitigation", False, detail, severity="warn")]
    return predicted, outcome, []


# --- the gate -------------------------------------------------------------------------------


def _metric_key(name: str) -> str:
    # MLflow metric names: letters, digits, `_ - . /` and spaces; `colour x sex` -> colour_x_sex.
    return re.sub(r"[^\w.\-/]", "_", name)


def _is_multiclass(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int | None) -> bool:
    if n_classes is not None:
        return n_classes > 2
    return len(np.union1d(np.unique(y_true), np.unique(y_pred))) > 2


def _fairness(
    p: _Partition, counts: dict[tuple[str, str], _Counts], champion: bool, confidence: float
) -> PartitionFairness:
    judged = p.judged
    own = counts[(p.name, "candidate")]
    fairness = PartitionFairness(
        columns=list(p.columns),
        judged=[r["group"] for r in p.rows if r["judged"]],
        too_small=_too_small(p),
        dp_ratio=own.estimate(_dp_ratio, judged, confidence),
        eo_diff=own.estimate(_eo_diff, judged, confidence),
    )
    if champion:
        theirs = counts[(p.name, "champion")]
        fairness.champion_dp_ratio = theirs.estimate(_dp_ratio, judged, confidence)
        fairness.champion_eo_diff = theirs.estimate(_eo_diff, judged, confidence)
        fairness.dp_ratio_drop = theirs.estimate(_dp_ratio, judged, confidence, minus=own)
        fairness.eo_diff_rise = own.estimate(_eo_diff, judged, confidence, minus=theirs)
    return fairness


def _figures(report: BiasReport) -> dict[str, float]:
    """Key figures to log as metrics: the point estimates first (the headline shows three)."""
    figures: dict[str, float | None] = {}
    for name, p in report.partitions.items():
        key = _metric_key(name)
        figures[f"dp_ratio_{key}"] = p.dp_ratio.value
        figures[f"eo_diff_{key}"] = p.eo_diff.value
    for name, p in report.partitions.items():
        key = _metric_key(name)
        figures[f"dp_ratio_{key}_low"], figures[f"dp_ratio_{key}_high"] = p.dp_ratio.low, p.dp_ratio.high
        if p.dp_ratio_drop is not None:
            figures[f"dp_ratio_drop_{key}"] = p.dp_ratio_drop.value
            figures[f"eo_diff_rise_{key}"] = p.eo_diff_rise.value if p.eo_diff_rise else None
    m = report.mitigation
    if m is not None and m.error is None:
        figures["mitigated_accuracy"] = m.overall_after["accuracy"].value
        figures["mitigated_balanced_accuracy"] = m.overall_after["balanced_accuracy"].value
        for name, estimate in m.dp_ratio_after.items():
            figures[f"mitigated_dp_ratio_{_metric_key(name)}"] = estimate.value
            figures[f"mitigated_eo_diff_{_metric_key(name)}"] = m.eo_diff_after[name].value
    return {k: v for k, v in figures.items() if v is not None}


def audit_bias(
    y_true: np.ndarray,
    y_pred: np.ndarray,
    sensitive: pd.DataFrame,
    gate: BiasGate,
    positive: int = 1,
    min_group_size: int | None = None,
    *,
    n_classes: int | None = None,
    champion_pred: np.ndarray | None = None,
    mitigation: MitigationData | None = None,
) -> BiasReport:
    """Audit a binary classifier's test predictions for group fairness (see the module docstring).

    Args:
        y_true: True class indices, shape (n,).
        y_pred: Predicted class indices of the candidate, shape (n,).
        sensitive: One column per sensitive attribute, n rows, aligned with `y_true`.
        gate: Thresholds, tolerance, bootstrap and mitigation settings.
        positive: The class index that counts as the positive (selected) outcome.
        min_group_size: Groups with fewer rows are left out of the figures, and reported;
            default `gate.min_group_size`.
        n_classes: Number of classes of the model; inferred from the labels when None.
        champion_pred: The champion's predicted class indices on the same rows, in the same
            class order; None (no champion, or none comparable) checks absolute thresholds only.
        mitigation: Validation scores for `gate.mitigation`; ignored when it is `none`.

    Returns:
        A :class:`BiasReport` (gate `bias`). Not applicable when `sensitive` has no columns
        or the problem is multiclass.

    Raises:
        ValueError: The arrays and the frame disagree in length.
    """
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    lengths = [len(y_true), len(y_pred), len(sensitive)] + ([] if champion_pred is None else [len(champion_pred)])
    if len(set(lengths)) != 1:
        raise ValueError(f"lengths differ: y_true, y_pred, sensitive (, champion_pred): {lengths}")
    if sensitive.shape[1] == 0:
        note = Check("no_sensitive_columns", True, "no sensitive columns configured, so there is nothing to audit")
        return BiasReport("bias", [note], applicable=False)
    if _is_multiclass(y_true, y_pred, n_classes):
        note = Check("multiclass", True, "bias audit covers binary classifiers only")
        return BiasReport("bias", [note], applicable=False)
    gate = gate if min_group_size is None else gate.model_copy(update={"min_group_size": min_group_size})
    truth, pred = (y_true == positive).astype(np.int64), (y_pred == positive).astype(np.int64)
    labels = _labels_frame(sensitive)
    partitions = _partitions(truth, pred, labels, gate.intersections, gate.min_group_size)
    mitigated, outcome, notes = _mitigated(mitigation, labels, positive, gate, len(truth))
    models = {"candidate": pred}
    if champion_pred is not None:
        models["champion"] = (np.asarray(champion_pred) == positive).astype(np.int64)
    if mitigated is not None:
        models["mitigated"] = mitigated
    counts = _count_models(partitions, truth, models, gate)

    report = BiasReport("bias", method=_method(gate))
    first = counts[(partitions[0].name, "candidate")]
    report.accuracy = _estimate(_overall(first.point)["accuracy"], _overall(first.boot)["accuracy"], gate.confidence)
    for p in partitions:
        _add_row_intervals(p, counts[(p.name, "candidate")], gate.confidence)
        fairness = _fairness(p, counts, champion_pred is not None, gate.confidence)
        report.groups[p.name] = p.rows
        report.partitions[p.name] = fairness
        report.checks += _absolute_checks(p, fairness, gate) + _regression_checks(p, fairness, gate)
    report.checks += [c for p in partitions for c in _too_small_check(p, gate)] + notes
    if champion_pred is None:
        detail = "no champion predictions to compare with: absolute thresholds only"
        report.checks.append(Check("no_champion", True, detail))
    if outcome is not None and mitigated is not None:
        _fill_mitigation(outcome, partitions, counts, gate.confidence)
    report.mitigation = outcome
    report.figures = _figures(report)
    return report


def _method(gate: BiasGate) -> dict[str, Any]:
    return {
        "decided_on": "point estimate",
        "interval": "bootstrap percentile",
        "resamples": gate.n_bootstrap,
        "confidence": gate.confidence,
        "seed": gate.seed,
    }


def _fill_mitigation(
    outcome: MitigationOutcome,
    partitions: list[_Partition],
    counts: dict[tuple[str, str], _Counts],
    confidence: float,
) -> None:
    # Overall figures: any partition's counts summed over its groups cover every row.
    own, theirs = counts[(partitions[0].name, "candidate")], counts[(partitions[0].name, "mitigated")]
    for target, source in ((outcome.overall_before, own), (outcome.overall_after, theirs)):
        point, boot = _overall(source.point), _overall(source.boot)
        target.update({k: _estimate(point[k], boot[k], confidence) for k in _OVERALL})
    for p in partitions:
        if p.judged.sum() >= 2:
            theirs = counts[(p.name, "mitigated")]
            outcome.dp_ratio_after[p.name] = theirs.estimate(_dp_ratio, p.judged, confidence)
            outcome.eo_diff_after[p.name] = theirs.estimate(_eo_diff, p.judged, confidence)


# --- figure ---------------------------------------------------------------------------------


def plot_group_rates(report: BiasReport) -> Figure:
    """Per-group selection rate, TPR and FPR with their intervals: one row per partition.

    Groups too small to judge are drawn hatched and grey. On the selection-rate panel a dashed
    line marks the lowest rate the four-fifths-style floor allows (`min ratio x highest judged
    rate`); a judged group below it is what fails the demographic-parity check.
    """
    names = list(report.groups)
    fig = Figure(figsize=(12, 2.8 * max(1, len(names))))
    axes = fig.subplots(max(1, len(names)), 3, squeeze=False)
    titles = {"selection_rate": "selection rate", "tpr": "true-positive rate", "fpr": "false-positive rate"}
    floor = next((c.threshold for c in report.checks if c.name.startswith("demographic_parity_ratio(")), None)
    for row_axes, name in zip(axes, names, strict=False):
        rows = report.groups[name]
        x = np.arange(len(rows))
        for ax, key in zip(row_axes, _WITH_INTERVALS, strict=True):
            values = np.array([np.nan if r[key] is None else r[key] for r in rows], dtype=float)
            low = np.array([r[f"{key}_ci"][0] if r.get(f"{key}_ci") else np.nan for r in rows], dtype=float)
            high = np.array([r[f"{key}_ci"][1] if r.get(f"{key}_ci") else np.nan for r in rows], dtype=float)
            errors = np.nan_to_num(np.vstack([values - low, high - values]), nan=0.0).clip(min=0)
            colours = ["tab:blue" if r["judged"] else "lightgrey" for r in rows]
            bars = ax.bar(x, np.nan_to_num(values), yerr=errors, color=colours, capsize=3, edgecolor="black")
            for bar, r in zip(bars, rows, strict=True):
                if not r["judged"]:
                    bar.set_hatch("//")
            judged = [v for v, r in zip(values, rows, strict=True) if r["judged"] and np.isfinite(v)]
            if key == "selection_rate" and floor is not None and judged:
                ax.axhline(floor * max(judged), linestyle="--", color="tab:red", label=f"{floor:g} x highest")
                ax.legend(loc="upper right", fontsize=7)
            ax.set_xticks(x, labels=[f"{r['group']}\n(n={r['count']})" for r in rows], fontsize=7)
            ax.set_ylim(0, 1.05)
            ax.set_title(f"{name}: {titles[key]}", fontsize=9)
    fig.tight_layout()
    return fig
