"""Crash cleanup: find the retraining runs whose process died, and close what they left open.

A process killed with SIGKILL (or lost with its machine) runs no ``finally``: its MLflow run
stays RUNNING, its Prefect flow run stays Running, and a release it was in the middle of keeps
its aliases moved. Each run therefore records the process running it (host, pid and the
process's start time, so that a recycled pid is not mistaken for it) as a tag, and the next
run of the pipeline sweeps: a run whose process is gone is marked KILLED (the flow marks its
flow run Crashed), and its half-done release is finished or undone from its undo log
(:func:`components.release.recover_release`).

A process on another host cannot be checked from here: its runs are left alone (and counted),
never guessed dead.
"""

from __future__ import annotations

import socket
import time
from dataclasses import dataclass, field
from typing import Literal

import psutil

from components import names
from components.registry import Registry
from components.release import recover_release, release_log

ProcessState = Literal["alive", "gone", "elsewhere"]


@dataclass(frozen=True)
class ProcessRef:
    """Which process runs something: host, pid, and the process's start time (seconds since the epoch)."""

    host: str
    pid: int
    started: float

    def to_tag(self) -> str:
        """`host:pid:started`, as stored in MLflow tags."""
        return f"{self.host}:{self.pid}:{self.started:.2f}"

    @classmethod
    def parse(cls, tag: str | None) -> ProcessRef | None:
        """Read :meth:`to_tag`'s form back; None for a missing or malformed tag."""
        if not tag:
            return None
        try:
            host, pid, started = tag.rsplit(":", 2)
            return cls(host, int(pid), float(started))
        except ValueError:
            return None

    def state(self) -> ProcessState:
        """`alive`, `gone` (no such process here, or the pid now belongs to another one), or `elsewhere`."""
        if self.host != socket.gethostname():
            return "elsewhere"
        try:
            process = psutil.Process(self.pid)
            # A pid is recycled: the same number with a later start time is another process.
            same = abs(process.create_time() - self.started) < 1.0
            return "alive" if same and process.status() != psutil.STATUS_ZOMBIE else "gone"
        except (psutil.NoSuchProcess, psutil.ZombieProcess):
            return "gone"
        except psutil.AccessDenied:  # another user's process: it exists, which is all we can tell
            return "alive"


def this_process() -> ProcessRef:
    """The running process."""
    return ProcessRef(socket.gethostname(), psutil.Process().pid, psutil.Process().create_time())


@dataclass
class CrashedRun:
    """A retraining run whose process was found dead, and what the sweep did about it.

    Attributes:
        run_id: The MLflow run, now KILLED.
        flow_run_id: Its Prefect flow run (for the flow to mark Crashed), when recorded.
        process: The dead process, as `host:pid:started`.
    """

    run_id: str
    flow_run_id: str | None
    process: str


@dataclass
class SweepReport:
    """What one sweep found and did.

    Attributes:
        crashed: Runs found dead and marked KILLED.
        releases: One line per half-done release finished or undone.
        elsewhere: Running runs on other hosts, left alone (their process cannot be checked here).
    """

    crashed: list[CrashedRun] = field(default_factory=list)
    releases: list[str] = field(default_factory=list)
    elsewhere: int = 0

    def notes(self) -> list[str]:
        """Plain lines for the run summary (empty when there was nothing to clean up)."""
        lines = [
            f"crash cleanup: run {c.run_id} (flow run {c.flow_run_id or '-'}) died with its process {c.process}; "
            "marked KILLED"
            for c in self.crashed
        ]
        lines += [f"crash cleanup: {line}" for line in self.releases]
        return lines


def sweep_crashed_runs(registry: Registry, pipeline: str, by: str) -> SweepReport:
    """Close the pipeline's runs and releases whose process died.

    Releases first: a run is marked KILLED only once its release is settled, so that a sweep
    that fails half-way is simply done again by the next run.

    Args:
        registry: The MLflow edge.
        pipeline: The pipeline whose runs to sweep.
        by: Who sweeps (a flow run id), recorded on what it closes.
    """
    report = SweepReport()
    when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    for info in registry.versions(pipeline):
        log = release_log(info)
        process = None if log is None or log.get("state") != "open" else ProcessRef.parse(log.get("process"))
        if process is None:
            continue
        if process.state() == "gone":
            why = f"its process {process.to_tag()} died; cleaned up by {by} at {when}"
            report.releases.append(recover_release(registry, pipeline, info, why))
    running = registry.find_runs(
        pipeline, f"attributes.status = 'RUNNING' and tags.`{names.TAG_PIPELINE}` = '{pipeline}'", max_results=1000
    )
    for run in running:
        process = ProcessRef.parse(run.tags.get(names.TAG_PROCESS))
        if process is None:
            continue  # not a run that records its process (older, or not a retraining)
        state = process.state()
        if state == "elsewhere":
            report.elsewhere += 1
        if state != "gone":
            continue
        registry.set_run_tags(
            run.run_id,
            {
                names.TAG_OUTCOME: names.OUTCOME_CRASHED,
                names.TAG_CRASH: f"process {process.to_tag()} gone; marked KILLED by {by} at {when}",
            },
        )
        registry.end_run(run.run_id, "KILLED")
        report.crashed.append(CrashedRun(run.run_id, run.tags.get(names.TAG_FLOW_RUN_ID), process.to_tag()))
    return report
