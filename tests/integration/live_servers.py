"""Real servers on loopback for the integration tier: PostgreSQL, S3 (moto), MLflow, Prefect.

The integration tier runs the retrain flow the way a deployment beyond one machine does:
`mlflow server` on PostgreSQL with its artifacts proxied to an S3 bucket, a Prefect server on
PostgreSQL, and a DVC remote in the same bucket. The flows run as `deepgate run` processes
whose environment holds only settings (see `Services.flow_env`): the code is the embedded
default's.

PostgreSQL comes from Debian's packages (`make test` installs them when missing); it refuses
to run as root, so as root the cluster belongs to the `postgres` user the package creates.
"""

from __future__ import annotations

import glob
import json
import os
import pwd
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]

BUCKET = "deepgate"
AWS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
DB_USER = "deepgate"
# Services start in parallel on 2 busy cores; PostgreSQL-backed migrations dominate.
STARTUP_S = 240.0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _pg_bin(tool: str) -> str:
    """A PostgreSQL server program: on PATH, or in Debian's versioned folder (not on PATH)."""
    versioned = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{tool}"), key=lambda p: float(Path(p).parts[-3]))
    found = shutil.which(tool) or (versioned[-1] if versioned else None)
    if found is None:
        pytest.fail(
            f"PostgreSQL's {tool} was not found (PATH, /usr/lib/postgresql/*/bin): the integration tier needs "
            "Debian's `postgresql` package; `make test` installs it (`make postgres`)"
        )
    return found


