"""Helpers of benchmarks/real_recipe.py: the linear-probe baseline, how runs are scored, the tables of docs/model-quality.md."""
