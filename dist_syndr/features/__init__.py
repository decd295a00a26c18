"""Image embeddings: timm backbones, the IQA model built on them, preprocessing and the batched forward pass."""
