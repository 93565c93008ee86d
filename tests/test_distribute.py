"""tf.distribute: one and two replicas (two logical CPUs) give the same losses and weights."""

import json
import os
import subprocess
import sys

import numpy as np

from conftest import REPO


def test_one_and_two_replicas_agree():
    r = subprocess.run([sys.executable, str(REPO / "tests" / "distributed_worker.py"), "1.0"],
                       capture_output=True, text=True, timeout=600,
                       env=dict(os.environ, PYTHONPATH=str(REPO), STEPS="2"))
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["replicas"] == [1, 2]
    # same global batch -> same cross-entropy, same MMD^2 (features gathered), same accuracy
    np.testing.assert_allclose(out["losses_2"], out["losses_1"], rtol=1e-5, atol=1e-6)
    assert out["losses_1"][0][1] > 0  # MMD^2 is really in the loss
    # same updates: the difference is float noise next to how far the weights moved
    assert out["max_weight_change"] > 1e-3
    assert out["max_weight_diff"] < 1e-4 * out["max_weight_change"] + 1e-7


def test_steps_in_one_call_equal_one_call_per_step_on_two_replicas():
    """``TrainStep.steps`` (the loop in the graph, the distributed iterator read inside it)
    gives the losses of one call per step, on one and on two replicas."""
    def worker(per_call):
        r = subprocess.run([sys.executable, str(REPO / "tests" / "distributed_worker.py"), "1.0"],
                           capture_output=True, text=True, timeout=600,
                           env=dict(os.environ, PYTHONPATH=str(REPO), STEPS="4",
                                    STEPS_PER_CALL=str(per_call)))
        assert r.returncode == 0, r.stderr[-3000:]
        return json.loads(r.stdout.strip().splitlines()[-1])

    one, two = worker(1), worker(2)
    assert two["replicas"] == [1, 2]
    np.testing.assert_allclose(two["losses_1"], one["losses_1"], rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(two["losses_2"], one["losses_1"], rtol=1e-5, atol=1e-6)
    assert len({tuple(l) for l in one["losses_1"]}) == 4  # the steps differ: weights moved
    assert two["max_weight_diff"] < 1e-4 * two["max_weight_change"] + 1e-7
