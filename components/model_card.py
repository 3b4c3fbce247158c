"""The model card: one self-contained HTML page per candidate, from what the run measured.

:func:`render_model_card` turns one :class:`ModelCardInputs` into a page with a fixed set of
sections, each with a stable id a test or a link can rely on:

| id | what it shows |
| --- | --- |
| `data` | lineage (data version, git commit, config hash, base model) and the validation gate |
| `labels` | the label checks and the label-noise estimate |
| `evaluation` | metrics against the champion with 95% intervals, the paired test, figures |
| `slices` | every slice group: rows, accuracy and macro-F1 against the champion |
| `fairness` | fairness per partition and per group, the group-rates figure |
| `explanations` | permutation importance or integrated gradients, table and figure |
| `gates` | each gate's verdict and its reason, with every check |
| `decision` | the promotion decision and its reasons |

The page stands alone: inline CSS, figures embedded as base64 PNG data URIs, no script, no
external link. It reads the same from a file, offline, and in MLflow's artifact viewer (which
shows HTML in a sandboxed frame). Every text from the run is HTML-escaped.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from html import escape
from typing import Any

from matplotlib.figure import Figure

from components.bias import BiasReport, Estimate
from components.comparison import ComparisonReport
from components.explain import Explanation, FeatureImportance
from components.gates import Check, GateReport
from components.promotion import PromotionDecision

MODEL_CARD = "model_card.html"
SECTIONS = {
    "data": "Data",
    "labels": "Labels",
    "evaluation": "Evaluation against the champion",
    "slices": "Slices",
    "fairness": "Fairness",
    "explanations": "Explanations",
    "gates": "Gates",
    "decision": "Promotion decision",
}
_LINEAGE = {
    "data_version": "data version (DVC md5)",
    "data_path": "data file",
    "raw_data_version": "raw file version",
    "rows": "rows",
    "git_commit": "git commit",
    "config_hash": "config hash",
    "code_hash": "code hash",
    "base_model": "base model",
    "mlflow_run_id": "MLflow run",
    "flow_run_id": "Prefect flow run",
}
_CAPTIONS = {
    "confusion_matrix": "Confusion matrix of the challenger",
    "reliability": "Reliability diagram (calibration)",
    "roc_curve": "ROC curve (with the champion's, when there is one)",
    "pr_curve": "Precision-recall curve (with the champion's, when there is one)",
}
_DPI = 100


@dataclass
class ModelCardInputs:
    """Everything one candidate's model card shows, as the run produced it.

    Attributes:
        pipeline: Pipeline name.
        version: The registered model version (None when it was not registered).
        lineage: Keys such as data_version, data_path, rows, git_commit, config_hash,
            code_hash, base_model, mlflow_run_id, flow_run_id (missing keys are left out).
        gates: Every gate report of the run, in DAG order (validation, drift, labels,
            label_noise, evaluation, bias, serving).
        comparison: The challenger against the champion, with intervals and slices.
        decision: The promotion decision.
        bias: The bias report with its tables (default: the `bias` report among `gates`).
        fairness_figure: The per-group rates figure.
        explanation: Permutation importance or integrated gradients.
        explanation_figure: Its figure.
        evaluation_figures: Figures of the evaluation by name (`confusion_matrix`, `reliability`,
            `roc_curve`, `pr_curve`, or any other name, shown as its caption).
        description: What the pipeline predicts.
        notes: Anything else the reader should know (e.g. rows quarantined).
        created: When the card was made (default: now, UTC).
    """

    pipeline: str
    version: str | None
    lineage: dict[str, str]
    gates: list[GateReport]
    comparison: ComparisonReport
    decision: PromotionDecision
    bias: BiasReport | None = None
    fairness_figure: Figure | None = None
    explanation: Explanation | None = None
    explanation_figure: Figure | None = None
    evaluation_figures: dict[str, Figure] = field(default_factory=dict)
    description: str = ""
    notes: list[str] = field(default_factory=list)
    created: str = field(default_factory=lambda: datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"))

    def gate(self, name: str) -> GateReport | None:
        """The report of the gate called `name`, if the run has one."""
        return next((g for g in self.gates if g.gate == name), None)

    def bias_report(self) -> BiasReport | None:
        """`bias`, else the bias gate's report when it carries the tables."""
        if self.bias is not None:
            return self.bias
        found = self.gate("bias")
        return found if isinstance(found, BiasReport) else None


