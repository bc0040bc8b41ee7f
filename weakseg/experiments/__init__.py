"""Experiments: a spec (dataset, budget, method, model, training, seeds, grid) -> rows of mean ± std metrics."""

from weakseg.experiments.results import aggregate, write_results
from weakseg.experiments.runner import expand_rows, run_experiment

__all__ = ["aggregate", "expand_rows", "run_experiment", "write_results"]
