"""tf.distribute: one and two replicas (two logical CPUs) give the same losses and weights, for
every alignment term (each sees the gathered global batch)."""

import json
import os
import subprocess
import sys

import numpy as np

from conftest import REPO
from ddc.align import REGISTRY

# every registered term, and the variants with their own code paths
SPECS = [{name: {"weight": 1.0}} for name in REGISTRY] + [
    {"cdan": {"weight": 1.0, "entropy_conditioning": True, "max_dim": 16, "random_dim": 32}},
    {"dan": {"weight": 1.0, "layers": ["pooled", "features", "logits"]}},
    {"mmd": {"weight": 1.0}, "mcc": {"weight": 0.5}},
]


def _worker(specs, steps, per_call=1, adapt_bn=False):
    r = subprocess.run([sys.executable, str(REPO / "tests" / "distributed_worker.py"),
                        json.dumps(specs)], capture_output=True, text=True, timeout=900,
                       env=dict(os.environ, PYTHONPATH=str(REPO), STEPS=str(steps),
                                STEPS_PER_CALL=str(per_call), ADAPT_BN=str(int(adapt_bn))))
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


def test_one_and_two_replicas_agree_for_every_term():
    _assert_replicas_agree(_worker(SPECS, steps=2))


def test_one_and_two_replicas_agree_with_a_batchnorm_in_the_head():
    """``model.adapt_bn``: each replica holds half of the source and half of the target rows;
    the BatchNorm's statistics are the global batch's, as on one replica (and its moving
    statistics, among the weights compared, agree)."""
    _assert_replicas_agree(_worker([{"mmd": {"weight": 1.0}, "mcc": {"weight": 0.5}}], steps=3,
                                   adapt_bn=True))


def _assert_replicas_agree(outs):
    for out in outs:
        spec = out["spec"]
        assert out["replicas"] == [1, 2]
        # same global batch -> same cross-entropy, same term values (inputs gathered), accuracy
        np.testing.assert_allclose(out["losses_2"], out["losses_1"], rtol=2e-5, atol=2e-6,
                                   err_msg=str(spec))
        assert all(np.isfinite(v) for row in out["losses_1"] for v in row), spec
        # same updates: the difference is float noise next to how far the weights moved
        assert out["max_weight_change"] > 1e-3, spec
        assert out["max_weight_diff"] < 1e-4 * out["max_weight_change"] + 1e-6, spec


def test_steps_in_one_call_equal_one_call_per_step_on_two_replicas():
    """``TrainStep.steps`` (the loop in the graph, the distributed iterator read inside it)
    gives the losses of one call per step, on one and on two replicas."""
    specs = [{"mmd": {"weight": 1.0}}, {"dann": {"weight": 1.0}}]
    one, two = _worker(specs, 4, 1), _worker(specs, 4, 2)
    for a, b in zip(one, two):
        assert b["replicas"] == [1, 2]
        np.testing.assert_allclose(b["losses_1"], a["losses_1"], rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(b["losses_2"], a["losses_1"], rtol=1e-5, atol=1e-6)
        assert len({tuple(l) for l in a["losses_1"]}) == 4  # the steps differ: weights moved
        assert b["max_weight_diff"] < 1e-4 * b["max_weight_change"] + 1e-7
        assert a["losses_1"][0][3] != 0  # the term is really in the loss
