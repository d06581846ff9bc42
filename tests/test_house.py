"""The house: a folder per stage over a small core, and imports that run one way, from later stages down
to earlier ones and the core, never up and never round in a cycle."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "skincancer"
# bottom to top: the pipeline's stages in dvc.yaml's order, then what comes after it
LAYERS = ("core", "ingest", "split", "shard", "train", "evaluate", "serve", "review", "ops")
TOP = len(LAYERS)  # modules at the package root (the CLI) may import every layer
STAGE_FOLDER = {"resolve": "core", "fetch": "ingest", "split": "split", "shard": "shard", "train": "train",
                "evaluate": "evaluate"}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def imports_of(path: Path, known: dict[str, Path]) -> set[str]:
    """The skincancer modules a file imports, at module level, inside functions or for type checking."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            candidates = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            candidates = [f"{node.module}.{alias.name}" for alias in node.names] + [node.module]
        else:
            continue
        for name in candidates:
            if name.split(".")[0] == "skincancer" and name in known:
                found.add(name)
                break  # `from skincancer.core import paths` names the module paths, not also the package
    return found


def layer_of(module: str) -> int:
    parts = module.split(".")
    return LAYERS.index(parts[1]) if len(parts) > 2 else TOP


def import_graph() -> dict[str, set[str]]:
    known = modules()
    return {name: imports_of(path, known) - {name} for name, path in known.items()}


def test_the_folders_are_the_pipeline_over_a_core():
    folders = sorted(path.name for path in PACKAGE.iterdir() if path.is_dir() and path.name != "__pycache__")
    assert folders == sorted(LAYERS)
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    assert set(stages) == set(STAGE_FOLDER), "a new dvc.yaml stage needs its folder here"
    for stage, folder in STAGE_FOLDER.items():
        code = [dep for dep in stages[stage]["deps"] if dep.startswith("src/skincancer/")]
        assert all(dep.split("/")[2] in LAYERS[: LAYERS.index(folder) + 1] for dep in code), (stage, code)
    roots = sorted(path.name for path in PACKAGE.glob("*.py"))
    assert roots == ["__init__.py", "cli.py"], "every module lives in its stage's folder or the core"


def test_no_module_imports_a_later_stage_or_a_higher_layer():
    upward = [f"{source} -> {target}" for source, targets in import_graph().items() for target in targets
              if layer_of(target) > layer_of(source)]
    assert upward == []


def test_the_import_graph_has_no_cycle():
    graph = import_graph()
    state: dict[str, str] = {}
    cycles = []

    def visit(node: str, trail: list[str]) -> None:
        state[node] = "open"
        for target in sorted(graph[node]):
            if state.get(target) == "open":
                cycles.append(trail[trail.index(target):] + [target])
            elif target not in state:
                visit(target, trail + [target])
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    assert cycles == []


def test_the_library_never_imports_the_flows():
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom | ast.Import):
                names = [node.module or ""] if isinstance(node, ast.ImportFrom) else [a.name for a in node.names]
                assert not any(name.split(".")[0] == "flows" for name in names), path


def test_the_checker_sees_an_upward_import(tmp_path):
    """The rule's own check: a core module that imported a stage would be caught."""
    probe = tmp_path / "probe.py"
    probe.write_text("def late():\n    from skincancer.train.models import build_classifier\n")
    known = modules()
    assert imports_of(probe, known) == {"skincancer.train.models"}
    assert layer_of("skincancer.train.models") > layer_of("skincancer.core.params")


def test_params_stays_light():
    """Every stage and the CLI's check-params validate params before any work: importing the params module
    and checking a document that names layouts, tables and datasets must not pull in the data or model stack."""
    heavy = ("pandas", "PIL", "scipy", "tensorflow", "keras", "pyarrow", "sklearn", "numpy", "matplotlib")
    document = yaml.safe_load((ROOT / "params.yaml").read_text())
    document["fetch"] |= {"datasets": ["isic2020"], "metadata": [{"url": "file:///m.csv", "layout": "ham10000"}],
                          "sources": [{"name": "mine", "url": "file:///d.zip", "layout": "class-folders"}]}
    code = ("import json, sys\nfrom skincancer.core.params import parse_params\n"
            "parse_params(json.loads(sys.stdin.read()))\n"
            f"print(sorted({{m.split('.')[0] for m in sys.modules}} & set({heavy!r})))")
    loaded = subprocess.run([sys.executable, "-c", code], input=json.dumps(document), capture_output=True, text=True,
                            check=True).stdout.strip()
    assert loaded == "[]"


def test_the_names_params_accepts_are_the_names_ingest_reads():
    from skincancer.core import names
    from skincancer.ingest.catalog import CATALOG
    from skincancer.ingest.layouts import LAYOUT_READERS
    from skincancer.ingest.metadata import METADATA_LAYOUTS

    assert set(names.LAYOUTS) == set(LAYOUT_READERS)
    assert set(names.METADATA_LAYOUTS) == set(METADATA_LAYOUTS)
    assert set(names.DATASETS) == set(CATALOG)
    assert all(set(entry.layouts) <= set(names.LAYOUTS) for entry in CATALOG.values())