# --- small HTML pieces ----------------------------------------------------------------------


def _e(value: Any) -> str:
    return escape(str(value), quote=True)


def _num(value: float | None, digits: int = 4, signed: bool = False) -> str:
    if value is None:
        return "n/a"
    return f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"


def _interval(bounds: Sequence[float] | None, signed: bool = False) -> str:
    if not bounds:
        return ""
    return f'<span class="ci">[{_num(bounds[0], signed=signed)}, {_num(bounds[1], signed=signed)}]</span>'


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def _badge(status: str) -> str:
    label = {"pass": "pass", "fail": "FAIL", "warn": "warn", "not_applicable": "n/a"}.get(status, status)
    kind = {"pass": "pass", "fail": "fail", "warn": "warn"}.get(status, "na")
    return f'<span class="badge {kind}">{_e(label)}</span>'


def _table(headers: Sequence[str], rows: Iterable[Sequence[str]], numeric: Iterable[int] = ()) -> str:
    """A table of already-escaped cells; columns in `numeric` are right-aligned."""
    numeric = set(numeric)
    head = "".join(f"<th{' class=num' if i in numeric else ''}>{h}</th>" for i, h in enumerate(headers))
    body = "".join(
        "<tr>" + "".join(f"<td{' class=num' if i in numeric else ''}>{c}</td>" for i, c in enumerate(row)) + "</tr>"
        for row in rows
    )
    return f'<div class="scroll"><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>'


def figure_png(figure: Figure) -> bytes:
    """A matplotlib figure as PNG bytes."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=_DPI, bbox_inches="tight")
    return buffer.getvalue()


def _figure(figure: Figure | None, caption: str) -> str:
    if figure is None:
        return ""
    data = base64.b64encode(figure_png(figure)).decode("ascii")
    return (
        f'<figure><img src="data:image/png;base64,{data}" alt="{_e(caption)}">'
        f"<figcaption>{_e(caption)}</figcaption></figure>"
    )


def _check_result(check: Check) -> str:
    if check.passed:
        return _badge("pass")
    return _badge("warn" if check.severity == "warn" else "fail")


def _checks(checks: Sequence[Check]) -> str:
    if not checks:
        return "<p><em>no checks</em></p>"
    rows = [
        (
            f"<code>{_e(c.name)}</code>",
            _check_result(c),
            "" if c.value is None else _e(f"{c.value:.4g}"),
            "" if c.threshold is None else _e(f"{c.threshold:.4g}"),
            _e(c.detail),
        )
        for c in checks
    ]
    return _table(["check", "result", "value", "threshold", "detail"], rows, numeric=(2, 3))


def _gate_block(report: GateReport | None, title: str, open_checks: bool = False) -> str:
    """A gate's verdict and headline, its key figures, and its checks (failures first)."""
    if report is None:
        return f"<h3>{_e(title)}</h3><p><em>this gate did not run</em></p>"
    # A passing headline already names the first three figures: list the others only.
    extra = list(report.figures.items())[3 if report.passed else 0 :]
    figures = ""
    if extra:
        items = "".join(f"<li>{_e(k)}: <b>{_e(f'{v:.4g}')}</b></li>" for k, v in extra[:8])
        figures = f'<ul class="figures">{items}</ul>'
    ordered = sorted(report.checks, key=lambda c: (c.passed, c.severity != "fail"))
    opened = " open" if open_checks or not report.passed else ""
    return (
        f"<h3>{_e(title)} {_badge(report.status)}</h3><p>{_e(_reason(report))}</p>{figures}"
        f"<details{opened}><summary>{_count(len(report.checks), 'check')}</summary>{_checks(ordered)}</details>"
    )


