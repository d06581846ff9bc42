"""The benchmarks' own machinery: figures, raw results files, BENCHMARKS.md's generated tables, the ISIC 2020-shaped
corpus and the scale benchmark's measurements. (The figures themselves are measured by `make bench`, never here.)"""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from project_copy import ROOT

sys.path.append(str(ROOT / "benchmarks"))  # last: benchmarks/split.py and friends must not shadow anything
import common  # noqa: E402
import tables  # noqa: E402
from corpora import isic2020  # noqa: E402
from goals import GOALS, goal_for  # noqa: E402

# ---------------------------------------------------------------- figures


def test_a_ratio_says_how_many_times_better_ours_is_for_costs_and_for_rates():
    assert common.figure("cost", 2.0, 6.0, "s")["ratio"] == 3.0
    assert common.figure("rate", 60.0, 20.0, "images/s", better="higher")["ratio"] == 3.0
    assert common.figure("slower", 4.0, 2.0, "s")["ratio"] == 0.5
    with pytest.raises(ValueError, match="better"):
        common.figure("typo", 1.0, 2.0, "s", better="faster")


def test_a_target_figure_says_whether_the_goal_is_met_and_keeps_its_raw_passes():
    met = common.target_figure("noop_repro_10k", 1.23456, 3.0, "s", passes=[1.234561, 1.5])
    assert met["met"] is True and "baseline" not in met and "ratio" not in met
    assert met["detail"]["passes"] == [1.2346, 1.5]
    assert met["goal"] == {"value": 3.0, "better": "lower", "unit": "s", "on": "ours",
                           "source": "issue 4: a no-op `dvc repro` under 3 s"}
    assert common.target_figure("near_dup_recall_q70", 0.9, 0.99, "fraction", better="higher")["met"] is False
    assert "target" not in common.measurement("cost", 5.0, "images/s")


def test_a_target_is_refused_unless_benchmarks_goals_states_it():
    """A goal lives in benchmarks/goals.py, where the table reads it: one stated only in a script is refused."""
    with pytest.raises(ValueError, match="goals.py"):
        common.target_figure("a_new_figure", 1.0, 2.0, "s")
    with pytest.raises(ValueError, match="goals.py"):
        common.target_figure("noop_repro_10k", 1.0, 5.0, "s")  # relaxed in the script only


def test_a_ratio_figure_records_its_goal_and_verdict():
    assert common.figure("shard_vs_naive", 30.0, 10.0, "images/s", better="higher")["met"] is False
    assert common.figure("shard_vs_naive", 50.0, 10.0, "images/s", better="higher")["met"] is True
    assert "goal" not in common.figure("shard_threads_vs_processes", 50.0, 10.0, "images/s", better="higher")


def test_a_paired_ratio_is_the_median_of_the_passes_ratios_with_their_range():
    record = common.paired_figure("cost", [1.0, 2.0, 4.0], [3.0, 3.0, 4.0], "s")
    assert record["ratio"] == 1.5 and record["ratio_range"] == [1.0, 3.0]  # 3/1, 3/2, 4/4: not the best pass's 3.0
    assert record["ours"] == 2.0 and record["baseline"] == 3.0  # each side's median pass
    assert record["passes"] == {"ours": [1.0, 2.0, 4.0], "baseline": [3.0, 3.0, 4.0]}
    rates = common.paired_figure("rate", [60.0, 30.0], [20.0, 20.0], "images/s", better="higher")
    assert rates["ratio"] == 2.25 and rates["ratio_range"] == [1.5, 3.0]
    with pytest.raises(ValueError, match="passes"):
        common.paired_figure("uneven", [1.0, 2.0], [1.0], "s")


def test_the_sides_take_turns_pass_by_pass_and_get_the_same_passes():
    calls = []
    times = common.alternate(4, {"ours": lambda: calls.append("ours"), "baseline": lambda: calls.append("baseline")})
    assert calls == ["ours", "baseline", "baseline", "ours", "ours", "baseline", "baseline", "ours"]
    assert [len(passes) for passes in times.values()] == [4, 4]
    calls.clear()
    common.alternate(2, {"ours": lambda: calls.append("ours")}, prepare={"ours": lambda: calls.append("clear")})
    assert calls == ["clear", "ours", "clear", "ours"]  # the untimed step before every timed call