@dataclass
class Services:
    """Where the session's servers listen, and the settings a flow needs to use them."""

    home: Path
    pg_port: int
    pg_socket: Path
    s3_url: str
    mlflow_url: str
    prefect_api: str
    logs: dict[str, Path] = field(default_factory=dict)

    def dsn(self, database: str, driver: str | None = None) -> str:
        """The URL of one of the session's databases (`mlflow`, `prefect`); `driver` for SQLAlchemy's.

        SQLAlchemy 2.1 takes a bare `postgresql://` for psycopg 3: `mlflow server` is given
        `postgresql+psycopg2://` (the driver installed), Prefect `postgresql+asyncpg://`.
        """
        scheme = f"postgresql+{driver}" if driver else "postgresql"
        return f"{scheme}://{DB_USER}@127.0.0.1:{self.pg_port}/{database}"

    @property
    def dvc_remote(self) -> str:
        return f"s3://{BUCKET}/dvc"

    def flow_env(self, workspace: Path) -> dict[str, str]:
        """The environment of a `deepgate` process: the test session's, plus settings only."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "PREFECT_", "DEEPGATE_", "AWS_"))}
        env.update(AWS)
        env.update(
            {
                "PYTHONPATH": str(ROOT),
                "DEEPGATE_HOME": str(workspace),
                "MLFLOW_TRACKING_URI": self.mlflow_url,
                "PREFECT_API_URL": self.prefect_api,
                "DEEPGATE_DVC_REMOTE": self.dvc_remote,
                # Botocore's standard endpoint setting, read by DVC's S3 remote (s3fs).
                "AWS_ENDPOINT_URL": self.s3_url,
                "PREFECT_HOME": str(workspace / ".prefect"),
                "PREFECT_LOGGING_LEVEL": "WARNING",
                "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
                "GX_ANALYTICS_ENABLED": "False",
                "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
            }
        )
        return env

    def s3(self):  # -> boto3 S3 client
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.s3_url,
            aws_access_key_id=AWS["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=AWS["AWS_SECRET_ACCESS_KEY"],
            region_name=AWS["AWS_DEFAULT_REGION"],
        )

    def tail(self, name: str, lines: int = 40) -> str:
        text = self.logs[name].read_text(errors="replace") if name in self.logs else ""
        return "\n".join(text.splitlines()[-lines:])


class _Processes:
    """Started server processes, stopped in reverse order."""

    def __init__(self) -> None:
        self.started: list[tuple[str, subprocess.Popen]] = []

    def start(self, name: str, command: list[str], log: Path, env: dict[str, str]) -> subprocess.Popen:
        with log.open("wb") as out:
            process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=log.parent)
        self.started.append((name, process))
        return process

    def stop(self) -> None:
        for _, process in reversed(self.started):
            process.terminate()
        for _, process in reversed(self.started):
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()


def _wait_http(url: str, name: str, process: subprocess.Popen, services: Services) -> None:
    deadline = time.monotonic() + STARTUP_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"{name} exited with {process.returncode} while starting:\n{services.tail(name)}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    pytest.fail(f"{name} did not answer {url} within {STARTUP_S:.0f}s:\n{services.tail(name)}")


def _start_postgres(home: Path, services: Services) -> list[str]:
    """A throwaway cluster in `home/pg`; returns the command prefix that runs its programs."""
    as_user: list[str] = []
    if os.geteuid() == 0:
        try:
            owner = pwd.getpwnam("postgres")
        except KeyError:
            pytest.fail("running as root, and no `postgres` user to own the cluster (Debian's postgresql makes it)")
        as_user = ["runuser", "-u", "postgres", "--"]
        for path in (home, services.pg_socket):
            os.chown(path, owner.pw_uid, owner.pw_gid)
    data = home / "pg"
    run = {"check": True, "capture_output": True, "text": True, "cwd": home}
    try:
        subprocess.run(
            [*as_user, _pg_bin("initdb"), "-D", str(data), "-U", DB_USER, "-A", "trust", "-E", "UTF8", "--no-sync"],
            **run,  # type: ignore[call-overload]
        )
        # Durability is not what this cluster is for: no fsync, and enough connections for two
        # servers' pools plus the flows.
        options = (
            f"-p {services.pg_port} -k {services.pg_socket} -c listen_addresses=127.0.0.1 -c fsync=off "
            "-c synchronous_commit=off -c full_page_writes=off -c max_connections=300"
        )
        subprocess.run(
            [
                *as_user,
                _pg_bin("pg_ctl"),
                "-D",
                str(data),
                "-l",
                str(services.logs["postgres"]),
                "-w",
                "-t",
                "120",
                "-o",
                options,
                "start",
            ],
            **run,  # type: ignore[call-overload]
        )
    except subprocess.CalledProcessError as error:
        pytest.fail(f"PostgreSQL did not start: {error.stderr or error.stdout}\n{services.tail('postgres')}")
    import psycopg2

    connection = psycopg2.connect(services.dsn("postgres"))
    connection.autocommit = True
    with connection.cursor() as cursor:
        for database in ("mlflow", "prefect"):
            cursor.execute(f"CREATE DATABASE {database}")
    connection.close()
    return as_user


def running_services() -> Iterator[Services]:
    """PostgreSQL, moto's S3, `mlflow server` and `prefect server start`, for the whole session."""
    home = Path(tempfile.mkdtemp(prefix="deepgate-servers-"))
    sock = home / "sock"
    sock.mkdir()
    ports = {name: _free_port() for name in ("pg", "s3", "mlflow", "prefect")}
    services = Services(
        home=home,
        pg_port=ports["pg"],
        pg_socket=sock,
        s3_url=f"http://127.0.0.1:{ports['s3']}",
        mlflow_url=f"http://127.0.0.1:{ports['mlflow']}",
        prefect_api=f"http://127.0.0.1:{ports['prefect']}/api",
        logs={name: home / f"{name}.log" for name in ("postgres", "s3", "mlflow", "prefect")},
    )
    processes = _Processes()
    base = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "PREFECT_", "AWS_"))} | AWS
    as_user: list[str] | None = None
    try:
        s3 = processes.start(
            "s3",
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(ports["s3"])],
            services.logs["s3"],
            base,
        )
        as_user = _start_postgres(home, services)
        mlflow = processes.start(
            "mlflow",
            [
                sys.executable,
                "-m",
                "mlflow",
                "server",
                "--host",
                "127.0.0.1",
                "--port",
                str(ports["mlflow"]),
                "--workers",
                "2",
                "--backend-store-uri",
                services.dsn("mlflow", driver="psycopg2"),
                "--artifacts-destination",
                f"s3://{BUCKET}/mlflow",
            ],
            services.logs["mlflow"],
            base | {"MLFLOW_S3_ENDPOINT_URL": services.s3_url},
        )
        prefect = processes.start(
            "prefect",
            [
                sys.executable,
                "-m",
                "prefect",
                "server",
                "start",
                "--host",
                "127.0.0.1",
                "--port",
                str(ports["prefect"]),
                "--no-ui",
            ],
            services.logs["prefect"],
            base
            | {
                "PREFECT_HOME": str(home / "prefect"),
                "PREFECT_API_DATABASE_CONNECTION_URL": services.dsn("prefect", driver="asyncpg"),
                "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
                "PREFECT_LOGGING_LEVEL": "WARNING",
            },
        )
        _wait_http(f"{services.s3_url}/moto-api/", "s3", s3, services)
        services.s3().create_bucket(Bucket=BUCKET)
        _wait_http(f"{services.mlflow_url}/health", "mlflow", mlflow, services)
        _wait_http(f"{services.prefect_api}/health", "prefect", prefect, services)
        yield services
    finally:
        processes.stop()
        if as_user is not None:
            subprocess.run(
                [*as_user, _pg_bin("pg_ctl"), "-D", str(home / "pg"), "-m", "immediate", "stop"],
                capture_output=True,
                cwd=home,
            )
        shutil.rmtree(home, ignore_errors=True)


@dataclass
class FlowRun:
    """One finished `deepgate run` process."""

    code: int
    output: str
    summaries: list[dict]


def start_flow(services: Services, workspace: Path, config: dict) -> subprocess.Popen:
    """Start `deepgate run --config` in `workspace` (its own DVC cache), against the services."""
    workspace.mkdir(parents=True, exist_ok=True)
    (workspace / "params.yaml").write_text((ROOT / "params.yaml").read_text())
    (workspace / "pipeline.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    command = [sys.executable, "-m", "flows.cli", "run", "--config", "pipeline.yaml", "--json"]
    return subprocess.Popen(
        command,
        cwd=workspace,
        env=services.flow_env(workspace),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def finish_flow(process: subprocess.Popen) -> FlowRun:
    """Wait for a `deepgate run` process; its JSON summaries are the `[` ... `]` lines it printed."""
    output, _ = process.communicate()
    lines = output.splitlines()
    summaries: list[dict] = []
    if "[" in lines and "]" in lines[lines.index("[") :]:
        start = lines.index("[")
        end = lines.index("]", start)
        summaries = json.loads("\n".join(lines[start : end + 1]))
    return FlowRun(process.returncode, output, summaries)
