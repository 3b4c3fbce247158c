"""Find the version an alias names, and copy its package, without the MLflow client.

`deepgate serve`'s supervisor asks the registry for @champion when it starts and every
`--poll` seconds after. Through the MLflow client that costs about 1.9 s of CPU before the
first answer (importing mlflow ~1.1 s, opening the store and checking its schema ~0.8 s, on
this 2-core machine) and ~230 MB held for the process's life; a service could not be ready
within a second of a cold start. The lookups here answer the same two questions in
milliseconds, from the standard library alone:

- :class:`SqliteLookup`, for the embedded default (`sqlite:///...`): two read-only queries on
  MLflow's own registry tables in one transaction (the same rows and filters as MLflow's
  SqlAlchemyStore: the active workspace, deleted versions excluded), and the package copied
  from the local artifact store.
- :class:`RestLookup`, for a tracking server (`http(s)://...`): MLflow's public REST API
  (`registered-models/alias`, `model-versions/get-download-uri`) and the server's artifact
  proxy (`mlflow-artifacts:` URIs), with MLflow's token or basic-auth variables.

Whatever they are not sure of (tables without the expected columns, an artifact store they
cannot read directly such as S3 without the proxy, TLS client certificates, a non-default
workspace) raises :class:`LookupUnsupported`; :class:`FastRegistry` then hands that question and
every later one to the MLflow client, so nothing is ever answered by a guess.
tests/components/test_champion_lookup.py checks both against the MLflow client on the pinned
MLflow, version by version and file by file.
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import os
import shutil
import sqlite3
import urllib.parse
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar, Protocol

from components import names
from components.registry import VersionInfo

log = logging.getLogger(__name__)

PACKAGE_PATH = ("artifacts", "package")  # inside a version's pyfunc model (Registry.log_model)
DEFAULT_WORKSPACE = "default"  # MLflow's single-tenant workspace
DELETED_STAGE = "Deleted_Internal"  # MLflow marks deleted versions, it keeps their rows
# Per socket operation (connect, each read), not per request: a healthy server answers within
# it, and a restart whose registry is unreachable falls back to its cached champion this soon.
HTTP_TIMEOUT_S = 5.0
# MLflow client settings these lookups do not implement: when one is set, the client decides.
_CLIENT_ONLY_ENV = (
    "MLFLOW_TRACKING_CLIENT_CERT_PATH",
    "MLFLOW_TRACKING_SERVER_CERT_PATH",
    "MLFLOW_TRACKING_INSECURE_TLS",
    "MLFLOW_TRACKING_AUTH",
    "MLFLOW_WORKSPACE",
)


class LookupUnsupported(Exception):
    """This store or setting is one the lookup does not read; ask the MLflow client instead."""


class ChampionSource(Protocol):
    """What the supervisor asks of a registry (components.registry.Registry answers it too)."""

    def alias_version(self, pipeline: str, alias: str) -> VersionInfo | None:
        """The version `alias` names, or None."""
        ...

    def copy_package(self, pipeline: str, version: str, destination: Path) -> Path:
        """Copy a version's model package (spec.json, model.safetensors, model.onnx) to `destination`."""
        ...


def lookup_for(registry_uri: str) -> SqliteLookup | RestLookup | None:
    """The fast lookup for a registry URI, or None when only the MLflow client can read it."""
    if any(os.environ.get(name) for name in _CLIENT_ONLY_ENV):
        return None
    scheme = urllib.parse.urlparse(registry_uri).scheme
    if scheme == "sqlite" and registry_uri.startswith("sqlite:///"):
        # SQLAlchemy's form: sqlite:///relative or sqlite:////absolute (the path after "///").
        path = registry_uri.removeprefix("sqlite:///").split("?", 1)[0]
        return SqliteLookup(Path(path)) if path and path != ":memory:" else None
    if scheme in ("http", "https"):
        return RestLookup(registry_uri)
    return None


