"""A person's sign-off on a promotion the gates allow (`promote.approval: required`).

The flow pauses and waits for an answer (:mod:`flows.retrain`); this module turns the answer,
or its absence, into the final decision and the tags that record it on the version. An answer
counts only for the version it was asked about: if another version became challenger while
the flow waited, the approval is refused rather than applied to a model nobody looked at.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from components import names
from components.gates import Check
from components.promotion import PromotionDecision


def judge_approval(
    decision: PromotionDecision,
    answer: Mapping[str, Any] | None,
    version: str,
    challenger: str | None,
    timeout_s: int,
) -> tuple[PromotionDecision, dict[str, str]]:
    """The decision after the approval step, and the version tags that record it.

    Args:
        decision: The gates' decision (promote=True: otherwise nobody is asked).
        answer: ``approver``, ``approve`` and ``comment`` as the person gave them; None when
            nobody answered before the timeout.
        version: The version the approval was asked for.
        challenger: The version `challenger` points at now.
        timeout_s: The wait, for the reason given on a timeout.

    Returns:
        The decision (promote only if approved for this very version) and the tags.
    """
    if answer is None:
        return _refuse(decision, "timeout", f"no approval within {timeout_s}s: champion unchanged", {})
    approver = str(answer.get("approver") or "").strip() or "anonymous"
    comment = str(answer.get("comment") or "").strip()
    tags = {names.TAG_APPROVAL_BY: approver, **({names.TAG_APPROVAL_COMMENT: comment[:5000]} if comment else {})}
    if challenger != version:
        now = f"v{challenger}" if challenger else "no version"
        why = f"approval by {approver} for v{version} refused: the challenger is now {now}"
        return _refuse(decision, "refused", why, tags)
    if not answer.get("approve"):
        why = f"rejected by {approver}" + (f": {comment}" if comment else "")
        return _refuse(decision, "rejected", why, tags)
    check = Check("approval", True, f"approved by {approver}" + (f": {comment}" if comment else ""))
    approved = dataclasses.replace(
        decision, reasons=[*decision.reasons, check.detail], checks=[*decision.checks, check]
    )
    return approved, {**tags, names.TAG_APPROVAL_DECISION: "approved"}


def _refuse(
    decision: PromotionDecision, outcome: str, why: str, tags: dict[str, str]
) -> tuple[PromotionDecision, dict[str, str]]:
    check = Check("approval", False, why)
    refused = dataclasses.replace(decision, promote=False, reasons=[why], checks=[*decision.checks, check])
    return refused, {**tags, names.TAG_APPROVAL_DECISION: outcome}
