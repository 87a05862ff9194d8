"""End-to-end refinement of a quantised table through the whole frozen model (option `e2e`).

AQLM's global fine-tuning / PV-tuning, for the one compressed matrix: with the codes fixed,
every continuous parameter of the compressed embedding (its class's `CONTINUOUS` Variables:
vq's codebooks, gains and mean row; the scalar quantisers' scales, offsets and mean row) is
trained by Adam to minimise

    KL(original model || compressed model) = mean over tokens of sum_v p(v) (log p(v) - log q(v))

on calibration text DISJOINT from every evaluation text, through the whole FROZEN model: the
student's table, decoded differentiably from those parameters (`emb.table()`), feeds the input
lookup and the tied head at once (an untied model's head keeps its own table). Windows of
`seq` tokens, each after the tokenizer's BOS when it adds one (as `calib.py` and the
perplexity evaluator put it). vq's head-only `refine` (hidden states and the tied head alone)
still runs inside `compress`; this one starts from its result.

Parametrisation (why one learning rate serves every parameter): gains and scales move
multiplicatively, p = p0 exp(z); the others additively, p = p0 + s z with s = max(|p0|,
rms(p0)) per entry; z starts at 0. Adam's step is about lr in z, so about a relative lr in
every parameter, whatever its magnitude (a 1-bit row's scale is 255x an 8-bit row's).
The learning rate decays on a cosine from lr to 0 over `steps`.

Teacher: the original model's final hidden states of every window, computed once (one forward
pass per calibration token); each step's teacher logits are those states through the original
head. Data parallel on a `Mesh(devices, ("data",))` (the AE's, train.py): windows of a batch
sharded over "data", the model and the parameters replicated, the gradient mean reduced by
the compiler; the batch is the same whatever the device count. Windows are drawn epoch by
epoch in a permutation keyed by (seed, epoch), so a run killed and resumed from its Orbax
checkpoint (z, Adam state, step, losses; train.py's helpers) ends where an uninterrupted one
ends. After training each parameter is rounded to the width it is stored at (fp16 books,
scales and offsets, log8 / fp16 gains re-encoded), so storage_bytes, the export and the byte
accounting are those of the unrefined embedding.

FLOPs per calibration token and step (M = the model's matmul parameters: every parameter but
the input table's when the head is untied; Vd the table; A = 4 L T d_q the attention's
activation products of a T-token window, L layers, d_q query width):
    student forward 2M + A, its backward 2M + 2A (activation gradients only: the model is
    frozen) + 2Vd (the tied head's gradient to the table), teacher logits 2Vd
    = 4M + 2Vd (1 + tied) + 3A,   plus once per calibration token 2(M - Vd tied) + A.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, fields

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from dirjax.compress.codec import check_values, integer, number
from dirjax.embedding import Embedding, swap_embedding
from dirjax.errors import ConfigError, DataError

MULTIPLICATIVE = ("gain", "scale")   # positive parameters, moved by p0 exp(z)
CHECKPOINT_EVERY = 10                # steps between Orbax checkpoints


@dataclass(frozen=True)
class E2EOptions:
    """`method_options.<method>.e2e`, every field optional.

    steps: Adam steps; lr: the step in z (about relative, see the module docstring), decayed
    on a cosine to 0; tokens: calibration tokens trained on (cut into windows of seq, a BOS
    first when the tokenizer adds one); batch: windows a step (a multiple of the device
    count); held_tokens: the calibration tokens after those, on which the KL before and after
    is reported (0: none); seed: the order windows are drawn in."""
    steps: int = 200
    lr: float = 1e-3
    tokens: int = 65536
    seq: int = 256
    batch: int = 4
    held_tokens: int = 8192
    seed: int = 0


RULES = {"steps": integer(0), "lr": number(positive=True), "tokens": integer(2),
         "seq": integer(2), "batch": integer(1), "held_tokens": integer(0), "seed": integer(0)}
assert set(RULES) == {f.name for f in fields(E2EOptions)}


def continuous(cls) -> tuple[str, ...]:
    """The names of the Variables of embedding class `cls` that refinement trains."""
    return tuple(getattr(cls, "CONTINUOUS", ()))


def check_e2e(method: str, spec, module_class=None) -> dict:
    """`method_options.<method>.e2e` judged before any model loads -> every field (defaults
    filled in, so the compression key holds them all); ConfigError in one line otherwise.
    `module_class`: the method's embedding class (refused when it has no CONTINUOUS)."""
    where = f"method_options.{method}.e2e"
    if hasattr(spec, "to_dict"):
        spec = spec.to_dict()
    if not isinstance(spec, dict):
        raise ConfigError(f"{where} must map fields ({', '.join(RULES)}) to values, "
                          f"got {spec!r}")
    check_values(method, spec, RULES, where=where)
    if module_class is not None and not continuous(module_class):
        raise ConfigError(f"{where}: method {method} has no continuous parameters to train "
                          f"with its codes fixed ({module_class.__name__} declares none); "
                          "e2e refines vq, quant, quant_freq and quant_gptq")
    return asdict(E2EOptions(**spec))