def _local_folder(uri: str) -> Path:
    """A local folder from a `file:` URI or a plain absolute path; anything else is unsupported."""
    parsed = urllib.parse.urlparse(uri)
    if parsed.scheme == "file" and parsed.netloc in ("", "localhost"):
        return Path(urllib.parse.unquote(parsed.path))
    if parsed.scheme == "" and Path(uri).is_absolute():
        return Path(uri)
    raise LookupUnsupported(f"artifacts at {uri.split(':', 1)[0]}: URIs are read through the MLflow client")


def _copy_package(model_folder: Path, destination: Path) -> Path:
    source = model_folder.joinpath(*PACKAGE_PATH)
    if not (source / "spec.json").is_file():
        raise LookupUnsupported(f"no model package under {model_folder}")
    if destination.exists():
        shutil.rmtree(destination)
    shutil.copytree(source, destination)
    return destination


class SqliteLookup:
    """Read MLflow's sqlite registry directly, read-only.

    Args:
        path: The sqlite database file (`sqlite:///<path>`).
    """

    # The columns read, per table: a schema without them is one this code was not checked on.
    COLUMNS: ClassVar[dict[str, set[str]]] = {
        "registered_model_aliases": {"name", "alias", "version"},
        "model_versions": {"name", "version", "run_id", "source", "storage_location", "creation_time"},
        "model_version_tags": {"name", "version", "key", "value"},
    }

    def __init__(self, path: Path) -> None:
        self.path = path
        self._checked: dict[str, bool] | None = None  # table -> has a workspace column

    def _connect(self) -> sqlite3.Connection:
        # mode=ro: the supervisor never writes, and never creates a database that is not there.
        uri = f"file:{urllib.parse.quote(str(self.path.resolve()))}?mode=ro"
        return sqlite3.connect(uri, uri=True, timeout=10.0, isolation_level=None)

    def _schema(self, db: sqlite3.Connection) -> dict[str, bool]:
        if self._checked is None:
            checked = {}
            for table, needed in self.COLUMNS.items():
                columns = {row[1] for row in db.execute(f"PRAGMA table_info({table})")}
                if not columns:  # a database MLflow never initialised: no registry yet
                    raise _NoRegistry
                if not needed <= columns:
                    raise LookupUnsupported(f"MLflow's {table} table lacks {sorted(needed - columns)}")
                checked[table] = "workspace" in columns
            self._checked = checked
        return self._checked

    def _where(self, table: str, workspaces: dict[str, bool]) -> tuple[str, tuple[str, ...]]:
        return (" AND workspace = ?", (DEFAULT_WORKSPACE,)) if workspaces[table] else ("", ())

    def alias_version(self, pipeline: str, alias: str) -> VersionInfo | None:
        """The version `alias` names (as Registry.alias_version), or None."""
        if not self.path.is_file():
            return None  # nothing was ever registered here (MLflow creates the file on first use)
        name = names.registered_model_name(pipeline)
        db = self._connect()
        try:
            workspaces = self._schema(db)
            db.execute("BEGIN")  # one snapshot for every query: a promotion is not seen half-done
            alias_where, alias_args = self._where("registered_model_aliases", workspaces)
            row = db.execute(
                f"SELECT version FROM registered_model_aliases WHERE name = ? AND alias = ?{alias_where}",
                (name, alias, *alias_args),
            ).fetchone()
            if row is None:
                return None
            version = int(row[0])
            where, args = self._where("model_versions", workspaces)
            found = db.execute(
                "SELECT run_id, source, creation_time FROM model_versions "
                f"WHERE name = ? AND version = ? AND current_stage != ?{where}",
                (name, version, DELETED_STAGE, *args),
            ).fetchone()
            if found is None:
                return None
            where, args = self._where("model_version_tags", workspaces)
            tags = dict(
                db.execute(
                    f"SELECT key, value FROM model_version_tags WHERE name = ? AND version = ?{where}",
                    (name, version, *args),
                ).fetchall()
            )
            aliases = [
                r[0]
                for r in db.execute(
                    f"SELECT alias FROM registered_model_aliases WHERE name = ? AND version = ?{alias_where}",
                    (name, version, *alias_args),
                )
            ]
        except _NoRegistry:
            return None
        except sqlite3.DatabaseError as error:
            raise LookupUnsupported(f"reading {self.path}: {error}") from error
        finally:
            db.close()
        run_id, source, created = found
        return VersionInfo(str(version), str(run_id or ""), sorted(aliases), tags, int(created or 0), str(source))

    def copy_package(self, pipeline: str, version: str, destination: Path) -> Path:
        """Copy a version's model package (as Registry.copy_package) from the local artifact store."""
        name = names.registered_model_name(pipeline)
        db = self._connect()
        try:
            workspaces = self._schema(db)
            where, args = self._where("model_versions", workspaces)
            row = db.execute(
                "SELECT storage_location, source FROM model_versions "
                f"WHERE name = ? AND version = ? AND current_stage != ?{where}",
                (name, int(version), DELETED_STAGE, *args),
            ).fetchone()
        except (_NoRegistry, sqlite3.DatabaseError) as error:
            raise LookupUnsupported(f"reading {self.path}: {error or 'no registry tables'}") from error
        finally:
            db.close()
        if row is None:
            raise LookupUnsupported(f"{name} version {version} is not in {self.path}")
        # MLflow's get_model_version_download_uri: the storage location, else the source.
        return _copy_package(_local_folder(row[0] or row[1]), destination)


