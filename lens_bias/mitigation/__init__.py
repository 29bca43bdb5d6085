"""Ways to remove the bias, as one family (:mod:`lens_bias.mitigation.base`): pruning (lens_bias's
default, Wanda, random, optiPfair's fairness pruning), directional ablation, LEACE and steering,
each fitted on the train split, simulated with hooks and folded into the weights where exact.
``lens-bias experiment arena`` compares them (:mod:`lens_bias.studies.arena`)."""

from .base import FitContext, Intervention
from .registry import check_method, fit, methods

__all__ = ["FitContext", "Intervention", "check_method", "fit", "methods"]