def test_the_code_measured_names_its_uncommitted_changes_by_a_hash(tmp_path, monkeypatch):
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "stage.py").write_text("A = 1\n")
    subprocess.run(["git", "-C", str(tmp_path), "add", "."], check=True)
    subprocess.run(["git", "-C", str(tmp_path), "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "c"],
                   check=True)
    monkeypatch.setattr(common, "ROOT", tmp_path)
    clean = common.code_version()
    assert clean["dirty"] is False and "diff_sha256" not in clean and len(clean["commit"]) == 40
    (tmp_path / "src" / "stage.py").write_text("A = 2\n")
    first = common.code_version()["diff_sha256"]
    (tmp_path / "src" / "stage.py").write_text("A = 3\n")
    assert common.code_version()["dirty"] is True and common.code_version()["diff_sha256"] not in (None, first)


# ---------------------------------------------------------------- the runner's raw results


def test_make_bench_keeps_each_runs_figures_with_the_machines_facts_in_a_dated_file(tmp_path):
    script = tmp_path / "fake_bench.py"
    script.write_text(
        "import json, sys\n"
        "print('a human line')\n"
        "print(json.dumps({'benchmark': 'fake_speed', 'ours': 2.0, 'baseline': 4.0, 'unit': 's', 'ratio': 2.0,"
        " 'better': 'lower', **({'quick': True} if '--quick' in sys.argv else {})}))\n"
    )
    broken = tmp_path / "broken_bench.py"
    broken.write_text("raise SystemExit(3)\n")
    first = common.results_path(tmp_path / "results")
    assert first.name.endswith(f"-{__import__('socket').gethostname()}.json") and first.name[:4].isdigit()

    result = subprocess.run([sys.executable, str(ROOT / "benchmarks/common.py"), str(script), str(broken),
                             "--output", str(first), "--command", "make bench"], capture_output=True, text=True)
    assert result.returncode == 1, result.stdout + result.stderr  # a failed script fails the run ...
    document = json.loads(first.read_text())  # ... and the raw results are still kept
    assert document["command"] == "make bench" and document["failed"] == [str(broken)]
    assert {"nproc", "cpu", "ram_gib", "kernel", "python", "packages", "load_average_1m", "gpu"} <= set(document["machine"])
    assert document["machine"]["packages"]["tensorflow"]
    assert [run["returncode"] for run in document["runs"]] == [0, 3]
    (speed,) = document["figures"]
    assert speed["benchmark"] == "fake_speed" and speed["script"] == str(script)
    assert speed["command"] == f".venv/bin/python {script}"
    assert common.results_path(tmp_path / "results").name == first.name.replace(".json", "-2.json")


def test_each_run_records_the_cpu_other_processes_used_meanwhile(tmp_path):
    """A figure measured beside another job reads slower: the results file says how busy the rest was."""
    script = tmp_path / "sleeping_bench.py"
    script.write_text("import time\ntime.sleep(2)\n")
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])  # outside the benchmark's process tree
    try:
        subprocess.run([sys.executable, str(ROOT / "benchmarks/common.py"), str(script),
                        "--output", str(tmp_path / "run.json")], check=True, capture_output=True)
    finally:
        busy.kill()
        busy.wait()
    (run,) = json.loads((tmp_path / "run.json").read_text())["runs"]
    assert run["other_cpu_s"] >= 1.0, run  # the busy loop's ~2 s, not the sleeping script's ~0


# ---------------------------------------------------------------- generated tables


def _results_file(folder: Path, name: str, started: str, figures: list[dict], failed: tuple[str, ...] = ()) -> None:
    machine = {"nproc": 2, "cpu": "Intel(R) Xeon(R) Processor", "ram_gib": 23.5, "load_average_1m": 0.1, "gpu": False}
    scripts = sorted({record["script"] for record in figures})
    runs = [{"script": s, "command": f".venv/bin/python {s}", "returncode": 1 if s in failed else 0, "seconds": 1.0}
            for s in scripts]
    (folder / name).write_text(json.dumps({"date": started[:10], "started": started, "host": "box", "command": "make bench",
                                           "machine": machine, "runs": runs, "failed": list(failed), "figures": figures}))


def _record(name: str, ours: float, script: str = "benchmarks/a.py", **extra) -> dict:
    return {"benchmark": name, "ours": ours, "unit": "s", "better": "lower", "script": script,
            "command": f".venv/bin/python {script}", **extra}


