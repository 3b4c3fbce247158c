"""What a retraining run reports at the end: one record, rendered as a table or JSON."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any

from components.gates import GateReport


@dataclass
class GateLine:
    """One gate's verdict in the summary."""

    gate: str
    status: str
    headline: str


@dataclass
class RunSummary:
    """The outcome of one retraining run of one pipeline.

    Attributes:
        pipeline: Pipeline name.
        outcome: `promoted`, `rejected`, `up_to_date` (nothing changed: no training), or
            `stopped` (a data or label gate stopped the run before training).
        data_version: DVC md5 of the dataset.
        rows: Rows (or images) in the dataset.
        gates: Each gate's verdict, in DAG order.
        metrics: Test metrics of the candidate.
        version: The registered model version (or the up-to-date one).
        champion: The champion version after the run.
        reasons: Why the outcome is what it is, in plain sentences.
        stopped_at: The gate that stopped the run, if any.
        timings: Seconds per stage.
        mlflow_run_id: The tracking run.
        notes: Things the user should know that are not about the outcome (a suite written).
        resumed_from: The failed run this run resumed (`deepgate run --resume`, a retried flow run).
        reused: The stages whose results came from that run (e.g. `validate`, `train`); its gates
            were judged again all the same.
        reports: Each gate's full report, in DAG order (for the model card; not in `to_dict`).
    """

    pipeline: str
    outcome: str = "running"
    data_version: str | None = None
    rows: int | None = None
    gates: list[GateLine] = field(default_factory=list)
    metrics: dict[str, float] = field(default_factory=dict)
    version: str | None = None
    champion: str | None = None
    reasons: list[str] = field(default_factory=list)
    stopped_at: str | None = None
    timings: dict[str, float] = field(default_factory=dict)
    mlflow_run_id: str | None = None
    notes: list[str] = field(default_factory=list)
    resumed_from: str | None = None
    reused: list[str] = field(default_factory=list)
    reports: list[GateReport] = field(default_factory=list, repr=False, compare=False)

    def add_gate(self, report: GateReport) -> None:
        """Record a gate's verdict (and keep its report).

        A gate judged again (the champion moved while the run waited to promote) replaces its
        earlier verdict in place: the summary shows what was decided on, once.
        """
        line = GateLine(report.gate, report.status, report.headline())
        for i, earlier in enumerate(self.gates):
            if earlier.gate == report.gate:
                self.gates[i] = line
                self.reports = [report if r.gate == report.gate else r for r in self.reports]
                return
        self.gates.append(line)
        self.reports.append(report)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (the gates as one line each; their full reports are logged on their own)."""
        data = asdict(replace(self, reports=[]))
        del data["reports"]
        return data

    def to_markdown(self) -> str:
        """Markdown for the Prefect artifact."""
        lines = [
            f"## deepgate `{self.pipeline}`: **{self.outcome}**",
            "",
            f"- data version: `{self.data_version}` ({self.rows} rows)",
            f"- registered version: {self.version or '-'}; champion now: {self.champion or 'none'}",
            "",
            "| gate | verdict | detail |",
            "|---|---|---|",
        ]
        lines += [f"| {g.gate} | {g.status} | {g.headline} |" for g in self.gates]
        if self.metrics:
            lines += ["", "| metric | value |", "|---|---|"]
            lines += [f"| {k} | {v:.4f} |" for k, v in self.metrics.items()]
        if self.reasons:
            lines += ["", "**Why:**", *[f"- {r}" for r in self.reasons]]
        if self.resumed_from:
            lines += ["", f"- {self.resume_line()}"]
        return "\n".join(lines)

    def resume_line(self) -> str:
        """What a resumed run took from the failed one, in one sentence ("" when not resumed)."""
        if not self.resumed_from:
            return ""
        taken = ", ".join(self.reused) if self.reused else "nothing (its inputs changed)"
        return f"resumed from {self.resumed_from}: reused {taken}; every gate judged again"
