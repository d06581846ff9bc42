"""dvc.yaml declares what each stage really depends on, so DVC reruns exactly the stages a change touches."""

import ast
from pathlib import Path

import pytest
import yaml
from param_knobs import execution_knobs
from project_copy import BIN, committed_project, project_env, run, set_params

from skincancer.core import paths
from skincancer.core.params import REPORTED_PARAMS, FetchParams, ShardParams, TrainParams, result_keys
from skincancer.core.resolved import RESOLVED

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src"
# params.py: its values reach stages as `params:` deps; atomic.py: how outputs are written, not what
NOT_DEPS = {"src/skincancer/__init__.py", "src/skincancer/core/params.py", "src/skincancer/core/atomic.py"}


def stages() -> dict:
    return yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]


def imported_modules(path: Path) -> set[Path]:
    """skincancer modules a file imports (module level and inside functions)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "skincancer":
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        for name in names:
            candidate = PACKAGE / (name.replace(".", "/") + ".py")
            if name.startswith("skincancer") and candidate.is_file():
                found.add(candidate)
    return found


def code_closure(flow: Path) -> set[str]:
    seen: set[Path] = set()
    todo = [flow]
    while todo:
        for module in imported_modules(todo.pop()):
            relative = module.relative_to(ROOT).as_posix()
            if module not in seen and relative not in NOT_DEPS:
                seen.add(module)
                todo.append(module)
    return {module.relative_to(ROOT).as_posix() for module in seen}


def test_every_stage_depends_on_the_code_it_runs():
    for name, stage in stages().items():
        flow = f"flows/{name}.py"
        assert stage["cmd"] == f"python -m flows.{name}"
        declared = {dep for dep in stage["deps"] if dep.endswith(".py")}
        needed = code_closure(ROOT / flow) | {flow}
        assert needed - declared == set(), f"{name}: dvc.yaml misses code deps"
        assert declared - needed == set(), f"{name}: dvc.yaml lists code the stage does not run"


def test_stage_inputs_and_outputs_match_the_paths_module():
    declared = stages()
    for stage, inputs in paths.STAGE_INPUTS.items():
        deps = declared[stage]["deps"]
        for path, producer in inputs.items():
            produced = [next(iter(o)) if isinstance(o, dict) else o for o in declared[producer]["outs"]]
            assert any(path.as_posix() == out or path.as_posix().startswith(out + "/") for out in produced), (stage, path)
            assert any(path.as_posix() == dep or path.as_posix().startswith(dep + "/") for dep in deps), (stage, path)


def per_key(section: str, model) -> list[str]:
    """The section's result-changing keys, less those the stages take as values from data/resolved.json."""
    return [f"{section}.{key}" for key in result_keys(model) if f"{section}.{key}" not in RESOLVED]


def test_each_stage_reads_only_its_own_params_and_no_execution_knob():
    expected = {
        "resolve": ["shard.image_size", "train.backbone"],  # 'auto' is the backbone's input size
        "fetch": [*per_key("fetch", FetchParams), "shard.max_pixels"],  # the one pixel bound: fetch's hash decodes
        "split": ["labels", "split"],
        "shard": per_key("shard", ShardParams),
        "train": per_key("train", TrainParams),  # the image size reaches it in data/shards
        # evaluate decides with its own section; the others are printed in the report as what produced it
        "evaluate": ["evaluate", "fetch.datasets", "labels", "split", *per_key("shard", ShardParams),
                     *per_key("train", TrainParams)],
    }
    assert {name: stage["params"] for name, stage in stages().items()} == expected
    knobs = {f"{section}.{key}" for section, model in (("fetch", FetchParams), ("shard", ShardParams), ("train", TrainParams))
             for key in execution_knobs(model)}
    assert knobs == {"fetch.workers", "fetch.retries", "shard.workers", "train.tensorboard", "train.resume"}


