"""Experiment-sweep harness for pruned-diffusion fine-tuning and concept suppression."""

__version__ = "0.1.0"
