"""Stage 4, train: tf.data pipelines, augmentation, backbones and heads, hardware strategies, resumable fitting."""
