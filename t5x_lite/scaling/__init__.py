"""Scaling laws: Chinchilla fits, a compute-optimal planner and IsoFLOP sweeps.

* :mod:`.fits` — ``fit_chinchilla`` (Approach 3, with bootstrap intervals),
  ``approach1`` / ``approach2``, ``compute_optimal`` and the built-in ``FITS``;
* :mod:`.planner` — ``plan`` and ``apply_plan`` (``scaling.flops_budget`` -> model
  shape and ``train.num_steps``);
* :mod:`.sweep`, :mod:`.plots`, :mod:`.report` — IsoFLOP sweeps through the trainer,
  their CSV, PNG plots and markdown report;
* ``python -m t5x_lite.scaling {fit,plan,sweep,report}`` — the command line.

FLOP and parameter accounting lives in :mod:`t5x_lite.flops` (shared with the
trainer's MFU).
"""

from t5x_lite.scaling.fits import (
    FITS,
    ChinchillaFit,
    Optimum,
    compute_optimal,
    fit_chinchilla,
    load_fit,
    save_fit,
)
from t5x_lite.scaling.isoflop import PowerLaws, approach1, approach2
from t5x_lite.scaling.planner import apply_plan, nearest_shape, plan

__all__ = [
    "FITS",
    "ChinchillaFit",
    "Optimum",
    "PowerLaws",
    "apply_plan",
    "approach1",
    "approach2",
    "compute_optimal",
    "fit_chinchilla",
    "load_fit",
    "nearest_shape",
    "plan",
    "save_fit",
]
