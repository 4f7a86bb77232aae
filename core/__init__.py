"""What a trial is made of: models, data, methods, training and evaluation."""
