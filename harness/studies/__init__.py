"""Studies built on the engine: the pruning-plasticity study (planning and the probe)."""
