"""Bias gate: hand-built groups whose rates are known in advance, and synthetic data sets with a
known injected disparity (the 20-case acceptance test of issue #5)."""

from __future__ import annotations

import io
import json

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pandas as pd
import pytest
from fairlearn.metrics import demographic_parity_difference, demographic_parity_ratio, equalized_odds_difference
from pydantic import ValidationError

from components.bias import MitigationData, audit_bias, plot_group_rates
from components.config import BiasGate


def _group(n_pos: int, n_neg: int, tp: int, fp: int) -> tuple[list[int], list[int]]:
    """Labels and predictions of one group; `tp` positives and `fp` negatives are predicted 1."""
    y_true = [1] * n_pos + [0] * n_neg
    y_pred = [1] * tp + [0] * (n_pos - tp) + [1] * fp + [0] * (n_neg - fp)
    return y_true, y_pred


def _data(
    *groups: tuple[str, tuple[list[int], list[int]]],
) -> tuple[np.ndarray, np.ndarray, pd.DataFrame]:
    y_true, y_pred, names = [], [], []
    for name, (t, p) in groups:
        y_true += t
        y_pred += p
        names += [name] * len(t)
    return np.array(y_true), np.array(y_pred), pd.DataFrame({"colour": names})


def _by_name(report) -> dict:
    return {c.name: c for c in report.checks}


# A: 10 positives, 10 negatives; 9 TP, 7 FP -> selection 16/20 = 0.8, TPR 0.9, FPR 0.7, acc 12/20.
# B: 10 positives, 10 negatives; 6 TP, 2 FP -> selection 8/20 = 0.4, TPR 0.6, FPR 0.2, acc 14/20.
UNEQUAL = _data(("A", _group(10, 10, 9, 7)), ("B", _group(10, 10, 6, 2)))
EQUAL = _data(("A", _group(10, 10, 9, 7)), ("B", _group(10, 10, 9, 7)))


def test_unequal_selection_fails_with_ratio_one_half() -> None:
    report = audit_bias(*UNEQUAL, BiasGate(min_demographic_parity_ratio=0.8))
    assert report.status == "fail"
    check = report.checks[0]
    assert check.name == "demographic_parity_ratio(colour)"
    assert check.value == pytest.approx(0.4 / 0.8)
    assert not check.passed
    assert report.figures["dp_ratio_colour"] == pytest.approx(0.5)
    # EO difference = max(|0.9 - 0.6|, |0.7 - 0.2|) = 0.5; reported even when not checked.
    assert report.figures["eo_diff_colour"] == pytest.approx(0.5)
    assert [c.name for c in report.checks] == ["demographic_parity_ratio(colour)", "no_champion"]
    dp = report.partitions["colour"].dp_ratio
    assert dp.low is not None and dp.low <= 0.5 <= dp.high
    assert "interval [" in check.detail


def test_group_table_holds_hand_computed_rates() -> None:
    report = audit_bias(*UNEQUAL, BiasGate())
    rows = {row["group"]: row for row in report.groups["colour"]}
    expected = {"group": "A", "count": 20, "accuracy": 0.6, "selection_rate": 0.8, "tpr": 0.9, "fpr": 0.7}
    assert {k: rows["A"][k] for k in expected} == pytest.approx(expected)
    assert rows["A"]["judged"] is True
    assert rows["B"]["selection_rate"] == pytest.approx(0.4)
    assert rows["B"]["accuracy"] == pytest.approx(0.7)
    assert rows["B"]["fpr"] == pytest.approx(0.2)
    low, high = rows["A"]["selection_rate_ci"]
    assert low <= 0.8 <= high
    markdown = report.to_markdown()
    assert "#### `colour` by group" in markdown
    assert f"| A | 20 | 0.6000 | 0.8000 [{low:.4f}, {high:.4f}] |" in markdown
    assert report.to_dict()["groups"]["colour"][1]["group"] == "B"


