"""Training of the direction AutoEncoder: whole epochs as one compiled call, sharded by rows.

Layout on a `Mesh(devices, ("data",))`:
  - the table `[V, d]` is row-sharded (`P("data")`), padded with zero rows to a multiple of
    the device count (padding is never drawn into a batch);
  - parameters and Adam state are replicated; the compiler reduces gradients across devices;
  - each epoch draws a permutation of the V rows on device from a key folded from
    (seed, epoch) and runs `lax.scan` over the steps: no Python per step. On several
    devices the permuted table is gathered once into `[steps, B, d]` (batch axis sharded);
    on one device each step gathers its rows, so no second `[V, d]` array is made.

Batches follow PyTorch's DataLoader(shuffle=True, drop_last=False), as in the paper: the
last batch holds the V mod B left-over rows; its empty slots are filled with row 0 and get
weight 0 in the loss, so it is a true mean over the rows it holds. The global batch is the
same whatever the device count, which is why 1 and N devices give the same result
(B must be a multiple of the device count).

Checkpoints (params, Adam state, epoch, seed) go to `workdir` through Orbax every
`checkpoint_every` epochs; a run with the same `workdir` resumes from the latest one, and,
since the permutation of epoch e depends only on (seed, e), ends where an uninterrupted run ends.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, fields
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from dirjax.compress import autoencoder as ae
from dirjax.compress.lowrank import CompressedEmbedding
from dirjax.compress.rate import resolve_rank
from dirjax.compress.svd import solver, svd_factors
from dirjax.errors import ConfigError


@dataclass
class AEOptions:
    """The paper's defaults."""
    epochs: int = 30
    batch_size: int = 32
    lr: float = 1e-3
    lr_decay: float = 0.5
    lr_decay_every: int = 4
    w_cos: float = ae.W_COS
    w_rec: float = ae.W_REC
    alpha_start: float = 1.0
    alpha_end: float = 0.1
    anneal_fraction: float = 2 / 3
    seed: int = 1
    hidden: tuple = ()              # encoder hidden widths (nonlinear encoder)
    activation: str = "relu"
    init: str = "random"            # or "svd": start from the SVD solution (linear only)
    row_weights: object = None      # [V] non-negative weights of the rows (e.g. token counts)
    workdir: str | None = None      # Orbax checkpoints + resume
    checkpoint_every: int = 1
    progress: bool = True           # tqdm bar over epochs with loss and mean cosine
    stop_after_epochs: int | None = None  # end early (a stand-in for a killed run)
    unroll: int = 1                 # lax.scan unroll factor
    devices: object = None          # devices of the mesh; default jax.devices()

    @classmethod
    def from_kwargs(cls, **kw) -> "AEOptions":
        known = [f.name for f in fields(cls)]
        unknown = sorted(set(kw) - set(known))
        if unknown:
            raise ConfigError(f"unknown option(s) for method 'ae': {', '.join(unknown)} "
                              f"(known: {', '.join(known)})")
        for name in ("epochs", "batch_size", "lr_decay_every", "checkpoint_every", "seed",
                     "unroll"):
            value = kw.get(name, 1)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
                raise ConfigError(f"ae option {name} must be an integer, got {value!r}")
            if name != "seed" and value < 1:
                raise ConfigError(f"ae option {name} must be an integer >= 1, got {value!r}")
        for name in ("lr", "lr_decay", "w_cos", "w_rec", "alpha_start", "alpha_end",
                     "anneal_fraction"):
            value = kw.get(name, 1.0)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or \
                    not np.isfinite(value):
                raise ConfigError(f"ae option {name} must be a finite number, got {value!r}")
        _check_ae_ranges(kw)
        opts = cls(**kw)
        opts.hidden = tuple(opts.hidden)
        if opts.activation not in ae.ACTIVATIONS:
            raise ConfigError(f"activation must be one of {sorted(ae.ACTIVATIONS)}")
        if opts.init not in ("random", "svd") or (opts.init == "svd" and opts.hidden):
            raise ConfigError("init must be 'random' or 'svd' (svd needs a linear encoder)")
        return opts


