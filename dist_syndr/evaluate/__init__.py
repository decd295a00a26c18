"""Using a model on labelled targets: predictions, metrics, checkpoints, fp32 export, clustering diagnostics."""