def test_intersection_table_is_hand_computed() -> None:
    # colour x sex, 4 groups of 10 rows (5 positives, 5 negatives each); (TP, FP) per group:
    # A&F (5, 3) -> sel 0.8, TPR 1.0, FPR 0.6;  A&M (4, 0) -> sel 0.4, TPR 0.8, FPR 0.0
    # B&F (2, 1) -> sel 0.3, TPR 0.4, FPR 0.2;  B&M (3, 1) -> sel 0.4, TPR 0.6, FPR 0.2
    cells = {("A", "F"): (5, 3), ("A", "M"): (4, 0), ("B", "F"): (2, 1), ("B", "M"): (3, 1)}
    y_true, y_pred, colour, sex = [], [], [], []
    for (c, s), (tp, fp) in cells.items():
        t, p = _group(5, 5, tp, fp)
        y_true += t
        y_pred += p
        colour += [c] * 10
        sex += [s] * 10
    frame = pd.DataFrame({"colour": colour, "sex": sex})
    report = audit_bias(np.array(y_true), np.array(y_pred), frame, BiasGate(min_group_size=5))
    assert list(report.groups) == ["colour", "sex", "colour x sex"]
    rows = {r["group"]: r for r in report.groups["colour x sex"]}
    assert set(rows) == {"A & F", "A & M", "B & F", "B & M"}
    assert rows["A & F"]["selection_rate"] == pytest.approx(0.8)
    assert rows["A & M"]["tpr"] == pytest.approx(0.8)
    assert rows["B & F"]["fpr"] == pytest.approx(0.2)
    assert rows["B & M"]["accuracy"] == pytest.approx((3 + 4) / 10)
    # DP ratio = 0.3 / 0.8; EO difference = max(TPR 1.0 - 0.4, FPR 0.6 - 0.0) = 0.6.
    assert report.figures["dp_ratio_colour_x_sex"] == pytest.approx(0.375)
    assert report.figures["eo_diff_colour_x_sex"] == pytest.approx(0.6)
    # colour: A sel 12/20 = 0.6, B sel 7/20 = 0.35; sex: F 11/20, M 8/20.
    assert report.figures["dp_ratio_colour"] == pytest.approx(0.35 / 0.6)
    assert report.figures["dp_ratio_sex"] == pytest.approx(0.4 / 0.55)
    assert not _by_name(report)["demographic_parity_ratio(colour x sex)"].passed


def test_figures_match_fairlearn_on_random_predictions() -> None:
    rng = np.random.default_rng(3)
    n = 600
    frame = pd.DataFrame({"colour": rng.choice(["a", "b", "c"], n), "sex": rng.choice(["F", "M"], n)})
    y_true, y_pred = rng.integers(0, 2, n), (rng.random(n) < 0.3 + 0.2 * (frame["colour"] == "a")).astype(int)
    report = audit_bias(y_true, y_pred, frame, BiasGate(min_group_size=1))
    for name, features in (("colour", frame["colour"]), ("colour_x_sex", frame[["colour", "sex"]])):
        kwargs = {"y_true": y_true, "y_pred": y_pred, "sensitive_features": features}
        assert report.figures[f"dp_ratio_{name}"] == pytest.approx(demographic_parity_ratio(**kwargs))
        assert report.figures[f"eo_diff_{name}"] == pytest.approx(equalized_odds_difference(**kwargs))


def test_bootstrap_interval_matches_a_plain_loop_over_the_same_resamples() -> None:
    y_true, y_pred, frame = UNEQUAL
    gate = BiasGate(n_bootstrap=100, seed=7)
    report = audit_bias(y_true, y_pred, frame, gate)
    # The same index arrays the audit draws (one chunk: the seeded generator's first draw),
    # each resample's ratio computed row by row.
    index = np.random.default_rng(7).integers(0, len(y_true), size=(100, len(y_true)))
    colour = frame["colour"].to_numpy()
    ratios = []
    for rows in index:
        rates = [y_pred[rows][colour[rows] == group].mean() for group in ("A", "B")]
        ratios.append(min(rates) / max(rates))
    low, high = np.quantile(ratios, [0.025, 0.975])
    dp = report.partitions["colour"].dp_ratio
    assert (dp.low, dp.high) == pytest.approx((low, high))
    again = audit_bias(y_true, y_pred, frame, gate)
    assert again.to_dict() == report.to_dict()


