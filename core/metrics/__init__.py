"""The papers' metrics as pure functions, one module per family: alignment, pope, vqa, choice."""