def _reason(report: GateReport) -> str:
    """The gate's headline; for a gate that did not apply, why not."""
    if report.applicable:
        return report.headline()
    why = "; ".join(c.detail for c in report.checks)
    return f"not applicable: {why}" if why else "not applicable"


def _section(key: str, body: str) -> str:
    return f'<section id="{key}"><h2>{_e(SECTIONS[key])}</h2>{body}</section>'


# --- sections -------------------------------------------------------------------------------


def _data(inputs: ModelCardInputs) -> str:
    known = [(label, inputs.lineage.get(key)) for key, label in _LINEAGE.items()]
    extra = [(key, value) for key, value in inputs.lineage.items() if key not in _LINEAGE]
    rows = [(_e(label), f"<code>{_e(value)}</code>") for label, value in known + extra if value and label != "pipeline"]
    body = "<h3>Lineage</h3>" + _table(["", "value"], rows)
    return _section("data", body + _gate_block(inputs.gate("validation"), "Validation (Great Expectations)"))


def _labels(inputs: ModelCardInputs) -> str:
    return _section(
        "labels",
        _gate_block(inputs.gate("labels"), "Label checks", open_checks=True)
        + _gate_block(inputs.gate("label_noise"), "Label noise (confident learning)", open_checks=True),
    )


_OVERALL = (
    ("accuracy", "accuracy"),
    ("macro_f1", "macro-F1"),
    ("roc_auc", "ROC AUC"),
    ("average_precision", "average precision"),
    ("ece", "ECE (lower is better)"),
    ("log_loss", "log loss (lower is better)"),
)


def _change_class(change: float | None, lower_is_better: bool = False) -> str:
    if change is None or abs(change) < 5e-5:
        return ""
    worse = change > 0 if lower_is_better else change < 0
    return "worse" if worse else "better"


def _evaluation(inputs: ModelCardInputs) -> str:
    c = inputs.comparison
    new, old = c.challenger, c.champion
    rows: list[Sequence[str]] = []
    for metric, label in _OVERALL:
        value = getattr(new, metric)
        if value is None:
            continue
        theirs = None if old is None else getattr(old, metric)
        change, paired = None if theirs is None else value - theirs, None
        if c.paired is not None:
            paired = getattr(c.paired, f"{metric}_interval", None)
        css = _change_class(change, lower_is_better=metric in ("ece", "log_loss"))
        rows.append(
            (
                _e(label),
                f"{_num(value)} {_interval(new.intervals.get(metric))}",
                "" if theirs is None else f"{_num(theirs)} {_interval(old.intervals.get(metric))}",  # type: ignore[union-attr]
                ""
                if change is None
                else f'<span class="{css}">{_num(change, signed=True)}</span> ' + _interval(paired, signed=True),
            )
        )
    headers = ["metric", "challenger", "champion", "change"]
    if old is None:
        headers, rows = headers[:2], [row[:2] for row in rows]
    against = "no champion yet: absolute floors only" if old is None else "the current champion on the same rows"
    body = (
        f"<p>{_e(c.split)}: {c.challenger.n} rows; challenger against {_e(against)}. "
        "Brackets: 95% bootstrap intervals (changes paired on the same rows).</p>"
        + _table(headers, rows, numeric=(1, 2, 3))
    )
    if c.paired is not None:
        body += f"<p>Paired test: {_e(c.paired.sentence())}.</p>"
    per_class = [
        (_e(r["class"]), _num(r["precision"]), _num(r["recall"]), _num(r["f1"]), _e(r["support"]))
        for r in new.per_class
    ]
    if per_class:
        body += "<h3>Per class</h3>" + _table(
            ["class", "precision", "recall", "F1", "support"], per_class, (1, 2, 3, 4)
        )
    figures = "".join(
        _figure(f, _CAPTIONS.get(name, name.replace("_", " "))) for name, f in inputs.evaluation_figures.items()
    )
    if figures:
        body += f'<div class="grid">{figures}</div>'
    return _section("evaluation", body)


