"""Keras' private internals the toolkit relies on, in one place, behind a version guard.

Keras is bounded in pyproject to the minor version tested (3.15). Every private name used lives here, and
tests/test_compat.py holds one contract test per name: an upgrade that changes one fails there, loudly, instead of
somewhere in a training run.
- `BackupAndRestore` resumes a fit by setting `model._initial_epoch` (no public way to read where it resumed).
- keras-team/keras#20585: `fit` under MultiWorkerMirroredStrategy (`fix_distributed_fit`).
- `keras.src.export.onnx.patch_tf2onnx`: tf2onnx on NumPy 2 (`patch_tf2onnx`).
"""

from __future__ import annotations

import keras
import tensorflow as tf

TESTED = ((3, 15), (3, 16))  # [lowest, highest) Keras minor versions whose internals the contract tests check


def version_problem(version: str = keras.__version__) -> str | None:
    """Why this Keras is outside the tested range, or None."""
    major_minor = tuple(int(part) for part in version.split(".")[:2])
    if TESTED[0] <= major_minor < TESTED[1]:
        return None
    return (
        f"Keras {version} is installed, but imgclf relies on internals of Keras {TESTED[0][0]}.{TESTED[0][1]} "
        "(app/keras_compat.py). Fix: pip install 'keras>=3.15,<3.16'"
    )


def check_version() -> None:
    problem = version_problem()
    if problem:
        raise ImportError(problem)


check_version()


def reset_initial_epoch(model: keras.Model) -> None:
    """Forget where an earlier fit resumed: Keras keeps it on the model, and the next stage's fit must not inherit it."""
    model._initial_epoch = None


def resumed_epoch(model: keras.Model) -> int | None:
    """The epoch `BackupAndRestore` resumed the last fit at, or None if it started afresh."""
    return model._initial_epoch


def patch_tf2onnx() -> None:
    """tf2onnx 1.17 still uses NumPy names that NumPy 2 removed; Keras patches them for its own ONNX export."""
    try:
        from keras.src.export.onnx import patch_tf2onnx as keras_patch
    except ImportError:  # a Keras without the helper: the tf2onnx it supports needs no patch
        return
    keras_patch()


def fix_distributed_fit() -> None:
    """Make Keras 3's `fit`/`evaluate` work under MultiWorkerMirroredStrategy beyond one worker, and take the same
    steps under any tf.distribute strategy as in one process.

    Keras 3.15 (keras-team/keras#20585, open since TF 2.16) fails there twice, both in its TensorFlow trainer:
    - `_maybe_symbolic_build` draws a first batch, an (x, y) tuple, and all-reduces it to learn its shapes; the
      collective all-reduce takes one tensor, not a tuple ("Attempt to convert a value (PerReplica...) to a
      Tensor"). Drawing it also starts an epoch of the dataset that is then thrown away, so a dataset that
      reshuffles each epoch trains on another order than in one process. The shapes and dtypes, all the build
      needs, are taken from the dataset's `element_spec` instead (under any tf.distribute strategy).
    - `reduce_per_replica` averages the step's logs with `axis=0`, and they are scalars ("Invalid reduction
      dimension 0 for input with 0 dimensions"). They are averaged over replicas with `axis=None` instead.
    Everything else (the train step, the gradient all-reduce, metrics, callbacks) is Keras' own; the tests check that
    two workers reach the same weights as one process on the same global batches. Applied once, and only where
    Keras has those functions (a Keras that renamed them has changed this code and may well have fixed it)."""
    from keras.src.backend.tensorflow import trainer as tf_trainer

    trainer = getattr(tf_trainer, "TensorFlowTrainer", None)
    needed = ("reduce_per_replica", "_collective_all_reduce_multi_worker", "_is_per_replica_instance")
    if (
        getattr(trainer, "_imgclf_distributed_fit_fixed", False)
        or not all(hasattr(tf_trainer, name) for name in needed)
        or not hasattr(trainer, "_maybe_symbolic_build")
    ):
        return
    keras_build = trainer._maybe_symbolic_build
    keras_reduce = tf_trainer.reduce_per_replica

    def maybe_symbolic_build(self, iterator=None, data_batch=None):  # noqa: ANN001, ANN202 - Keras' signature
        if iterator is None or self._distribute_strategy is None:
            return keras_build(self, iterator, data_batch)
        with self.distribute_strategy.scope():  # shapes and dtypes are all the build needs
            self._symbolic_build(data_batch=iterator.data_adapter.get_tf_dataset().element_spec)

    def reduce_per_replica(values, strategy, reduction):  # noqa: ANN001, ANN202 - Keras' signature
        if tf_trainer._collective_all_reduce_multi_worker(strategy) and reduction in ("auto", "mean"):
            return tf.nest.map_structure(lambda v: strategy.reduce("MEAN", v, axis=None) if tf_trainer._is_per_replica_instance(v) else v, values)
        return keras_reduce(values, strategy, reduction)

    trainer._maybe_symbolic_build = maybe_symbolic_build
    tf_trainer.reduce_per_replica = reduce_per_replica
    trainer._imgclf_distributed_fit_fixed = True
