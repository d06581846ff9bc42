"""dvc.yaml declares what each stage really depends on, so DVC reruns exactly the stages a change touches."""

import ast
from pathlib import Path

import yaml
from param_knobs import execution_knobs

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
        "fetch": per_key("fetch", FetchParams),
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
