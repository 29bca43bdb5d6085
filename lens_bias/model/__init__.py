"""Loading and running a model: the zoo of embedded models (zoo), loading into a TransformerLens
bridge (load), where its weights live (layout), devices and device maps (devices), chat templates
(chat) and padded batches of prompts (batching)."""
