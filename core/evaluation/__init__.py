"""Evaluation: alignment diagnostics (and, later, generation and benchmark scoring)."""
