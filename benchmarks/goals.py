"""Every goal a benchmark figure is held to, in one table: the scripts record a figure's goal from here, and
BENCHMARKS.md's table shows it beside the figure with its verdict (benchmarks/tables.py).

A goal is never removed or relaxed because a figure misses it. It stays here, and the table marks the figure
missed, until the code meets it or an issue retires it (say which in the commit that changes this table).
tests/test_benchmarks.py fails when a figure has a goal that the table does not show.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from fnmatch import fnmatchcase


@dataclass(frozen=True)
class Goal:
    """``value`` in ``unit``, on the figure itself (``on="ours"``) or on its ratio to the baseline (``on="ratio"``,
    x better); ``better`` says which way meets it; ``source`` where it was set."""

    value: float
    better: str  # "lower" | "higher"
    unit: str
    source: str
    on: str = "ours"  # "ours" | "ratio"

    def met(self, record: dict) -> bool | None:
        """Whether the figure meets the goal; None when the record lacks the value the goal is on."""
        measured = record.get("ratio" if self.on == "ratio" else "ours")
        if measured is None:
            return None
        return measured <= self.value if self.better == "lower" else measured >= self.value

    def cell(self) -> str:
        sign = "<=" if self.better == "lower" else ">="
        return f"{sign} {self.value:g}x the baseline" if self.on == "ratio" else f"{sign} {self.value:g} {self.unit}"

    def as_record(self) -> dict:
        return asdict(self)


# name (or fnmatch pattern, for per-size and per-stage figures) -> goal
GOALS: dict[str, Goal] = {
    # the demo a new user runs (issue 32)
    "demo_make_s": Goal(240.0, "lower", "s", "issue 32: `make demo` on a fresh clone, install included, 2 cores"),
    "demo_test_roc_auc": Goal(0.90, "higher", "ROC AUC", "issue 32: the demo still learns (test ROC AUC on the sample)"),
    # split and its no-op (issue 4, 15)
    "split_10k": Goal(30.0, "lower", "s", "issue 4: the split of 10k images under 30 s on 2 cores"),
    "noop_repro_10k": Goal(3.0, "lower", "s", "issue 4: a no-op `dvc repro` under 3 s"),
    "split_disk_overhead_10k": Goal(1.05, "lower", "x the images", "issue 4: about one copy of the images"),
    "split_groups_isic2020": Goal(10.0, "lower", "s", "issue 15: grouped split of an ISIC 2020-sized index under 10 s"),
    # shard (issue 5)
    "shard_vs_naive": Goal(4.0, "higher", "images/s", "issue 5: the shard stage >= 4x the seed's Pillow loop", on="ratio"),
    "shard_peak_memory_growth": Goal(1.2, "lower", "x", "issue 5: memory does not grow with the image count"),
    # train's input (issue 6)
    "input_pipeline_vs_seed": Goal(5.0, "higher", "images/s", "issue 6: our input pipeline >= 5x the seed tutorials'",
                                   on="ratio"),
    "frozen_epoch_cache_vs_none": Goal(10.0, "higher", "s", "issue 6: the feature cache >= 10x", on="ratio"),
    # orchestration (issue 8)
    "orchestration_overhead": Goal(20.0, "lower", "s", "issue 8: one shared server's overhead for a whole run"),
    "orchestration_overhead_per_stage": Goal(2.5, "lower", "s", "issue 8: per stage, with a server already up"),
    # near-duplicates and lesion-safe splits (issue 15)
    "near_dup_recall_crop": Goal(0.95, "higher", "fraction", "issue 15: a cropped copy is found"),
    "near_dup_recall_*": Goal(0.99, "higher", "fraction", "issue 15: a resized or re-encoded copy is found"),
    "near_dup_false_links": Goal(0.001, "lower", "fraction of images", "issue 15: images linked to another lesion"),
    "near_dup_pairs_33k": Goal(5.0, "lower", "s", "issue 15: all pairs of 33k hashes"),
    "real_test_images_sharing_a_lesion": Goal(0.0, "lower", "share", "issue 15: no test image shares a lesion with train/val"),
    # serving (issue 19)
    "serving_bytes_vs_predict_max": Goal(0.02, "lower", "score", "issue 19: serve_bytes agrees with predict"),
    "cli_refuses_a_bad_format": Goal(1.0, "lower", "s", "issue 19: a refused format answers within a second"),
    # ISIC 2020 scale (issue 20, 32)
    "scale_data_path_33126": Goal(900.0, "lower", "s", "issue 20: fetch + split + shard of 33k images under 15 min"),
    "scale_noop_repro_*": Goal(3.0, "lower", "s", "issue 20: a no-op `dvc repro` under 3 s at any size"),
    "scale_time_exponent_*": Goal(1.1, "lower", "exponent", "issue 20: time grows at most linearly"),
    "scale_memory_growth_shard": Goal(1.05, "lower", "x", "issue 32: shard's memory above imports flat, 8k to 33k"),
    "scale_memory_growth_*": Goal(1.2, "lower", "x", "issue 20: memory above imports flat in the image count"),
    "scale_disk_33126": Goal(1.5, "lower", "x the archives", "issue 32: workspace + DVC cache at most 1.5x the archives"),
    # the real-data recipe (issue 16)
    "real_recipe_repro": Goal(1800.0, "lower", "s", "issue 16: the recipe's whole `dvc repro` under 30 min"),
}


def goal_for(name: str) -> Goal | None:
    """The goal of figure ``name``: its own entry, else the first pattern it matches, else None (no goal)."""
    if name in GOALS:
        return GOALS[name]
    return next((goal for pattern, goal in GOALS.items() if fnmatchcase(name, pattern)), None)
