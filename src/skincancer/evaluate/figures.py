"""Matplotlib for files, not screens: the Agg backend, and figures as PNG bytes that are the same for
the same figure (no Software metadata), so regenerated reports only differ where the data does."""

from __future__ import annotations

import io

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

__all__ = ["plt", "png_bytes"]


def png_bytes(figure: plt.Figure) -> bytes:
    """The figure as PNG bytes at 100 dpi, trimmed to its content; the figure is closed."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100, bbox_inches="tight", metadata={"Software": None})
    plt.close(figure)
    return buffer.getvalue()
