"""Training under DeepSpeed: the engine, the epoch loop, its resumable state and throughput meter."""
