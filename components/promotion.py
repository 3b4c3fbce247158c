"""Promotion decision: whether the challenger replaces the champion.

The evaluation gate holds the challenger to absolute floors (`min_accuracy`, `min_macro_f1`)
and, when a champion exists, forbids a drop in accuracy or macro-F1 larger than
`max_regression`. :func:`evaluation_gate` judges a full
:class:`~components.comparison.ComparisonReport` the same way and adds, against a champion:

- one check per slice group large enough to judge: no drop beyond `max_slice_regression`;
- one warning per slice family naming the groups too small to judge (never passed, never
  blocking by themselves);
- the paired test (McNemar and the paired bootstrap difference), as a warning when the
  challenger is significantly worse. It informs rather than decides: on a large test set a
  drop well within tolerance is "significant", and on a small one a drop beyond tolerance is
  not, so letting it block would either refuse harmless models or excuse real regressions.

Every limit left empty fails closed. :func:`decide_promotion` adds the verdicts of the other
gates (a not-applicable gate does not block) and returns a :class:`PromotionDecision` with
one plain sentence per reason.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any

from components.comparison import ComparisonReport, PairedTest, SliceResult, rows_text
from components.config import EvaluationGate
from components.evaluation import EvalReport
from components.gates import Check, GateReport, threshold_check

# Metric differences are rounded before the tolerance test: 0.90 - 0.89 is 0.010000000000000009
# in floats, and a drop of exactly the tolerance must pass.
_DIGITS = 10
_COMPARED = (("accuracy", "accuracy"), ("macro_f1", "macro-F1"))


@dataclass
class PromotionDecision:
    """The verdict on a challenger.

    Attributes:
        promote: True when the challenger should become the champion.
        reasons: Plain sentences: each failed check, or why it was promoted.
        checks: Every check behind the decision (evaluation floors, regression, other gates).
        champion_version: The registry version of the champion compared against, if any.
    """

    promote: bool
    reasons: list[str]
    checks: list[Check] = field(default_factory=list)
    champion_version: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able form, for MLflow artifacts and tags."""
        return {
            "promote": self.promote,
            "reasons": list(self.reasons),
            "checks": [asdict(c) for c in self.checks],
            "champion_version": self.champion_version,
        }

    def to_markdown(self) -> str:
        """The verdict, its reasons and the checks table, for Prefect artifacts."""
        verdict = "PROMOTE" if self.promote else "REJECT"
        against = f" (champion: version {self.champion_version})" if self.champion_version else ""
        lines = [f"### Promotion: **{verdict}**{against}", ""]
        lines += [f"- {reason}" for reason in self.reasons]
        table = GateReport("promotion", list(self.checks)).to_markdown().splitlines()[1:]
        return "\n".join(lines + table)


def _regression_check(metric: str, label: str, challenger: float, champion: float, tolerance: float | None) -> Check:
    drop = round(champion - challenger, _DIGITS)
    name = f"no_regression_{metric}"
    check = threshold_check(name, drop, tolerance, at_least=False, what=f"{label} drop against the champion")
    if tolerance is None:
        return check
    verdict = "within" if check.passed else "exceeds"
    detail = (
        f"{label} {challenger:.4f} vs champion {champion:.4f}: "
        f"difference {challenger - champion:+.4f}, "
        f"{verdict} the allowed drop of {tolerance:.4f}"
    )
    return replace(check, detail=detail)


def majority_baseline_macro_f1(report: EvalReport) -> float:
    """Macro-F1 of always answering the test set's most frequent class.

    That predictor scores F1 = 2p / (1 + p) on the majority class (p its share) and 0 on every
    other class present, so its macro-F1 is that value over the number of classes present.
    """
    support = [sum(row) for row in report.confusion]
    present = [n for n in support if n > 0]
    if not present:
        return 0.0
    share = max(present) / sum(present)
    return (2 * share / (1 + share)) / len(present)


def _majority_baseline_check(challenger: EvalReport) -> Check:
    # On imbalanced labels a network can settle on the majority class and still clear an
    # accuracy floor (arrests: 83% "Yes"); such a model has learnt nothing worth promoting.
    baseline = majority_baseline_macro_f1(challenger)
    passed = challenger.macro_f1 > baseline + 1e-9
    verdict = "beats" if passed else "does not beat"
    detail = (
        f"macro-F1 {challenger.macro_f1:.4f} {verdict} always predicting the majority class (macro-F1 {baseline:.4f})"
    )
    return Check("beats_majority_baseline", passed, detail, challenger.macro_f1, baseline)


