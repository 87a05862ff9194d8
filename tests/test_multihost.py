"""Multi-host through JAX's own runtime: 2 processes x 2 CPU devices == 1 process.

The same code runs on a TPU pod slice or multi-node GPUs, one process per host:
    python -c "import jax; jax.distributed.initialize(); ..."   (coordinator found by JAX)
Here the two "hosts" are subprocesses on localhost with gloo CPU collectives.
"""
import os
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest

from dirjax.compress.train import AEOptions, train_autoencoder

RANK = 3
OPTIONS = {"epochs": 2, "batch_size": 32, "progress": False}  # 5 steps an epoch, the last partial
WORKER = os.path.join(os.path.dirname(__file__), "multihost_worker.py")


def table():
    rng = np.random.default_rng(7)
    t = (rng.standard_normal((150, 3)) @ rng.standard_normal((3, 12))
         + 0.05 * rng.standard_normal((150, 12)))
    return t.astype(np.float32)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


@pytest.mark.slow  # ~10 s quiet, 25 s on the shared machine: two JAX startups and compiles
def test_two_processes_train_like_one(tmp_path):
    out, port = tmp_path / "codes.npz", free_port()
    procs = [subprocess.Popen([sys.executable, WORKER, str(port), str(i), str(out)],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for i in range(2)]
    try:
        logs = [p.communicate(timeout=240)[0] for p in procs]
    finally:
        for p in procs:
            p.kill()
    for p, log in zip(procs, logs):
        assert p.returncode == 0, log[-3000:]
    multi = np.load(out)
    codes, weight, bias, _ = train_autoencoder(table(), RANK,
                                               AEOptions(**OPTIONS, devices=jax.devices()[:1]))
    np.testing.assert_allclose(multi["codes"], codes, atol=1e-5)
    np.testing.assert_allclose(multi["weight"], weight, atol=1e-5)
    np.testing.assert_allclose(multi["bias"], bias, atol=1e-5)
