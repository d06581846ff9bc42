"""metrics.json before and after, as one reviewable table: every metric with old, new and delta.

Rows follow metrics.json's own key order (threshold, then val, then test), so two reports of the
same pipeline line up; numbers are printed at a fixed precision so unchanged values read equal.
"""

from __future__ import annotations

from dataclasses import dataclass

from skincancer.evaluate.summary import number

DIGITS = 4


@dataclass(frozen=True)
class MetricChange:
    name: str  # "threshold", "val.roc_auc", "calibration.method", ...
    old: float | int | str | None
    new: float | int | str | None

    @property
    def delta(self) -> float | None:
        """new - old for numbers; None where a side is missing or a value is a word (calibration.method)."""
        if not (_is_number(self.old) and _is_number(self.new)):
            return None
        return self.new - self.old


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def flatten(metrics: dict, prefix: str = "") -> dict[str, float | int | str | None]:
    """{"val": {"roc_auc": x}} -> {"val.roc_auc": x}, keeping the file's key order."""
    flat: dict[str, float | int | str | None] = {}
    for key, value in metrics.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def changes(old: dict | None, new: dict) -> list[MetricChange]:
    """Every metric of either side: new order first, then metrics only the old file had."""
    before, after = flatten(old or {}), flatten(new)
    names = list(after) + [name for name in before if name not in after]
    return [MetricChange(name, before.get(name), after.get(name)) for name in names]


def _cell(value: float | int | str | None, signed: bool = False) -> str:
    """A word as it is (calibration.method); a number, or no value, as every metric is shown."""
    return number(value, DIGITS, signed=signed) if value is None or _is_number(value) else str(value)


def diff_markdown(old: dict | None, new: dict, *, only_changed: bool = False) -> str:
    """A markdown table `metric | old | new | delta`; `-` where a side has no value (evaluate.summary.UNDEFINED)."""
    rows = [change for change in changes(old, new) if not only_changed or change.old != change.new]
    lines = ["| metric | old | new | delta |", "|---|---:|---:|---:|"]
    lines += [
        f"| {c.name} | {_cell(c.old)} | {_cell(c.new)} | {_cell(c.delta, signed=True)} |" for c in rows
    ]
    return "\n".join(lines)
