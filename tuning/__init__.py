"""Architecture and hyperparameter search on KerasTuner, over the toolkit's own config, models and fit path.

    from tuning import search
    result = search(load_config("search", ["data.train=my_images/"]))
    result.best_config   # best.yaml: imgclf train -c <it>

Layout, by role: space.py (tune.space -> hyperparameters), hypermodels.py (HyperModels: hp -> Config -> model ->
fit), oracles.py (KerasTuner's oracles, proposing only networks worth training), tuner.py (the trial runner),
directory.py (a search's directory: identity, resume, joining), session.py (what every way of running a search
shares: tuner set-up, progress, data prepared once, results at the end), search.py (`search`: in one process or as
a chief), distributed/ (KerasTuner's gRPC chief/worker engine with worker liveness and one-line errors), final.py
(best.yaml trained as a normal run), results.py (trials.csv, best.yaml, summary.md, plots), compat.py (KerasTuner's
internals, behind a version guard).
"""

from tuning.final import load_best_config, train_best
from tuning.hypermodels import BackboneHyperModel, BaselineHyperModel, make_hypermodel
from tuning.search import SearchResult, search
from tuning.space import SearchSpace, parse_space

__all__ = [
    "BackboneHyperModel",
    "BaselineHyperModel",
    "SearchResult",
    "SearchSpace",
    "load_best_config",
    "make_hypermodel",
    "parse_space",
    "search",
    "train_best",
]
