"""`deepgate serve`'s supervisor: follows @champion in the registry and runs the lean workers.

Processes::

    deepgate serve PIPELINE          the supervisor: binds the port, polls the registry (MLflow
     |                               client), materialises the champion's package, never answers
     +- python -m components.serving_worker   x --workers: answer requests on the inherited
                                     socket; numpy + ONNX Runtime + FastAPI, no torch/MLflow/pandas

The supervisor materialises each champion version once into a cache folder
(`<home>/.deepgate/serving/<pipeline>-<registry hash>/v<version>`: downloaded beside, then
renamed, so a folder that exists is complete) and points the workers at it by rewriting a
small state file (components/serving_state.py); each worker loads the new package beside the
old one and swaps atomically, so no request fails across a promotion or a rollback.

Start: with the embedded sqlite registry or a tracking server, the supervisor asks the
registry before any worker starts, without the MLflow client (components/champion_lookup.py,
milliseconds), so the workers start on the champion of now and are ready once they listen.

Restart: the cache also remembers the champion last served (`champion.json`). When the
registry does not answer at start (or can only be read through the MLflow client, which takes
seconds to import), a restarted service starts its workers on that package at once and checks
the registry as soon as they listen; if the champion moved meanwhile, the workers swap within
that first check. With an empty cache and no answer, the workers wait for the first check
that succeeds and /ready answers 503 until then.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import logging
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from components import names
from components.serving_state import read_state, write_state

log = logging.getLogger(__name__)

LAST_CHAMPION = "champion.json"
KEEP_VERSIONS = 2  # the package served and the one before it; older folders are removed
READY_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 10.0
_ROOT = Path(__file__).resolve().parent.parent  # so that `-m components.serving_worker` imports


def cache_root(home: Path, pipeline: str, registry_uri: str) -> Path:
    """Where a pipeline's served packages are cached: one folder per registry, never mixed."""
    digest = hashlib.sha256(registry_uri.encode("utf-8")).hexdigest()[:12]
    return home / ".deepgate" / "serving" / f"{pipeline}-{digest}"


@dataclass(frozen=True)
class WorkerOptions:
    """What each worker is started with (from `deepgate serve`'s options).

    Attributes:
        pipeline: Reported by /metadata and the metrics.
        max_body_bytes: Larger bodies get 413.
        unknown_category: `ignore` or `error`.
        log_predictions: Fraction of inputs logged (0: off).
        prediction_log: The sqlite file of logged predictions (needed when logging).
        backend: `auto`, `onnx` or `torch`.
    """

    pipeline: str
    max_body_bytes: int
    unknown_category: str = "ignore"
    log_predictions: float = 0.0
    prediction_log: Path | None = None
    backend: str = "auto"

    def argv(self, state: Path, fd: int, notify_fd: int) -> list[str]:
        """The worker's command line."""
        argv = [sys.executable, "-m", "components.serving_worker", "--state", str(state), "--fd", str(fd)]
        argv += ["--notify-fd", str(notify_fd), "--pipeline", self.pipeline, "--backend", self.backend]
        argv += ["--max-body-bytes", str(self.max_body_bytes), "--unknown-category", self.unknown_category]
        if self.log_predictions > 0 and self.prediction_log is not None:
            argv += ["--log-predictions", str(self.log_predictions), "--prediction-log", str(self.prediction_log)]
        return argv


