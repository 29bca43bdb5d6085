"""The numbers: bias metrics on pairs (metrics), CrowS-Pairs, perplexity and KL (capability), the
targets attribution optimizes (targets), before/after changes with intervals and tests (changes)
and the evaluation of a (simulated) pruning (evaluation)."""
