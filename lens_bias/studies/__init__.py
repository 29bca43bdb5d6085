"""Experiments composed from the stages: pruning curves and scorer comparisons (curve), the
cross-domain matrix (generalize), leave-one-domain-out transfer (transfer) and the selector
comparison (selectors)."""
