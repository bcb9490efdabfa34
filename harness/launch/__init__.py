"""Starting runs: the torchrun re-exec, sweep files, the sweep planner, the local runner and SLURM."""
