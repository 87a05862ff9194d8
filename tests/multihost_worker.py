"""One process of the two-process test (tests/test_multihost.py); not a test itself.

usage: multihost_worker.py PORT PROCESS_ID OUT.npz
Joins a localhost JAX cluster of 2 processes x 2 CPU devices, trains the test's small AE on
the 4-device global mesh, and (process 0) writes the codes and decoder to OUT.npz.
"""
import os
import sys

os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
os.environ["JAX_PLATFORMS"] = "cpu"

import jax  # noqa: E402  (after XLA_FLAGS / JAX_PLATFORMS above)
import numpy as np  # noqa: E402  (after the environment above, with jax)

jax.config.update("jax_cpu_collectives_implementation", "gloo")


def main(port: str, process_id: str, out: str) -> None:
    jax.distributed.initialize(f"localhost:{port}", num_processes=2, process_id=int(process_id))
    assert jax.process_count() == 2 and len(jax.devices()) == 4 and len(jax.local_devices()) == 2
    sys.path.insert(0, os.path.dirname(__file__))
    from test_multihost import OPTIONS, RANK, table

    from dirjax.compress.train import AEOptions, train_autoencoder
    codes, weight, bias, _ = train_autoencoder(table(), RANK, AEOptions(**OPTIONS))
    if jax.process_index() == 0:
        np.savez(out, codes=codes, weight=weight, bias=bias)
    jax.distributed.shutdown()


if __name__ == "__main__":
    main(*sys.argv[1:])