# ----------------------------------------------------------------------------- windows
def windows(ids: np.ndarray, seq: int, bos_id: int | None = None) -> np.ndarray:
    """The stream `ids [N]` cut into whole windows `[W, seq]` int32, each [BOS] + seq - 1
    tokens when bos_id is given (the remainder dropped)."""
    ids = np.asarray(ids, np.int32)
    lead = bos_id is not None
    body = seq - lead
    w = len(ids) // body
    out = ids[:w * body].reshape(w, body)
    if lead:
        out = np.concatenate([np.full((w, 1), bos_id, np.int32), out], axis=1)
    return out


# ----------------------------------------------------------------------------- the model
def _head(model, h):
    """Logits `[..., V]` fp32 of final hidden states through the model's own output head
    (soft-capped as the model caps them)."""
    logits = model.out_embedding.attend(h).astype(jnp.float32)
    cap = getattr(getattr(model, "config", None), "final_logit_softcapping", None)
    return logits if not cap else jnp.tanh(logits / cap) * cap


def _kl(teacher, student):
    """Mean over tokens of KL(softmax(teacher) || softmax(student)), logits `[..., V]`, and
    the same per window `[B]` (means over its positions)."""
    lp = jax.nn.log_softmax(teacher.astype(jnp.float32), axis=-1)
    lq = jax.nn.log_softmax(student.astype(jnp.float32), axis=-1)
    per = jnp.sum(jnp.exp(lp) * (lp - lq), axis=-1)
    return per.mean(), per.reshape(per.shape[0], -1).mean(-1)


class _Problem:
    """The pieces of one refinement: the frozen model split, the embedding split into its
    trained leaves (flat, fp32) and the rest, and the map z -> the trained values."""

    def __init__(self, model, emb):
        names = continuous(type(emb))
        if not names:
            raise ConfigError(f"{type(emb).__name__} has no continuous parameters to refine "
                              "(no CONTINUOUS)")
        self.model_gd, self.model_state = nnx.split(model)
        self.emb_gd, trained, self.fixed = nnx.split(
            emb, lambda path, x: bool(path) and str(path[-1]) in names, ...)
        leaves, self.treedef = jax.tree.flatten(trained)
        paths = [p for p, _ in jax.tree_util.tree_flatten_with_path(trained)[0]]
        self.names = [_leaf_name(p, names) for p in paths]
        self.dtypes = [x.dtype for x in leaves]
        self.base = [jnp.asarray(x, jnp.float32) for x in leaves]
        self.mult = tuple(n in MULTIPLICATIVE for n in self.names)
        self.step_scale = [jnp.ones_like(b) if m else
                           jnp.maximum(jnp.abs(b), jnp.sqrt(jnp.mean(b * b)) + 1e-30)
                           for b, m in zip(self.base, self.mult)]
        self.tied = bool(getattr(model, "tied", False))

    @property
    def consts(self):
        """What the jitted functions take as arguments, not as constants baked into the
        program: (base leaves, their step scales, the fixed arrays: codes and the rest)."""
        return self.base, self.step_scale, self.fixed

    def values(self, z, consts):
        """The trained leaves (fp32) at z."""
        base, scale, _ = consts
        return [b * jnp.exp(zz) if m else b + s * zz
                for b, s, zz, m in zip(base, scale, z, self.mult)]

    def table(self, leaves, consts):
        """The decoded table `[V, d]` with the trained leaves set to `leaves`."""
        emb = nnx.merge(self.emb_gd, jax.tree.unflatten(self.treedef, leaves), consts[2])
        return emb.table()

    def student_logits(self, model_state, leaves, consts, ids):
        model = nnx.merge(self.model_gd, model_state)
        student = swap_embedding(model, Embedding(self.table(leaves, consts)), output="tied")
        return _head(student, student.encode(ids))

    def teacher_logits(self, model_state, hidden):
        return _head(nnx.merge(self.model_gd, model_state), hidden)

    def encode(self, model_state, ids):
        return nnx.merge(self.model_gd, model_state).encode(ids)


