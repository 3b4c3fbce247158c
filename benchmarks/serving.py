"""`deepgate serve` against `mlflow models serve`: the same champion, the same load generator, one run.

Run (from the project root; needs `wrk`, from Debian: `apt-get install -y wrk`, as root)::

    python benchmarks/serving.py                      # temp workspace, arrests champion trained 1 epoch
    python benchmarks/serving.py --home DIR           # reuse (or create) a workspace with a champion
    python benchmarks/serving.py --duration 5 --connections 1 8 32 --json serving.json

1. Workspace: a temporary folder (or `--home DIR`) with a copy of params.yaml. Unless it already
   has an arrests champion, `deepgate run arrests --set train.max_epochs=1` trains and
   registers one (a subprocess; about a minute).
2. Servers, each pinned to core 1 (`taskset -c 1`, when there are two cores or more; the
   benchmark's own process, which polls them, stays on core 0), on
   `models:/deepgate-arrests@champion`. `deepgate serve arrests` is started `--starts` times
   with its package cache emptied (a cold start: the supervisor reads the registry, without the
   MLflow client, copies the champion's package and starts its worker on it) and `--starts`
   times with the champion cached (a restart); the last restart is the one loaded. Then
   `mlflow models serve --env-manager local --workers 1` (no network here, so no virtualenv).
   Start-up is the time from process start until /ready (deepgate) or /health (mlflow, which
   answers 200 once the model is loaded) answers 200, after which the benchmark waits until the
   server's process tree uses no CPU (deepgate's worker builds its FastAPI app in the background
   once it is ready). Both are asked the same rows first and must give the same probabilities
   (the same champion, or the run stops).
3. Load: `wrk` pinned to core 0, one thread, a Lua script that POSTs a JSON body and prints
   wrk's own latency percentiles: after a 1 s warm-up of each server, single-row requests at 1,
   8 and 32 connections, then a 1,000-row batch at 1 connection; `--duration` seconds each,
   `--rounds` times, the two servers alternating (deepgate, mlflow, deepgate, mlflow), so that
   the load other users put on the machine touches both alike; each round starts once both
   servers are idle (mlflow still draining its queue must not weigh on deepgate's round). A
   case's figures: all its requests over all its seconds, the median p50/p99 of its rounds (the
   p99 of every round is printed with the targets), the largest max. deepgate takes
   `{"rows": [...]}` at /predict, mlflow `{"dataframe_records": [...]}` at /invocations. wrk
   measures closed-loop latency (each connection waits for its answer), so req/s and latency
   are those of a saturated server at 8 and 32 connections: the median latency at 32
   connections is about 32 / req/s.
4. Memory: VmRSS of every process of the server's tree after start-up and at the end. "Per
   worker" is the largest process below the one started: deepgate's worker (the process that
   answers: numpy, ONNX Runtime, FastAPI; no torch, MLflow or pandas), mlflow's uvicorn child.
   "Parent" is the process started: deepgate's supervisor (it reads the registry; it answers
   no request), mlflow's CLI.
5. Multi-worker check (`--multi-worker N`, default 2; 0 skips it): `deepgate serve --workers N`
   and `mlflow models serve --workers N` at 1 and 32 connections (still on one core: this checks
   the per-response stall, not scaling). With more than one uvicorn worker, responses once
   gained about 40 ms each (TCP_NODELAY left off: Nagle against delayed ACKs; uvicorn's shared
   socket is made with proto 0, and asyncio turns TCP_NODELAY on only for IPPROTO_TCP sockets);
   a 1-connection p50 near 40 ms is that stall, and the table flags it.

It prints one table per measurement and the targets of issue #6: single-row throughput at least
4x mlflow's at 1 and at 32 connections, p99 under 10 ms at 32 connections, ready within 1 s
(after a cold start and after a restart: the median of the starts, each start printed), under
150 MB resident per worker. The load average is printed before and after: with 2 cores shared
with other work the figures move with it. The figures of each run so far, and what they
showed, are in benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
PIPELINE = "arrests"
MODEL_URI = f"models:/deepgate-{PIPELINE}@champion"
NAGLE_MS = 35.0  # a 1-connection median above this smells of the 40 ms delayed-ACK stall

LUA = r"""
local f = assert(io.open(os.getenv("BODY_FILE"), "rb"))
wrk.method = "POST"
wrk.body = f:read("*a")
f:close()
wrk.headers["Content-Type"] = "application/json"
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'RESULT {"requests": %d, "duration_us": %d, "socket_errors": %d, "non_2xx": %d, ' ..
    '"p50_us": %d, "p90_us": %d, "p99_us": %d, "max_us": %d, "mean_us": %.1f}\n',
    summary.requests, summary.duration, e.connect + e.read + e.write + e.timeout, e.status,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max, latency.mean))
