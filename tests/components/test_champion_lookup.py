"""The champion lookups without the MLflow client: the same answers as the client, or a clear hand-over to it."""

from __future__ import annotations

import logging
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from lookup_cases import ALIASES, assert_agrees, populate, tree

from components import names
from components.champion_lookup import FastRegistry, LookupUnsupported, RestLookup, SqliteLookup, lookup_for
from components.registry import Registry, VersionInfo
from components.serving_supervisor import ChampionCache, champion_state
from components.settings import load_settings

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> tuple[Registry, dict[str, dict[str, bytes]]]:
    # One store for the module: creating an MLflow database takes seconds.
    registry = Registry(load_settings(tmp_path_factory.mktemp("lookup"), env={}))
    return registry, populate(registry, "shop")


def _lookup(registry: Registry) -> SqliteLookup:
    lookup = lookup_for(registry.settings.registry_uri)
    assert isinstance(lookup, SqliteLookup)
    return lookup


def test_the_sqlite_lookup_answers_as_the_mlflow_client(store, tmp_path: Path) -> None:
    registry, packages = store
    lookup = _lookup(registry)
    assert_agrees(lookup, registry, "shop", packages, tmp_path)
    champion = lookup.alias_version("shop", names.CHAMPION)
    assert champion is not None and champion.version == ALIASES[names.CHAMPION]
    assert champion.tags == {names.TAG_DATA_VERSION: "md5-2", "note": "version 2"}
    assert champion.aliases == [names.CHAMPION] and champion.created_ms > 1_700_000_000_000


def test_a_moved_alias_and_a_deleted_version_are_seen_at_once(store, tmp_path: Path) -> None:
    registry, _ = store
    lookup = _lookup(registry)
    name = names.registered_model_name("shop")
    registry.client.set_registered_model_alias(name, "moving", "1")
    assert lookup.alias_version("shop", "moving").version == "1"  # type: ignore[union-attr]
    registry.client.set_registered_model_alias(name, "moving", "3")
    moved = lookup.alias_version("shop", "moving")
    assert moved == registry.alias_version("shop", "moving") and moved is not None
    assert moved.version == "3" and moved.aliases == ["challenger", "moving"]
    # A deleted version keeps its row in MLflow's table (marked), and loses its aliases.
    other = populate(registry, "gone")
    registry.client.delete_model_version(names.registered_model_name("gone"), "2")
    assert lookup.alias_version("gone", names.CHAMPION) is None is registry.alias_version("gone", names.CHAMPION)
    with pytest.raises(LookupUnsupported, match="version 2 is not in"):
        lookup.copy_package("gone", "2", tmp_path / "deleted")
    assert tree(lookup.copy_package("gone", "3", tmp_path / "kept")) == other["3"]


def test_the_sqlite_lookup_never_creates_or_writes_a_database(tmp_path: Path) -> None:
    missing = tmp_path / "mlflow" / "mlflow.db"
    lookup = SqliteLookup(missing)
    assert lookup.alias_version("shop", names.CHAMPION) is None
    assert not missing.exists() and not missing.parent.exists()
    empty = tmp_path / "empty.db"
    sqlite3.connect(empty).close()  # a file MLflow never initialised: nothing registered yet
    assert SqliteLookup(empty).alias_version("shop", names.CHAMPION) is None
    assert empty.stat().st_size == 0


def test_an_unknown_schema_or_artifact_store_is_handed_to_the_mlflow_client(tmp_path: Path, caplog) -> None:
    odd = tmp_path / "odd.db"
    with sqlite3.connect(odd) as db:  # tables of another shape (a future MLflow, say)
        db.execute("CREATE TABLE registered_model_aliases (name TEXT, alias TEXT, version INTEGER)")
        db.execute("CREATE TABLE model_versions (name TEXT, version INTEGER, source TEXT)")
        db.execute("CREATE TABLE model_version_tags (name TEXT, version INTEGER, key TEXT, value TEXT)")
    with pytest.raises(LookupUnsupported, match="model_versions table lacks"):
        SqliteLookup(odd).alias_version("shop", names.CHAMPION)

    answer = VersionInfo("7", "run", [names.CHAMPION], {}, 1, "s3://bucket/model")
    asked: list[str] = []

    class Client:  # stands in for the MLflow-client Registry: what matters is who is asked
        def alias_version(self, pipeline: str, alias: str) -> VersionInfo:
            asked.append(alias)
            return answer

        def copy_package(self, pipeline: str, version: str, destination: Path) -> Path:
            raise AssertionError("not reached")

    connected: list[int] = []
    registry = FastRegistry(SqliteLookup(odd), lambda: connected.append(1) or Client())  # type: ignore[func-returns-value]
    with caplog.at_level(logging.WARNING):
        assert registry.alias_version("shop", names.CHAMPION) == answer
        assert registry.alias_version("shop", "again") == answer
    assert registry.fast is None and asked == [names.CHAMPION, "again"] and connected == [1]
    assert "through the MLflow client from now on: MLflow's model_versions table lacks" in caplog.text


