"""The run summary: one line per gate, in the order the gates ran."""

from __future__ import annotations

from components.gates import Check, GateReport
from components.summary import RunSummary


def _report(gate: str, passed: bool) -> GateReport:
    return GateReport(gate, [Check("min_accuracy", passed, "accuracy against its floor", 0.9, 0.8)])


def test_gates_are_listed_in_the_order_they_ran() -> None:
    summary = RunSummary("people")
    for gate in ("validation", "labels", "evaluation"):
        summary.add_gate(_report(gate, True))
    assert [g.gate for g in summary.gates] == ["validation", "labels", "evaluation"]
    assert [r.gate for r in summary.reports] == ["validation", "labels", "evaluation"]


def test_a_gate_judged_again_replaces_its_verdict_in_place() -> None:
    # The champion moved while the run waited for the promotion lock: evaluation and bias are
    # judged again against the new one, and the summary shows the verdict that decided, once.
    summary = RunSummary("people")
    first_evaluation = _report("evaluation", True)
    for report in (_report("validation", True), first_evaluation, _report("bias", True)):
        summary.add_gate(report)
    again = _report("evaluation", False)
    summary.add_gate(again)
    assert [(g.gate, g.status) for g in summary.gates] == [
        ("validation", "pass"),
        ("evaluation", "fail"),
        ("bias", "pass"),
    ]
    assert summary.reports[1] is again and first_evaluation not in summary.reports
    assert "| evaluation | fail |" in summary.to_markdown()
