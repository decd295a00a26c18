"""Using what was trained: score any images (command line and Python), export to ONNX, TorchScript and
safetensors with a model card, and log the model to MLflow."""
