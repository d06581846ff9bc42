"""Training across processes (MultiWorkerMirroredStrategy, a cluster described by TF_CONFIG): the
strategy in a form Keras 3's `fit` can drive, and which worker writes the outputs.

Keras 3's TensorFlow trainer calls `strategy.reduce` in two ways MultiWorkerMirroredStrategy refuses
(keras-team/keras#20585, tensorflow/tensorflow#72388): on the whole first batch at once, to build the
model before tracing, and on scalar metrics along axis 0. `KerasMultiWorkerMirrored` reduces each
value on its own, scalars over the workers only; a batch of uint8 images, which collectives cannot
carry and Keras reads only for its shape and dtype, stays this worker's own.
"""

from __future__ import annotations

import json
import os

import tensorflow as tf

COLLECTIVE_DTYPES = (tf.bfloat16, tf.float16, tf.float32, tf.float64, tf.int32, tf.int64)


def _workers_in(cluster: dict) -> int:
    """Processes that train in a cluster (role -> addresses): its chief and workers, not its evaluators."""
    return sum(len(cluster.get(role, [])) for role in ("chief", "worker"))


def cluster_size() -> int:
    """Workers named in TF_CONFIG, 0 without one: what `train.distribute: auto` decides on."""
    try:
        cluster = json.loads(os.environ.get("TF_CONFIG", "{}")).get("cluster", {})
    except json.JSONDecodeError as error:
        raise ValueError(f"TF_CONFIG is not valid JSON ({error}); unset it or fix it") from None
    return _workers_in(cluster)


def _cluster_spec(strategy: tf.distribute.Strategy) -> dict:
    """The cluster a strategy trains across ({} for one process): a TF_CONFIG that the strategy ignores
    (train.distribute one_device or mirrored) makes no cluster."""
    resolver = getattr(strategy, "cluster_resolver", None)
    return {} if resolver is None else resolver.cluster_spec().as_dict()


def worker_count(strategy: tf.distribute.Strategy) -> int:
    """Processes training together under this strategy, 1 outside a cluster."""
    return max(_workers_in(_cluster_spec(strategy)), 1)


class KerasMultiWorkerMirrored(tf.distribute.MultiWorkerMirroredStrategy):
    def reduce(self, reduce_op, value, axis):
        def reduce_one(per_worker):
            local = self.experimental_local_results(per_worker)[0]
            if local.dtype not in COLLECTIVE_DTYPES:
                return local
            return super(KerasMultiWorkerMirrored, self).reduce(reduce_op, per_worker, None if local.shape.rank == 0 else axis)

        return tf.nest.map_structure(reduce_one, value)


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """The one process that writes the outputs: the cluster's chief, or worker 0 where it names no chief
    (TensorFlow's rule); every process that is not part of a cluster."""
    cluster = _cluster_spec(strategy)
    if not cluster:
        return True
    resolver = strategy.cluster_resolver
    if resolver.task_type == "chief":
        return True
    return resolver.task_type == "worker" and resolver.task_id == 0 and "chief" not in cluster
