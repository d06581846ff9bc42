"""skincancer: a reproducible ISIC dermoscopy -> benign/malignant classifier pipeline."""

__version__ = "0.1.0"
