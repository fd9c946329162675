"""Models, training, evaluation, prediction and submissions for image classification (Keras 3)."""
