"""Research harness for sparse training: GraNet, the pruning-plasticity study and its baselines."""

__version__ = "0.1.0"
