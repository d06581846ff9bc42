"""docs/model-quality.md's tables, from the results.json that benchmarks/real_recipe.py writes.

    .venv/bin/python benchmarks/recipe/table.py /tmp/skincancer-real-recipe/results.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def _auc(scores: dict) -> str:
    if scores.get("roc_auc") is None:
        return "-"
    return f"{scores['roc_auc']:.3f} ({scores['ci_low']:.3f}-{scores['ci_high']:.3f})"


def _delta(entry: dict, reference: dict | None, split: str) -> str:
    if reference is None or entry is reference:
        return ""
    return f"{entry['scores'][split]['all']['roc_auc'] - reference['scores'][split]['all']['roc_auc']:+.3f}"


def row(entry: dict, reference: dict | None) -> str:
    """One run's scores; its deltas are against `reference` (an entry's own `relative_to` run when it names one)."""
    val, test = entry["scores"]["val"], entry["scores"]["test"]
    minutes = f"{entry['seconds'] / 60:.1f}" if "seconds" in entry else "-"
    change = entry.get("description", "") + (f" (against {entry['relative_to']})" if "relative_to" in entry else "")
    return (f"| {entry['name']} | {change} | {_auc(val['all'])} | {_delta(entry, reference, 'val')} | "
            f"{_auc(test['all'])} | {_delta(entry, reference, 'test')} | {test['all']['specificity_at_95_sensitivity']:.3f} | "
            f"{_auc(val['full_size'])} | {_auc(test['full_size'])} | {minutes} |")


HEADER = ("| run | change | val ROC AUC (95% CI) | val delta | test ROC AUC (95% CI) | test delta | test spec @ 95% sens "
          "| full-size val AUC | full-size test AUC | minutes |\n|---|---|---|---|---|---|---|---|---|---|")


def tables(results: list[dict]) -> str:
    by_name = {entry["name"]: entry for entry in results}
    def recipe_first(kind: str) -> list[dict]:
        entries = [entry for entry in results if entry["kind"] == kind]
        return sorted(entries, key=lambda entry: not entry["name"].startswith("recipe"))

    pipeline, probes, robustness = recipe_first("pipeline"), recipe_first("linear_probe"), recipe_first("robustness")
    recipe = by_name.get("recipe")
    probe_reference = by_name.get("recipe/probe_diagnosis")
    return "\n".join([
        "Fine-tuned runs (each one change to the recipe, or to the run it names; delta: against that, same split; minutes: the "
        "recipe's a whole run from fetch on an idle machine, the others' `dvc repro` of the stages they change, "
        "some beside other jobs):", "", HEADER,
        *(row(entry, by_name.get(entry.get("relative_to"), recipe)) for entry in pipeline), "",
        "Linear probes on frozen ImageNet features (preprocessing ablations; delta: against the probe on the recipe's shards, same target):",
        "", HEADER,
        *(row(entry, by_name.get(f"recipe/{entry['name'].split('/')[1]}") or probe_reference) for entry in probes), "",
        *(robustness_table(entry) for entry in robustness),
    ])


def robustness_table(entry: dict) -> str:
    model = "the recipe model" if entry["name"] == "robustness" else f"the {entry['name'].split('/')[0]} run"
    lines = [f"Robustness of {model} (median |delta p| against the original; bar {entry['bar']}), "
             f"{entry['n']} test images ({entry['n_full_size']} full-size):", "",
             "| copy | all test images | full-size test images |", "|---|---|---|"]
    lines += [f"| {name} | {delta['all']:.4f} | {delta['full_size']:.4f} |" for name, delta in entry["median_abs_delta"].items()]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(tables(json.loads(Path(sys.argv[1]).read_text())))