class _NoRegistry(Exception):
    """The sqlite file has no registry tables yet."""


class RestLookup:
    """Ask an MLflow tracking server through its public REST API.

    Args:
        base_url: The tracking server (`http(s)://host:port[/prefix]`).
        timeout: Seconds per HTTP request.
    """

    def __init__(self, base_url: str, timeout: float = HTTP_TIMEOUT_S) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.headers = {"User-Agent": "deepgate-serve"}
        token = os.environ.get("MLFLOW_TRACKING_TOKEN")
        user, password = os.environ.get("MLFLOW_TRACKING_USERNAME"), os.environ.get("MLFLOW_TRACKING_PASSWORD")
        if token:
            self.headers["Authorization"] = f"Bearer {token}"
        elif user and password:
            basic = base64.b64encode(f"{user}:{password}".encode()).decode("ascii")
            self.headers["Authorization"] = f"Basic {basic}"

    def _get(self, path: str, params: dict[str, str] | None = None) -> bytes:
        import urllib.request  # here: the sqlite lookup, on every start, does without http.client

        url = f"{self.base_url}{path}" + (f"?{urllib.parse.urlencode(params)}" if params else "")
        request = urllib.request.Request(url, headers=self.headers)
        with urllib.request.urlopen(request, timeout=self.timeout) as response:
            return bytes(response.read())

    def _get_json(self, path: str, params: dict[str, str]) -> dict[str, Any] | None:
        """The JSON answer, or None for MLflow's RESOURCE_DOES_NOT_EXIST / INVALID_PARAMETER_VALUE."""
        import urllib.error

        try:
            body = self._get(path, params)
        except urllib.error.HTTPError as error:
            code = ""
            with contextlib.suppress(ValueError):
                code = json.loads(error.read() or b"{}").get("error_code", "")
            if error.code in (400, 404) and code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
                return None
            raise
        answer = json.loads(body)
        if not isinstance(answer, dict):
            raise LookupUnsupported(f"{path} answered {type(answer).__name__}, not an object")
        return answer

    def alias_version(self, pipeline: str, alias: str) -> VersionInfo | None:
        """The version `alias` names (as Registry.alias_version), or None."""
        name = names.registered_model_name(pipeline)
        answer = self._get_json("/api/2.0/mlflow/registered-models/alias", {"name": name, "alias": alias})
        if answer is None or "model_version" not in answer:
            return None
        found = answer["model_version"]
        tags = {t["key"]: t.get("value", "") for t in found.get("tags", [])}
        return VersionInfo(
            version=str(found["version"]),
            run_id=str(found.get("run_id", "")),
            aliases=sorted(found.get("aliases", [])),
            tags=tags,
            created_ms=int(found.get("creation_timestamp") or 0),
            source=str(found.get("source", "")),
        )

    def copy_package(self, pipeline: str, version: str, destination: Path) -> Path:
        """Download a version's model package (as Registry.copy_package) through the artifact proxy."""
        name = names.registered_model_name(pipeline)
        answer = self._get_json("/api/2.0/mlflow/model-versions/get-download-uri", {"name": name, "version": version})
        if answer is None or not answer.get("artifact_uri"):
            raise LookupUnsupported(f"{name} version {version} has no download URI")
        uri = str(answer["artifact_uri"])
        parsed = urllib.parse.urlparse(uri)
        if parsed.scheme != "mlflow-artifacts" or parsed.netloc:
            # A local path (a server sharing this host's disk), else s3://, gs://, ...: the
            # client's artifact repositories (and their credentials) read those.
            return _copy_package(_local_folder(uri), destination)
        root = "/".join([parsed.path.strip("/"), *PACKAGE_PATH])
        staging = destination.with_name(f".{destination.name}.part")
        if staging.exists():
            shutil.rmtree(staging)
        self._download_tree(root, staging)
        if not (staging / "spec.json").is_file():
            shutil.rmtree(staging, ignore_errors=True)
            raise LookupUnsupported(f"no model package under {uri}")
        if destination.exists():
            shutil.rmtree(destination)
        staging.rename(destination)
        return destination

    def _download_tree(self, remote: str, local: Path) -> None:
        listing = self._get_json("/api/2.0/mlflow-artifacts/artifacts", {"path": remote}) or {}
        local.mkdir(parents=True, exist_ok=True)
        for entry in listing.get("files", []):
            child = str(entry["path"])
            # The server names entries relative to the folder listed; never a path that climbs out.
            if not child or "/" in child or child in (".", ".."):
                raise LookupUnsupported(f"unexpected artifact name {child!r} under {remote}")
            if entry.get("is_dir"):
                self._download_tree(f"{remote}/{child}", local / child)
            else:
                quoted = urllib.parse.quote(f"{remote}/{child}")
                (local / child).write_bytes(self._get(f"/api/2.0/mlflow-artifacts/artifacts/{quoted}"))


