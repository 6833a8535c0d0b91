"""Evaluation: sample quality with our own MNIST features, per-timestep curves, and the benchmark."""
