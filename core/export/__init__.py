"""Trained trials as standard transformers LLaVA checkpoints (`LlavaForConditionalGeneration` + `AutoProcessor`)."""
