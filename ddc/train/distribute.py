"""``tf.distribute`` strategies by config name, and the distributed training stream.

* ``none``: TensorFlow's default strategy (one device).
* ``mirrored``: ``MirroredStrategy`` over the machine's GPUs (over its logical CPU devices when
  it has no GPU, which is how the tests run two replicas on a CPU).
* ``multi_worker``: ``MultiWorkerMirroredStrategy`` configured by ``TF_CONFIG``; create it before
  any other TensorFlow work in the process (TensorFlow's own rule). Only the chief writes the
  run directory; other workers checkpoint into ``.worker<N>/`` inside it, as TensorFlow requires
  every worker to save.
"""

from __future__ import annotations

import json
import os

import tensorflow as tf

from ddc.data.pipeline import train_dataset


def make_strategy(kind: str) -> tf.distribute.Strategy:
    if kind == "none":
        return tf.distribute.get_strategy()
    if kind == "mirrored":
        gpus = [d.name for d in tf.config.list_logical_devices("GPU")]
        if gpus:
            return tf.distribute.MirroredStrategy(gpus)
        cpus = [d.name for d in tf.config.list_logical_devices("CPU")]
        return tf.distribute.MirroredStrategy(
            cpus, cross_device_ops=tf.distribute.ReductionToOneDevice())
    return tf.distribute.MultiWorkerMirroredStrategy()


def worker_index() -> int | None:
    """This process's index among multi-worker workers, None when it is the chief."""
    cluster = json.loads(os.environ.get("TF_CONFIG", "{}"))
    task = cluster.get("task", {})
    if not task or task.get("type") == "chief":
        return None
    if task.get("type") == "worker" and task.get("index", 0) == 0 and "chief" not in cluster.get(
            "cluster", {}):
        return None
    return int(task.get("index", 0))


def distributed_stream(strategy, source_images, source_labels, target_images, **kw):
    """The training stream, split into per-replica slices of each global batch."""
    replicas = strategy.num_replicas_in_sync
    if replicas == 1:
        return train_dataset(source_images, source_labels, target_images, **kw)

    def fn(ctx: tf.distribute.InputContext):
        local = replicas // ctx.num_input_pipelines
        return train_dataset(source_images, source_labels, target_images,
                             shards=(replicas, ctx.input_pipeline_id * local, local), **kw)

    return strategy.distribute_datasets_from_function(fn)