def test_the_params_the_report_prints_are_the_params_evaluate_depends_on():
    declared = {f"{section}.{key}" if keys is not True else section
                for section, keys in REPORTED_PARAMS.items() for key in (keys if keys is not True else [None])}
    assert declared == set(stages()["evaluate"]["params"]) | set(RESOLVED)
    assert paths.RESOLVED.as_posix() in stages()["evaluate"]["deps"]


def test_a_resolved_key_reaches_its_stages_as_a_value_not_as_the_word_in_params_yaml():
    """shard.image_size 'auto' and the size it stands for are one dependency: data/resolved.json's value."""
    for name, stage in stages().items():
        if name != "resolve":
            assert not set(stage["params"]) & set(RESOLVED), name
    for name in ("shard", "evaluate"):
        assert paths.RESOLVED.as_posix() in stages()[name]["deps"], name
    assert stages()["resolve"]["outs"] == [paths.RESOLVED.as_posix()]


def output_options(stage: dict) -> dict[str, dict]:
    """A stage's outs, metrics and plots: path -> its options ({} where none are written)."""
    return {path: options or {} for section in ("outs", "metrics", "plots") for entry in stage.get(section, [])
            for path, options in (entry.items() if isinstance(entry, dict) else [(entry, {})])}


def test_outputs_git_carries_are_left_to_their_stage_not_removed_by_dvc():
    """DVC deletes a stage's outputs before it runs; a `cache: false` one has no copy in the DVC cache, so a
    failing stage would lose it for good. `persist: true` leaves it to the stage (flows/_stage.py)."""
    for name, stage in stages().items():
        for path, options in output_options(stage).items():
            if options.get("cache") is False:
                assert options.get("persist") is True, f"{name}: {path} is cache: false without persist: true"


def write_plausible(project: Path, path: str) -> None:
    """A file (a path with a suffix) or a folder holding one, with bytes that name it."""
    target = project / path if Path(path).suffix else project / path / "part"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(f"{path} as recorded\n")


def files_under(project: Path, paths: list[str]) -> dict[str, bytes]:
    found = {}
    for path in paths:
        target = project / path
        for file in sorted(target.rglob("*")) if target.is_dir() else [target] if target.exists() else []:
            found[file.relative_to(project).as_posix()] = file.read_bytes()
    return found


@pytest.mark.slow
@pytest.mark.parametrize(("name", "bad", "named"), [
    ("split", {"split": {"sed": 1}}, "split.sed"),
    ("train", {"train": {"epochs": -1}}, "train.epochs"),
    ("evaluate", {"evaluate": {"bootstrap": -1}}, "evaluate.bootstrap"),
])
def test_a_stage_failing_under_plain_dvc_repro_loses_no_output(tmp_path, name, bad, named):
    """The stage's inputs and outputs written and recorded with `dvc commit` (a real run's stand-in), then a bad
    param: `dvc repro` runs the stage, which exits 2. What git carries stays; `dvc checkout` brings the rest."""
    env = project_env(tmp_path)
    project = committed_project(tmp_path / "project", env, {})
    stage = stages()[name]
    outputs = list(output_options(stage))
    for path in [dep for dep in stage["deps"] if not dep.endswith(".py")] + outputs:
        write_plausible(project, path)
    run([str(BIN / "dvc"), "commit", "--force", name], project, env)
    carried_by_git = [path for path, options in output_options(stage).items() if options.get("cache") is False]
    recorded, recorded_by_git = files_under(project, outputs), files_under(project, carried_by_git)
    set_params(project, bad)

    result = run([str(BIN / "dvc"), "repro", "--single-item", name], project, env, check=False)

    assert result.returncode != 0 and named in result.stdout + result.stderr
    assert recorded_by_git and files_under(project, carried_by_git) == recorded_by_git
    run([str(BIN / "dvc"), "checkout", name], project, env)
    assert files_under(project, outputs) == recorded
