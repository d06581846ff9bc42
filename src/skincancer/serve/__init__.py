"""After the pipeline: classify new images (predict, Grad-CAM) and export the model for serving."""
