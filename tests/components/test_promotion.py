"""Promotion decision: floors, no-regression tolerance and the other gates' verdicts."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from components.config import EvaluationGate
from components.evaluation import EvalReport
from components.gates import Check, GateReport
from components.promotion import decide_promotion, evaluation_gate_report, majority_baseline_macro_f1

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
