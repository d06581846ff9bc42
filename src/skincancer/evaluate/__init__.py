"""Stage 5, evaluate: the one scoring path, metrics with intervals, calibration fit, threshold and the report."""