end
"""


@dataclass
class Point:
    """One wrk run against one server."""

    server: str
    case: str
    connections: int
    requests: int
    seconds: float
    rps: float
    p50_ms: float
    p99_ms: float
    max_ms: float
    errors: int
    p99_rounds: list[float] = field(default_factory=list)  # of each round, when rounds were combined


@dataclass
class ServerRun:
    """Everything measured for one server.

    `worker_rss_mb` is the largest process under the one started (the process that holds the
    model and answers: deepgate's worker, mlflow's uvicorn child), or that process itself when
    it has no children; `parent_rss_mb` is the process started (deepgate's supervisor, mlflow's
    CLI). `restart_s`: deepgate only, start-up with the champion already in its cache.
    `startup_s` and `restart_s` are medians when the server was started several times
    (`startups`, `restarts`: every one).
    """

    name: str
    command: list[str]
    startup_s: float
    rss_start_mb: float
    rss_end_mb: float
    worker_rss_mb: float
    points: list[Point] = field(default_factory=list)
    parent_rss_mb: float = 0.0
    restart_s: float | None = None
    startups: list[float] = field(default_factory=list)
    restarts: list[float] = field(default_factory=list)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], epilog="wrk comes from Debian: apt-get install -y wrk (as root)."
    )
    parser.add_argument("--home", type=Path, help="workspace to use (and keep); trains a champion if it has none")
    parser.add_argument("--duration", type=int, default=5, help="seconds per measurement")
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds per case and server")
    parser.add_argument(
        "--starts",
        type=lambda v: max(1, int(v)),
        default=3,
        help="cold starts and restarts of deepgate serve (the median is judged)",
    )
    parser.add_argument("--connections", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--batch-rows", type=int, default=1000)
    parser.add_argument(
        "--multi-worker", type=int, default=2, help="mlflow workers for the TCP_NODELAY check (0: skip)"
    )
    parser.add_argument("--json", type=lambda p: Path(p).resolve(), help="also write the figures to this JSON file")
    return parser.parse_args(argv)


# ------------------------------------------------------------------------------ workspace


def workspace_env(home: Path) -> dict[str, str]:
    """The environment of every child: this workspace's stores, this checkout's code."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "DEEPGATE_", "PREFECT_API"))}
    env.update(
        DEEPGATE_HOME=str(home),
        PREFECT_HOME=str(home / ".prefect"),
        PREFECT_LOGGING_LEVEL="WARNING",
        MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR="false",
        MLFLOW_TRACKING_URI=f"sqlite:///{home / 'mlflow' / 'mlflow.db'}",
        PYTHONPATH=os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep),
        # mlflow models serve runs `uvicorn` by name: the interpreter's own scripts first.
        PATH=os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")]),
    )
    return env


def ensure_champion(home: Path, env: dict[str, str]) -> str:
    """The champion's version, after training one (1 epoch) if the workspace has none."""
    home.mkdir(parents=True, exist_ok=True)
    if not (home / "params.yaml").exists():
        shutil.copy(ROOT / "params.yaml", home / "params.yaml")
    version = champion_version(home)
    if version is None:
        print(f"training an {PIPELINE} champion in {home} (1 epoch) ...", flush=True)
        command = [sys.executable, "-m", "flows.cli", "run", PIPELINE, "--set", "train.max_epochs=1"]
        done = subprocess.run(command, cwd=home, env=env, capture_output=True, text=True, check=False)
        version = champion_version(home)
        if version is None:
            raise SystemExit(f"no champion after `deepgate run` (exit {done.returncode}):\n{done.stdout[-3000:]}")
    return version