def test_no_resamples_gives_the_same_figures_without_intervals() -> None:
    with_intervals = audit_bias(*UNEQUAL, BiasGate())
    report = audit_bias(*UNEQUAL, BiasGate(n_bootstrap=0))
    assert report.partitions["colour"].dp_ratio.value == with_intervals.partitions["colour"].dp_ratio.value
    assert report.partitions["colour"].dp_ratio.low is None
    assert report.groups["colour"][0]["selection_rate_ci"] is None
    assert "no intervals" in report.to_markdown()
    assert "interval" not in report.checks[0].detail


def test_equalized_odds_checked_when_configured() -> None:
    gate = BiasGate(min_demographic_parity_ratio=0.4, max_equalized_odds_difference=0.3)
    report = audit_bias(*UNEQUAL, gate)
    by_name = _by_name(report)
    assert by_name["demographic_parity_ratio(colour)"].passed
    eo = by_name["equalized_odds_difference(colour)"]
    assert eo.value == pytest.approx(0.5)
    assert not eo.passed


def test_equal_rates_pass() -> None:
    report = audit_bias(*EQUAL, BiasGate(min_demographic_parity_ratio=0.8, max_equalized_odds_difference=0.1))
    assert report.status == "pass"
    assert report.figures["dp_ratio_colour"] == pytest.approx(1.0)
    assert report.figures["eo_diff_colour"] == pytest.approx(0.0)


def test_tiny_group_is_reported_not_judged() -> None:
    # C has 5 rows and never gets selected: judged, it would drive the ratio to 0.
    y_true, y_pred, frame = _data(("A", _group(10, 10, 9, 7)), ("B", _group(10, 10, 9, 7)), ("C", _group(3, 2, 0, 0)))
    report = audit_bias(y_true, y_pred, frame, BiasGate(min_demographic_parity_ratio=0.8))
    assert report.passed
    assert report.figures["dp_ratio_colour"] == pytest.approx(1.0)
    warning = _by_name(report)["groups_too_small(colour)"]
    assert (warning.passed, warning.severity) == (False, "warn")
    assert "too small to judge" in warning.detail and "C (5)" in warning.detail
    assert "WARNING" in report.headline()
    rows = {row["group"]: row for row in report.groups["colour"]}
    assert rows["C"]["judged"] is False
    assert rows["C"]["selection_rate"] == 0.0
    assert "| C | 5 |" in report.to_markdown() and "too small to judge |" in report.to_markdown()


def test_too_small_intersection_group_is_reported_not_passed() -> None:
    # colour and sex are judged (A 40, B 40 rows; F 45, M 35); the pair has B & F with only 5
    # rows (B's last 5, negatives predicted 0): judged, its selection rate 0 would fail the pair.
    y_true, y_pred, frame = _data(("A", _group(20, 20, 10, 10)), ("B", _group(20, 20, 10, 10)))
    frame = frame.assign(sex=["F"] * 40 + ["M"] * 35 + ["F"] * 5)
    report = audit_bias(y_true, y_pred, frame, BiasGate(min_group_size=10))
    rows = {r["group"]: r for r in report.groups["colour x sex"]}
    assert rows["B & F"]["count"] == 5 and rows["B & F"]["judged"] is False
    assert rows["B & F"]["selection_rate"] == 0.0
    fairness = report.partitions["colour x sex"]
    assert "B & F" not in fairness.judged and fairness.too_small == ["B & F (5)"]
    warning = _by_name(report)["groups_too_small(colour x sex)"]
    assert not warning.passed and warning.severity == "warn"
    assert warning.detail == ("colour x sex: too small to judge (< 10 rows), left out of the figures: B & F (5)")
    assert warning in report.warnings()
    assert report.figures["dp_ratio_colour_x_sex"] > 0.8  # the tiny group is not in the ratio


def test_intersection_with_one_judgeable_group_warns_and_a_column_fails_closed() -> None:
    y_true, y_pred, frame = _data(("A", _group(10, 10, 9, 7)), ("B", _group(10, 10, 9, 7)))
    frame = frame.assign(sex=["F"] * 30 + ["M"] * 10)  # A & F 20, B & F 10, B & M 10
    report = audit_bias(y_true, y_pred, frame, BiasGate(min_group_size=15))
    by_name = _by_name(report)
    pair = by_name["demographic_parity_ratio(colour x sex)"]
    assert (pair.passed, pair.severity) == (False, "warn")
    assert "cannot be judged" in pair.detail
    column = by_name["demographic_parity_ratio(sex)"]  # F 30, M 10: one judgeable group
    assert (column.passed, column.severity) == (False, "fail")
    assert report.status == "fail"


