"""Two local worker processes (MultiWorkerMirroredStrategy over loopback) train exactly what one
process trains on the same global batch."""

import json
import os
import socket
import subprocess
import sys

import numpy as np

from conftest import REPO

CONFIG = {
    "name": "mw", "seed": 0, "deterministic": True,
    "data": {"source": {"synthetic": "shapes-plain", "max_per_class": 16},
             "target": {"synthetic": "shapes-textured", "max_per_class": 16},
             "image_size": 16, "channels": 3},
    "model": {"backbone": "lenet", "adapt_width": 16},
    "align": {"mmd": {"weight": 1.0}},
    "train": {"steps": 6, "batch_size": 8, "optimizer": "sgd", "lr": 0.05, "eval_every": 3,
              "checkpoint_every": 3, "distribute": "multi_worker"},
}


def _free_ports(n):
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def test_two_workers_match_one_process(tmp_path):
    from ddc.config import from_dict
    from ddc.train import train_and_evaluate

    cfg_path = tmp_path / "mw.json"
    cfg_path.write_text(json.dumps(CONFIG))
    workers = [f"127.0.0.1:{p}" for p in _free_ports(2)]
    procs = []
    for i in range(2):
        env = dict(os.environ, PYTHONPATH=str(REPO), TF_CONFIG=json.dumps(
            {"cluster": {"worker": workers}, "task": {"type": "worker", "index": i}}))
        procs.append(subprocess.Popen(
            [sys.executable, str(REPO / "scripts" / "train_ddc.py"), "--config", str(cfg_path),
             "--workdir", str(tmp_path / "mw")], cwd=REPO, env=env, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True))
    outs = [p.communicate(timeout=300) for p in procs]
    for p, (_, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]
    multi = json.loads((tmp_path / "mw" / "results.json").read_text())
    assert "2 replica(s)" in (tmp_path / "mw" / "train.log").read_text()
    assert (tmp_path / "mw" / ".worker1").is_dir()  # the non-chief saves apart

    one = dict(CONFIG, train=dict(CONFIG["train"], distribute="none"))
    ref = train_and_evaluate(from_dict(one), tmp_path / "one")
    assert multi["steps"] == ref["steps"] == 6
    np.testing.assert_allclose(multi["target_entropy"], ref["target_entropy"], rtol=1e-5)
    assert multi["target_acc"] == ref["target_acc"]