def _registry(home: Path) -> Any:
    from components.registry import Registry
    from components.settings import load_settings

    return Registry(load_settings(home, env={"DEEPGATE_HOME": str(home)}))


def champion_version(home: Path) -> str | None:
    """The arrests champion's version in this workspace, or None."""
    info = _registry(home).alias_version(PIPELINE, "champion")
    return None if info is None else info.version


def model_columns(home: Path, version: str) -> list[str]:
    """The columns the champion takes (both servers get exactly these; no extra ones)."""
    from components.predictor import Predictor

    with _registry(home).package(PIPELINE, version) as package:
        return [column["name"] for column in Predictor.load(package).input_schema()]


def sample_rows(n: int, columns: list[str]) -> list[dict[str, Any]]:
    """Real arrests rows (the model's columns, as JSON-able values), cycled to n."""
    from sklego.datasets import load_arrests

    frame = load_arrests(as_frame=True)[columns]
    records = json.loads(frame.to_json(orient="records"))
    return [records[i % len(records)] for i in range(n)]


# ------------------------------------------------------------------------------ servers


def free_port() -> int:
    """A TCP port nobody listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def pinned(command: list[str], core: int | None) -> list[str]:
    """The command pinned to one core with taskset, when there is a core to spare."""
    return command if core is None or shutil.which("taskset") is None else ["taskset", "-c", str(core), *command]


def _rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024 / 1e6
    except OSError:
        pass
    return None


def _descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    found, stack = [], list(children.get(pid, []))
    while stack:
        current = stack.pop()
        found.append(current)
        stack.extend(children.get(current, []))
    return found


def tree_rss_mb(pid: int) -> tuple[float, float]:
    """(sum, largest) VmRSS in MB of a process and all its descendants."""
    sizes = [size for p in [pid, *_descendants(pid)] if (size := _rss_mb(p)) is not None]
    return sum(sizes), max(sizes, default=0.0)


def worker_and_parent_rss_mb(pid: int) -> tuple[float, float]:
    """(largest descendant, the process itself) VmRSS in MB; the process itself when it has no children."""
    parent = _rss_mb(pid) or 0.0
    sizes = [size for p in _descendants(pid) if (size := _rss_mb(p)) is not None]
    return max(sizes, default=parent), parent


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process and its descendants so far."""
    total = 0
    for p in [pid, *_descendants(pid)]:
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
        except (OSError, IndexError, ValueError):
            continue
    return total / os.sysconf("SC_CLK_TCK")


def wait_idle(pid: int, quiet: float = 0.5, timeout: float = 30.0) -> None:
    """Wait until a process tree stops using CPU for `quiet` seconds (deepgate's first registry
    check after a restart runs after /ready; it must not overlap the measurements)."""
    deadline = time.monotonic() + timeout
    last = cpu_seconds(pid)
    while time.monotonic() < deadline:
        time.sleep(quiet)
        now = cpu_seconds(pid)
        if now - last < 0.05 * quiet:
            return
        last = now


def post(url: str, body: Any, timeout: float = 30.0) -> Any:
    """POST JSON, return the parsed answer."""
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}, method="POST"
    )
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.loads(response.read())


