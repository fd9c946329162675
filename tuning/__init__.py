"""Architecture and hyperparameter search on KerasTuner, over the toolkit's own config, models and fit path.

    from tuning import search
    result = search(load_config("search", ["data.train=my_images/"]))
    result.best_config   # best.yaml: imgclf train -c <it>

Layout: space.py (tune.space -> hyperparameters), hypermodels.py (HyperModels: hp -> Config -> model -> fit),
oracles.py (KerasTuner's oracles, proposing only networks worth training), tuner.py (the trial runner),
search.py (search directory, resume, data prepared once; the chief and worker roles of a distributed search),
distributed.py (KerasTuner's gRPC chief/worker engine with worker liveness and one-line errors), results.py
(trials.csv, best.yaml, summary.md, plots).
"""

from tuning.hypermodels import BackboneHyperModel, BaselineHyperModel, make_hypermodel
from tuning.search import SearchResult, load_best_config, search
from tuning.space import SearchSpace, parse_space

__all__ = ["BackboneHyperModel", "BaselineHyperModel", "SearchResult", "SearchSpace", "load_best_config", "make_hypermodel", "parse_space", "search"]
