"""Experiment tracking: MLflow runs fed from a durable journal, and run comparison."""
