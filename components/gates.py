"""The shape every gate returns: named checks, a verdict, and renderings of both.

A gate is a function that returns a :class:`GateReport`; the flow decides whether to stop.
A check with no threshold configured fails closed: it is recorded as failed with the reason
"no threshold configured", never passed silently.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

Status = Literal["pass", "fail", "not_applicable"]


@dataclass(frozen=True)
class Check:
    """One named check of a gate.

    Attributes:
        name: Short identifier, e.g. `min_accuracy` or `expect_column_values_to_not_be_null(age)`.
        passed: Whether the check passed.
        detail: One plain sentence a person can act on.
        value: The observed figure, when there is one.
        threshold: The limit it was held against, when there is one.
        severity: `fail` blocks the gate when the check fails; `warn` is recorded only.
    """

    name: str
    passed: bool
    detail: str
    value: float | None = None
    threshold: float | None = None
    severity: Literal["fail", "warn"] = "fail"


@dataclass
class GateReport:
    """The outcome of one gate.

    Attributes:
        gate: Gate name: `validation`, `labels`, `evaluation`, `bias`, `serving`.
        checks: Every check run, passed or not.
        applicable: False when the gate has nothing to judge (e.g. no sensitive columns).
        figures: Key figures to log as metrics (name -> value).
    """

    gate: str
    checks: list[Check] = field(default_factory=list)
    applicable: bool = True
    figures: dict[str, float] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        """True when the gate does not block (no failing `fail` check, or not applicable)."""
        return not self.applicable or all(c.passed or c.severity == "warn" for c in self.checks)

    @property
    def status(self) -> Status:
        """`pass`, `fail` or `not_applicable`."""
        if not self.applicable:
            return "not_applicable"
        return "pass" if self.passed else "fail"

    def failures(self) -> list[Check]:
        """The blocking checks that failed."""
        return [c for c in self.checks if not c.passed and c.severity == "fail"]

    def warnings(self) -> list[Check]:
        """The `warn` checks that failed (recorded, not blocking)."""
        return [c for c in self.checks if not c.passed and c.severity == "warn"]

    def headline(self) -> str:
        """One line: the verdict and its key reason."""
        if not self.applicable:
            return "not applicable"
        failed = self.failures()
        if not failed:
            # The key figures (the first three the gate reported) say how comfortably it passed.
            shown = ", ".join(f"{name} {value:.4g}" for name, value in list(self.figures.items())[:3])
            line = f"pass ({len(self.checks)} checks)" + (f": {shown}" if shown else "")
            warned = self.warnings()
            if warned:
                line += f"; WARNING: {warned[0].detail}" + (f" (+{len(warned) - 1} more)" if len(warned) > 1 else "")
            return line
        more = f" (+{len(failed) - 1} more)" if len(failed) > 1 else ""
        return f"FAIL: {failed[0].detail}{more}"

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able form, for MLflow artifacts."""
        return {
            "gate": self.gate,
            "status": self.status,
            "figures": self.figures,
            "checks": [asdict(c) for c in self.checks],
        }

    def to_markdown(self) -> str:
        """A markdown table of the checks, for Prefect artifacts."""
        lines = [f"### Gate `{self.gate}`: **{self.status}**", ""]
        if not self.checks:
            lines.append("_no checks_")
            return "\n".join(lines)
        lines += ["| check | result | value | threshold | detail |", "|---|---|---|---|---|"]
        for c in self.checks:
            value = "" if c.value is None else f"{c.value:.4g}"
            threshold = "" if c.threshold is None else f"{c.threshold:.4g}"
            result = "pass" if c.passed else ("warn" if c.severity == "warn" else "**FAIL**")
            lines.append(f"| {c.name} | {result} | {value} | {threshold} | {c.detail} |")
        return "\n".join(lines)


def threshold_check(name: str, value: float | None, threshold: float | None, *, at_least: bool, what: str) -> Check:
    """A check of `value` against a floor (`at_least=True`) or a ceiling; fails closed.

    Args:
        name: The check's name.
        value: The observed figure; None when it could not be computed.
        threshold: The configured limit; None means "not configured" and fails.
        at_least: True for a floor (value >= threshold), False for a ceiling.
        what: Human name of the figure, used in the detail sentence.
    """
    if threshold is None:
        return Check(name, False, f"{what}: no threshold configured, so it cannot pass", value, None)
    if value is None:
        return Check(name, False, f"{what} could not be computed", None, threshold)
    ok = value >= threshold if at_least else value <= threshold
    relation = ">=" if at_least else "<="
    verdict = "meets" if ok else "fails"
    return Check(name, ok, f"{what} {value:.4f} {verdict} {relation} {threshold:.4f}", value, threshold)
