"""Promotion decision: floors, no-regression tolerance and the other gates' verdicts."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from components.comparison import ComparisonReport, PairedTest, SliceResult
from components.config import EvaluationGate
from components.evaluation import EvalReport
from components.gates import Check, GateReport
from components.promotion import (
    decide_promotion,
    evaluation_gate,
    evaluation_gate_report,
    majority_baseline_macro_f1,
)

GATE = EvaluationGate(min_accuracy=0.7, min_macro_f1=0.6, max_regression=0.01)


def _report(accuracy: float, macro_f1: float) -> EvalReport:
    return EvalReport(
        n=100,
        accuracy=accuracy,
        macro_f1=macro_f1,
        roc_auc=None,
        ece=0.05,
        log_loss=0.4,
        confusion=[[40, 10], [10, 40]],
        classes=["no", "yes"],
    )


def _bias(passed: bool) -> GateReport:
    check = Check("demographic_parity_ratio(colour)", passed, "colour: ratio 0.5000 fails >= 0.8000", 0.5, 0.8)
    return GateReport("bias", [check])


def test_first_model_above_floors_is_promoted() -> None:
    decision = decide_promotion(_report(0.8, 0.75), None, [], GATE)
    assert decision.promote
    assert decision.champion_version is None
    assert ("no_champion", True, "no champion yet: absolute floors only") in [
        (c.name, c.passed, c.detail) for c in decision.checks
    ]
    assert decision.reasons[0].startswith("Promoted: accuracy 0.8000 and macro-F1 0.7500 meet the floors")


def test_below_floor_is_rejected_naming_the_floor() -> None:
    decision = decide_promotion(_report(0.65, 0.75), None, [], GATE)
    assert not decision.promote
    assert decision.reasons == ["min_accuracy: accuracy 0.6500 fails >= 0.7000."]


def test_champion_better_beyond_tolerance_is_rejected_with_difference() -> None:
    decision = decide_promotion(_report(0.80, 0.75), _report(0.85, 0.75), [], GATE, champion_version="3")
    assert not decision.promote
    assert len(decision.reasons) == 1
    reason = decision.reasons[0]
    assert reason.startswith("no_regression_accuracy:")
    assert "0.8000 vs champion 0.8500" in reason
    assert "difference -0.0500" in reason
    check = next(c for c in decision.checks if c.name == "no_regression_accuracy")
    assert check.value == pytest.approx(0.05)
    assert check.threshold == 0.01


def test_drop_of_exactly_the_tolerance_passes() -> None:
    # 0.90 - 0.89 is 0.010000000000000009 in floats: it must still count as 0.01.
    decision = decide_promotion(_report(0.89, 0.75), _report(0.90, 0.75), [], GATE, champion_version="3")
    assert decision.promote
    assert "champion version 3" in decision.reasons[0]
    assert "accuracy -0.0100" in decision.reasons[0]


def test_failed_bias_report_blocks() -> None:
    decision = decide_promotion(_report(0.9, 0.9), None, [_bias(False)], GATE)
    assert not decision.promote
    assert decision.reasons == ["gate_bias: bias gate failed: colour: ratio 0.5000 fails >= 0.8000."]


def test_not_applicable_gate_does_not_block_and_is_said() -> None:
    not_applicable = GateReport(
        "bias",
        [Check("multiclass", True, "bias audit covers binary classifiers only")],
        applicable=False,
    )
    decision = decide_promotion(_report(0.9, 0.9), None, [_bias(True), not_applicable], GATE)
    assert decision.promote
    assert decision.reasons[-1] == (
        "bias gate not applicable, so it does not block (bias audit covers binary classifiers only)."
    )


def test_missing_tolerance_fails_closed() -> None:
    gate = EvaluationGate(min_accuracy=0.7, min_macro_f1=0.6, max_regression=None)
    decision = decide_promotion(_report(0.9, 0.9), _report(0.8, 0.8), [], gate)
    assert not decision.promote
    assert len(decision.reasons) == 2
    assert all("no threshold configured" in r for r in decision.reasons)


def test_missing_floors_fail_closed() -> None:
    decision = decide_promotion(_report(0.99, 0.99), None, [], EvaluationGate())
    assert not decision.promote
    assert [r.split(":")[0] for r in decision.reasons] == ["min_accuracy", "min_macro_f1"]


def test_evaluation_gate_report_is_a_gate() -> None:
    report = evaluation_gate_report(_report(0.86, 0.80), _report(0.85, 0.82), GATE)
    assert report.gate == "evaluation"
    assert report.status == "fail"  # macro-F1 dropped 0.02 > 0.01
    assert [c.name for c in report.failures()] == ["no_regression_macro_f1"]
    assert report.figures["accuracy_change"] == pytest.approx(0.01)
    assert report.figures["macro_f1_change"] == pytest.approx(-0.02)


def test_decision_renders() -> None:
    decision = decide_promotion(_report(0.65, 0.75), _report(0.85, 0.75), [_bias(True)], GATE, champion_version="7")
    data = json.loads(json.dumps(decision.to_dict()))
    assert data["promote"] is False
    assert data["champion_version"] == "7"
    assert {c["name"] for c in data["checks"]} >= {
        "min_accuracy",
        "no_regression_accuracy",
        "gate_bias",
    }
    markdown = decision.to_markdown()
    assert markdown.startswith("### Promotion: **REJECT** (champion: version 7)")
    assert "| min_accuracy | **FAIL** |" in markdown


def test_majority_class_predictor_is_never_promoted() -> None:
    # 80 "yes" and 20 "no" in the test set, everything predicted "yes":
    # F1(yes) = 2*0.8/1.8 = 0.8889, F1(no) = 0, macro-F1 = 0.4444; accuracy 0.8 clears the floor.
    always_yes = EvalReport(
        n=100,
        accuracy=0.8,
        macro_f1=0.8 / 1.8,
        roc_auc=None,
        ece=0.1,
        log_loss=0.5,
        confusion=[[0, 20], [0, 80]],
        classes=["no", "yes"],
    )
    assert majority_baseline_macro_f1(always_yes) == pytest.approx(0.8 / 1.8)
    lax = EvaluationGate(min_accuracy=0.7, min_macro_f1=0.4, max_regression=0.01)
    report = evaluation_gate_report(always_yes, None, lax)
    [check] = [c for c in report.checks if c.name == "beats_majority_baseline"]
    assert not check.passed and "majority class" in check.detail
    assert not decide_promotion(always_yes, None, [], lax).promote
    learnt = replace(always_yes, macro_f1=0.6)
    assert evaluation_gate_report(learnt, None, lax).passed


def test_warn_checks_are_recorded_but_never_block() -> None:
    report = GateReport(
        "drift",
        [Check("psi(age)", False, "age: PSI 0.4 > 0.25", 0.4, 0.25, severity="warn"), Check("label_psi", True, "ok")],
        figures={"label_psi": 0.01},
    )
    assert report.passed and report.status == "pass"
    assert report.failures() == [] and [c.name for c in report.warnings()] == ["psi(age)"]
    assert "WARNING: age: PSI 0.4 > 0.25" in report.headline()
    assert "| psi(age) | warn |" in report.to_markdown()


# --- The full evaluation gate: slices and the paired test -------------------------------------

SLICE_GATE = EvaluationGate(min_accuracy=0.7, min_macro_f1=0.6, max_regression=0.01, max_slice_regression=0.02)


def _paired(challenger_only: int = 30, champion_only: int = 28, p_value: float = 0.9) -> PairedTest:
    return PairedTest(
        n=100,
        both_right=40,
        challenger_only=challenger_only,
        champion_only=champion_only,
        both_wrong=100 - 40 - challenger_only - champion_only,
        p_value=p_value,
        p_value_exact=min(1.0, p_value + 0.05),
        accuracy_difference=(challenger_only - champion_only) / 100,
        accuracy_interval=[-0.05, 0.09],
        macro_f1_difference=0.0,
        macro_f1_interval=[-0.05, 0.05],
    )


def _slice(group: str, n: int, macro_f1: float, champion_macro_f1: float | None, judged: bool = True) -> SliceResult:
    family = " & ".join(part.split("=")[0] for part in group.split(" & "))
    champion_accuracy = None if champion_macro_f1 is None else 0.8
    return SliceResult(family, group, n, judged, 0.8, macro_f1, champion_accuracy, champion_macro_f1)


def _comparison(slices: list[SliceResult], paired: PairedTest | None = None, champion: bool = True) -> ComparisonReport:
    return ComparisonReport(
        split="candidate's test split",
        challenger=_report(0.86, 0.80),
        champion=_report(0.86, 0.80) if champion else None,
        paired=(paired or _paired()) if champion else None,
        slices=slices,
        min_slice_size=30,
    )


def test_a_slice_regression_fails_the_gate_naming_slice_figures_and_tolerance() -> None:
    comparison = _comparison([_slice("sex=Female", 40, 0.61, 0.66), _slice("sex=Male", 60, 0.81, 0.80)])
    report = evaluation_gate(comparison, SLICE_GATE)
    assert report.status == "fail"
    [failed] = report.failures()
    assert failed.name == "no_regression(sex=Female)"
    assert failed.detail == "macro-F1 on sex=Female (40 rows): 0.6100 vs champion 0.6600 (-0.0500; tolerance 0.0200)"
    assert failed.value == pytest.approx(0.05) and failed.threshold == 0.02
    passed = next(c for c in report.checks if c.name == "no_regression(sex=Male)")
    assert passed.passed and passed.detail.endswith("within tolerance 0.0200")
    assert report.figures["worst_slice_change"] == pytest.approx(-0.05)
    decision = decide_promotion(comparison.challenger, comparison.champion, [report], SLICE_GATE, "4")
    assert not decision.promote
    assert decision.reasons == [f"no_regression(sex=Female): {failed.detail}."]


def test_the_slice_interval_is_quoted_when_there_is_one() -> None:
    slice_ = _slice("colour=Black & sex=Female", 35, 0.55, 0.60)
    slice_.intervals = {"macro_f1_change": [-0.12, 0.02]}
    [failed] = evaluation_gate(_comparison([slice_]), SLICE_GATE).failures()
    assert "(-0.0500, 95% CI [-0.1200, +0.0200]; tolerance 0.0200)" in failed.detail


def test_missing_slice_tolerance_blocks_and_says_so() -> None:
    gate = SLICE_GATE.model_copy(update={"max_slice_regression": None})
    report = evaluation_gate(_comparison([_slice("sex=Female", 40, 0.70, 0.66)]), gate)
    [failed] = report.failures()
    assert failed.name == "no_slice_regression"
    assert "no threshold configured, so it cannot pass" in failed.detail
    # Nothing to judge (no slices, or no champion): the missing tolerance has nothing to block.
    assert evaluation_gate(_comparison([]), gate).passed
    assert evaluation_gate(_comparison([_slice("sex=Female", 40, 0.7, None)], champion=False), gate).passed


def test_a_group_too_small_is_a_warning_never_a_pass_nor_a_block() -> None:
    small = [_slice("sex=Other", 12, 0.10, 0.90, judged=False), _slice("sex=X", 3, 0.0, 1.0, judged=False)]
    comparison = _comparison([_slice("sex=Female", 40, 0.66, 0.66), *small])
    report = evaluation_gate(comparison, SLICE_GATE)
    assert report.passed
    [warning] = report.warnings()
    assert warning.name == "slice_size(sex)" and warning.severity == "warn" and not warning.passed
    assert warning.detail == (
        "too small to judge (< 30 rows), not compared with the champion: sex=Other (12 rows), sex=X (3 rows)"
    )
    assert not any(c.name.startswith("no_regression(sex=Other") for c in report.checks)
    decision = decide_promotion(comparison.challenger, comparison.champion, [report], SLICE_GATE)
    assert decision.promote
    assert "and on each of 1 slice groups" in decision.reasons[0]
    assert decision.reasons[1].startswith("warning, slice_size(sex): too small to judge")


def test_paired_test_is_reported_and_warns_only_when_significantly_worse() -> None:
    report = evaluation_gate(_comparison([]), SLICE_GATE)
    check = next(c for c in report.checks if c.name == "paired_test")
    assert check.passed and "no significant difference at the 0.05 level" in check.detail
    assert "accuracy difference +0.0200 (95% CI [-0.0500, +0.0900])" in check.detail
    assert report.figures["paired_test_p"] == pytest.approx(0.9)
    worse = evaluation_gate(_comparison([], _paired(10, 30, p_value=0.002)), SLICE_GATE)
    check = next(c for c in worse.checks if c.name == "paired_test")
    assert not check.passed and check.severity == "warn"
    assert "significantly worse at the 0.05 level" in check.detail
    assert worse.passed  # the tolerance on the overall figures decides, not the test


def test_first_model_gets_floors_only() -> None:
    comparison = _comparison([_slice("sex=Female", 40, 0.2, None)], champion=False)
    report = evaluation_gate(comparison, SLICE_GATE)
    assert [c.name for c in report.checks] == ["min_accuracy", "min_macro_f1", "beats_majority_baseline", "no_champion"]


def test_an_evaluation_report_given_to_the_decision_is_used() -> None:
    # The flow appends a failed check when the champion could not be scored: that must block,
    # not fall back to "no champion yet".
    report = evaluation_gate_report(_report(0.9, 0.9), None, GATE)
    report.checks.append(Check("champion_comparable", False, "champion v3 could not be scored on this test data"))
    decision = decide_promotion(_report(0.9, 0.9), None, [report], GATE)
    assert not decision.promote
    assert decision.reasons == ["champion_comparable: champion v3 could not be scored on this test data."]