class Server:
    """A server process started for the benchmark; always stopped by `stop`."""

    def __init__(self, name: str, command: list[str], env: dict[str, str], cwd: Path, ready_url: str) -> None:
        self.name, self.command, self.ready_url = name, command, ready_url
        self.log = tempfile.TemporaryFile()  # noqa: SIM115  (closed by stop())
        self.started = time.perf_counter()
        # A new session: stop() signals the whole group (mlflow's CLI and its uvicorn child).
        self.process = subprocess.Popen(
            command, env=env, cwd=cwd, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True
        )

    def wait_ready(self, timeout: float = 120.0) -> float:
        """Seconds from process start until the ready URL answers 200."""
        deadline = self.started + timeout
        while time.perf_counter() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.process.returncode}:\n{self.output()}")
            try:
                with urllib.request.urlopen(self.ready_url, timeout=1) as response:
                    if response.status == 200:
                        return time.perf_counter() - self.started
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.01)
        raise RuntimeError(f"{self.name} not ready after {timeout:.0f}s:\n{self.output()}")

    def output(self) -> str:
        """The last lines the server printed."""
        self.log.seek(0)
        return self.log.read().decode(errors="replace")[-3000:]

    def stop(self) -> None:
        """SIGTERM to the group, SIGKILL if it lingers."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        self.log.close()


def wrk(url: str, body_file: Path, connections: int, seconds: int, core: int | None, lua: Path) -> dict[str, Any]:
    """One wrk run; its RESULT line as a dict."""
    command = pinned(["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--timeout", "10s", "-s", str(lua), url], core)
    done = subprocess.run(
        command, env={**os.environ, "BODY_FILE": str(body_file)}, capture_output=True, text=True, check=False
    )
    line = next((x for x in done.stdout.splitlines() if x.startswith("RESULT ")), None)
    if done.returncode != 0 or line is None:
        raise RuntimeError(f"wrk failed ({done.returncode}): {done.stdout[-2000:]} {done.stderr[-2000:]}")
    return json.loads(line.removeprefix("RESULT "))


@dataclass
class Spec:
    """How to start one server and talk to it."""

    name: str
    command: list[str]  # "{port}" is replaced by a free port
    ready_path: str
    predict_path: str
    wrap: str  # the body's key: "rows" (deepgate) or "dataframe_records" (mlflow)


class Running:
    """A started server, ready and idle: its process, its figures so far, its URL."""

    def __init__(self, spec: Spec, env: dict[str, str], home: Path) -> None:
        self.spec = spec
        port = free_port()
        self.command = [part.replace("{port}", str(port)) for part in spec.command]
        self.url = f"http://127.0.0.1:{port}{spec.predict_path}"
        ready_url = f"http://127.0.0.1:{port}{spec.ready_path}"
        cores = os.cpu_count() or 1
        self.server = Server(spec.name, pinned(self.command, 1 if cores >= 2 else None), env, home, ready_url)
        try:
            startup = self.server.wait_ready()
            wait_idle(self.server.process.pid)
        except BaseException:
            self.server.stop()
            raise
        rss_start, _ = tree_rss_mb(self.server.process.pid)
        self.run = ServerRun(spec.name, self.command, startup, rss_start, 0.0, 0.0)

    def answer(self, rows: list[dict[str, Any]]) -> list[list[float]]:
        """The probabilities for `rows`, in class order."""
        answer = post(self.url, {self.spec.wrap: rows})
        probabilities = answer["probabilities"] if "probabilities" in answer else answer["predictions"]
        if isinstance(probabilities[0], dict):  # mlflow: one {class: probability} object per row
            probabilities = [[row[k] for k in sorted(row)] for row in probabilities]
        return probabilities  # type: ignore[no-any-return]

    def finish(self) -> ServerRun:
        """Record the memory at the end and stop the server."""
        try:
            self.run.rss_end_mb, _ = tree_rss_mb(self.server.process.pid)
            self.run.worker_rss_mb, self.run.parent_rss_mb = worker_and_parent_rss_mb(self.server.process.pid)
        finally:
            self.server.stop()
        return self.run


def load_round(target: Running, case: str, connections: int, body: Path, seconds: int, lua: Path) -> Point:
    """One wrk run against one server."""
    wrk_core = 0 if (os.cpu_count() or 1) >= 2 else None
    result = wrk(target.url, body, connections, seconds, wrk_core, lua)
    took = result["duration_us"] / 1e6
    point = Point(
        target.spec.name,
        case,
        connections,
        result["requests"],
        took,
        result["requests"] / took,
        result["p50_us"] / 1000,
        result["p99_us"] / 1000,
        result["max_us"] / 1000,
        result["socket_errors"] + result["non_2xx"],
    )
    print(
        f"  {target.spec.name:<22} {case:<8} c={connections:<3} {point.rps:9.0f} req/s  p50 {point.p50_ms:7.2f} ms  "
        f"p99 {point.p99_ms:7.2f} ms  errors {point.errors}",
        flush=True,
    )
    return point


def combine(points: list[Point]) -> Point:
    """Rounds of one case on one server as one point: total requests over total time, median latencies."""
    first = points[0]
    requests = sum(p.requests for p in points)
    seconds = sum(p.seconds for p in points)
    return Point(
        first.server,
        first.case,
        first.connections,
        requests,
        seconds,
        requests / seconds,
        float(np.median([p.p50_ms for p in points])),
        float(np.median([p.p99_ms for p in points])),
        max(p.max_ms for p in points),
        sum(p.errors for p in points),
        [p.p99_ms for p in points],
    )


def compare(
    targets: list[Running],
    cases: list[tuple[str, int, list[dict[str, Any]]]],
    args: argparse.Namespace,
    scratch: Path,
) -> None:
    """Load the servers in turn, case by case and round by round (A B A B ...), so that a change
    in the machine's load between slots touches each server alike; fills each run's points."""
    lua = scratch / "post.lua"
    lua.write_text(LUA)
    wrk_core = 0 if (os.cpu_count() or 1) >= 2 else None
    for target in targets:  # warm-up: first-call allocations, lazy imports
        warm = scratch / f"warm-{target.spec.wrap}.json"
        warm.write_text(json.dumps({target.spec.wrap: cases[0][2][:1]}))
        wrk(target.url, warm, 8, 1, wrk_core, lua)
    for case, connections, rows in cases:
        rounds: dict[str, list[Point]] = {t.spec.name: [] for t in targets}
        for _ in range(args.rounds):
            for target in targets:
                for other in targets:  # both idle: a server still draining its queue takes the core
                    wait_idle(other.server.process.pid, quiet=0.3)
                body = scratch / f"{case}-{target.spec.wrap}.json"
                body.write_text(json.dumps({target.spec.wrap: rows}))
                rounds[target.spec.name].append(load_round(target, case, connections, body, args.duration, lua))
        for target in targets:
            target.run.points.append(combine(rounds[target.spec.name]))


# ------------------------------------------------------------------------------ report


def ratios(runs: dict[str, ServerRun]) -> dict[str, float]:
    """deepgate's single-row throughput over mlflow's, and mlflow's batch latency over deepgate's."""
    ours, theirs = runs["deepgate serve"], runs["mlflow models serve"]
    out = {}
    for p in ours.points:
        match = next((q for q in theirs.points if (q.case, q.connections) == (p.case, p.connections)), None)
        if match is not None and match.rps > 0:
            out[f"{p.case} c={p.connections} req/s"] = p.rps / match.rps
    return out


def targets(runs: dict[str, ServerRun], by: dict[str, float], top: int) -> list[tuple[str, str, bool]]:
    """The issue's targets: (target, measured, met)."""
    ours = runs["deepgate serve"]
    point = next((p for p in ours.points if p.case == "single" and p.connections == top), None)
    p99 = point.p99_ms if point is not None else float("nan")
    rounds = point.p99_rounds if point is not None else []
    result = []
    for c in (1, top):
        key = f"single c={c} req/s"
        if key in by:
            result.append((f">= 4x mlflow single-row req/s at {c} connection(s)", f"{by[key]:.2f}x", by[key] >= 4))
    result.append((f"p99 < 10 ms at {top} connections", f"{p99:.1f} ms{_each(rounds, 'ms', 1)}", p99 < 10))
    result.append(("ready within 1 s of start", f"{ours.startup_s:.2f} s{_each(ours.startups)}", ours.startup_s <= 1))
    if ours.restart_s is not None:
        met = ours.restart_s <= 1
        measured = f"{ours.restart_s:.2f} s{_each(ours.restarts)}"
        result.append(("ready within 1 s of a restart (champion cached)", measured, met))
    result.append(("< 150 MB resident per worker", f"{ours.worker_rss_mb:.0f} MB", ours.worker_rss_mb < 150))
    return result


