"""From a mask to weights and files: zeroed or structurally pruned weights (materialize), means
folded into biases (folding), fitted constants (optimal_ablation), the export check (verification),
the Hugging Face export (export), other pruning libraries' formats (interop), the model card
(model_card) and the Hub upload (hub)."""
