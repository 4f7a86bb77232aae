"""Experiment specs, grid expansion, planning, orchestration and the command line."""