def _check_ae_ranges(kw: dict) -> None:
    """ConfigError on a number out of its range, or a bad hidden, activation, progress,
    stop_after_epochs or workdir (the types of the other numbers are judged already)."""
    for name in ("lr", "lr_decay", "alpha_start", "alpha_end"):   # 0 trains nothing
        if kw.get(name, 1.0) <= 0:
            raise ConfigError(f"ae option {name} must be > 0, got {kw[name]!r}")
    for name in ("w_cos", "w_rec"):                                # < 0 rewards the error
        if kw.get(name, 1.0) < 0:
            raise ConfigError(f"ae option {name} must be >= 0, got {kw[name]!r}")
    if not 0 <= kw.get("anneal_fraction", 0) <= 1:
        raise ConfigError(f"ae option anneal_fraction must be in [0, 1], "
                          f"got {kw['anneal_fraction']!r}")
    hidden = kw.get("hidden", ())
    if not isinstance(hidden, (list, tuple)) or not all(
            isinstance(h, (int, np.integer)) and not isinstance(h, bool) and h >= 1
            for h in hidden):
        raise ConfigError(f"ae option hidden must be a list of integers >= 1, got {hidden!r}")
    if not isinstance(kw.get("activation", "relu"), str):
        raise ConfigError(f"ae option activation must be one of {sorted(ae.ACTIVATIONS)}, "
                          f"got {kw['activation']!r}")
    if not isinstance(kw.get("progress", True), bool):
        raise ConfigError(f"ae option progress must be true or false, got {kw['progress']!r}")
    stop = kw.get("stop_after_epochs")
    if stop is not None and (isinstance(stop, bool) or not isinstance(stop, (int, np.integer))
                             or stop < 0):
        raise ConfigError(f"ae option stop_after_epochs must be None or an integer >= 0, "
                          f"got {stop!r}")
    if not isinstance(kw.get("workdir"), (type(None), str, os.PathLike)):
        raise ConfigError(f"ae option workdir must be None or a path, got {kw['workdir']!r}")


def make_mesh(devices=None) -> Mesh:
    """A 1-D `("data",)` mesh over `devices` (default: every device of every process)."""
    return Mesh(np.asarray(devices if devices is not None else jax.devices()), ("data",))


def shard_rows(x: np.ndarray | jax.Array, mesh: Mesh) -> jax.Array:
    """`[V, ...]` -> global array row-sharded over the mesh, zero rows padded to a multiple of
    the device count. A single-device array already in place is not copied."""
    n = mesh.devices.size
    sharding = NamedSharding(mesh, P("data"))
    pad = (-x.shape[0]) % n
    if isinstance(x, jax.Array) and pad == 0 and jax.process_count() == 1:
        return jax.device_put(x, sharding)
    if pad:
        x = jnp.pad(jnp.asarray(x), [(0, pad)] + [(0, 0)] * (x.ndim - 1))
    shape = x.shape
    return jax.make_array_from_callback(shape, sharding, lambda idx: np.asarray(x[idx]))


def _fmix32(h: jax.Array) -> jax.Array:
    """MurmurHash3's finaliser: a bijection of the uint32s in which every input bit flips each
    output bit with probability ~1/2."""
    h = (h ^ (h >> 16)) * jnp.uint32(0x85EBCA6B)
    h = (h ^ (h >> 13)) * jnp.uint32(0xC2B2AE35)
    return h ^ (h >> 16)


def _fmix32_inverse(h: jax.Array) -> jax.Array:
    """The inverse of `_fmix32` (each xor-shift undone by its own shifts, each multiply by the
    odd factor's inverse mod 2^32)."""
    h = (h ^ (h >> 16)) * jnp.uint32(pow(0xC2B2AE35, -1, 2 ** 32))
    h = (h ^ (h >> 13) ^ (h >> 26)) * jnp.uint32(pow(0x85EBCA6B, -1, 2 ** 32))
    return h ^ (h >> 16)


def permutation(key, n: int) -> jax.Array:
    """A random permutation of `range(n)` `[n]` int32, as one sort of one uint32 array.

    Row i gets the sort key f(i), f a bijection of the uint32s drawn from `key`
    (f(i) = fmix32(fmix32(i ^ a) + b) ^ c for random words a, b, c): the keys are distinct, so
    no tie can favour a lower id, and undoing f on the sorted keys gives the ids in key order.
    Seen from any one epoch this is a keyed pseudo-random shuffle; tests/test_train.py checks
    that positions and pairs of positions come out uniform.
    Why not sort (random bits, ids) pairs, or jax.random.permutation: XLA:CPU sorts a single
    array of a primitive type with a fast path and tuples through a generic comparator; for
    SmolLM2's 49152 rows that is 2 ms against 12 ms (jax.random.permutation: 20 ms), 7% of a
    large-batch epoch.
    """
    a, b, c = jax.random.bits(key, (3,), jnp.uint32)
    ids = jnp.arange(n, dtype=jnp.uint32)
    keys = jax.lax.sort(_fmix32(_fmix32(ids ^ a) + b) ^ c)
    return (_fmix32_inverse(_fmix32_inverse(keys ^ c) - b) ^ a).astype(jnp.int32)