class ChampionCache:
    """Champion packages materialised from the registry, and the champion last served.

    Args:
        root: The cache folder (see :func:`cache_root`); created when needed.
    """

    def __init__(self, root: Path) -> None:
        self.root = root

    def package(self, version: str, fetch: Callable[[Path], object]) -> Path:
        """The folder of `version`'s package; `fetch(folder)` fills a new one when it is not cached."""
        target = self.root / f"v{version}"
        if target.is_dir():
            return target
        self.root.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".v{version}-", dir=self.root))
        try:
            fetch(staging / "package")
            with contextlib.suppress(OSError):  # another server renamed the same version first
                (staging / "package").rename(target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        if not target.is_dir():
            raise RuntimeError(f"could not materialise version {version} in {target}")
        return target

    def prune(self, keep: Sequence[str]) -> None:
        """Remove cached versions other than `keep` (their workers loaded them into memory already)."""
        if not self.root.is_dir():
            return
        for folder in self.root.glob("v*"):
            if folder.is_dir() and folder.name[1:] not in keep:
                shutil.rmtree(folder, ignore_errors=True)

    def remember(self, state: dict[str, Any]) -> None:
        """Record the champion being served, for the next start."""
        write_state(self.root / LAST_CHAMPION, state["version"], Path(state["package"]), state.get("info") or {})

    def last(self) -> dict[str, Any] | None:
        """The champion served last, when its package is still cached; else None."""
        try:
            state = read_state(self.root / LAST_CHAMPION)
        except ValueError:  # a damaged file: start as if the cache were empty
            return None
        if state is None or not (Path(state["package"]) / "spec.json").is_file():
            return None
        return state


def _iso_utc(ms: int | None) -> str | None:
    return None if not ms else dt.datetime.fromtimestamp(ms / 1000, dt.UTC).isoformat(timespec="seconds")


def champion_state(registry: Any, pipeline: str, cache: ChampionCache) -> dict[str, Any] | None:
    """Resolve `pipeline@champion`, materialise its package, and describe it as a state file does.

    Args:
        registry: A :class:`components.registry.Registry`.
        pipeline: The pipeline name.
        cache: Where packages are materialised.

    Returns:
        {"version", "package", "info"}, or None when the pipeline has no champion.
    """
    info = registry.alias_version(pipeline, names.CHAMPION)
    if info is None:
        return None
    package = cache.package(info.version, lambda folder: registry.copy_package(pipeline, info.version, folder))
    return {
        "version": info.version,
        "package": str(package),
        "info": {
            "pipeline": pipeline,
            "alias": names.CHAMPION,
            "data_version": info.tags.get(names.TAG_DATA_VERSION),
            "git_commit": info.tags.get(names.TAG_GIT_COMMIT),
            "registered_at_ms": info.created_ms,
            # The version is registered when its training run ends.
            "trained_at": _iso_utc(info.created_ms),
        },
    }


class Supervisor:
    """Runs the workers on one listening socket and points them at the champion's package.

    Args:
        sock: The bound, listening socket the workers share (inherited by file descriptor).
        options: How to start each worker.
        workers: How many worker processes.
        cache: The champion cache.
        resolve: Returns the champion's state (see :func:`champion_state`), or None.
        state_dir: A private folder for the state file (default: a new temporary one).
    """

    def __init__(
        self,
        sock: Any,
        options: WorkerOptions,
        workers: int,
        cache: ChampionCache,
        resolve: Callable[[], dict[str, Any] | None],
        state_dir: Path | None = None,
    ) -> None:
        if workers < 1:
            raise ValueError(f"workers must be at least 1, got {workers}")
        self.sock = sock
        self.options = options
        self.workers = workers
        self.cache = cache
        self.resolve = resolve
        self.state_dir = state_dir or Path(tempfile.mkdtemp(prefix=f"deepgate-serve-{options.pipeline}-"))
        self.state_path = self.state_dir / "state.json"
        self.processes: list[subprocess.Popen[bytes]] = []
        self.served: str | None = None
        self.stopping = threading.Event()

    # ------------------------------------------------------------------ workers
    def start_workers(self) -> list[int]:
        """Start the workers; returns the read ends of their "listening" pipes."""
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(_ROOT), os.environ.get("PYTHONPATH")]))}
        fd = self.sock.fileno()
        pipes = []
        for _ in range(self.workers):
            read, write = os.pipe()
            argv = self.options.argv(self.state_path, fd, write)
            self.processes.append(subprocess.Popen(argv, pass_fds=(fd, write), env=env, stdin=subprocess.DEVNULL))
            os.close(write)
            pipes.append(read)
        return pipes

    def wait_listening(self, pipes: list[int], timeout: float = READY_TIMEOUT_S) -> bool:
        """Wait until every worker listens (or one exits, or `timeout`); closes the pipes."""
        deadline = time.monotonic() + timeout
        pending = list(pipes)
        try:
            while pending and time.monotonic() < deadline and not self.stopping.is_set():
                ready, _, _ = select.select(pending, [], [], min(0.5, max(0.0, deadline - time.monotonic())))
                for fd in ready:
                    os.read(fd, 64)  # a line, or b"" if the worker died: either way it is done starting
                    pending.remove(fd)
        finally:
            for fd in pipes:
                with contextlib.suppress(OSError):
                    os.close(fd)
        return not pending

    def exited(self) -> subprocess.Popen[bytes] | None:
        """A worker that has exited, if any."""
        return next((p for p in self.processes if p.poll() is not None), None)

    def stop_workers(self) -> None:
        """SIGTERM every worker (uvicorn drains and flushes the prediction log), SIGKILL stragglers."""
        for process in self.processes:
            if process.poll() is None:
                process.terminate()
        deadline = time.monotonic() + STOP_TIMEOUT_S
        for process in self.processes:
            try:
                process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    # ------------------------------------------------------------------ champion
    def point_at(self, state: dict[str, Any]) -> None:
        """Hand the workers a package: rewrite the state file, remember it, prune old versions."""
        last = self.cache.last() if self.served is None else None  # at start: the one served last time
        previous = self.served or (str(last["version"]) if last is not None else None)
        write_state(self.state_path, state["version"], Path(state["package"]), state.get("info") or {})
        self.served = str(state["version"])
        self.cache.remember(state)
        self.cache.prune([v for v in (self.served, previous) if v is not None])

    def check(self) -> bool:
        """One registry poll: point the workers at a new champion if there is one.

        Returns:
            Whether the champion changed.
        """
        state = self.resolve()
        if state is None:
            if self.served is not None:
                log.warning("%s has no champion now; keeping version %s", self.options.pipeline, self.served)
            return False
        if str(state["version"]) == self.served:
            return False
        self.point_at(state)
        log.warning("%s: serving champion version %s", self.options.pipeline, state["version"])
        return True

    def _check_logged(self) -> None:
        try:
            self.check()
        except Exception:  # the registry is down or the download failed: keep serving what we have
            log.exception("checking the registry for a new champion failed; keeping the current one")

    # ------------------------------------------------------------------ main loop
    def run(
        self,
        poll_seconds: float,
        before_first_check: Callable[[], object] | None = None,
        check_first: bool = False,
    ) -> int:
        """Serve until SIGTERM/SIGINT or a worker dies; returns the exit code (0, or 1 on a dead worker).

        Args:
            poll_seconds: Seconds between registry checks; 0 or less checks only at start.
            before_first_check: Called once the workers run and before the first check (the
                CLI imports the MLflow client there, off the workers' start-up path).
            check_first: Ask the registry before any worker starts (a lookup of milliseconds,
                components/champion_lookup.py): the workers then start on today's champion,
                ready as soon as they listen, and a restart never serves a demoted one. When
                the registry does not answer, the cached champion of last time is served.
        """
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda *_: self.stopping.set())
        if check_first:
            self._check_logged()
        last = self.cache.last() if self.served is None else None
        if last is not None:  # serve the champion of last time at once; the first check follows
            write_state(self.state_path, last["version"], Path(last["package"]), last.get("info") or {})
            self.served = str(last["version"])
        has_model = self.served is not None
        pipes = self.start_workers()
        try:
            if has_model:
                # Let the workers start before the registry client loads: on a busy core the
                # two would slow each other, and the workers are what makes the service ready.
                self.wait_listening(pipes)
            else:
                threading.Thread(target=self.wait_listening, args=(pipes,), daemon=True).start()
            if before_first_check is not None:
                before_first_check()
            # Checked already, unless the workers serve last time's champion (the registry did
            # not answer, or was not asked): that one wants its check at once.
            next_check = time.monotonic()
            if check_first and last is None:
                next_check = next_check + poll_seconds if poll_seconds > 0 else float("inf")
            while not self.stopping.is_set():
                dead = self.exited()
                if dead is not None:
                    log.error("a serving worker exited with code %s; stopping", dead.returncode)
                    return 1
                if time.monotonic() >= next_check:
                    self._check_logged()
                    next_check = time.monotonic() + poll_seconds if poll_seconds > 0 else float("inf")
                self.stopping.wait(0.2)
            return 0
        finally:
            self.stop_workers()
            shutil.rmtree(self.state_dir, ignore_errors=True)