def test_the_tables_show_the_latest_full_figure_of_each_name_from_a_script_that_finished(tmp_path):
    _results_file(tmp_path, "2026-12-01-box.json", "2026-12-01T10:00:00+00:00", [
        _record("speed", 3.0, baseline=6.0, ratio=2.0),
        _record("noop", 2.5, target=3.0, met=True),
    ])
    _results_file(tmp_path, "2026-12-02-box.json", "2026-12-02T10:00:00+00:00", [
        _record("speed", 1.0, baseline=6.0, ratio=6.0, quick=True),  # --quick: never shown
        _record("noop", 4.0, target=3.0, met=False),
        _record("crash", 1.0, script="benchmarks/b.py", target=2.0, met=True),  # its script failed
        _record("cost", 12.5, script="benchmarks/c.py"),
    ], failed=("benchmarks/b.py",))
    (tmp_path / "2026-12-01-real-recipe.json").write_text("[]")  # another script's own format: ignored

    rows = tables.figures_table(tables.load_runs(tmp_path), tmp_path).splitlines()[2:]
    speed, noop, cost, *unmeasured = rows
    assert speed.startswith("| `speed` | 3 | 6 | s | 2.00x (best passes) | - | no goal |")
    assert "(benchmarks/results/2026-12-01-box.json)" in speed
    assert noop.startswith("| `noop` | 4 | - | s | - | <= 3 s | **missed** |") and "2026-12-02-box.json" in noop
    assert cost.startswith("| `cost` | 12.5 | - | s | - | - | no goal |")
    assert "2 cores (Intel Xeon), 23.5 GiB, load 0.1" in speed and "`.venv/bin/python benchmarks/a.py`" in speed
    # every goal of benchmarks/goals.py without a figure yet is shown all the same
    assert len(unmeasured) == sum(1 for name in GOALS if "*" not in name)
    assert all(row.endswith("| not measured yet | - | - | - |") for row in unmeasured)


def test_every_goal_is_shown_in_benchmarks_md_with_its_verdict():
    """A figure that has a goal (in benchmarks/goals.py, or recorded with it in its results file: a target, or a
    target_* in its detail as older runs wrote them) shows that goal and met, missed or not measured yet."""
    text = (ROOT / "BENCHMARKS.md").read_text()
    table = text[text.index("<!-- generated: figures -->"):text.index("<!-- end: figures -->")]
    rows = {row.split("|")[1].strip(" `"): [cell.strip() for cell in row.split("|")[1:-1]]
            for row in table.splitlines()[3:]}
    latest = tables.latest_figures(tables.load_runs())
    stated = {name for name in GOALS if "*" not in name} | {
        name for name, record in latest.items()
        if goal_for(name) or "target" in record or any(key.startswith("target") for key in record.get("detail", {}))}
    assert stated - rows.keys() == set()
    for name in stated:
        goal, verdict = rows[name][5], rows[name][6]
        assert goal != "-" and verdict in {"met", "**missed**", "not measured yet"}, (name, rows[name])


def test_benchmarks_md_tables_are_the_ones_generated_from_the_committed_results():
    """A figure copied by hand, or a results file BENCHMARKS.md does not show, fails here: `make bench-tables`."""
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks/tables.py"), "--check"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_a_hand_edited_table_is_caught(tmp_path):
    document = tmp_path / "BENCHMARKS.md"
    text = (ROOT / "BENCHMARKS.md").read_text()
    start = text.index("<!-- generated: figures -->")
    row = text.index("\n| `", start) + 1
    edited = text[:row] + text[row:].replace("|", "| 0 |", 1)
    document.write_text(edited)
    assert tables.main(["--check", "--document", str(document)]) == 1
    assert tables.main(["--document", str(document)]) == 0
    assert document.read_text() == text


# ---------------------------------------------------------------- the ISIC 2020-shaped corpus


def test_the_corpus_has_isic_2020s_shape_and_every_size_is_a_prefix_of_the_next():
    rows = isic2020.rows(isic2020.ISIC2020_IMAGES)
    patients = {row.patient_id for row in rows}
    malignant = sum(row.malignant for row in rows) / len(rows)
    duplicates = [row for row in rows if row.duplicate_of is not None]
    assert 1850 <= len(patients) <= 2260  # 2,056 patients, ~16 images each
    assert 0.015 <= malignant <= 0.021  # 1.8%
    assert 0.010 <= len(duplicates) / len(rows) <= 0.016  # 425 listed pairs
    assert all(rows[row.duplicate_of].duplicate_of is None for row in duplicates)  # a copy of an original
    assert all(rows[row.duplicate_of].patient_id == row.patient_id for row in duplicates)
    assert {row.size for row in rows} == {(w, h) for w, h, _ in isic2020.SIZE_MIX}
    assert isic2020.rows(2000) == rows[:2000]


