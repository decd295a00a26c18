"""Everything a trained model is handed over as: consolidated fp32 weights with their provenance, the model card,
the MLflow model, and ONNX / TorchScript / safetensors files checked against PyTorch."""