def batch_plan(num_rows: int, batch_size: int, key) -> tuple[jax.Array, jax.Array]:
    """Row ids `[steps, B]` of one shuffled epoch and their 0/1 weights `[steps, B]`."""
    steps = -(-num_rows // batch_size)
    pad = steps * batch_size - num_rows
    perm = permutation(key, num_rows)
    ids = jnp.concatenate([perm, jnp.zeros((pad,), perm.dtype)])
    live = jnp.concatenate([jnp.ones((num_rows,), jnp.float32), jnp.zeros((pad,), jnp.float32)])
    return ids.reshape(steps, batch_size), live.reshape(steps, batch_size)


def make_epoch_fn(graphdef, optimizer, mesh: Mesh, num_rows: int, opts: AEOptions,
                  loss=ae.direction_loss):
    """The jitted epoch: (state, opt_state, table, row_w, key, alpha, lr) -> (state, opt_state,
    mean loss, mean cosine). `state`/`opt_state` are donated: updated in place. `loss` has
    `direction_loss`'s signature (other losses: bench/compress_speed.py's --ablation)."""
    batch_sharding = NamedSharding(mesh, P(None, "data"))
    # One device: each step gathers its 32 rows from the table (no [V, d] permuted copy; a
    # whole-table gather costs 0.1 s on CPU, 32-row gathers 0.03 s an epoch). Several devices:
    # the table is row-sharded, so a per-step gather would need a collective per step;
    # instead the permuted table is gathered once per epoch, batch axis sharded.
    gather_per_step = mesh.devices.size == 1
    loss_kw = dict(w_cos=opts.w_cos, w_rec=opts.w_rec)

    def loss_fn(state, x, w, alpha):
        x_hat = nnx.merge(graphdef, state)(x)
        return loss(x_hat, x, alpha, w, **loss_kw)

    def step(carry, batch, table, alpha, lr):
        state, opt_state = carry
        x, w = batch
        if gather_per_step:  # x holds the batch's row ids
            x = table.at[x].get(mode="promise_in_bounds")
        (loss, cos), grads = jax.value_and_grad(loss_fn, has_aux=True)(state, x, w, alpha)
        updates, opt_state = optimizer.update(grads, opt_state)
        state = jax.tree.map(lambda p, u: p - lr * u, state, updates)
        return (state, opt_state), (loss, cos)

    @partial(jax.jit, donate_argnums=(0, 1))
    def epoch(state, opt_state, table, row_w, key, alpha, lr):
        ids, live = batch_plan(num_rows, opts.batch_size, key)
        ws = jax.lax.with_sharding_constraint(live * row_w[ids], batch_sharding)
        if gather_per_step:
            xs = ids
        else:  # one all-to-all per epoch instead of a collective per step
            xs = jax.lax.with_sharding_constraint(table[ids],
                                                  NamedSharding(mesh, P(None, "data", None)))
        (state, opt_state), (losses, coss) = jax.lax.scan(
            partial(step, table=table, alpha=alpha, lr=lr), (state, opt_state), (xs, ws),
            unroll=opts.unroll)
        # the epoch's means over rows, as a DataLoader loop averaging batch means would show
        return state, opt_state, jnp.mean(losses), jnp.mean(coss)

    return epoch


def _checkpoint_manager(workdir: str, every: int):
    import orbax.checkpoint as ocp
    options = ocp.CheckpointManagerOptions(save_interval_steps=every, max_to_keep=2, create=True)
    # the handler named here lets item_metadata read a checkpoint's shapes before a restore
    return ocp.CheckpointManager(os.path.abspath(os.path.join(workdir, "checkpoints")),
                                 options=options, item_handlers=ocp.StandardCheckpointHandler())


def _restore(manager, target: dict) -> dict | None:
    """The newest readable checkpoint laid out like `target` (shardings included), or None.

    A checkpoint that cannot be read (a kill or a full disk truncated its files) is skipped
    with a warning and the one before it is used: `max_to_keep=2` keeps one to fall back on.
    """
    import orbax.checkpoint as ocp
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
    for step in sorted(manager.all_steps(), reverse=True):
        try:
            saved = getattr(manager.item_metadata(step), "tree", None)
        except Exception as e:   # unreadable metadata: a damaged checkpoint
            _warn_skipped(manager, step, e)
            continue
        _check_same_run(manager, saved, abstract)
        try:
            return manager.restore(step, args=ocp.args.StandardRestore(abstract))
        except (ValueError, KeyError, TypeError) as e:  # same shapes, another tree
            raise ConfigError(f"{_another_run(manager)}: {str(e).splitlines()[0][:200]}") from None
        except Exception as e:   # truncated or missing array files
            _warn_skipped(manager, step, e)
    return None


def _another_run(manager) -> str:
    return f"{manager.directory} holds a checkpoint of another run (use a fresh workdir)"


def _check_same_run(manager, saved, abstract) -> None:
    """ConfigError unless the checkpoint's leaf shapes are this run's. Compared before any
    restore: a restore that fails half-way leaves Orbax's background reads running, and they
    print tracebacks into the user's session long after the error."""
    if saved is None or _shapes(saved) != _shapes(abstract):
        def biggest(shapes):
            return ", ".join(map(str, sorted(set(shapes), key=np.prod, reverse=True)[:3]))
        raise ConfigError(f"{_another_run(manager)}: its largest arrays are "
                          f"{biggest(_shapes(saved)) if saved else '?'}; this run's "
                          f"{biggest(_shapes(abstract))}")


def _warn_skipped(manager, step: int, error: Exception) -> None:
    import warnings
    warnings.warn(f"AE checkpoint {manager.directory}/{step} is unreadable "
                  f"({type(error).__name__}: "
                  f"{str(error).splitlines()[0][:120] if str(error) else ''}); "
                  "falling back to an older one", RuntimeWarning, stacklevel=3)


def _shapes(tree) -> list[tuple]:
    """Sorted leaf shapes of a checkpoint tree (its metadata or an abstract target)."""
    return sorted(tuple(getattr(x, "shape", ())) for x in jax.tree.leaves(tree))  # ints: ()


def gather_rows(x: jax.Array, rows: int) -> np.ndarray:
    """A row-sharded global array (maybe across processes) -> host `[rows, ...]`."""
    if not x.is_fully_addressable:
        from jax.experimental import multihost_utils
        x = multihost_utils.process_allgather(x, tiled=True)
    return np.asarray(x)[:rows]


def encode_table(graphdef, state, table) -> jax.Array:
    """codes = encoder(table), `[V, k]`, row-sharded like the table."""
    return jax.jit(lambda s, t: nnx.merge(graphdef, s).encode(t))(state, table)


def setup_training(table, rank: int, opts: AEOptions, svd_init=None, loss=ae.direction_loss):
    """Everything an epoch needs, placed on the mesh: (graphdef, params, Adam state, the jitted
    epoch of `make_epoch_fn`, the row-sharded table, the row-sharded row weights `[V]`)."""
    num_rows, features = table.shape
    mesh = make_mesh(opts.devices)
    n_dev = mesh.devices.size
    if opts.batch_size % n_dev:
        raise ConfigError(f"batch_size {opts.batch_size} is not a multiple of {n_dev} devices")
    replicated = NamedSharding(mesh, P())

    model = ae.DirectionAutoEncoder(features, rank, hidden=opts.hidden,
                                    activation=opts.activation, rngs=nnx.Rngs(opts.seed))
    if opts.init == "svd":
        ae.init_from_svd(model, svd_init)
    graphdef, state = nnx.split(model)
    # The learning rate is applied outside Adam, so the schedule is one scalar per epoch.
    optimizer = optax.scale_by_adam()
    state = jax.device_put(state, replicated)
    opt_state = jax.device_put(optimizer.init(state), replicated)

    table = shard_rows(table, mesh)
    row_w = np.ones((num_rows,), np.float32) if opts.row_weights is None else \
        np.asarray(opts.row_weights, np.float32)
    row_w = shard_rows(row_w, mesh)
    epoch_fn = make_epoch_fn(graphdef, optimizer, mesh, num_rows, opts, loss)
    return graphdef, state, opt_state, epoch_fn, table, row_w


def train_autoencoder(table, rank: int, opts: AEOptions, svd_init=None):
    """Train on `table [V, d]`; return (codes `[V, k]`, weight `[k, d]`, bias `[d]`, log) as
    host arrays, log = one dict per epoch (loss, cos, alpha, lr; seconds for the epochs run by
    this process). A resumed run's log holds the epochs before the kill too.

    `svd_init`: (codes, V_k^T) to start from when opts.init == "svd".
    """
    num_rows = table.shape[0]
    graphdef, state, opt_state, epoch_fn, table, row_w = setup_training(table, rank, opts, svd_init)

    manager = _checkpoint_manager(opts.workdir, opts.checkpoint_every) if opts.workdir else None
    # per-epoch loss and cosine travel in the checkpoint, so a resumed run reports them all
    history = np.full((opts.epochs, 2), np.nan, np.float32)
    start = 0
    try:
        if manager is not None:
            restored = _restore(manager, {"params": state, "opt_state": opt_state, "epoch": 0,
                                          "seed": opts.seed, "history": history})
            if restored is not None:
                if int(restored["seed"]) != opts.seed:
                    raise ConfigError(f"{opts.workdir} holds a run with seed {restored['seed']}")
                state, opt_state = restored["params"], restored["opt_state"]
                start, history = int(restored["epoch"]), np.array(restored["history"])
        state, seconds = run_epochs(epoch_fn, state, opt_state, table, row_w, start, manager,
                                    opts, history)
    finally:
        if manager is not None:
            manager.wait_until_finished()
            manager.close()

    codes = gather_rows(encode_table(graphdef, state, table), num_rows)
    model = nnx.merge(graphdef, jax.device_get(state))
    log = [{"epoch": e + 1, "loss": float(history[e, 0]), "cos": float(history[e, 1]),
            "alpha": ae.alpha_at(e, opts.epochs, opts.alpha_start, opts.alpha_end,
                                 opts.anneal_fraction),
            "lr": ae.lr_at(e, opts.lr, opts.lr_decay, opts.lr_decay_every), **seconds.get(e, {})}
           for e in range(opts.epochs) if np.isfinite(history[e, 0])]
    return codes, np.asarray(model.decoder.kernel[...]), np.asarray(model.decoder.bias[...]), log


def run_epochs(epoch_fn, state, opt_state, table, row_w, start, manager, opts, history):
    """Epochs `start`..end with progress and checkpoints; fills `history [epochs, 2]` (loss,
    cos) and returns (the trained params, {epoch: {"seconds", "cpu_seconds"}})."""
    from tqdm.auto import tqdm

    last = (opts.epochs if opts.stop_after_epochs is None
            else min(opts.epochs, opts.stop_after_epochs))
    bar = tqdm(total=opts.epochs, initial=start, desc="ae epochs", unit="epoch",
               disable=not opts.progress or jax.process_index() != 0)
    base_key = jax.random.PRNGKey(opts.seed)
    seconds = {}
    try:
        for e in range(start, last):
            tic, cpu_tic = time.perf_counter(), time.process_time()
            alpha = ae.alpha_at(e, opts.epochs, opts.alpha_start, opts.alpha_end,
                                opts.anneal_fraction)
            lr = ae.lr_at(e, opts.lr, opts.lr_decay, opts.lr_decay_every)
            state, opt_state, loss, cos = epoch_fn(
                state, opt_state, table, row_w, jax.random.fold_in(base_key, e),
                jnp.float32(alpha), jnp.float32(lr))
            history[e] = float(loss), float(cos)
            seconds[e] = {"seconds": time.perf_counter() - tic,
                          "cpu_seconds": time.process_time() - cpu_tic}
            bar.set_postfix(loss=f"{float(loss):.5f}", cos=f"{float(cos):.4f}")
            bar.update(1)
            if manager is not None:
                import orbax.checkpoint as ocp
                manager.save(e + 1, args=ocp.args.StandardSave(
                    {"params": state, "opt_state": opt_state, "epoch": e + 1, "seed": opts.seed,
                     "history": history}))
    finally:
        bar.close()
    return state, seconds


def check_options(options: dict) -> None:
    """ConfigError on an unknown or bad option of method 'ae' (see `AEOptions`)."""
    AEOptions.from_kwargs(**options)


def ae_method(table, *, rate=None, rank=None, **options) -> CompressedEmbedding:
    """The direction AutoEncoder (see `AEOptions` for the options and their defaults)."""
    k = resolve_rank(*table.shape, rate=rate, rank=rank)
    opts = AEOptions.from_kwargs(**options)
    svd_init = svd_factors(table, k) if opts.init == "svd" else None
    codes, weight, bias, log = train_autoencoder(table, k, opts, svd_init=svd_init)
    meta = {"epochs": opts.epochs, "batch_size": opts.batch_size, "seed": opts.seed,
            "init": opts.init, "hidden": list(opts.hidden),
            "final_loss": log[-1]["loss"] if log else None, "epochs_run": len(log),
            "log": [{k: v for k, v in r.items() if k in ("epoch", "loss", "cos")} for r in log]}
    if opts.init == "svd":
        meta["solver"] = solver(table.shape)
    return CompressedEmbedding(codes, weight, bias, method="ae", meta=meta)
