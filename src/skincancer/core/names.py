"""The names params.yaml may use for ingest's registries, as plain data: params checks a value against them
without importing the readers (pandas, Pillow, scipy) that stand behind each name. Ingest keys its
registries by exactly these names (tests/test_house.py holds the two together)."""

from __future__ import annotations

# skincancer.ingest.layouts.LAYOUT_READERS: how a source's archive or folder is laid out
LAYOUTS = ("isic2016", "isic2017", "isic2017-udacity", "isic2018", "isic2019", "isic2020", "class-folders", "isic-cli")
# skincancer.ingest.metadata.METADATA_LAYOUTS: published tables joined to every source by image id
METADATA_LAYOUTS = ("ham10000", "isic2020", "isic-cli")
# skincancer.ingest.catalog.CATALOG: the datasets fetch.datasets may name
DATASETS = ("sample", "isic2016", "isic2017", "isic2017-udacity", "isic2018", "isic2019", "isic2020", "isic-9class",
            "isic-cli")