def _slices(inputs: ModelCardInputs) -> str:
    c = inputs.comparison
    if not c.slices:
        return _section("slices", "<p><em>no slice columns configured (data.sensitive, data.slices)</em></p>")
    rows = []
    for s in c.slices:
        cells = [f'<span class="key">{_e(s.group)}</span>', str(s.n)]
        for metric in ("accuracy", "macro_f1"):
            cells.append(f"{_num(s.value(metric))} {_interval(s.intervals.get(metric))}")
            old, change = s.champion_value(metric), s.change(metric)
            cells.append("" if old is None else _num(old))
            bounds = _interval(s.intervals.get(f"{metric}_change"), signed=True)
            css = _change_class(change)
            cells.append("" if change is None else f'<span class="{css}">{_num(change, signed=True)}</span> {bounds}')
        cells.append("yes" if s.judged else '<span class="muted">too small</span>')
        rows.append(cells)
    headers = ["group", "rows", "accuracy", "champion", "change", "macro-F1", "champion", "change", "judged"]
    if c.champion is None:  # the challenger's figures only
        keep = (0, 1, 2, 5, 8)
        headers, rows = [headers[i] for i in keep], [[row[i] for i in keep] for row in rows]
    note = (
        f"<p>Each group of each slice column, then of each pair. Groups under {c.min_slice_size} rows are too "
        "small to judge; the evaluation gate holds every judged group to the slice tolerance.</p>"
    )
    return _section("slices", note + _table(headers, rows, numeric=range(1, len(headers) - 1)))


def _estimate(estimate: Estimate | None) -> str:
    if estimate is None or estimate.value is None:
        return "n/a" if estimate is not None else ""
    bounds = None if estimate.low is None or estimate.high is None else [estimate.low, estimate.high]
    return f"{_num(estimate.value)} {_interval(bounds)}"


def _group_rows(rows: list[dict[str, Any]]) -> list[list[str]]:
    out = []
    for row in rows:
        cells = [_e(row["group"]), _e(row["count"]), _num(row["accuracy"])]
        for key in ("selection_rate", "tpr", "fpr"):
            cells.append(_estimate(Estimate(row[key], *(row.get(f"{key}_ci") or (None, None)))))
        cells.append("yes" if row["judged"] else '<span class="muted">too small</span>')
        out.append(cells)
    return out


def _fairness(inputs: ModelCardInputs) -> str:
    report = inputs.bias_report()
    gate = inputs.gate("bias") or report
    if gate is None:
        return _section("fairness", "<p><em>the bias audit did not run</em></p>")
    if not gate.applicable or report is None or not report.partitions:
        why = "; ".join(c.detail for c in gate.checks) or "nothing to audit"
        return _section("fairness", f"<p>{_badge(gate.status)} Not applicable: {_e(why)}.</p>")
    champion = any(p.champion_dp_ratio is not None for p in report.partitions.values())
    headers = ["partition", "groups judged", "demographic-parity ratio", "equalized-odds difference"]
    if champion:
        headers += ["champion DP ratio", "DP ratio drop", "champion EO difference", "EO difference rise"]
    rows = []
    for name, p in report.partitions.items():
        cells = [_e(name), str(len(p.judged)), _estimate(p.dp_ratio), _estimate(p.eo_diff)]
        if champion:
            cells += [_estimate(e) for e in (p.champion_dp_ratio, p.dp_ratio_drop, p.champion_eo_diff, p.eo_diff_rise)]
        rows.append(cells)
    method = ""
    if report.method.get("resamples"):
        method = (
            f"<p>Thresholds are held against point estimates; brackets hold {report.method['confidence']:.0%} "
            f"bootstrap intervals ({report.method['resamples']} resamples, seed {report.method['seed']}).</p>"
        )
    body = f"<p>{_badge(report.status)} {_e(report.headline())}</p>{method}"
    body += _table(headers, rows, numeric=tuple(range(1, len(headers))))
    group_headers = ["group", "rows", "accuracy", "selection rate", "TPR", "FPR", "judged"]
    for name, groups in report.groups.items():
        body += f"<h3>{_e(name)} by group</h3>" + _table(group_headers, _group_rows(groups), numeric=(1, 2, 3, 4, 5))
    body += _figure(inputs.fairness_figure, "Selection rate, TPR and FPR per group (grey: too small to judge)")
    body += _mitigation(report)
    return _section("fairness", body)


