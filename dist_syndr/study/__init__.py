"""The paper's ablation on any data: variants x seeds through the same trainer, with honest uncertainty."""