def _leaf_name(path, names) -> str:
    keys = [getattr(k, "key", getattr(k, "name", getattr(k, "idx", None))) for k in path]
    found = [str(k) for k in keys if str(k) in names]
    assert found, path
    return found[-1]


def flops_per_token(model, seq: int) -> dict:
    """The formula of the module docstring for `model` and windows of `seq` tokens: FLOPs per
    calibration token of one step, and of the teacher's one pass."""
    v, d = model.config.vocab_size, model.config.hidden_size
    total = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
    tied = bool(getattr(model, "tied", False))
    m = total - (0 if tied else v * d)
    c = model.config
    layers = next((getattr(c, n) for n in ("num_hidden_layers", "num_layers", "n_layer")
                   if getattr(c, n, None)), 0)
    heads = next((getattr(c, n) for n in ("num_attention_heads", "num_heads", "n_head")
                  if getattr(c, n, None)), 0)
    head_dim = getattr(c, "head_dim", None) or (d // heads if heads else 0)
    a = 4 * layers * seq * heads * head_dim
    return {"matmul_params": m, "attention": a,
            "step": 4 * m + 2 * v * d * (1 + tied) + 3 * a,
            "teacher_once": 2 * (m - v * d * tied) + a}


# ----------------------------------------------------------------------------- refinement
def refine_through_model(model, emb, ids, *, steps: int = 200, lr: float = 1e-3,
                         batch: int = 4, seq: int = 256, held_tokens: int = 8192,
                         tokens: int | None = None, workdir=None, progress: bool = True,
                         seed: int = 0, bos_id: int | None = None, devices=None,
                         stop_after: int | None = None,
                         checkpoint_every: int = CHECKPOINT_EVERY):
    """A copy of `emb` (codes shared, continuous parameters refined and rounded to their
    stored widths) trained on the calibration stream `ids [N]` through the frozen `model`.

    tokens: the first tokens trained on (default: all but the last held_tokens); the next
    held_tokens score the KL before and after (meta["e2e"]). workdir: Orbax checkpoints under
    <workdir>/checkpoints, resumed from when present. stop_after: end after that many steps
    (a stand-in for a killed run). devices: the mesh's (default jax.devices()).
    """
    from tqdm.auto import tqdm

    from dirjax.compress.train import _checkpoint_manager, _restore, make_mesh, permutation

    tic = time.perf_counter()
    ids = np.asarray(ids, np.int32)
    tokens = len(ids) - held_tokens if tokens is None else tokens
    train = windows(ids[:tokens], seq, bos_id)
    held = windows(ids[tokens:tokens + held_tokens], seq, bos_id) if held_tokens else train[:0]
    if len(train) < batch:
        raise DataError(f"e2e refinement: {len(train)} calibration windows of {seq} tokens, "
                        f"fewer than a batch of {batch}; give more calibration text")
    mesh = make_mesh(devices)
    if batch % mesh.devices.size:
        raise ConfigError(f"e2e batch {batch} is not a multiple of {mesh.devices.size} devices")
    replicated, sharded = NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))
    prob = _Problem(model, emb)
    model_state = jax.device_put(prob.model_state, replicated)
    consts = jax.device_put(prob.consts, replicated)

    # the teacher: the original model's final states of every window, once
    encode = jax.jit(prob.encode)

    def states(wins, desc):
        out = []
        for i in tqdm(range(0, len(wins), batch), desc=desc, leave=False, disable=not progress):
            chunk = wins[i:i + batch]
            pad = batch - len(chunk)
            chunk = np.concatenate([chunk, chunk[:1].repeat(pad, 0)]) if pad else chunk
            out.append(np.asarray(encode(model_state, jax.device_put(chunk, sharded)))[
                :batch - pad])
        return np.concatenate(out) if out else np.zeros((0, seq, model.config.hidden_size),
                                                         np.float32)

    hidden = jax.device_put(states(train, "e2e teacher"), replicated)
    train_dev = jax.device_put(train, replicated)
    per_epoch = len(train) // batch
    optimizer = optax.scale_by_adam()

    def loss_fn(z, consts, model_state, ids_b, teacher):
        leaves = prob.values(z, consts)
        return _kl(teacher, prob.student_logits(model_state, leaves, consts, ids_b))[0]

    def step(z, opt_state, s, consts, model_state, wins, hid):
        epoch, pos = s // per_epoch, s % per_epoch
        order = permutation(jax.random.fold_in(jax.random.PRNGKey(seed), epoch), len(train))
        idx = jax.lax.dynamic_slice_in_dim(order, pos * batch, batch)
        ids_b = jax.lax.with_sharding_constraint(wins[idx], sharded)
        teacher = prob.teacher_logits(model_state,
                                      jax.lax.with_sharding_constraint(hid[idx], sharded))
        loss, grads = jax.value_and_grad(loss_fn)(z, consts, model_state, ids_b, teacher)
        updates, opt_state = optimizer.update(grads, opt_state)
        rate = lr * 0.5 * (1 + jnp.cos(jnp.pi * s / max(steps, 1)))
        z = jax.tree.map(lambda p, u: p - rate * u, z, updates)
        return z, opt_state, loss

    z = jax.device_put([jnp.zeros_like(b) for b in prob.base], replicated)
    opt_state = jax.device_put(optimizer.init(z), replicated)
    history = np.full((steps,), np.nan, np.float32)
    start = 0
    manager = _checkpoint_manager(str(workdir), checkpoint_every) if workdir else None
    flops = flops_per_token(model, seq)
    seconds = 0.0
    try:
        if manager is not None:
            restored = _restore(manager, {"z": z, "opt_state": opt_state, "step": 0,
                                          "seed": seed, "history": history})
            if restored is not None:
                if int(restored["seed"]) != seed:
                    raise ConfigError(f"{workdir} holds an e2e run with seed {restored['seed']}")
                z, opt_state = restored["z"], restored["opt_state"]
                start, history = int(restored["step"]), np.array(restored["history"])
        last = steps if stop_after is None else min(steps, stop_after)
        compiled = None
        if start < last:
            compiled = jax.jit(step, donate_argnums=(0, 1)).lower(
                z, opt_state, jnp.int32(start), consts, model_state, train_dev,
                hidden).compile()
            xla = (compiled.cost_analysis() or {})
            xla = xla[0] if isinstance(xla, (list, tuple)) else xla
            # XLA counts one device's program: the devices together run n of them
            flops["xla_step"] = (float(xla.get("flops", float("nan"))) * mesh.devices.size
                                 / (batch * seq))
        bar = tqdm(total=steps, initial=start, desc="e2e steps", unit="step",
                   disable=not progress or jax.process_index() != 0)
        run_tic = time.perf_counter()
        try:
            for s in range(start, last):
                z, opt_state, loss = compiled(z, opt_state, jnp.int32(s), consts, model_state,
                                              train_dev, hidden)
                history[s] = float(loss)
                bar.set_postfix(kl=f"{history[s]:.4f}")
                bar.update(1)
                if manager is not None:
                    import orbax.checkpoint as ocp
                    manager.save(s + 1, args=ocp.args.StandardSave(
                        {"z": z, "opt_state": opt_state, "step": s + 1, "seed": seed,
                         "history": history}))
        finally:
            bar.close()
        seconds = time.perf_counter() - run_tic
    finally:
        if manager is not None:
            manager.wait_until_finished()
            manager.close()

    out = _rounded(emb, prob, prob.values(jax.device_get(z), jax.device_get(consts)))
    held_hidden = states(held, "e2e held teacher")

    @jax.jit
    def kl_windows(model_state, consts, leaves, ids, hid):
        teacher = prob.teacher_logits(model_state, hid)
        return _kl(teacher, prob.student_logits(model_state, leaves, consts, ids))[1]

    def per_window(model_state, leaves, ids, hid):
        return kl_windows(model_state, consts, leaves, ids, hid)

    before, after = (_held_kl(per_window, model_state, held, held_hidden,
                              jax.device_put(leaves, replicated), batch, sharded)
                     for leaves in (prob.base, _trained_leaves(out)))
    done = int(np.sum(np.isfinite(history)))
    out.meta = {**emb.meta, "e2e": {
        "steps": steps, "steps_run": done, "lr": lr, "batch": batch, "seq": seq,
        "tokens": int(train.size), "held_tokens": int(held.size), "seed": seed,
        "first_kl": float(history[0]) if done else None,
        "last_kl": float(history[done - 1]) if done else None,
        "held_kl_before": before, "held_kl_after": after,
        "seconds": time.perf_counter() - tic, "step_seconds": seconds,
        "devices": int(mesh.devices.size), "flops_per_token": flops,
        "log": [float(x) for x in history[:done]]}}
    return out


