"""Makes Keras 3's `model.fit` work under TensorFlow's MultiWorkerMirroredStrategy.

Keras 3.15's TensorFlow trainer fails under MultiWorkerMirroredStrategy in two places
(keras-team/keras#20585, open):

1. Before the first step, `_maybe_symbolic_build` reduces the first distributed batch
   with `strategy.reduce("MEAN", (x, y))`; the collective strategy cannot reduce a tuple
   ("Attempt to convert a value (PerReplica...) to a Tensor").
2. After every step, `reduce_per_replica` means the logs with `strategy.reduce(..., axis=0)`,
   which fails for scalar losses and metrics ("Invalid reduction dimension 0").

`enable()` replaces both with versions that do what the single-machine path does: build
from one replica's batch, and average each log value across all workers (axis=None for
scalars). Only the multi-worker path changes; every other strategy takes Keras's own
code. The two-process test in tests/pipeline/training/test_multi_worker.py fails if a
Keras upgrade changes what these rely on.
"""

from __future__ import annotations

import functools

_enabled = False


def _trainer_module():
    from keras.src.backend.tensorflow import trainer

    return trainer


def _is_multi_worker(strategy) -> bool:
    return strategy is not None and _trainer_module()._collective_all_reduce_multi_worker(strategy)


def _mean_across_workers(values, strategy):
    """Averages each (per-replica) log value over every replica of every worker."""
    from keras.src import tree

    def mean(value):
        rank = strategy.experimental_local_results(value)[0].shape.rank
        return strategy.reduce("MEAN", value, axis=None if rank == 0 else 0)

    return tree.map_structure(mean, values)


def enable() -> None:
    """Patches Keras's TensorFlow trainer for MultiWorkerMirroredStrategy (idempotent)."""
    global _enabled
    if _enabled:
        return
    from keras.src import tree

    trainer = _trainer_module()
    keras_reduce = trainer.reduce_per_replica
    keras_build = trainer.TensorFlowTrainer._maybe_symbolic_build

    @functools.wraps(keras_reduce)
    def reduce_per_replica(values, strategy, reduction):
        if reduction == "auto" and _is_multi_worker(strategy):
            return _mean_across_workers(values, strategy)
        return keras_reduce(values, strategy, reduction)

    @functools.wraps(keras_build)
    def maybe_symbolic_build(self, iterator=None, data_batch=None):
        strategy = self._distribute_strategy
        if iterator is not None and _is_multi_worker(strategy):
            for _, _, batches in iterator:  # As Keras does: the first batch gives the shapes.
                first = next(batches)
                data_batch = tree.map_structure(lambda value: strategy.experimental_local_results(value)[0], first)
                break
            iterator = None
        return keras_build(self, iterator=iterator, data_batch=data_batch)

    trainer.reduce_per_replica = reduce_per_replica
    trainer.TensorFlowTrainer._maybe_symbolic_build = maybe_symbolic_build
    _enabled = True