def test_fewer_than_two_judgeable_groups_fails_closed() -> None:
    y_true, y_pred, frame = _data(("A", _group(10, 10, 9, 7)), ("C", _group(3, 2, 0, 0)))
    report = audit_bias(y_true, y_pred, frame, BiasGate())
    assert report.status == "fail"
    assert "cannot be judged" in report.checks[0].detail


def test_no_sensitive_columns_is_not_applicable() -> None:
    y_true, y_pred, _ = UNEQUAL
    report = audit_bias(y_true, y_pred, pd.DataFrame(index=range(len(y_true))), BiasGate())
    assert report.status == "not_applicable"
    assert report.passed


def test_missing_threshold_fails_closed() -> None:
    report = audit_bias(*EQUAL, BiasGate(min_demographic_parity_ratio=None))
    assert report.status == "fail"
    assert "no threshold configured" in report.checks[0].detail
    assert report.figures["dp_ratio_colour"] == pytest.approx(1.0)


def test_multiclass_is_not_applicable() -> None:
    frame = pd.DataFrame({"colour": ["A", "B", "A"]})
    report = audit_bias(np.array([0, 1, 2]), np.array([0, 2, 1]), frame, BiasGate())
    assert report.status == "not_applicable"
    assert [(c.name, c.detail) for c in report.checks] == [("multiclass", "bias audit covers binary classifiers only")]


def test_positive_class_can_be_zero() -> None:
    # With 0 as the selected outcome, A selects 4/20 = 0.2 and B 12/20 = 0.6: ratio 1/3.
    report = audit_bias(*UNEQUAL, BiasGate(), positive=0)
    assert report.figures["dp_ratio_colour"] == pytest.approx(0.2 / 0.6)


def test_missing_group_membership_is_its_own_group() -> None:
    y_true, y_pred, frame = EQUAL
    frame = frame.assign(sex=["F", None] * 20)
    report = audit_bias(y_true, y_pred, frame, BiasGate(intersections=False))
    assert {row["group"] for row in report.groups["sex"]} == {"F", "(missing)"}
    assert [c.name for c in report.checks] == [
        "demographic_parity_ratio(colour)",
        "demographic_parity_ratio(sex)",
        "no_champion",
    ]


# --- against the champion -------------------------------------------------------------------


def test_worsening_against_the_champion_fails_with_a_readable_message() -> None:
    y_true, candidate, frame = UNEQUAL  # ratio 0.5
    _, champion, _ = _data(("A", _group(10, 10, 9, 7)), ("B", _group(10, 10, 8, 6)))  # 0.8 vs 0.7: 0.875
    gate = BiasGate(min_demographic_parity_ratio=0.4, max_fairness_regression=0.05)
    report = audit_bias(y_true, candidate, frame, gate, champion_pred=champion)
    check = _by_name(report)["no_regression_demographic_parity_ratio(colour)"]
    assert not check.passed
    assert check.value == pytest.approx(0.375)
    drop = report.partitions["colour"].dp_ratio_drop
    assert check.detail == (
        "colour: demographic-parity ratio 0.5000 vs champion 0.8750 on the same test rows: "
        f"worse by +0.3750 (interval [{drop.low:+.4f}, {drop.high:+.4f}]), more than the allowed 0.0500"
    )
    assert _by_name(report)["demographic_parity_ratio(colour)"].passed  # the absolute floor alone passes
    assert report.status == "fail"
    assert "champion DP ratio" in report.to_markdown()
    assert report.figures["dp_ratio_drop_colour"] == pytest.approx(0.375)


def test_same_predictions_as_the_champion_do_not_regress() -> None:
    y_true, y_pred, frame = UNEQUAL
    gate = BiasGate(min_demographic_parity_ratio=0.4, max_equalized_odds_difference=0.6)
    report = audit_bias(y_true, y_pred, frame, gate, champion_pred=y_pred.copy())
    by_name = _by_name(report)
    for name in ("no_regression_demographic_parity_ratio(colour)", "no_regression_equalized_odds_difference(colour)"):
        assert by_name[name].passed and by_name[name].value == 0.0
    drop = report.partitions["colour"].dp_ratio_drop
    assert (drop.value, drop.low, drop.high) == (0.0, 0.0, 0.0)  # paired resamples: no noise
    assert "no_champion" not in by_name