class FastRegistry:
    """The fast lookup while it is sure, the MLflow client from the first time it is not.

    Args:
        fast: The lookup for the registry URI (see :func:`lookup_for`), or None.
        connect: Builds the MLflow-client registry (imports MLflow: seconds), on first need.
    """

    def __init__(self, fast: ChampionSource | None, connect: Callable[[], ChampionSource]) -> None:
        self.fast = fast
        self._connect = connect
        self._client: ChampionSource | None = None

    @property
    def client(self) -> ChampionSource:
        """The MLflow-client registry, built on first use."""
        if self._client is None:
            self._client = self._connect()
        return self._client

    def _ask(self, question: Callable[[ChampionSource], Any]) -> Any:
        if self.fast is not None:
            try:
                return question(self.fast)
            except LookupUnsupported as why:
                log.warning("reading the registry through the MLflow client from now on: %s", why)
                self.fast = None
        return question(self.client)

    def alias_version(self, pipeline: str, alias: str) -> VersionInfo | None:
        """See :meth:`components.registry.Registry.alias_version`."""
        return self._ask(lambda source: source.alias_version(pipeline, alias))  # type: ignore[no-any-return]

    def copy_package(self, pipeline: str, version: str, destination: Path) -> Path:
        """See :meth:`components.registry.Registry.copy_package`."""
        return self._ask(lambda source: source.copy_package(pipeline, version, destination))  # type: ignore[no-any-return]
