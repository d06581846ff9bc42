"""The README and docs say what the project does: docs/architecture.md's stage table and schemas follow dvc.yaml
and what the code writes, and no page names a path outside the repository (a user's clone has nothing there)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
ARCHITECTURE = ROOT / "docs" / "architecture.md"
LIBRARY = ROOT / "src" / "skincancer"
STAGE_TABLE_HEADER = "| stage | library | reads | writes (DVC outs) |"
OUTSIDE_THE_REPOSITORY = ("../", "/work/", "shared/real")
REAL_DATA_BENCHMARKS = ("real_recipe.py", "real_cv.py", "real_split.py", "near_duplicates.py", "recipe_at_scale.py")


def dvc_stages() -> dict:
    return yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]


def code_spans(text: str) -> list[str]:
    return re.findall(r"`([^`]+)`", text)


def stage_table() -> dict[str, dict[str, str]]:
    """docs/architecture.md's table under "## Stages": stage -> {column: cell}, in the table's order."""
    section = ARCHITECTURE.read_text().split("\n## Stages\n", 1)[1].split("\n## ", 1)[0]
    lines = section.split(STAGE_TABLE_HEADER + "\n", 1)[1].splitlines()
    columns = [name.strip() for name in STAGE_TABLE_HEADER.strip("|").split("|")]
    rows = {}
    for line in lines[1:]:  # past the |---| line
        if not line.startswith("|"):
            break
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        assert len(cells) == len(columns), f"docs/architecture.md: a stage row has {len(cells)} cells: {line}"
        rows[cells[0]] = dict(zip(columns, cells, strict=True))
    return rows


def declared_outputs(stage: dict) -> list[str]:
    """A stage's `outs`, `metrics` and `plots` paths (each entry a path, or a path with its options)."""
    return [next(iter(entry)) if isinstance(entry, dict) else entry
            for kind in ("outs", "metrics", "plots") for entry in stage.get(kind, [])]


def library_deps(stage: dict) -> set[str]:
    """The stage's code deps under src/skincancer/, relative to it (`core/paths.py`)."""
    prefix = "src/skincancer/"
    return {dep.removeprefix(prefix) for dep in stage["deps"] if dep.startswith(prefix)}


def folders_of_stages() -> dict[str, set[str]]:
    """stage -> the library folders docs/architecture.md's "Folders" block gives to it ("stage fetch: ...")."""
    owned: dict[str, set[str]] = {}
    for folder, stage in re.findall(r"^src/skincancer/(\w+)/\s+stage (\w+):", ARCHITECTURE.read_text(), re.M):
        owned.setdefault(stage, set()).add(folder)
    return owned


def test_the_stage_table_has_dvc_yamls_stages_in_its_order():
    assert list(stage_table()) == list(dvc_stages()), "docs/architecture.md's stage table and dvc.yaml's stages differ"


def test_every_output_a_stage_declares_is_in_its_writes_cell():
    table = stage_table()
    for name, stage in dvc_stages().items():
        written = code_spans(table[name]["writes (DVC outs)"])
        for out in declared_outputs(stage):
            assert any(span == out or span.startswith(out.rstrip("/") + "/") for span in written), (
                f"docs/architecture.md: the {name} row's writes cell misses {out} (dvc.yaml)")


def test_the_library_cell_names_the_stages_folders_and_only_code_the_stage_runs():
    table, owned = stage_table(), folders_of_stages()
    assert owned, "docs/architecture.md's Folders block gives no folder to a stage"
    for name, stage in dvc_stages().items():
        deps, named = library_deps(stage), code_spans(table[name]["library"])
        for path in named:
            if path.endswith("/"):
                assert (LIBRARY / path).is_dir() and any(dep.startswith(path) for dep in deps), (
                    f"docs/architecture.md: {name}'s library cell names {path}, which holds none of its deps")
            else:
                assert path in deps, f"docs/architecture.md: {name}'s library cell names {path}, not a dep in dvc.yaml"
        for folder in owned.get(name, set()):
            assert f"{folder}/" in named, f"docs/architecture.md: {name}'s library cell misses its folder {folder}/"
        used = {dep.split("/")[0] for dep in deps} - {"core"}
        named_folders = {path.split("/")[0] for path in named}
        assert used <= named_folders, f"docs/architecture.md: {name}'s library cell misses {used - named_folders}"


def test_every_file_the_shard_stage_writes_is_in_its_writes_cell(tiny_shards):
    spans = [span for span in code_spans(stage_table()["shard"]["writes (DVC outs)"]) if span.startswith("data/shards/")]
    patterns = [re.sub(r"<[^>]+>", "[^/]+", re.escape(span)) for span in spans]  # `<split>`: any name
    for path in tiny_shards.iterdir():
        assert any(re.fullmatch(pattern, f"data/shards/{path.name}") for pattern in patterns), (
            f"docs/architecture.md: the shard row's writes cell names no file like {path.name}")


def documented_keys(schema: str) -> list[str]:
    """The top-level keys of a schema written as `a, b, c[{...}], d{x: {...}}`: commas inside brackets skipped."""
    keys, depth, start = [], 0, 0
    for i, char in enumerate(schema + ","):
        depth += (char in "[{(") - (char in "]})")
        if char == "," and depth == 0:
            keys.append(re.match(r"\s*(\w+)", schema[start:i]).group(1))
            start = i + 1
    return keys


