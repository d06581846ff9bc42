"""Lesion leakage of the split on real ISIC images (opt-in: needs the real-data folder, docs/model-quality.md).

    .venv/bin/python benchmarks/real_split.py [--real DIR] [--keep]     # DIR defaults to $SKINCANCER_REAL_DATA

Fetches the Kaggle 9-class zip (class folders, no patient or lesion ids) and the `isic image download`
zip (UDA-1) as `file://` sources, then splits the index twice on the same images:

real_test_images_sharing_a_lesion
    ours: the default split (group_by [patient_id, lesion_id]) of the index completed by the HAM10000
    metadata table (`fetch.metadata`), near-duplicate links included. baseline: the split as it was
    before lesion-safe groups (`plan_split` of commit ca937e2, loaded from git: grouping by patient_id,
    no near-duplicate links) on the same images without the metadata join's lesion ids. Both are scored against the true lesions (HAM10000's lesion_id): the share of test images whose
    lesion also has an image in train or val. No ratio: ours is 0.
"""

from __future__ import annotations

import logging
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
from common import (
    PREVIOUS_SPLIT,
    bench_tmp,
    figure,
    plan_split_at,
    print_figures,
    real_data_args,
    say,
    say_machine,
)

HAM = "HAM10000_metadata.csv"
SOURCES = (("isic-9class", "skin-cancer-9-classes.zip", "class-folders"), ("isic-uda1", "isic-archive-uda1.zip", "isic-cli"))


def fetch_real(real: Path, raw: Path) -> pd.DataFrame:
    from skincancer.core.params import FetchParams
    from skincancer.ingest.fetch import fetch

    params = FetchParams.model_validate({
        "datasets": [],
        "sources": [{"name": name, "url": (real / file).as_uri(), "layout": layout} for name, file, layout in SOURCES],
        "metadata": [{"url": (real / HAM).as_uri(), "layout": "ham10000"}],
    })
    return fetch(params, raw)


def share_sharing_a_lesion(manifest: pd.DataFrame, lesion_of: pd.Series) -> tuple[int, int]:
    """Test images whose true lesion has an image in train or val, and the test images."""
    lesion = manifest["image_id"].map(lesion_of)
    test = manifest["split"] == "test"
    return int(lesion[test].isin(set(lesion[~test].dropna())).sum()), int(test.sum())


def main() -> int:
    if (args := real_data_args(__doc__.splitlines()[0], (HAM, *(file for _, file, _ in SOURCES)))) is None:
        return 0
    from skincancer.core.params import LabelParams, SplitParams
    from skincancer.ingest.metadata import ORIGIN_COLUMNS, read_metadata_table
    from skincancer.split.split import plan_split

    say_machine()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    lesion_of = read_metadata_table(args.real / HAM, "ham10000").rows["lesion_id"]
    with bench_tmp("real-split", args.keep) as tmp:
        index = fetch_real(args.real, tmp / "raw")
    labels = LabelParams(unknown="drop")
    results = {}
    previous = SimpleNamespace(seed=SplitParams().seed, fractions=SplitParams().fractions, group_by="patient_id")
    for side, split, frame, params in (
        ("baseline", plan_split_at(PREVIOUS_SPLIT), index.drop(columns=["image_hash", *ORIGIN_COLUMNS]).assign(
            lesion_id=pd.NA), previous),
        ("ours", plan_split, index, SplitParams()),
    ):
        plan = split(frame, params, labels)
        shared, test = share_sharing_a_lesion(plan.manifest, lesion_of)
        results[side] = shared / test
        removed = plan.removed["reason"].value_counts().to_dict()
        say(f"{side}: {shared} of {test} test images share a lesion with train/val ({shared / test:.1%}); "
            f"{len(plan.manifest)} images split, removed {removed}")
    print_figures([figure("real_test_images_sharing_a_lesion", results["ours"], results["baseline"], "share")])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