def evaluation_gate_report(challenger: EvalReport, champion: EvalReport | None, gate: EvaluationGate) -> GateReport:
    """The evaluation gate on overall figures: absolute floors, then no regression against the champion.

    Args:
        challenger: The new model's report on the test set.
        champion: The current champion's report on the same test set; None for the first model.
        gate: Floors and tolerance; any of them None fails closed.

    Returns:
        A :class:`GateReport` with gate `evaluation`. :func:`evaluation_gate` adds the slices
        and the paired test.
    """
    checks = [
        threshold_check("min_accuracy", challenger.accuracy, gate.min_accuracy, at_least=True, what="accuracy"),
        threshold_check("min_macro_f1", challenger.macro_f1, gate.min_macro_f1, at_least=True, what="macro-F1"),
    ]
    checks.append(_majority_baseline_check(challenger))
    figures = {"accuracy": challenger.accuracy, "macro_f1": challenger.macro_f1}
    if champion is None:
        checks.append(Check("no_champion", True, "no champion yet: absolute floors only"))
        return GateReport("evaluation", checks, figures=figures)
    for metric, label in _COMPARED:
        new, old = getattr(challenger, metric), getattr(champion, metric)
        checks.append(_regression_check(metric, label, new, old, gate.max_regression))
        figures[f"{metric}_change"] = new - old
    return GateReport("evaluation", checks, figures=figures)


def _paired_check(paired: PairedTest, alpha: float) -> Check:
    worse = paired.significantly_worse(alpha)
    if worse:
        verdict = f"the challenger is significantly worse at the {alpha:g} level (the tolerance decides the verdict)"
    elif paired.p_value < alpha:  # significant and not worse: better
        verdict = f"the challenger is significantly better at the {alpha:g} level"
    else:
        verdict = f"no significant difference at the {alpha:g} level"
    return Check("paired_test", not worse, f"{paired.sentence()}: {verdict}", paired.p_value, alpha, severity="warn")


def _slice_regression_check(s: SliceResult, tolerance: float) -> Check:
    failed, figures = [], []
    for metric, label in _COMPARED:
        new, old = s.value(metric), s.champion_value(metric)
        if old is None:  # cannot happen with a champion; if it does, it must not pass
            failed.append(f"{label} on {s.group}: no champion figure to compare with")
            continue
        figures.append(f"{label} {new:.4f} vs champion {old:.4f} ({new - old:+.4f})")
        if round(old - new, _DIGITS) > tolerance:
            bounds = s.intervals.get(f"{metric}_change")
            interval = f", 95% CI [{bounds[0]:+.4f}, {bounds[1]:+.4f}]" if bounds else ""
            failed.append(
                f"{label} on {s.group} ({rows_text(s.n)}): {new:.4f} vs champion {old:.4f} "
                f"({new - old:+.4f}{interval}; tolerance {tolerance:.4f})"
            )
    worst = max(round(-(s.change(metric) or 0.0), _DIGITS) for metric, _ in _COMPARED) + 0.0  # no "-0"
    within = f"{s.group} ({rows_text(s.n)}): {', '.join(figures)}; within tolerance {tolerance:.4f}"
    detail = "; ".join(failed) or within
    return Check(f"no_regression({s.group})", not failed, detail, worst, tolerance)


def _too_small_checks(comparison: ComparisonReport) -> list[Check]:
    families: dict[str, list[SliceResult]] = {}
    for s in comparison.too_small():
        families.setdefault(s.family, []).append(s)
    return [
        Check(
            f"slice_size({family})",
            False,
            f"too small to judge (< {comparison.min_slice_size} rows), not compared with the champion: "
            + ", ".join(f"{s.group} ({rows_text(s.n)})" for s in groups),
            float(min(s.n for s in groups)),
            float(comparison.min_slice_size),
            severity="warn",
        )
        for family, groups in families.items()
    ]


def _slice_checks(comparison: ComparisonReport, tolerance: float | None) -> list[Check]:
    judged = [s for s in comparison.slices if s.judged]
    checks: list[Check] = []
    if judged and tolerance is None:
        what = f"accuracy/macro-F1 drop against the champion on {len(judged)} slice groups"
        checks.append(threshold_check("no_slice_regression", None, None, at_least=False, what=what))
    elif judged and tolerance is not None:
        checks += [_slice_regression_check(s, tolerance) for s in judged]
    return checks + _too_small_checks(comparison)


