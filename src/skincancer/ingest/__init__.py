"""Stage 1, fetch: download ISIC archives and tables, read each layout in place, hash images, write the index."""