def test_artifacts_outside_this_machine_are_read_by_the_mlflow_client(store, tmp_path: Path) -> None:
    registry, _ = store
    name = names.registered_model_name("shop")
    run_id = registry.client.get_model_version(name, "1").run_id
    remote = registry.client.create_model_version(name, "s3://bucket/somewhere/model", run_id)
    with pytest.raises(LookupUnsupported, match="artifacts at s3: URIs are read through the MLflow client"):
        _lookup(registry).copy_package("shop", str(remote.version), tmp_path / "remote")


def test_which_registries_get_a_lookup(monkeypatch: pytest.MonkeyPatch) -> None:
    assert isinstance(lookup_for("sqlite:////abs/mlflow.db"), SqliteLookup)
    assert lookup_for("sqlite:////abs/mlflow.db").path == Path("/abs/mlflow.db")  # type: ignore[union-attr]
    assert lookup_for("sqlite:///relative/mlflow.db").path == Path("relative/mlflow.db")  # type: ignore[union-attr]
    assert lookup_for("sqlite:///:memory:") is None
    rest = lookup_for("https://mlflow.example:5000/prefix/")
    assert isinstance(rest, RestLookup) and rest.base_url == "https://mlflow.example:5000/prefix"
    assert lookup_for("postgresql://user@db/mlflow") is None  # a database only the client reads
    assert lookup_for("databricks") is None
    monkeypatch.setenv("MLFLOW_TRACKING_TOKEN", "secret")
    assert lookup_for("http://mlflow:5000").headers["Authorization"] == "Bearer secret"  # type: ignore[union-attr]
    monkeypatch.setenv("MLFLOW_TRACKING_CLIENT_CERT_PATH", "/certs/client.pem")  # TLS the client sets up
    assert lookup_for("http://mlflow:5000") is None and lookup_for("sqlite:////abs/mlflow.db") is None


def test_resolving_and_materialising_the_champion_imports_no_mlflow(store, tmp_path: Path) -> None:
    registry, packages = store
    code = (
        "import sys\n"
        "from pathlib import Path\n"
        "from components.champion_lookup import FastRegistry, lookup_for\n"
        "from components.serving_supervisor import ChampionCache, champion_state\n"
        f"registry = FastRegistry(lookup_for({registry.settings.registry_uri!r}), None)\n"
        f"state = champion_state(registry, 'shop', ChampionCache(Path({str(tmp_path / 'cache')!r})))\n"
        "print(state['version'], state['package'])\n"
        "print(sorted(m for m in ('mlflow', 'sqlalchemy', 'torch', 'pandas') if m in sys.modules))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    version, package = result.stdout.splitlines()[0].split(" ", 1)
    assert version == ALIASES[names.CHAMPION] and result.stdout.splitlines()[1] == "[]"
    assert tree(Path(package)) == packages[version]
    # The same state as through the MLflow client (the path differs: another cache).
    through_client = champion_state(registry, "shop", ChampionCache(tmp_path / "client-cache"))
    assert through_client is not None and through_client["version"] == version
    assert tree(Path(through_client["package"])) == packages[version]


def test_the_rest_lookup_sends_mlflows_credentials_and_reads_its_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    # A stand-in tracking server on loopback: it checks the credentials as MLflow's basic-auth
    # app does, and answers as MLflow's REST API (the real server is compared in the
    # integration tier, tests/integration/test_servers.py).
    import base64
    import json
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    seen: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            seen.append(self.headers.get("Authorization", ""))
            expected = "Basic " + base64.b64encode(b"reviewer:s3cret").decode()
            if self.headers.get("Authorization") != expected:
                self._answer(401, {"error_code": "UNAUTHENTICATED", "message": "credentials"})
            elif "alias=champion" in self.path:
                version = {
                    "version": "4",
                    "run_id": "r",
                    "source": "s",
                    "creation_timestamp": 5,
                    "aliases": ["champion"],
                }
                self._answer(200, {"model_version": {**version, "tags": [{"key": "k", "value": "v"}]}})
            else:
                self._answer(404, {"error_code": "RESOURCE_DOES_NOT_EXIST", "message": "no such alias"})

        def _answer(self, status: int, body: dict[str, object]) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *_: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "reviewer")
        monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "s3cret")
        lookup = lookup_for(url)
        assert isinstance(lookup, RestLookup)
        assert lookup.alias_version("shop", names.CHAMPION) == VersionInfo("4", "r", ["champion"], {"k": "v"}, 5, "s")
        assert lookup.alias_version("shop", "nobody") is None  # MLflow's "does not exist": no such alias
        monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "wrong")
        import urllib.error

        with pytest.raises(urllib.error.HTTPError, match="401"):  # never read as "no champion"
            lookup_for(url).alias_version("shop", names.CHAMPION)  # type: ignore[union-attr]
    finally:
        server.shutdown()
    assert seen[0] == "Basic " + base64.b64encode(b"reviewer:s3cret").decode()
