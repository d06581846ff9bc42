"""docs/model-quality.md's full-size tables from a benchmarks/real_full_size.py results file (issue 31).

    .venv/bin/python benchmarks/recipe/full_size_table.py RESULTS.json

Three tables: each variant's figures per resolution band on val and test (ROC AUC with its lesion-grouped
interval; sensitivity and specificity at the variant's threshold, Wilson intervals); each variant against the
recipe on the same images (paired AUC differences per band: val decides, test is reported; the change in
specificity); and the issue's goals on test.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

BANDS = ("pooled", "small", "full_size")


def _auc(figures: dict) -> str:
    if figures.get("roc_auc") is None:
        return "-"
    return f"{figures['roc_auc']:.3f} ({figures['roc_auc_ci_low']:.3f}-{figures['roc_auc_ci_high']:.3f})"


def _share(figures: dict, key: str) -> str:
    if figures.get(key) is None:
        return "-"
    return f"{figures[key]:.2f} ({figures[f'{key}_ci_low']:.2f}-{figures[f'{key}_ci_high']:.2f})"


def _difference(paired: dict) -> str:
    if paired.get("difference") is None:
        return "-"
    return f"{paired['difference']:+.3f} ({paired['ci_low']:+.3f} to {paired['ci_high']:+.3f})"


def figures_table(results: list[dict]) -> str:
    lines = ["| variant | split | band | images (malignant) | ROC AUC (95% CI) | sensitivity (95% CI) | specificity (95% CI) |",
             "|---|---|---|---:|---|---|---|"]
    for entry in results:
        for split in ("val", "test"):
            for band in BANDS:
                f = entry["figures"][split][band]
                lines.append(f"| {entry['name']} | {split} | {band} | {f['n']} ({f['n_malignant']}) | {_auc(f)} | "
                             f"{_share(f, 'sensitivity')} | {_share(f, 'specificity')} |")
    return "\n".join(lines)


def against_recipe_table(results: list[dict]) -> str:
    lines = ["| variant | threshold | val AUC difference: small | val: full_size | test (reported): small | test: full_size "
             "| specificity change, val / test (pooled) |", "|---|---:|---|---|---|---|---|"]
    for entry in results:
        against = entry.get("against_recipe")
        if against is None:
            continue
        paired, specificity = against["auc_difference"], against["specificity_change"]
        lines.append(f"| {entry['name']} | {entry['threshold']:.3f} | {_difference(paired['val']['small'])} | "
                     f"{_difference(paired['val']['full_size'])} | {_difference(paired['test']['small'])} | "
                     f"{_difference(paired['test']['full_size'])} | {specificity['val']['pooled']:+.3f} / "
                     f"{specificity['test']['pooled']:+.3f} |")
    return "\n".join(lines)


def goals_table(results: list[dict]) -> str:
    lines = ["| variant | full-size test ROC AUC (goal >= 0.85) | full-size test sensitivity (goal >= target - 0.05) "
             "| small copies' test ROC AUC (goal >= the recipe's interval low) | minutes |", "|---|---|---|---|---:|"]
    for entry in results:
        goals = entry["goals"]

        def cell(name: str) -> str:
            goal = goals[name]
            verdict = "met" if goal["met"] else "**missed**"
            return f"{goal['value']:.3f} vs {goal['goal']:.3f}: {verdict}"

        lines.append(f"| {entry['name']} | {cell('full_size_roc_auc')} | {cell('full_size_sensitivity')} | "
                     f"{cell('small_roc_auc')} | {entry['seconds'] / 60:.1f} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", type=Path, help="benchmarks/real_full_size.py's results.json")
    results = json.loads(parser.parse_args().results.read_text())
    print(figures_table(results), against_recipe_table(results), goals_table(results), sep="\n\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
