"""The "finetune" job end to end on the tiny BERT: through run.py as a user runs it, then
reruns in the same work directory (what is reused and what is not)."""
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TINY_BERT = ROOT / "tests" / "fixtures" / "tiny-bert"


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """A tiny RTE (24 pairs) under glue/RTE/{train,dev}.tsv."""
    root = tmp_path_factory.mktemp("data")
    rows = ["sentence1\tsentence2\tlabel\tidx"] + [
        f"{a} movie.\tit was {a}.\t{int(a == 'bad')}\t{i}"
        for i, a in enumerate(["good", "bad"] * 12)]
    (root / "glue/RTE").mkdir(parents=True)
    for split in ("train", "dev"):
        (root / f"glue/RTE/{split}.tsv").write_text("\n".join(rows) + "\n")
    return root


def overrides(data_dir) -> dict:
    return dict(model=str(TINY_BERT), data_dir=str(data_dir), tasks=("rte",), seeds=(1,),
                methods=("original", "svd"), rates=(10.0,), epochs=1, max_length=32, lr=1e-3,
                micro_batch_size=8, batch_size=8, progress=False)


def test_tiny_finetune_through_run_py_then_reruns(tmp_path, data_dir, run_here):
    work = tmp_path / "work"
    args = [f"--config.{k}={v!r}" if isinstance(v, tuple) else f"--config.{k}={v}"
            for k, v in overrides(data_dir).items()]
    proc = run_here("--config", str(ROOT / "configs/glue.py"), *args, "--workdir", str(work),
                    cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    summary = " ".join(t for t in proc.stdout.split(" ") if t)        # the seed summary
    assert "accuracy x100 on glue/rte/dev" in summary and "| svd | 10 |" in summary
    rows = json.loads((work / "results.json").read_text())
    assert [(r["method"], r["metric"], r["job"]) for r in rows] == [
        ("original", "accuracy", "finetune"), ("svd", "accuracy", "finetune")]
    original, svd = rows
    from dirjax.compress import rank_for_rate
    assert svd["rank"] == rank_for_rate(1000, 64, 10.0) and original["rank"] is None
    assert svd["output"] is None and svd["svd_solver"] == "exact"  # one schema: None, not "none"
    assert svd["embedding_bytes"] < original["embedding_bytes"] == 1000 * 64 * 4
    assert svd["lr"] == 1e-3 and svd["seed"] == 1 and svd["method_options"] == {}

    from dirjax.config import base_config
    from dirjax.experiment import run_experiment
    c = base_config("finetune")
    c.update(overrides(data_dir))
    ckpts = sorted(p.name for p in (work / "checkpoints").iterdir())
    stamp = {p: (work / "checkpoints" / p).stat().st_mtime_ns for p in ckpts}

    again = run_experiment(c, work)          # nothing changed: nothing retrained
    assert all(r["cached"] for r in again)
    assert [r["value"] for r in again] == [r["value"] for r in rows]
    assert {p: (work / "checkpoints" / p).stat().st_mtime_ns for p in ckpts} == stamp

    c.lr = 2e-3                               # another lr: new runs, new checkpoints, rows kept
    other = run_experiment(c, work)
    assert not any(r.get("cached") for r in other) and all(r["lr"] == 2e-3 for r in other)
    assert {r["key"] for r in other}.isdisjoint({r["key"] for r in rows})
    assert len(list((work / "checkpoints").iterdir())) == 2 * len(ckpts)
    saved = json.loads((work / "results.json").read_text())
    assert [r["lr"] for r in saved] == [1e-3, 1e-3, 2e-3, 2e-3]
    # the compression is shared by both lrs: one SVD in the cache
    assert len(list((work / "embeddings").glob("svd-rate10-*/meta.json"))) == 1

    c.methods, c.reference = ("svd",), False  # no reference: only the compressed model, and
    assert [(r["method"], r["cached"]) for r in run_experiment(c, work)] == [("svd", True)]
    c.reference = True                        # `reference` changes no run: nothing retrained
    assert [r["cached"] for r in run_experiment(c, work)] == [True, True]
