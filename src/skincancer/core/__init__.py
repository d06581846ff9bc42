"""The core beneath every stage: params and their resolved values, paths, atomic writes, labels, image decoding,
the backbone and archive-name registries, the calibration map and the model card. It imports no stage."""