def _mitigation(report: BiasReport) -> str:
    m = report.mitigation
    if m is None:
        return ""
    title = f"<h3>Mitigation: {_e(m.method)} ({_e(m.constraint)}), fitted on {m.fit_rows} validation rows</h3>"
    if m.error is not None:
        return f"{title}<p>Not evaluated: {_e(m.error)}</p>"
    rows = [
        (_e(key.replace("_", " ")), _estimate(m.overall_before[key]), _estimate(m.overall_after.get(key)))
        for key in m.overall_before
    ]
    for name, p in report.partitions.items():
        if name in m.dp_ratio_after:
            rows.append((_e(f"DP ratio ({name})"), _estimate(p.dp_ratio), _estimate(m.dp_ratio_after[name])))
    return title + _table(["figure", "without", "with"], rows, numeric=(1, 2)) + f"<p class=muted>{_e(m.note)}</p>"


def _explanations(inputs: ModelCardInputs) -> str:
    explanation = inputs.explanation
    if explanation is None:
        return _section("explanations", "<p><em>no explanation method covers this model's inputs</em></p>")
    body = f"<p>{_e(explanation.method())}</p>"
    if isinstance(explanation, FeatureImportance):
        rows = [(_e(name), _num(mean, signed=True), _num(std)) for name, mean, std in explanation.ranked()]
        body += _table(["input column", "importance (drop)", "std"], rows, numeric=(1, 2))
    body += _figure(inputs.explanation_figure, explanation.headline())
    return _section("explanations", body)


def _gates(inputs: ModelCardInputs) -> str:
    rows = [(f"<a href='#gate-{_e(g.gate)}'>{_e(g.gate)}</a>", _badge(g.status), _e(_reason(g))) for g in inputs.gates]
    body = _table(["gate", "verdict", "reason"], rows)
    for g in inputs.gates:
        body += f'<div id="gate-{_e(g.gate)}">{_gate_block(g, g.gate)}</div>'
    return _section("gates", body)


def _decision(inputs: ModelCardInputs) -> str:
    d = inputs.decision
    verdict = "PROMOTE" if d.promote else "REJECT"
    against = f" against champion version {_e(d.champion_version)}" if d.champion_version else " (no champion yet)"
    reasons = "".join(f"<li>{_e(r)}</li>" for r in d.reasons)
    body = (
        f'<p class="verdict {"pass" if d.promote else "fail"}">{verdict}{against}</p><ul>{reasons}</ul>'
        f"<details><summary>{_count(len(d.checks), 'check')} behind the decision</summary>{_checks(d.checks)}</details>"
    )
    return _section("decision", body)


