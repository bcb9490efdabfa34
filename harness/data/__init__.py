"""Data: the datasets (`datasets`; their names, plug-ins included, in `harness.registry.datasets`) and the
loaders with exact mid-epoch resume (`loaders`)."""
