"""Everything after training: probabilities for an image set (prediction.py), scores and reports on labelled
images (evaluation.py), Kaggle submissions (submission.py), and models exported for use elsewhere (export.py)."""
