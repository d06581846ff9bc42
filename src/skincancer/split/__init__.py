"""Stage 2, split: label, drop duplicates, group by patient and lesion, place groups 80/10/10, materialise folders."""
