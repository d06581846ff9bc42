"""Pull-request review: metrics diffs and the paired diff report against a base revision."""
