"""Run in a subprocess by test_distribute.py: one vs two replicas on two logical CPUs.

argv[1]: a JSON list of ``align`` mappings (default: ``[{"mmd": {"weight": 1.0}}]``). Prints one
JSON line: for each mapping, the per-step outputs of both runs (cls_loss, total_loss,
source_acc, then each term's value) and the largest weight difference. Env ADAPT_BN=1: the
network has ``model.adapt_bn``.
"""

import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import tensorflow as tf  # noqa: E402

cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

import keras  # noqa: E402
import numpy as np  # noqa: E402

from ddc.align import network_layers, terms_for  # noqa: E402
from ddc.config import ModelConfig, TrainConfig  # noqa: E402
from ddc.models import build_network  # noqa: E402
from ddc.train.distribute import distributed_stream, make_strategy  # noqa: E402
from ddc.train.optim import make_optimizer  # noqa: E402
from ddc.train.step import TrainStep  # noqa: E402

SPECS = json.loads(sys.argv[1]) if len(sys.argv) > 1 else [{"mmd": {"weight": 1.0}}]
MODEL = ModelConfig(backbone="lenet", adapt_width=16, adapt_bn=os.environ.get("ADAPT_BN") == "1")
rng = np.random.default_rng(0)
xs = rng.integers(0, 256, (40, 16, 16, 3), dtype=np.uint8)
ys = rng.integers(0, 3, 40).astype(np.int32)
xt = rng.integers(0, 256, (40, 16, 16, 3), dtype=np.uint8)
keras.utils.set_random_seed(0)
init = build_network(MODEL, (16, 16, 3), 3, None)
init_weights = [w.numpy() for w in init.model.weights]


def run(kind: str, spec: dict):
    strategy = make_strategy(kind)
    with strategy.scope():
        terms = terms_for(spec, feature_dim=16, num_classes=3)
        taps = network_layers(terms)
        net = build_network(MODEL, (16, 16, 3), 3, None, taps)
        for w, v in zip(net.model.weights, init_weights):
            w.assign(v)
        variables = net.model.trainable_variables + [v for t in terms for v in t.trainable_variables]
        step_var = tf.Variable(0, dtype=tf.int64, trainable=False)
        opt = make_optimizer(TrainConfig(optimizer="sgd", lr=0.05, momentum=0.9), step_var,
                             variables, [], 1.0, False)
    step = TrainStep(net.model, opt, terms, taps=taps, strategy=strategy)
    weights = [t.options.weight for t in terms]
    keys = ["cls_loss", "total_loss", "source_acc"] + [f"align/{t.name}" for t in terms]
    it = iter(distributed_stream(strategy, xs, ys, xt, batch_size=8, seed=3, augment=True))
    losses = []
    steps, per_call = int(os.environ.get("STEPS", 2)), int(os.environ.get("STEPS_PER_CALL", 1))
    if per_call == 1:
        for i in range(steps):
            m = step(*next(it), weights, i / steps, i)
            step_var.assign_add(1)
            losses.append([float(m[k]) for k in keys])
    else:  # steps in the graph, the iterator read inside it (TrainStep.steps)
        for c in range(steps // per_call):
            progress = [(c * per_call + i) / steps for i in range(per_call)]
            m = step.steps(it, [weights] * per_call, progress, step_var)
            losses += np.stack([m[k] for k in keys], axis=1).tolist()
    assert int(step_var.numpy()) == steps
    all_vars = net.model.weights + [v for t in terms for v in t.trainable_variables]
    return strategy.num_replicas_in_sync, losses, [w.numpy() for w in all_vars]


out = []
for spec in SPECS:
    r1, l1, w1 = run("none", spec)
    r2, l2, w2 = run("mirrored", spec)
    n = len(init_weights)
    out.append({"spec": spec, "replicas": [r1, r2], "losses_1": l1, "losses_2": l2,
                "max_weight_diff": max(float(np.abs(a - b).max()) for a, b in zip(w1, w2)),
                "max_weight_change": max(float(np.abs(a - b).max())
                                         for a, b in zip(w1[:n], init_weights))})
print(json.dumps(out))