def _rounded(emb, prob: _Problem, leaves):
    """A copy of `emb` with the trained leaves set to `leaves`, rounded to their stored
    widths: cast to each Variable's own dtype (fp16 books, scales, offsets), then the
    module's `round_to_storage()` for what a dtype does not say (vq's log8 gains)."""
    graphdef, state = nnx.split(emb)
    out = nnx.merge(graphdef, jax.tree.map(lambda x: x, state))   # new Variables, same arrays
    cast = [jnp.asarray(np.asarray(x).astype(dt)) for x, dt in zip(leaves, prob.dtypes)]
    nnx.update(out, jax.tree.unflatten(prob.treedef, cast))
    if hasattr(out, "round_to_storage"):
        out.round_to_storage()
    return out


def _trained_leaves(emb):
    """The trained leaves of `emb` (its CONTINUOUS Variables), fp32, in `_Problem`'s order."""
    names = continuous(type(emb))
    _, trained, _ = nnx.split(emb, lambda path, x: bool(path) and str(path[-1]) in names, ...)
    return [jnp.asarray(x, jnp.float32) for x in jax.tree.leaves(trained)]


def _held_kl(per_window, model_state, held, hidden, leaves, batch: int, sharded):
    """Mean KL over the held windows `[W, T]` with the trained leaves at `leaves` (None when
    there are none); per_window(model_state, leaves, ids, hidden) -> `[B]`."""
    if not len(held):
        return None
    total = 0.0
    for i in range(0, len(held), batch):
        ids, hid = held[i:i + batch], hidden[i:i + batch]
        pad = batch - len(ids)
        if pad:
            ids = np.concatenate([ids, ids[:1].repeat(pad, 0)])
            hid = np.concatenate([hid, hid[:1].repeat(pad, 0)])
        got = per_window(model_state, leaves, jax.device_put(ids, sharded),
                         jax.device_put(hid, sharded))
        total += float(np.sum(np.asarray(got)[:batch - pad]))
    return total / len(held)
