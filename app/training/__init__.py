"""Training: one way to prepare data and fit, shared by every caller.

    run.py           train(cfg): a run directory, the fit, the final metrics and reports (`imgclf train`)
    fitting.py       the fit itself, stage by stage: build, compile, callbacks, `model.fit` (train, LR finder, tuner)
    lr_finder.py     the LR range test (`imgclf lr-find`)
    crossval.py      k-fold cross-validation: a run per fold, out-of-fold predictions (`imgclf cv`)
    callbacks.py     the Keras callbacks runs add (atomic best-model checkpoint, history CSV, best weights)
    schedules.py     the learning-rate schedules, registered for `.keras` loading
    optimization.py  optimizers and losses from the config

Nothing here knows the CLI (app/cli/ parses and prints) or the search (tuning/ builds on this package).
"""
