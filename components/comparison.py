"""The challenger against the champion on the same rows: paired test, slices, intersections.

:func:`compare_models` scores both models' probabilities on one set of labelled rows and
returns a :class:`ComparisonReport`:

- each model's :class:`~components.evaluation.EvalReport` (with 95% bootstrap intervals);
- a paired test of the two (:class:`PairedTest`): McNemar's exact and mid-p test on the rows
  exactly one of them gets right, and the paired bootstrap difference in accuracy and macro-F1
  (both models resampled on the same rows) with its 95% interval;
- the slices (:class:`SliceResult`): every group of each slice column (the sensitive columns,
  then `data.slices`) and of each pair of them, with its size, accuracy and macro-F1 for both
  models and the difference. A group under `min_slice_size` rows is marked too small to judge.

Slice columns are labelled by :func:`slice_frame`: a missing value is a group of its own, and a
numeric column with many values is cut into quartiles. The gate that judges the report is
:func:`components.promotion.evaluation_gate`; this module only measures.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from itertools import combinations
from typing import Any, NamedTuple

import numpy as np
import pandas as pd
from scipy.stats import binom

from components.bootstrap import (
    RESAMPLES,
    SEED,
    Statistic,
    accuracy_macro_f1,
    bootstrap,
    confusion_stack,
    paired_confusion_stacks,
    percentile_interval,
    resampled_roc_auc,
)
from components.config import DataConfig
from components.evaluation import EvalReport, evaluate_predictions, normalised

CANDIDATE_SPLIT = "candidate's test split"
MIN_SLICE_SIZE = 30
MISSING_GROUP = "(missing)"
# A numeric column with more distinct values than this is cut into quartiles: one group per
# age would leave every group too small to judge.
MAX_VALUES = 10
QUANTILE_BINS = 4
_METRICS = (("accuracy", "accuracy"), ("macro_f1", "macro-F1"))


def rows_text(n: int) -> str:
    """`1 row`, `12 rows`."""
    return f"{n} row" if n == 1 else f"{n} rows"


class SliceGroup(NamedTuple):
    """One group of rows: `family` is a column or a pair (`colour & sex`), `name` its value(s)."""

    family: str
    name: str
    rows: np.ndarray


def slice_columns(data: DataConfig) -> list[str]:
    """The columns to slice by: the sensitive ones, then the declared `data.slices`."""
    return list(dict.fromkeys([*data.sensitive, *data.slices]))


def _number(value: float) -> str:
    return f"{value:g}"


def _binned(column: pd.Series) -> np.ndarray:
    # Quartile edges of the observed values; right-closed bins (lo, hi], the first one closed.
    values = column.to_numpy(dtype=float)
    present = ~np.isnan(values)
    edges = np.unique(np.quantile(values[present], np.linspace(0, 1, QUANTILE_BINS + 1)))
    index = np.searchsorted(edges[1:-1], values, side="left")
    names = [("[" if i == 0 else "(") + f"{_number(edges[i])}, {_number(edges[i + 1])}]" for i in range(len(edges) - 1)]
    labels = np.asarray([names[i] for i in index.clip(0, len(names) - 1)], dtype=object)
    labels[~present] = MISSING_GROUP
    return labels


def _group_labels(column: pd.Series) -> np.ndarray:
    numeric = pd.api.types.is_numeric_dtype(column) and not pd.api.types.is_bool_dtype(column)
    if numeric and column.nunique(dropna=True) > MAX_VALUES:
        return _binned(column)
    labels = column.map(_number if numeric else str).astype(object)
    # Missing membership is a group of its own, so those rows are judged, not dropped.
    return labels.where(column.notna(), MISSING_GROUP).to_numpy()


def slice_frame(table: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    """The group label of every row in each slice column, as strings, row-aligned with `table`.

    Args:
        table: The evaluated rows (e.g. the test split of the dataset's table).
        columns: Slice columns, e.g. from :func:`slice_columns`.

    Returns:
        One string column per slice column, indexed 0..n-1. Missing values read `(missing)`;
        a numeric column with more than 10 distinct values is cut into quartiles
        (`[18, 24]`, `(24, 31]`, ...).

    Raises:
        ValueError: A slice column is not in the table.
    """
    absent = [c for c in columns if c not in table.columns]
    if absent:
        raise ValueError(f"slice columns not in the data: {absent}; columns: {list(table.columns)}")
    return pd.DataFrame({c: _group_labels(table[c]) for c in columns}, index=pd.RangeIndex(len(table)))


def slice_groups(frame: pd.DataFrame) -> list[SliceGroup]:
    """Every group of each column of `frame`, then of each pair of columns (the intersections).

    Args:
        frame: Group labels, as :func:`slice_frame` returns them.

    Returns:
        Groups in column order, then pair order; within a family, sorted by name.
    """
    families = [(c,) for c in frame.columns] + list(combinations(frame.columns, 2))
    groups = []
    for family in families:
        for key, rows in sorted(frame.groupby(list(family), sort=True).indices.items()):
            values = key if isinstance(key, tuple) else (key,)
            name = " & ".join(f"{c}={v}" for c, v in zip(family, values, strict=True))
            groups.append(SliceGroup(" & ".join(family), name, np.asarray(rows)))
    return groups


def mcnemar_test(challenger_only: int, champion_only: int) -> tuple[float, float]:
    """McNemar's test on the discordant pairs: two-sided mid-p and exact p-values.

    Under the null hypothesis (both models equally accurate), each of the b + c rows that
    exactly one model gets right is equally likely to favour either: the smaller count follows
    Binomial(b + c, 1/2). Exact: 2 P(X <= min). Mid-p (Fagerland et al., 2013, less
    conservative, recommended): 2 P(X <= min) - P(X = min).

    Args:
        challenger_only: Rows only the challenger gets right (b).
        champion_only: Rows only the champion gets right (c).

    Returns:
        (mid-p, exact p), each in [0, 1]; (1, 1) when no row is discordant.
    """
    n = challenger_only + champion_only
    if n == 0:
        return 1.0, 1.0
    smaller = min(challenger_only, champion_only)
    tail = float(binom.cdf(smaller, n, 0.5))
    mid_p = 2 * tail - float(binom.pmf(smaller, n, 0.5))
    return min(1.0, mid_p), min(1.0, 2 * tail)


def _interval_text(bounds: list[float] | None, signed: bool = False) -> str:
    if not bounds:
        return ""
    fmt = "{:+.4f}" if signed else "{:.4f}"
    return "[" + fmt.format(bounds[0]) + ", " + fmt.format(bounds[1]) + "]"


@dataclass
class PairedTest:
    """Both models on the same rows.

    Attributes:
        n: Rows compared.
        both_right: Rows both models get right.
        challenger_only: Rows only the challenger gets right.
        champion_only: Rows only the champion gets right.
        both_wrong: Rows both models get wrong.
        p_value: McNemar's two-sided mid-p value.
        p_value_exact: McNemar's two-sided exact p value.
        accuracy_difference: Challenger accuracy minus champion accuracy.
        accuracy_interval: Its 95% paired bootstrap interval (None without resampling).
        macro_f1_difference: Challenger macro-F1 minus champion macro-F1.
        macro_f1_interval: Its 95% paired bootstrap interval (None without resampling).
    """

    n: int
    both_right: int
    challenger_only: int
    champion_only: int
    both_wrong: int
    p_value: float
    p_value_exact: float
    accuracy_difference: float
    accuracy_interval: list[float] | None
    macro_f1_difference: float
    macro_f1_interval: list[float] | None

    def significantly_worse(self, alpha: float) -> bool:
        """True when the challenger is wrong on more of the discordant rows, at level `alpha`."""
        return self.champion_only > self.challenger_only and self.p_value < alpha

    def sentence(self) -> str:
        """The difference, its interval and the test, in one sentence."""
        interval = _interval_text(self.accuracy_interval, signed=True)
        interval = f" (95% CI {interval})" if interval else ""
        return (
            f"accuracy difference {self.accuracy_difference:+.4f}{interval} on the same {rows_text(self.n)}; "
            f"only the challenger is right on {rows_text(self.challenger_only)}, only the champion on "
            f"{rows_text(self.champion_only)}; McNemar mid-p {self.p_value:.4g} (exact {self.p_value_exact:.4g})"
        )


def _statistic(
    y_true: np.ndarray,
    a: np.ndarray,
    b: np.ndarray | None,
    k: int,
    scores: np.ndarray | None = None,
    positive: int = 1,
) -> Statistic:
    """Accuracy and macro-F1 of the challenger (a), and with a champion (b) its figures and the
    paired changes, on the same resampled rows; with `scores`, the challenger's ROC-AUC too."""

    def statistic(rows: np.ndarray) -> dict[str, np.ndarray]:
        if b is None:
            accuracy, macro_f1 = accuracy_macro_f1(confusion_stack(rows, y_true, a, k))
            values = {"accuracy": accuracy, "macro_f1": macro_f1}
        else:
            mine, theirs = paired_confusion_stacks(rows, y_true, a, b, k)
            accuracy, macro_f1 = accuracy_macro_f1(mine)
            old_accuracy, old_f1 = accuracy_macro_f1(theirs)
            values = {
                "accuracy": accuracy,
                "macro_f1": macro_f1,
                "champion_accuracy": old_accuracy,
                "champion_macro_f1": old_f1,
                "accuracy_change": accuracy - old_accuracy,
                "macro_f1_change": macro_f1 - old_f1,
            }
        if scores is not None:
            values["roc_auc"] = resampled_roc_auc(rows, scores, y_true == positive)
        return values

    return statistic


def _intervals(samples: dict[str, np.ndarray], names: tuple[str, ...]) -> dict[str, list[float]]:
    found = {name: percentile_interval(samples[name]) for name in names if name in samples}
    return {name: bounds for name, bounds in found.items() if bounds is not None}


def _paired(y_true: np.ndarray, a: np.ndarray, b: np.ndarray, k: int, intervals: dict[str, list[float]]) -> PairedTest:
    right_a, right_b = a == y_true, b == y_true
    only_a, only_b = int((right_a & ~right_b).sum()), int((right_b & ~right_a).sum())
    mid_p, exact = mcnemar_test(only_a, only_b)
    point = _statistic(y_true, a, b, k)(np.arange(len(y_true))[None])
    return PairedTest(
        n=len(y_true),
        both_right=int((right_a & right_b).sum()),
        challenger_only=only_a,
        champion_only=only_b,
        both_wrong=int((~right_a & ~right_b).sum()),
        p_value=mid_p,
        p_value_exact=exact,
        accuracy_difference=float(point["accuracy_change"][0]),
        accuracy_interval=intervals.get("accuracy_change"),
        macro_f1_difference=float(point["macro_f1_change"][0]),
        macro_f1_interval=intervals.get("macro_f1_change"),
    )


def paired_test(
    y_true: np.ndarray,
    challenger_pred: np.ndarray,
    champion_pred: np.ndarray,
    n_classes: int,
    *,
    n_resamples: int = RESAMPLES,
    seed: int = SEED,
) -> PairedTest:
    """McNemar's test and the paired bootstrap difference of two models' predictions.

    Args:
        y_true: True class indices, shape (n,).
        challenger_pred: The challenger's predicted class indices, shape (n,).
        champion_pred: The champion's predicted class indices on the same rows, shape (n,).
        n_classes: Number of classes.
        n_resamples: Bootstrap resamples (the same resampled rows for both models); 0 for none.
        seed: Seed of the resampling.

    Returns:
        The :class:`PairedTest`.
    """
    y_true, a, b = (np.asarray(v).astype(np.int64) for v in (y_true, challenger_pred, champion_pred))
    intervals: dict[str, list[float]] = {}
    if n_resamples > 0:
        samples = bootstrap(len(y_true), _statistic(y_true, a, b, n_classes), n_resamples, seed)
        intervals = _intervals(samples, ("accuracy_change", "macro_f1_change"))
    return _paired(y_true, a, b, n_classes, intervals)


@dataclass
class SliceResult:
    """One slice group.

    Attributes:
        family: The slice column, or two joined by ` & ` for an intersection.
        group: The group, e.g. `sex=Female` or `colour=Black & sex=Female`.
        n: Rows in the group.
        judged: False when the group is under the minimum size: too small to judge.
        accuracy: The challenger's accuracy on the group.
        macro_f1: The challenger's macro-F1 on the group.
        champion_accuracy: The champion's accuracy (None without a champion).
        champion_macro_f1: The champion's macro-F1 (None without a champion).
        intervals: 95% bootstrap intervals (judged groups only): `accuracy`, `macro_f1` of the
            challenger, and with a champion the paired `accuracy_change`, `macro_f1_change`.
    """

    family: str
    group: str
    n: int
    judged: bool
    accuracy: float
    macro_f1: float
    champion_accuracy: float | None = None
    champion_macro_f1: float | None = None
    intervals: dict[str, list[float]] = field(default_factory=dict)

    def value(self, metric: str) -> float:
        """The challenger's `accuracy` or `macro_f1` on the group."""
        return float(getattr(self, metric))

    def champion_value(self, metric: str) -> float | None:
        """The champion's `accuracy` or `macro_f1` on the group (None without a champion)."""
        return getattr(self, f"champion_{metric}")

    def change(self, metric: str) -> float | None:
        """Challenger minus champion on `metric` (None without a champion)."""
        old = self.champion_value(metric)
        return None if old is None else self.value(metric) - old


def _slice_result(
    group: SliceGroup,
    y_true: np.ndarray,
    challenger_pred: np.ndarray,
    champion_pred: np.ndarray | None,
    k: int,
    min_size: int,
    n_resamples: int,
    seed: int,
) -> SliceResult:
    rows = group.rows
    b = None if champion_pred is None else champion_pred[rows]
    statistic = _statistic(y_true[rows], challenger_pred[rows], b, k)
    point = {name: float(v[0]) for name, v in statistic(np.arange(len(rows))[None]).items()}
    judged = len(rows) >= min_size
    intervals: dict[str, list[float]] = {}
    if judged and n_resamples > 0:
        names = ("accuracy", "macro_f1", "accuracy_change", "macro_f1_change")
        intervals = _intervals(bootstrap(len(rows), statistic, n_resamples, seed), names)
    return SliceResult(
        family=group.family,
        group=group.name,
        n=len(rows),
        judged=judged,
        accuracy=point["accuracy"],
        macro_f1=point["macro_f1"],
        champion_accuracy=point.get("champion_accuracy"),
        champion_macro_f1=point.get("champion_macro_f1"),
        intervals=intervals,
    )


@dataclass
class ComparisonReport:
    """The challenger (and the champion, when there is one) on one set of labelled rows.

    Attributes:
        split: Which rows: `candidate's test split`, or the champion's own test split.
        challenger: The challenger's report on these rows.
        champion: The champion's report on the same rows; None without a champion.
        paired: The paired test of the two; None without a champion.
        slices: One result per slice group (columns, then pairwise intersections).
        min_slice_size: Groups with fewer rows are too small to judge.
    """

    split: str
    challenger: EvalReport
    champion: EvalReport | None = None
    paired: PairedTest | None = None
    slices: list[SliceResult] = field(default_factory=list)
    min_slice_size: int = MIN_SLICE_SIZE

    def too_small(self) -> list[SliceResult]:
        """The slice groups under the minimum size."""
        return [s for s in self.slices if not s.judged]

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able form, for MLflow artifacts."""
        return {
            "split": self.split,
            "challenger": self.challenger.to_dict(),
            "champion": None if self.champion is None else self.champion.to_dict(),
            "paired": None if self.paired is None else asdict(self.paired),
            "slices": [asdict(s) for s in self.slices],
            "min_slice_size": self.min_slice_size,
        }

    def _overall_rows(self) -> list[str]:
        new, old = self.challenger, self.champion
        rows = ["| metric | challenger | champion | change |", "|---|---|---|---|"]
        for metric, label in (*_METRICS, ("roc_auc", "ROC AUC"), ("average_precision", "average precision")):
            value = getattr(new, metric)
            if value is None:
                continue
            mine = f"{value:.4f} {new.interval(metric)}".strip()
            theirs = "" if old is None or getattr(old, metric) is None else f"{getattr(old, metric):.4f}"
            change = ""
            if theirs:
                change = f"{value - getattr(old, metric):+.4f}"
                paired = None if self.paired is None else getattr(self.paired, f"{metric}_interval", None)
                change = f"{change} {_interval_text(paired, signed=True)}".strip()
            rows.append(f"| {label} | {mine} | {theirs} | {change} |")
        for metric, label in (("ece", "ECE"), ("log_loss", "log loss")):
            theirs = "" if old is None else f"{getattr(old, metric):.4f}"
            rows.append(f"| {label} | {getattr(new, metric):.4f} | {theirs} | |")
        return rows

    def _slice_rows(self) -> list[str]:
        rows = [
            "| slice | rows | accuracy | champion | change | macro F1 | champion | change | judged |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for s in self.slices:
            cells = [s.group, str(s.n)]
            for metric, _ in _METRICS:
                cells.append(f"{s.value(metric):.4f} {_interval_text(s.intervals.get(metric))}".strip())
                old, change = s.champion_value(metric), s.change(metric)
                cells.append("" if old is None else f"{old:.4f}")
                bounds = _interval_text(s.intervals.get(f"{metric}_change"), signed=True)
                cells.append("" if change is None else f"{change:+.4f} {bounds}".strip())
            cells.append("yes" if s.judged else f"too small to judge (< {self.min_slice_size} rows)")
            rows.append("| " + " | ".join(cells) + " |")
        return rows

    def to_markdown(self) -> str:
        """Overall figures side by side, the paired test, the slices, then the challenger's details."""
        against = "against the champion" if self.champion is not None else "(no champion yet)"
        lines = [f"### Evaluation {against}: {self.split} ({self.challenger.n} rows)", ""]
        lines += self._overall_rows()
        lines += ["", "Brackets: 95% bootstrap intervals (rows resampled; changes paired on the same rows).", ""]
        if self.paired is not None:
            lines += [f"Paired test: {self.paired.sentence()}.", ""]
        if self.slices:
            lines += [f"#### Slices (groups under {self.min_slice_size} rows are too small to judge)", ""]
            lines += [*self._slice_rows(), ""]
        lines.append(self.challenger.to_markdown())
        return "\n".join(lines)


def compare_models(
    y_true: np.ndarray,
    challenger_proba: np.ndarray,
    champion_proba: np.ndarray | None,
    classes: list[str],
    slices: pd.DataFrame | None = None,
    *,
    positive: int = 1,
    min_slice_size: int = MIN_SLICE_SIZE,
    n_resamples: int = RESAMPLES,
    seed: int = SEED,
    split: str = CANDIDATE_SPLIT,
) -> ComparisonReport:
    """Evaluate the challenger, and the champion on the same rows, overall and per slice.

    Args:
        y_true: True class indices 0..k-1, shape (n,).
        challenger_proba: The challenger's probabilities, shape (n, k), columns in `classes` order.
        champion_proba: The champion's probabilities on the same rows, same columns; None
            without a champion.
        classes: Class names, index i = class index i.
        slices: Group labels of the same rows (:func:`slice_frame`); None or no columns: no slices.
        positive: Binary tasks: index of the positive class (for average precision).
        min_slice_size: Groups with fewer rows are reported as too small to judge.
        n_resamples: Bootstrap resamples behind every interval; 0 for none.
        seed: Seed of the resampling.
        split: Which rows these are, for the report's title.

    Returns:
        The :class:`ComparisonReport`.

    Raises:
        ValueError: Shapes disagree (the champion's too), or `slices` has another row count.
    """
    y_true = np.asarray(y_true).astype(np.int64)
    if slices is not None and len(slices) != len(y_true):
        raise ValueError(f"slices has {len(slices)} rows but there are {len(y_true)} labels")
    k = len(classes)
    challenger = evaluate_predictions(y_true, challenger_proba, classes, positive=positive, n_resamples=0)
    a = normalised(challenger_proba).argmax(axis=1)
    champion, b, paired = None, None, None
    if champion_proba is not None:
        champion = evaluate_predictions(y_true, champion_proba, classes, positive=positive, n_resamples=0)
        b = normalised(champion_proba).argmax(axis=1)
    # One pass of resamples for both models: their intervals and the paired changes.
    binary = k == 2 and len(np.unique(y_true)) == 2
    # The champion's AUC interval would not be shown, so only the challenger's is resampled.
    scores = normalised(challenger_proba)[:, positive] if binary else None
    samples: dict[str, np.ndarray] = {}
    if n_resamples > 0:
        samples = bootstrap(len(y_true), _statistic(y_true, a, b, k, scores, positive), n_resamples, seed)
    challenger.intervals = _intervals(samples, ("accuracy", "macro_f1", "roc_auc"))
    if champion is not None and b is not None:
        found = _intervals(samples, ("champion_accuracy", "champion_macro_f1"))
        champion.intervals = {name.removeprefix("champion_"): bounds for name, bounds in found.items()}
        paired = _paired(y_true, a, b, k, _intervals(samples, ("accuracy_change", "macro_f1_change")))
    results = []
    if slices is not None and len(slices.columns) > 0:
        for group in slice_groups(slices):
            results.append(_slice_result(group, y_true, a, b, k, min_slice_size, n_resamples, seed))
    return ComparisonReport(split, challenger, champion, paired, results, min_slice_size)


def compare_on_champion_split(
    y_true: np.ndarray,
    challenger_proba: np.ndarray,
    champion_proba: np.ndarray,
    classes: list[str],
    slices: pd.DataFrame | None = None,
    *,
    data_version: str,
    positive: int = 1,
    min_slice_size: int = MIN_SLICE_SIZE,
    n_resamples: int = RESAMPLES,
    seed: int = SEED,
) -> ComparisonReport:
    """Both models on the champion's own test split, when it was trained on another data version.

    The same measurements as :func:`compare_models`, titled with the champion's data version so
    that the report is never mistaken for the candidate's test split. It is reported, not gated:
    the evaluation gate judges the candidate's test split. Pass only rows the challenger did not
    train on: when the new data version contains the old one, the champion's test rows may sit
    in the candidate's training split, and scoring the challenger there would flatter it.

    Args:
        y_true: True class indices of the champion's test rows.
        challenger_proba: The challenger's probabilities on those rows (columns in `classes` order).
        champion_proba: The champion's probabilities on those rows.
        classes: Class names.
        slices: Group labels of those rows (:func:`slice_frame`), or None.
        data_version: The champion's data version (e.g. its DVC md5), shown in the title.
        positive: Binary tasks: index of the positive class.
        min_slice_size: Groups with fewer rows are reported as too small to judge.
        n_resamples: Bootstrap resamples; 0 for none.
        seed: Seed of the resampling.

    Returns:
        A :class:`ComparisonReport` whose `split` names the champion's data version.
    """
    return compare_models(
        y_true,
        challenger_proba,
        champion_proba,
        classes,
        slices,
        positive=positive,
        min_slice_size=min_slice_size,
        n_resamples=n_resamples,
        seed=seed,
        split=f"champion's test split (data version {data_version})",
    )