def evaluation_gate(
    comparison: ComparisonReport, gate: EvaluationGate, champion_error: str | None = None
) -> GateReport:
    """The evaluation gate on a full comparison: overall, per slice, and the paired test.

    Args:
        comparison: The challenger (and champion) on the candidate's test split, with slices.
        gate: Floors, tolerances and the paired test's level; an empty floor fails closed, and
            so does an empty tolerance when there is a champion (and, for `max_slice_regression`,
            a slice group large enough to judge).
        champion_error: Why the champion could not be scored, if so: a failed
            `champion_comparable` check (fail closed rather than judge as if there were none).

    Returns:
        A :class:`GateReport` with gate `evaluation`: the checks of
        :func:`evaluation_gate_report`, then (with a champion) the paired test (a warning when
        the challenger is significantly worse), one no-regression check per judged slice group,
        and one warning per slice family with groups too small to judge.
    """
    report = evaluation_gate_report(comparison.challenger, comparison.champion, gate)
    if champion_error:
        report.checks.append(Check("champion_comparable", False, champion_error))
    if comparison.champion is None or comparison.paired is None:
        return report
    report.checks.append(_paired_check(comparison.paired, gate.paired_test_alpha))
    report.figures["paired_test_p"] = comparison.paired.p_value
    report.checks += _slice_checks(comparison, gate.max_slice_regression)
    changes = [s.change(m) for s in comparison.slices if s.judged for m, _ in _COMPARED]
    defined = [c for c in changes if c is not None]
    if defined:
        report.figures["worst_slice_change"] = min(defined)
    return report


def _gate_check(report: GateReport) -> Check:
    name = f"gate_{report.gate}"
    if not report.applicable:
        why = "; ".join(c.detail for c in report.checks)
        suffix = f" ({why})" if why else ""
        return Check(name, True, f"{report.gate} gate not applicable, so it does not block{suffix}")
    if report.passed:
        return Check(name, True, f"{report.gate} gate passed ({len(report.checks)} checks)")
    return Check(name, False, f"{report.gate} gate failed: {report.headline().removeprefix('FAIL: ')}")


def _promoted_summary(
    challenger: EvalReport,
    champion: EvalReport | None,
    version: str | None,
    gates: list[GateReport],
    judged_slices: int = 0,
) -> str:
    floors = f"accuracy {challenger.accuracy:.4f} and macro-F1 {challenger.macro_f1:.4f} meet the floors"
    if champion is None:
        versus = "there is no champion yet"
    else:
        name = f"champion version {version}" if version else "the champion"
        versus = (
            f"no regression beyond tolerance against {name} "
            f"(accuracy {challenger.accuracy - champion.accuracy:+.4f}, "
            f"macro-F1 {challenger.macro_f1 - champion.macro_f1:+.4f})"
        )
        if judged_slices:
            versus += f" and on each of {judged_slices} slice groups"
    passed = [r.gate for r in gates if r.applicable]
    gates_text = f"; gates passed: {', '.join(passed)}" if passed else ""
    return f"Promoted: {floors}; {versus}{gates_text}."


def decide_promotion(
    challenger: EvalReport,
    champion: EvalReport | None,
    gate_reports: list[GateReport],
    gate: EvaluationGate,
    champion_version: str | None = None,
) -> PromotionDecision:
    """Decide whether the challenger replaces the champion.

    Args:
        challenger: The new model's report on the test set.
        champion: The champion's report on the same test set; None for the first model.
        gate_reports: Reports of the gates (validation, labels, bias, ...). Each must pass; not
            applicable does not block. A report with gate `evaluation` (from
            :func:`evaluation_gate`, or with checks the flow added, such as a champion that
            could not be scored) supplies the evaluation checks; without one they are computed
            here from `challenger`, `champion` and `gate` (overall figures only).
        gate: Evaluation floors and regression tolerance.
        champion_version: The champion's registry version, for the reasons.

    Returns:
        A :class:`PromotionDecision`; `reasons` holds one sentence per failed check, or a
        summary of why it was promoted, then one per evaluation warning (e.g. a slice too
        small to judge) and a note for every not-applicable gate.
    """
    given = [r for r in gate_reports if r.gate == "evaluation"]
    others = [r for r in gate_reports if r.gate != "evaluation"]
    evaluation = given[0].checks if given else evaluation_gate_report(challenger, champion, gate).checks
    checks = list(evaluation) + [_gate_check(r) for r in others]
    # Warnings (a slice too small to judge, a significant paired test) are listed, never blocking.
    failed = [c for c in checks if not c.passed and c.severity == "fail"]
    not_applicable = [_gate_check(r).detail + "." for r in others if not r.applicable]
    warned = [f"warning, {c.name}: {c.detail}." for c in evaluation if not c.passed and c.severity == "warn"]
    if failed:
        reasons = [f"{c.name}: {c.detail}." for c in failed]
    else:
        judged = sum(1 for c in evaluation if c.name.startswith("no_regression("))
        reasons = [_promoted_summary(challenger, champion, champion_version, others, judged)]
    return PromotionDecision(not failed, reasons + warned + not_applicable, checks, champion_version)