def test_a_generated_corpus_reads_through_the_isic2020_layout_and_a_larger_one_copies_it(tmp_path, monkeypatch):
    from skincancer.ingest.layouts import read_isic2020_duplicates, read_layout

    monkeypatch.setenv("SKINCANCER_BENCH_CACHE", str(tmp_path / "cache"))
    small = isic2020.isic2020_corpus(12, workers=1)
    larger = isic2020.isic2020_corpus(20, workers=1)
    assert sorted(p.name for p in larger.iterdir()) == sorted(
        [isic2020.ZIP_NAME, isic2020.TRUTH_NAME, isic2020.DUPLICATES_NAME])
    with zipfile.ZipFile(small / isic2020.ZIP_NAME) as a, zipfile.ZipFile(larger / isic2020.ZIP_NAME) as b:
        assert a.namelist() == b.namelist()[:12]
        assert all(a.read(name) == b.read(name) for name in a.namelist())
    assert isic2020.isic2020_corpus(20) == larger  # cached: found, not generated again

    index = read_layout("isic2020", larger, source="isic2020", raw_root=larger.parent)
    rows = isic2020.rows(20)
    assert list(index["image_id"]) == [row.image_name for row in rows]
    assert list(index["benign_malignant"]) == ["malignant" if row.malignant else "benign" for row in rows]
    pairs = read_isic2020_duplicates(larger)
    assert pairs == [(rows[row.duplicate_of].image_name, row.image_name) for row in rows if row.duplicate_of is not None]
    by_id = index.set_index("image_id")["sha256"]
    assert all(by_id[original] == by_id[copy] for original, copy in pairs)


# ---------------------------------------------------------------- the scale benchmark's measurements


def test_the_growth_exponent_is_the_power_of_n():
    import scale

    sizes = [2000, 8000, 33126]
    assert scale.growth_exponent(sizes, [3 * n for n in sizes]) == pytest.approx(1.0)
    assert scale.growth_exponent(sizes, [n**2 / 100 for n in sizes]) == pytest.approx(2.0)
    assert scale.growth_exponent(sizes, [5.0, 5.0, 5.0]) == pytest.approx(0.0)


def test_a_commands_peak_memory_counts_its_whole_process_tree(tmp_path):
    import scale

    ballast = bytearray(600 * 2**20)  # this process is large: a forked child's ru_maxrss would start here
    ballast[::4096] = b"x" * len(ballast[::4096])
    child = "import time; b = bytearray(300 * 2**20); b[::4096] = b'x' * len(b[::4096]); time.sleep(1.5)"
    # the child stands for the stage script: its command line names flows.<stage>, as `python -m flows.<stage>` does
    parent = f"import subprocess, sys; subprocess.run([sys.executable, '-c', {child!r}, 'flows.fake'], check=True)"
    measured = scale.measured([sys.executable, "-c", parent], tmp_path, {"PATH": "/usr/bin:/bin"}, tmp_path / "log",
                              "fake")
    assert measured.returncode == 0
    assert measured.peak_tree_mb > 300  # the grandchild's 300 MB, sampled while it held them
    assert 300 < measured.stage_process_mb < 450  # the stage script's own peak, not the 600 MB of this process
    assert measured.seconds >= 1.5
    del ballast


def test_the_marginal_exponent_reads_the_growth_between_the_two_largest_sizes():
    import scale

    sizes = [2000, 8000, 32000]
    with_fixed_cost = [20 + n / 100 for n in sizes]  # 40, 100, 340 s: linear plus 20 s of imports
    assert scale.growth_exponent(sizes, with_fixed_cost) < 0.85  # the fit reads the fixed cost as sublinear growth
    assert scale.marginal_exponent(sizes, with_fixed_cost) == pytest.approx(0.88, abs=0.01)
    assert scale.marginal_exponent(sizes, [n**1.2 for n in sizes]) == pytest.approx(1.2)