def schema_after(label: str) -> str:
    """The code span that follows `label`: in docs/architecture.md."""
    text = ARCHITECTURE.read_text()
    assert f"{label}: `" in text, f"docs/architecture.md has no '{label}: `...`' schema line"
    return " ".join(text.split(f"{label}: `", 1)[1].split("`", 1)[0].split())


def test_the_shard_manifests_documented_keys_are_the_ones_it_writes(tiny_shards):
    written = json.loads((tiny_shards / "manifest.json").read_text())
    documented = documented_keys(schema_after("`data/shards/manifest.json`"))
    assert sorted(documented) == sorted(written), "docs/architecture.md's manifest.json line and the shard stage differ"


def test_metrics_json_is_documented_with_its_keys():
    from skincancer.evaluate.metrics import METRIC_KEYS

    metrics = json.loads((ROOT / "metrics.json").read_text())
    assert re.findall(r'"(\w+)":', schema_after("`metrics.json`")) == list(metrics)
    listed = schema_after("`skincancer.evaluate.metrics.METRIC_KEYS`")
    assert [key.strip() for key in listed.split(",")] == list(METRIC_KEYS)


def names_outside(text: str, page: Path) -> list[str]:
    """The lines of `page`'s text naming a path outside the repository; a link from docs/ up to the root is inside."""
    def without_inner_link(link: re.Match) -> str:
        return "]()" if (page.parent / link.group(1)).resolve().is_relative_to(ROOT) else link.group(0)

    text = re.sub(r"\]\((\.\./[^)\s]*)\)", without_inner_link, text)
    return [line for line in text.splitlines() if any(path in line for path in OUTSIDE_THE_REPOSITORY)]


def test_readme_and_docs_name_nothing_outside_the_repository():
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    found = {page.relative_to(ROOT).as_posix(): names_outside(page.read_text(), page) for page in pages}
    assert {page: lines for page, lines in found.items() if lines} == {}


def test_a_link_from_docs_up_to_the_readme_is_inside_but_a_sibling_folder_is_not():
    page = ROOT / "docs" / "architecture.md"
    assert names_outside("see [the README](../README.md)", page) == []
    assert names_outside("see [data](../../shared/real/README.md)", page) != []
    assert names_outside("run it with `--real ../shared/real`", page) != []


@pytest.mark.parametrize("script", REAL_DATA_BENCHMARKS)
def test_a_real_data_benchmark_without_its_folder_says_what_to_pass_and_measures_nothing(script, tmp_path):
    env = {key: value for key, value in os.environ.items() if key != "SKINCANCER_REAL_DATA"}
    for extra, wanted in (({}, "pass --real DIR or set SKINCANCER_REAL_DATA"),
                          ({"SKINCANCER_REAL_DATA": str(tmp_path)}, f"{tmp_path} (from --real or SKINCANCER_REAL_DATA)")):
        result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script)], cwd=ROOT, env={**env, **extra},
                                capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stderr
        assert wanted in result.stdout and "nothing measured" in result.stdout
        assert '{"benchmark"' not in result.stdout  # no figure


def readme_figures(text: str) -> dict[str, str]:
    """The figures the README quotes, written `name`: value (BENCHMARKS.md's own number format)."""
    return dict(re.findall(r"`([a-z0-9_]+)`: ([0-9][0-9.,]*)", text))


def test_the_readmes_performance_figures_are_benchmarks_mds():
    """A figure the README quotes is the one BENCHMARKS.md's table shows, from the committed results."""
    sys.path.append(str(ROOT / "benchmarks"))
    import tables

    quoted = readme_figures((ROOT / "README.md").read_text())
    assert {"demo_make_s", "demo_test_roc_auc", "scale_disk_33126"} <= quoted.keys()
    latest = tables.latest_figures(tables.load_runs())
    if (recipe := tables.recipe_figure()) is not None:
        latest[recipe["benchmark"]] = recipe
    assert {name: value for name, value in quoted.items() if tables.number(latest[name]["ours"]) != value} == {}


def test_a_quoted_figure_is_read_as_the_table_writes_it():
    assert readme_figures("takes `demo_make_s`: 212.5 s; `scale_disk_33126`: 2.001x") == {
        "demo_make_s": "212.5", "scale_disk_33126": "2.001"}


FAULTS = ROOT / "docs" / "faults.md"


def fault_rows() -> list[tuple[str, str]]:
    """docs/faults.md's table: (fault, test reference) per row."""
    rows = [line.split("|")[1:-1] for line in FAULTS.read_text().splitlines() if line.startswith("| ")]
    return [(cells[0].strip(), cells[-1].strip().strip("`")) for cells in rows[1:]]  # the first is the header


def test_every_fault_row_names_a_test_that_exists():
    """Each fault the docs claim is handled is a test; the README's reliability line counts them."""
    rows = fault_rows()
    assert len(rows) >= 40
    for fault, reference in rows:
        path, _, name = reference.partition("::")
        source = ROOT / path
        assert source.is_file() and re.search(rf"^def {re.escape(name)}\(", source.read_text(), re.M), (
            f"docs/faults.md: {fault!r} names {reference}, which is not a test")
    counted = re.search(r"\*\*Reliability:\*\* (\d+) faults", (ROOT / "README.md").read_text())
    assert counted and int(counted.group(1)) == len(rows)
