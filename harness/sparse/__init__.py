"""The sparse-training core: masks, distributions, schedules, criteria and methods.

Knows nothing of configs, the CLI, files or W&B: it takes a model, an optimizer and numbers.
"""