_CSS = """
:root { --ink: #1f2328; --muted: #59636e; --line: #d1d9e0; --soft: #f6f8fa; --pass: #1a7f37; --fail: #cf222e;
        --warn: #9a6700; }
* { box-sizing: border-box; }
body { margin: 0; color: var(--ink); background: #fff; line-height: 1.5;
       font: 15px/1.5 -apple-system, "Segoe UI", "Noto Sans", Helvetica, Arial, sans-serif; }
main { max-width: 1180px; margin: 0 auto; padding: 24px 28px 64px; }
header { border-bottom: 1px solid var(--line); padding-bottom: 12px; margin-bottom: 8px; }
h1 { font-size: 28px; margin: 0 0 4px; }
h2 { font-size: 21px; margin: 36px 0 12px; padding-bottom: 6px; border-bottom: 1px solid var(--line); }
h3 { font-size: 16px; margin: 22px 0 8px; }
p { margin: 6px 0 10px; }
nav { font-size: 14px; margin: 10px 0 0; }
nav a { margin-right: 14px; color: #0969da; text-decoration: none; }
code { font: 13px ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; background: var(--soft);
       padding: 1px 4px; border-radius: 4px; overflow-wrap: break-word; }
.scroll { overflow-x: auto; margin: 8px 0 14px; }
table { border-collapse: collapse; font-size: 14px; min-width: 40%; }
th, td { border: 1px solid var(--line); padding: 5px 10px; text-align: left; vertical-align: top; }
th { background: var(--soft); font-weight: 600; }
tbody tr:nth-child(even) { background: #fbfcfd; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
.ci { color: var(--muted); font-size: 12px; }
td.num .ci { display: block; }  /* the interval under its value keeps wide tables narrow */
.key { white-space: nowrap; }
.muted { color: var(--muted); }
.better { color: var(--pass); }
.worse { color: var(--fail); }
.badge { display: inline-block; font-size: 12px; font-weight: 600; padding: 1px 8px; border-radius: 10px;
         vertical-align: middle; border: 1px solid; }
.badge.pass { color: var(--pass); border-color: var(--pass); background: #dafbe1; }
.badge.fail { color: var(--fail); border-color: var(--fail); background: #ffebe9; }
.badge.warn { color: var(--warn); border-color: var(--warn); background: #fff8c5; }
.badge.na { color: var(--muted); border-color: var(--line); background: var(--soft); }
.verdict { font-size: 20px; font-weight: 700; padding: 8px 14px; border-radius: 6px; display: inline-block; }
.verdict.pass { color: var(--pass); background: #dafbe1; }
.verdict.fail { color: var(--fail); background: #ffebe9; }
ul.figures { display: flex; flex-wrap: wrap; gap: 4px 18px; list-style: none; padding: 0; margin: 4px 0;
             color: var(--muted); font-size: 13px; }
details { margin: 6px 0 12px; }
summary { cursor: pointer; color: var(--muted); font-size: 14px; }
figure { margin: 14px 0; }
.grid { display: grid; grid-template-columns: repeat(auto-fill, minmax(320px, 1fr)); gap: 0 24px; align-items: start; }
.grid figure img { max-height: 360px; }
figure img { max-width: 100%; height: auto; border: 1px solid var(--line); border-radius: 4px; }
figcaption { color: var(--muted); font-size: 13px; }
dl.meta { display: grid; grid-template-columns: max-content 1fr; gap: 2px 14px; margin: 8px 0; font-size: 14px; }
dl.meta dt { color: var(--muted); }
dl.meta dd { margin: 0; }
"""


def _header(inputs: ModelCardInputs) -> str:
    version = f" version {inputs.version}" if inputs.version else ""
    d = inputs.decision
    kind, word = ("pass", "promoted") if d.promote else ("fail", "rejected")
    verdict = f'<span class="verdict {kind}">{word}</span>'
    meta = [("pipeline", inputs.pipeline), ("created", inputs.created)]
    if d.champion_version:
        meta.append(("compared with", f"champion version {d.champion_version}"))
    items = "".join(f"<dt>{_e(k)}</dt><dd>{_e(v)}</dd>" for k, v in meta)
    notes = "".join(f"<li>{_e(n)}</li>" for n in inputs.notes)
    links = "".join(f'<a href="#{key}">{_e(title)}</a>' for key, title in SECTIONS.items())
    return (
        f"<header><h1>Model card: {_e(inputs.pipeline)}{_e(version)} {verdict}</h1>"
        + (f"<p>{_e(inputs.description)}</p>" if inputs.description else "")
        + f'<dl class="meta">{items}</dl>'
        + (f"<ul>{notes}</ul>" if notes else "")
        + f"<nav>{links}</nav></header>"
    )


def render_model_card(inputs: ModelCardInputs) -> str:
    """The model card of one candidate as one self-contained HTML page.

    Args:
        inputs: What the run measured and decided.

    Returns:
        The HTML text (UTF-8), with the sections listed in :data:`SECTIONS`.
    """
    title = f"Model card: {inputs.pipeline}" + (f" v{inputs.version}" if inputs.version else "")
    sections = [
        _data(inputs),
        _labels(inputs),
        _evaluation(inputs),
        _slices(inputs),
        _fairness(inputs),
        _explanations(inputs),
        _gates(inputs),
        _decision(inputs),
    ]
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{_e(title)}</title><style>{_CSS}</style></head>"
        f"<body><main>{_header(inputs)}{''.join(sections)}</main></body></html>\n"
    )
