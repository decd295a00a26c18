"""A training run on disk: its folder, its checkpoints read without running anyone's code, its fp32 weights and
model card, and the model they make."""
