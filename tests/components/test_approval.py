"""The approval step's verdicts: approved, rejected, timed out, or refused for a stale version."""

from __future__ import annotations

from components import names
from components.approval import judge_approval
from components.promotion import PromotionDecision

GATES_PASSED = PromotionDecision(True, ["accuracy 0.81 meets the floor"])


def test_an_approval_for_the_challenger_keeps_the_promotion_and_records_who() -> None:
    answer = {"approver": "alice", "approve": True, "comment": "looks good"}
    decision, tags = judge_approval(GATES_PASSED, answer, "3", "3", 60)
    assert decision.promote
    assert decision.reasons == ["accuracy 0.81 meets the floor", "approved by alice: looks good"]
    assert tags == {
        names.TAG_APPROVAL_BY: "alice",
        names.TAG_APPROVAL_COMMENT: "looks good",
        names.TAG_APPROVAL_DECISION: "approved",
    }


def test_a_rejection_stops_the_promotion_with_the_approvers_words() -> None:
    decision, tags = judge_approval(
        GATES_PASSED, {"approver": "bob", "approve": False, "comment": "wait"}, "3", "3", 60
    )
    assert not decision.promote
    assert decision.reasons == ["rejected by bob: wait"]
    assert tags[names.TAG_APPROVAL_DECISION] == "rejected"


def test_no_answer_in_time_leaves_the_champion() -> None:
    decision, tags = judge_approval(GATES_PASSED, None, "3", "3", 60)
    assert (decision.promote, decision.reasons) == (False, ["no approval within 60s: champion unchanged"])
    assert tags == {names.TAG_APPROVAL_DECISION: "timeout"}


def test_an_approval_for_a_version_that_is_no_longer_the_challenger_is_refused() -> None:
    decision, tags = judge_approval(GATES_PASSED, {"approver": "alice", "approve": True}, "3", "4", 60)
    assert not decision.promote
    assert decision.reasons == ["approval by alice for v3 refused: the challenger is now v4"]
    assert tags[names.TAG_APPROVAL_DECISION] == "refused"
