"""The run store: the run-directory contract, atomic files, tolerant readers, checkpoints, mask snapshots, tracking and the W&B mirror."""
