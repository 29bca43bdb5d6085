"""Where activations are read and changed: hook names of units (components), hook functions that
zero, mean-ablate, patch or collect (interventions), activation capture (capture) and the
simulated pruning of a mask (ablation)."""
