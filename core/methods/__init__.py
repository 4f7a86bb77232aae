"""Training objectives per method: what each adds to the language-modelling loss."""
