"""Rules of the code base that no single unit test would notice breaking.

- `components/` is plain logic: it never imports prefect, not even through a third-party package.
- Public functions and classes of `components/` say what they do (docstrings).
- `mlflow/` (the embedded store) never becomes a package that shadows the real `mlflow`.
- The bundled pipelines in `params.yaml` load, and every floor that promotion needs is set
  high enough that a model answering the majority class for every row cannot pass it.
"""

from __future__ import annotations

import ast
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
from sklearn.metrics import accuracy_score, f1_score

from components.config import bundled_pipelines, load_pipeline
from components.dataset import load_source
from components.split import split_dataset

ROOT = Path(__file__).resolve().parent.parent
COMPONENTS = ROOT / "components"
SOURCES = sorted(COMPONENTS.rglob("*.py"))
PARAMS = ROOT / "params.yaml"


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _tree(path: Path) -> ast.Module:
    return ast.parse(path.read_text(), filename=str(path))


def _imported_packages(tree: ast.Module) -> set[str]:
    """Top-level packages imported anywhere in a module, function-local imports included."""
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return found


Definition = ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef


def _public_definitions(tree: ast.Module) -> list[tuple[str, Definition]]:
    """Module-level public functions and classes, and the public methods of public classes."""
    kinds = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)
    found: list[tuple[str, Definition]] = []
    for node in tree.body:
        if not isinstance(node, kinds) or node.name.startswith("_"):
            continue
        found.append((node.name, node))
        if isinstance(node, ast.ClassDef):
            found += [
                (f"{node.name}.{m.name}", m) for m in node.body if isinstance(m, kinds) and not m.name.startswith("_")
            ]
    return found


def test_components_tree_is_found() -> None:
    # Guards the tests below against passing vacuously on a moved folder.
    names = {_module_name(p) for p in SOURCES}
    assert {"components.config", "components.gates", "components.registry", "components.models.mlp"} <= names


def test_the_import_scan_sees_local_and_dotted_imports() -> None:
    source = "import prefect.flows as f\nfrom . import names\ndef task():\n    from prefect import flow\n"
    assert _imported_packages(ast.parse(source)) == {"prefect"}


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(ROOT)))
def test_component_source_never_imports_prefect(path: Path) -> None:
    assert "prefect" not in _imported_packages(_tree(path))


def test_importing_every_component_does_not_pull_in_prefect() -> None:
    # Also import the third-party packages that components import lazily (mlflow inside
    # Registry, say): one of them pulling prefect in would break the rule just the same.
    third_party = set().union(*(_imported_packages(_tree(p)) for p in SOURCES))
    third_party -= {"components", "prefect", *sys.stdlib_module_names}
    modules = sorted(_module_name(p) for p in SOURCES) + sorted(third_party)
    script = (
        "import importlib, sys\n"
        f"for name in {modules!r}:\n"
        "    importlib.import_module(name)\n"
        "print(sorted(m for m in sys.modules if m == 'prefect' or m.startswith('prefect.'))[:5])\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().splitlines()[-1] == "[]", f"prefect was imported: {done.stdout}"


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(ROOT)))
def test_component_modules_follow_the_house_rules(path: Path) -> None:
    tree = _tree(path)
    if not tree.body:  # an empty package marker
        return
    assert ast.get_docstring(tree), f"{path.name}: module docstring missing"
    undocumented = [name for name, node in _public_definitions(tree) if not ast.get_docstring(node)]
    assert undocumented == [], f"{path.name}: public definitions without a docstring"
    if len(tree.body) == 1:  # a docstring only: no annotations to postpone
        return
    futures = [n for n in tree.body if isinstance(n, ast.ImportFrom) and n.module == "__future__"]
    assert any(a.name == "annotations" for n in futures for a in n.names), (
        f"{path.name}: `from __future__ import annotations` missing"
    )


def test_mlflow_store_folder_never_shadows_the_mlflow_package() -> None:
    # Only the folder itself matters: the artifact store below it legitimately holds model code.
    assert not (ROOT / "mlflow" / "__init__.py").exists()
    spec = importlib.util.find_spec("mlflow")
    assert spec is not None and spec.origin is not None
    assert not Path(spec.origin).resolve().is_relative_to(ROOT / "mlflow")


def test_bundled_pipelines_load_with_every_promotion_floor_set() -> None:
    pipelines = bundled_pipelines(PARAMS)
    assert {"arrests", "mnist"} <= set(pipelines)
    for name in pipelines:
        config = load_pipeline(name, params_path=PARAMS)
        assert config.name == name
        floors = config.gates.evaluation
        # An empty floor blocks every promotion (fail closed): a bundled pipeline must set both.
        assert floors.min_accuracy is not None, f"{name}: gates.evaluation.min_accuracy unset"
        assert floors.min_macro_f1 is not None, f"{name}: gates.evaluation.min_macro_f1 unset"


@pytest.mark.parametrize("name", ["arrests", "mnist"])
def test_promotion_floors_reject_a_majority_class_model(name: str) -> None:
    # The first version has no champion to regress against: the floors alone must stop a
    # network that learnt nothing but the class balance.
    config = load_pipeline(name, params_path=PARAMS)
    dataset = load_source(config.data)
    y_true = dataset.table[config.data.target].iloc[split_dataset(dataset, config.data, config.split).test]
    y_const = [y_true.mode().iloc[0]] * len(y_true)
    floors = config.gates.evaluation
    assert floors.min_accuracy is not None and floors.min_macro_f1 is not None
    baseline_f1 = f1_score(y_true, y_const, average="macro", zero_division=0)
    assert accuracy_score(y_true, y_const) < floors.min_accuracy or baseline_f1 < floors.min_macro_f1
