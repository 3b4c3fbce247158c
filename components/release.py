"""Registering and promoting a model version as one transaction, and the champion's history.

A retraining changes the registry in several calls: create the version (with its lineage
tags), point `challenger` at it, tag the serving check and the verdict, point `champion` at it
and record the change. MLflow has no transaction over those calls, so :class:`Release` keeps
an undo log: each alias move remembers where the alias pointed before, and if any later step
raises, the moves are undone in reverse order and the new version is tagged
``deepgate.verdict=aborted`` with the step and the error. No alias is left moved by a release
that did not finish; the version stays, as the record of what was tried.

The undo log also lives on the new version's tags (``deepgate.release.*``), with the
releasing process: a release whose process was killed (SIGKILL, a lost machine) never reaches
its ``except``, so the next run's crash cleanup (:func:`recover_release`) finishes it, when the
champion change was already recorded, or undoes it from that log.

Every change of `champion` (a promotion, a forced promotion, a rollback) appends one entry to
the registered model's tags (``deepgate.champion.<n>``, JSON): who or what moved it, from and
to which version, when and why. ``deepgate status`` prints it; ``deepgate rollback`` walks it
back.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from components import names
from components.registry import Registry, VersionInfo

logger = logging.getLogger(__name__)

STEP_RECORDED = "champion recorded"  # the last step: after it, a release is complete in substance
TAG_HISTORY_PREFIX = "deepgate.champion."  # + a zero-padded sequence number


@dataclass(frozen=True)
class ChampionChange:
    """One move of the `champion` alias.

    Attributes:
        seq: Position in the history (1 = the first champion).
        kind: ``promoted`` (by the gates), ``forced`` (by a person, past the gates) or
            ``rollback``.
        version: The version that became champion.
        previous: The version it replaced (None for the first).
        at_ms: When, in milliseconds since the epoch.
        by: Who or what moved it (a flow run id, or a person's name).
        reason: Why, in words.
    """

    seq: int
    kind: str
    version: str
    previous: str | None
    at_ms: int
    by: str
    reason: str

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields."""
        return {
            "seq": self.seq,
            "kind": self.kind,
            "version": self.version,
            "previous": self.previous,
            "at_ms": self.at_ms,
            "by": self.by,
            "reason": self.reason,
        }


def champion_history(registry: Registry, pipeline: str) -> list[ChampionChange]:
    """Every change of the pipeline's `champion`, oldest first (empty if none or no model)."""
    from mlflow.exceptions import MlflowException

    try:
        tags = registry.client.get_registered_model(names.registered_model_name(pipeline)).tags or {}
    except MlflowException:
        return []
    changes = []
    for key, value in tags.items():
        if key.startswith(TAG_HISTORY_PREFIX):
            entry = json.loads(value)
            changes.append(ChampionChange(**entry))
    return sorted(changes, key=lambda change: change.seq)


class ReleaseError(RuntimeError):
    """A release step failed; the aliases were put back (see the message for what happened)."""


class Release:
    """The registry changes of one retraining, undone together if any step fails.

    Use as a context manager: ``with Release(registry, pipeline, by=flow_run_id) as release:``.
    Leaving the block by an exception rolls back and re-raises it (with a note on what was
    undone).

    Args:
        registry: The MLflow edge.
        pipeline: The pipeline whose registered model changes.
        by: Who or what makes the changes (recorded in the champion's history).
        version: An existing version to promote (by hand); None: :meth:`register` makes one.
    """

    def __init__(self, registry: Registry, pipeline: str, by: str, version: str | None = None) -> None:
        self.registry, self.pipeline, self.by = registry, pipeline, by
        self.name = names.registered_model_name(pipeline)
        self.version = version
        self.step = "start"
        self._undo: list[tuple[str, Callable[[], None]]] = []
        self._moves: list[tuple[str, str | None]] = []  # the undo log as data, kept on the version's tags

    def __enter__(self) -> Release:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        if error is not None:
            self.rollback(error)
        elif self._undo:
            self._persist(state="done")

    # -- steps ----------------------------------------------------------------------------

    def register(self, source: str, run_id: str, tags: dict[str, str]) -> str:
        """Create the version with its tags and point `challenger` at it; returns the version."""
        from mlflow.exceptions import MlflowException

        self.step = "register"
        try:
            self.registry.client.create_registered_model(self.name, tags={names.TAG_PIPELINE: self.pipeline})
        except MlflowException as error:
            if "RESOURCE_ALREADY_EXISTS" not in str(error.error_code):
                raise
        created = self.registry.client.create_model_version(self.name, source=source, run_id=run_id, tags=tags)
        self.version = str(created.version)
        self.move_alias(names.CHALLENGER, self.version)
        return self.version

    def tag(self, tags: dict[str, str]) -> None:
        """Tag the new version (its own record: not undone, the abort tag says the rest)."""
        assert self.version is not None, "register() first"
        self.step = f"tag {', '.join(tags)}"
        self.registry.set_version_tags(self.pipeline, self.version, tags)

    def move_alias(self, alias: str, version: str) -> None:
        """Point `alias` at `version`, remembering where it pointed to put it back."""
        self.step = f"move {alias} to v{version}"
        before = self.registry.alias_version(self.pipeline, alias)
        previous = None if before is None else before.version
        # Written ahead of the move: a process killed right after it still leaves the way back.
        self._moves.append((alias, previous))
        self._persist(state="open")
        self.registry.client.set_registered_model_alias(self.name, alias, version)
        self._undo.append(
            (f"{alias} back to {'v' + previous if previous else 'nothing'}", self._aliaser(alias, previous))
        )

    def promote(self, reason: str, kind: str = "promoted") -> str | None:
        """Make the new version champion and record the change; returns the previous champion."""
        assert self.version is not None, "register() first"
        before = self.registry.alias_version(self.pipeline, names.CHAMPION)
        previous = None if before is None else before.version
        self.tag(
            {
                names.TAG_PROMOTED_AT: str(int(time.time() * 1000)),
                **({names.TAG_PREVIOUS_CHAMPION: previous} if previous else {}),
            }
        )
        self.move_alias(names.CHAMPION, self.version)
        self.step = "record the champion change"
        record_champion_change(self.registry, self.pipeline, kind, self.version, previous, self.by, reason)
        self.step = STEP_RECORDED
        self._persist(state="open")
        return previous

    def _persist(self, state: str) -> None:
        """Write the undo log, the step and this process to the version's tags (what crash cleanup reads)."""
        if self.version is None:
            return
        self.registry.set_version_tags(self.pipeline, self.version, {names.TAG_RELEASE: json.dumps(self._log(state))})

    def _log(self, state: str) -> dict[str, Any]:
        from components.recovery import this_process

        return {"state": state, "step": self.step, "undo": self._moves, "process": this_process().to_tag()}

    # -- rollback -------------------------------------------------------------------------

    def _aliaser(self, alias: str, version: str | None) -> Callable[[], None]:
        client, name = self.registry.client, self.name

        def put_back() -> None:
            if version is None:
                client.delete_registered_model_alias(name, alias)
            else:
                client.set_registered_model_alias(name, alias, version)

        return put_back

    def rollback(self, error: BaseException) -> None:
        """Undo the alias moves in reverse order and tag the version with why it was aborted."""
        undone, failed = [], []
        for what, undo in reversed(self._undo):
            try:
                undo()
                undone.append(what)
            except Exception as undo_error:  # keep going: every alias gets its chance
                failed.append(f"{what}: {undo_error}")
        self._undo.clear()
        if self.version is not None:
            reason = f"aborted at '{self.step}': {type(error).__name__}: {error}"[:5000]
            try:
                self.registry.set_version_tags(
                    self.pipeline,
                    self.version,
                    {
                        names.TAG_VERDICT: names.VERDICT_ABORTED,
                        names.TAG_REASONS: reason,
                        **({names.TAG_RELEASE: json.dumps(self._log("rolled_back"))} if self._moves else {}),
                    },
                )
            except Exception as tag_error:
                failed.append(f"tag v{self.version} aborted: {tag_error}")
        summary = f"release of {self.name} rolled back at '{self.step}'"
        if undone:
            summary += f"; put back: {'; '.join(undone)}"
        if failed:
            summary += f"; COULD NOT undo: {'; '.join(failed)}"
            logger.error(summary)
        else:
            logger.warning(summary)
        error.add_note(summary)


def release_log(info: VersionInfo) -> dict[str, Any] | None:
    """The release record a version carries (state, step, undo log, process), or None."""
    text = info.tags.get(names.TAG_RELEASE)
    return None if not text else json.loads(text)


def recover_release(registry: Registry, pipeline: str, info: VersionInfo, why: str) -> str:
    """Finish or undo the release of `info` whose process died, from the undo log on its tags.

    Complete in substance (the champion change was recorded): only marked done. Otherwise each
    alias it moved goes back where it pointed before, newest move first, unless someone has
    moved that alias since (then it is left alone, and said so), and the version is tagged
    aborted with `why`.

    Returns:
        One line on what was done, for the run's notes.
    """
    log = release_log(info) or {"step": "?", "undo": []}
    if log["step"] == STEP_RECORDED:
        log["state"] = "done"
        registry.set_version_tags(pipeline, info.version, {names.TAG_RELEASE: json.dumps(log)})
        return f"v{info.version}: the release had recorded its champion change; marked done"
    name = names.registered_model_name(pipeline)
    done, left = [], []
    for alias, previous in reversed(log["undo"]):
        now = registry.alias_version(pipeline, alias)
        if now is None or now.version != info.version:
            left.append(f"{alias} (now {'v' + now.version if now else 'unset'}, moved since)")
            continue
        try:
            if previous is None:
                registry.client.delete_registered_model_alias(name, alias)
            else:
                registry.client.set_registered_model_alias(name, alias, previous)
            done.append(f"{alias} back to {'v' + previous if previous else 'nothing'}")
        except Exception as error:  # keep going: every alias gets its chance
            left.append(f"{alias}: {error}")
    line = f"v{info.version}: half-done release undone ({'; '.join(done) or 'no alias to put back'})"
    if left:
        line += f"; left alone: {'; '.join(left)}"
    log["state"] = "rolled_back"
    registry.set_version_tags(
        pipeline,
        info.version,
        {
            names.TAG_VERDICT: names.VERDICT_ABORTED,
            names.TAG_REASONS: f"aborted at '{log['step']}': {why}"[:5000],
            names.TAG_RELEASE: json.dumps(log),
        },
    )
    return line


def record_champion_change(
    registry: Registry, pipeline: str, kind: str, version: str, previous: str | None, by: str, reason: str
) -> ChampionChange:
    """Append one entry to the champion's history (a registered-model tag)."""
    seq = len(champion_history(registry, pipeline)) + 1
    change = ChampionChange(seq, kind, version, previous, int(time.time() * 1000), by, reason[:4000])
    registry.client.set_registered_model_tag(
        names.registered_model_name(pipeline), f"{TAG_HISTORY_PREFIX}{seq:06d}", json.dumps(change.to_dict())
    )
    return change


def rollback_champion(registry: Registry, pipeline: str, by: str, reason: str) -> ChampionChange:
    """Point `champion` back at the version it replaced last, and record it.

    "Last" follows the history, so two rollbacks in a row go two steps back (a rollback is
    itself a change, but rolling back over a rollback would only swap two versions forever).

    Raises:
        ValueError: No champion, or no earlier champion to go back to.
    """
    current = registry.alias_version(pipeline, names.CHAMPION)
    if current is None:
        raise ValueError(f"{pipeline} has no champion to roll back")
    target = _previous_champion(champion_history(registry, pipeline), current.version)
    if target is None:
        raise ValueError(f"{pipeline}: v{current.version} is the first champion; there is nothing to roll back to")
    registry.client.set_registered_model_alias(names.registered_model_name(pipeline), names.CHAMPION, target)
    return record_champion_change(registry, pipeline, "rollback", target, current.version, by, reason)


def _previous_champion(history: list[ChampionChange], current: str) -> str | None:
    """The champion before `current`, skipping the changes that rollbacks undid."""
    stack: list[str] = []
    for change in history:
        if change.kind == "rollback":
            while stack and stack[-1] != change.version:
                stack.pop()
            if not stack:
                stack.append(change.version)
        else:
            stack.append(change.version)
    if not stack or stack[-1] != current:
        # The alias was moved outside deepgate: fall back on the history's last other version.
        others = [c.version for c in history if c.version != current]
        return others[-1] if others else None
    return stack[-2] if len(stack) > 1 else None
