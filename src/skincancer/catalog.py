"""Known ISIC sources. Each entry says which layouts its files are in and how to obtain them."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class DatasetEntry:
    description: str
    layouts: tuple[str, ...]  # layout reader names, see skincancer.layouts.LAYOUT_READERS


CATALOG: dict[str, DatasetEntry] = {
    "sample": DatasetEntry(
        "synthetic ISIC-like dermoscopy images, generated locally and offline",
        ("isic2017-udacity", "isic2020"),
    ),
}
