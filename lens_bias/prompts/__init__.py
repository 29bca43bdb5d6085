"""What the model is fed: contrastive prompt pairs and their templates (pairs), counterfactual
sentence pairs (sentences), a deployer's own templates (custom), train/held-out splits by template
(splits) and the evaluation corpora's readers (corpora: CrowS-Pairs, WikiText-2, LAMBADA)."""