def _each(values: list[float], unit: str = "s", digits: int = 2) -> str:
    """ " (median of a / b / c s)" when there were several values, else nothing."""
    if len(values) < 2:
        return ""
    return f" (median of {' / '.join(f'{v:.{digits}f}' for v in values)} {unit})"


def print_report(
    runs: dict[str, ServerRun], extra: list[ServerRun], by: dict[str, float], meta: dict[str, Any]
) -> None:
    """Tables: the points, the servers, the ratios and the targets."""
    from rich.console import Console
    from rich.table import Column, Table

    console = Console(width=None if sys.stdout.isatty() else 140)
    table = Table(
        "server",
        "case",
        *(Column(c, justify="right") for c in ("conns", "req/s", "rows/s", "p50 ms", "p99 ms", "max ms", "errors")),
        title=f"single-row and {meta['batch_rows']:,}-row requests, {meta['duration']} s each (wrk pinned to core 0)",
    )
    for run in [*runs.values(), *extra]:
        for p in run.points:
            rows = meta["batch_rows"] if p.case == "batch" else 1
            flag = " (Nagle?)" if p.connections == 1 and p.case == "single" and p.p50_ms > NAGLE_MS else ""
            table.add_row(
                run.name,
                p.case,
                str(p.connections),
                f"{p.rps:,.0f}",
                f"{p.rps * rows:,.0f}",
                f"{p.p50_ms:.2f}{flag}",
                f"{p.p99_ms:.2f}",
                f"{p.max_ms:.1f}",
                str(p.errors),
            )
    console.print(table)
    servers = Table(
        "server",
        *(
            Column(c, justify="right")
            for c in (
                "start-up s",
                "restart s",
                "RSS after start MB",
                "RSS at end MB",
                "per worker MB",
                "parent MB",
            )
        ),
        title="start-up (process start to ready) and resident memory (process tree; per worker: the largest "
        "child, parent: deepgate's supervisor or mlflow's CLI)",
    )
    for run in [*runs.values(), *extra]:
        servers.add_row(
            run.name,
            f"{run.startup_s:.2f}",
            "-" if run.restart_s is None else f"{run.restart_s:.2f}",
            f"{run.rss_start_mb:.0f}",
            f"{run.rss_end_mb:.0f}",
            f"{run.worker_rss_mb:.0f}",
            f"{run.parent_rss_mb:.0f}",
        )
    console.print(servers)
    ours, theirs = runs["deepgate serve"], runs["mlflow models serve"]
    summary = Table("figure", Column("deepgate / mlflow", justify="right"), title="ratios")
    for key, value in by.items():
        summary.add_row(key, f"{value:.2f}x")
    summary.add_row("start-up s", f"{ours.startup_s / theirs.startup_s:.2f}x")
    summary.add_row("RSS per worker", f"{ours.worker_rss_mb / theirs.worker_rss_mb:.2f}x")
    console.print(summary)
    goals = Table("target (issue #6)", "measured", "met", title="deepgate serve against the targets")
    for target, measured, met in meta["targets"]:
        goals.add_row(target, measured, "[green]yes[/]" if met else "[red]no[/]")
    console.print(goals)
    console.print(
        f"machine: {meta['cpu_count']} cores, load average {meta['load_before']} before and "
        f"{meta['load_after']} after, {meta['platform']}, Python {meta['python']}; champion v{meta['version']}",
        highlight=False,
    )