def test_regression_tolerance_left_empty_fails_closed_when_a_champion_is_given() -> None:
    y_true, y_pred, frame = EQUAL
    gate = BiasGate(max_fairness_regression=None)
    report = audit_bias(y_true, y_pred, frame, gate, champion_pred=y_pred.copy())
    check = _by_name(report)["no_regression_demographic_parity_ratio(colour)"]
    assert not check.passed and "no threshold configured" in check.detail
    assert audit_bias(y_true, y_pred, frame, gate).status == "pass"  # no champion: floors only


def test_champion_predictions_of_another_length_are_refused() -> None:
    y_true, y_pred, frame = EQUAL
    with pytest.raises(ValueError, match="lengths differ"):
        audit_bias(y_true, y_pred, frame, BiasGate(), champion_pred=y_pred[:-1])


# --- mitigation -----------------------------------------------------------------------------


def _shifted_scores(seed: int, n: int, shift: float = 1.2) -> tuple[np.ndarray, np.ndarray, pd.DataFrame]:
    """Labels, a model's P(positive) and groups; the model scores group Black `shift` logits lower."""
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(
        {"colour": np.where(rng.random(n) < 0.6, "White", "Black"), "sex": np.where(rng.random(n) < 0.8, "M", "F")}
    )
    y = (rng.random(n) < 0.5).astype(int)
    logit = 1.5 * (2 * y - 1) + rng.normal(0, 1.5, n) - shift * (frame["colour"] == "Black").to_numpy()
    return y, 1 / (1 + np.exp(-logit)), frame


def test_threshold_optimizer_reduces_the_disparity_and_the_report_shows_both() -> None:
    y, scores, frame = _shifted_scores(0, 1000)
    y_val, val_scores, val_frame = _shifted_scores(1, 800)
    gate = BiasGate(mitigation="threshold_optimizer")
    data = MitigationData(test_scores=scores, val_true=y_val, val_scores=val_scores, val_sensitive=val_frame)
    report = audit_bias(y, (scores >= 0.5).astype(int), frame, gate, mitigation=data)
    m = report.mitigation
    assert m is not None and m.error is None and m.fit_rows == 800
    before, after = report.partitions["colour"].dp_ratio.value, m.dp_ratio_after["colour"].value
    assert before < 0.7 and after > 0.85  # measured: 0.64 -> 0.94
    assert report.partitions["colour x sex"].dp_ratio.value < m.dp_ratio_after["colour x sex"].value
    assert m.overall_before["accuracy"].value == report.accuracy.value
    assert m.overall_after["balanced_accuracy"].value > 0.7  # measured: 0.82 -> 0.83
    assert report.status == "fail"  # the gate judges the model as served, not the mitigated one
    markdown = report.to_markdown()
    title = "#### Mitigation: `threshold_optimizer` (demographic parity, best balanced accuracy), fitted on 800"
    assert title in markdown
    assert f"| demographic-parity ratio (colour) | {report.partitions['colour'].dp_ratio.text()} |" in markdown
    assert "| balanced accuracy |" in markdown and "sensitive attributes at prediction time" in markdown
    assert report.figures["mitigated_dp_ratio_colour"] == pytest.approx(after)
    json.dumps(report.to_dict(), allow_nan=False)
    # Seeded: the randomised thresholds give the same predictions again.
    assert audit_bias(y, (scores >= 0.5).astype(int), frame, gate, mitigation=data).to_dict() == report.to_dict()


def test_mitigation_without_validation_scores_is_a_warning() -> None:
    report = audit_bias(*EQUAL, BiasGate(mitigation="threshold_optimizer"))
    check = _by_name(report)["mitigation"]
    assert (check.passed, check.severity) == (False, "warn")
    assert report.status == "pass" and report.mitigation is None


