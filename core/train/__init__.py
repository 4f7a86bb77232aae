"""Training: the per-worker loop of a stage, its schedule and its checkpoints."""