def main(argv: list[str] | None = None) -> int:
    """Prepare the champion, measure both servers one after the other, print the comparison."""
    args = parse_args(argv)
    if shutil.which("wrk") is None:
        print("wrk is not installed: apt-get install -y wrk (Debian; needs root)", file=sys.stderr)
        return 2
    sys.path.insert(0, str(ROOT))
    os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"  # the champion's columns are read here too
    home = (args.home or Path(tempfile.mkdtemp(prefix="deepgate-bench-serve-"))).resolve()
    env = workspace_env(home)
    load_before = [round(x, 2) for x in os.getloadavg()]
    try:
        version = ensure_champion(home, env)
        if (os.cpu_count() or 1) >= 2 and hasattr(os, "sched_setaffinity"):
            # This process polls /ready every 10 ms during start-ups and reads /proc between
            # rounds: on core 0 (wrk's, idle then), never on the servers' core. Children that
            # matter are pinned by taskset explicitly.
            os.sched_setaffinity(0, {0})
        columns = model_columns(home, version)
        single, batch = sample_rows(1, columns), sample_rows(args.batch_rows, columns)
        cases = [("single", c, single) for c in args.connections] + [("batch", 1, batch)]
        top = max(args.connections)
        python = sys.executable
        deepgate_cmd = [python, "-m", "flows.cli", "serve", PIPELINE, "--port", "{port}", "--poll", "3600"]
        mlflow_cmd = [python, "-m", "mlflow", "models", "serve", "-m", MODEL_URI, "--env-manager", "local"]
        mlflow_cmd += ["--host", "127.0.0.1", "--port", "{port}"]
        ours = Spec("deepgate serve", deepgate_cmd, "/ready", "/predict", "rows")
        theirs = Spec(
            "mlflow models serve", [*mlflow_cmd, "--workers", "1"], "/health", "/invocations", "dataframe_records"
        )
        runs: dict[str, ServerRun] = {}
        extra: list[ServerRun] = []
        with tempfile.TemporaryDirectory() as scratch:
            # deepgate: a cold start (empty package cache), stopped; then a restart (champion
            # cached), which is the one loaded. Start-ups never overlap another server's.
            print(f"{ours.name}: {' '.join(deepgate_cmd[1:]).replace('{port}', 'PORT')}", flush=True)
            colds, restarts = [], []
            for _ in range(args.starts):
                shutil.rmtree(home / ".deepgate" / "serving", ignore_errors=True)
                cold = Running(ours, env, home)
                cold.server.stop()
                colds.append(cold.run.startup_s)
            for attempt in range(args.starts):
                restart = Running(ours, env, home)
                restarts.append(restart.run.startup_s)
                if attempt < args.starts - 1:
                    restart.server.stop()
            started = [restart]
            first = started[0].run
            first.startups, first.restarts = colds, restarts
            first.startup_s, first.restart_s = float(np.median(colds)), float(np.median(restarts))
            print(
                f"  ready {first.startup_s:.2f} s after a cold start{_each(colds)}, "
                f"{first.restart_s:.2f} s after a restart{_each(restarts)}"
            )
            try:
                print(f"{theirs.name}: {' '.join(theirs.command[1:]).replace('{port}', 'PORT')}", flush=True)
                started.append(Running(theirs, env, home))
                reference = started[0].answer(batch[:5])
                if not np.allclose(started[1].answer(batch[:5]), reference, rtol=0, atol=1e-5):
                    raise RuntimeError("the two servers answer differently: not the same champion?")
                compare(started, cases, args, Path(scratch))
            finally:
                for target in started:
                    runs[target.spec.name] = target.finish()
            if args.multi_worker > 1:
                workers = str(args.multi_worker)
                pair = [
                    Spec(
                        f"deepgate, {workers} workers",
                        [*deepgate_cmd, "--workers", workers],
                        "/ready",
                        "/predict",
                        "rows",
                    ),
                    Spec(
                        f"mlflow, {workers} workers",
                        [*mlflow_cmd, "--workers", workers],
                        "/health",
                        "/invocations",
                        "dataframe_records",
                    ),
                ]
                started = []
                try:
                    for spec in pair:
                        print(f"{spec.name}: {' '.join(spec.command[1:]).replace('{port}', 'PORT')}", flush=True)
                        started.append(Running(spec, env, home))
                    compare(started, [("single", c, single) for c in sorted({1, top})], args, Path(scratch))
                finally:
                    extra += [target.finish() for target in started]
        by = ratios(runs)
        meta = {
            "version": version,
            "duration": args.duration,
            "batch_rows": args.batch_rows,
            "cpu_count": os.cpu_count(),
            "load_before": load_before,
            "load_after": [round(x, 2) for x in os.getloadavg()],
            "platform": f"{platform.system()} {platform.machine()}",
            "python": platform.python_version(),
        }
        meta["targets"] = targets(runs, by, top)
        print_report(runs, extra, by, meta)
        if args.json:
            figures = {"machine": meta, "ratios": by, "servers": [asdict(r) for r in [*runs.values(), *extra]]}
            args.json.write_text(json.dumps(figures, indent=2))
    finally:
        if args.home is None:
            shutil.rmtree(home, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