def test_mitigation_with_a_test_group_unseen_in_validation_is_reported_not_guessed() -> None:
    y, scores, frame = _shifted_scores(0, 300)
    y_val, val_scores, val_frame = _shifted_scores(1, 300)
    val_frame["colour"] = "White"  # Fairlearn would silently never select the Black rows
    data = MitigationData(scores, y_val, val_scores, val_frame)
    report = audit_bias(
        y, (scores >= 0.5).astype(int), frame, BiasGate(mitigation="threshold_optimizer"), mitigation=data
    )
    assert report.mitigation is not None and "absent from the validation split" in report.mitigation.error
    assert "Black & F" in report.mitigation.error
    assert _by_name(report)["mitigation"].severity == "warn"
    assert "Not evaluated: test groups absent" in report.to_markdown()


# --- rendering and config -------------------------------------------------------------------


def test_report_renders_as_strict_json_and_a_figure() -> None:
    y, scores, frame = _shifted_scores(0, 400)
    report = audit_bias(y, (scores >= 0.5).astype(int), frame, BiasGate(), champion_pred=(scores >= 0.4).astype(int))
    payload = json.loads(json.dumps(report.to_dict(), allow_nan=False))
    assert payload["method"]["decided_on"] == "point estimate"
    assert set(payload["partitions"]) == {"colour", "sex", "colour x sex"}
    assert payload["partitions"]["colour"]["champion_dp_ratio"]["value"] is not None
    fig = plot_group_rates(report)
    assert len(fig.axes) == 3 * 3
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    assert buffer.tell() > 1000


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"mitigation": "reweighing"}, "mitigation"),
        ({"n_bootstrap": 10}, "at least 100 resamples"),
        ({"confidence": 1.0}, "confidence"),
        ({"max_fairness_regression": -0.1}, "max_fairness_regression"),
    ],
)
def test_bad_bias_settings_are_refused_naming_the_field(change: dict, field: str) -> None:
    with pytest.raises(ValidationError, match=field):
        BiasGate(**change)


# --- acceptance: 20 data sets, 10 with an injected disparity ---------------------------------


def _disparity_case(seed: int, gap: float, n: int = 1000) -> tuple[np.ndarray, np.ndarray, pd.DataFrame]:
    """1,000 rows, two groups; a scoring model whose selection rate in B is `gap` below A's.

    The model ranks rows by a noisy score of the label; each group's top share is selected,
    so the selection rates (and the demographic-parity difference) are exactly as injected.
    """
    rng = np.random.default_rng(seed)
    group = np.where(rng.random(n) < rng.uniform(0.35, 0.65), "A", "B")
    y = (rng.random(n) < rng.uniform(0.35, 0.65)).astype(int)
    score = 2.0 * y + rng.normal(0, 1.5, n)
    rate_a = rng.uniform(0.45, 0.6)
    pred = np.zeros(n, dtype=int)
    for name, rate in (("A", rate_a), ("B", rate_a - gap)):
        rows = np.flatnonzero(group == name)
        pred[rows[np.argsort(-score[rows])[: round(rate * len(rows))]]] = 1
    return y, pred, pd.DataFrame({"group": group})


def test_twenty_cases_are_all_decided_correctly() -> None:
    gate = BiasGate()  # the project's default: four-fifths floor on the point estimate
    rng = np.random.default_rng(2024)
    cases = [("disparity", rng.uniform(0.18, 0.22)) for _ in range(10)]
    cases += [("fair", rng.uniform(-0.045, 0.045)) for _ in range(10)]
    outcomes = {("disparity", "fail"): 0, ("disparity", "pass"): 0, ("fair", "pass"): 0, ("fair", "fail"): 0}
    lines = []
    for seed, (kind, gap) in enumerate(cases):
        y, pred, frame = _disparity_case(seed, gap)
        difference = demographic_parity_difference(y, pred, sensitive_features=frame["group"])
        # The premise of the test, checked on the data actually built.
        assert (0.15 <= difference <= 0.25) if kind == "disparity" else (difference < 0.05)
        report = audit_bias(y, pred, frame, gate)
        outcomes[(kind, report.status)] += 1
        ratio = report.partitions["group"].dp_ratio.text()
        lines.append(f"{kind:9} DP difference {difference:.3f}, ratio {ratio}: {report.status}")
    print("20-case bias gate:", *lines, f"outcomes {outcomes}", sep="\n  ")
    assert outcomes == {("disparity", "fail"): 10, ("disparity", "pass"): 0, ("fair", "pass"): 10, ("fair", "fail"): 0}
