"""examples/quickstart.ipynb runs from top to bottom under nbclient, in a kernel of this
interpreter: on the tiny Llama fixture (default suite) and on SmolLM2-135M (slow; prints the
executed notebook's perplexity table and the two continuations)."""
from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "examples" / "quickstart.ipynb"
KERNEL = "dirjax-test"


def kernel_spec(where: Path) -> Path:
    """A kernelspec running ipykernel in this interpreter (the project's venv), under
    `where`/kernels; point JUPYTER_PATH at `where` to use it."""
    spec = where / "kernels" / KERNEL
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "dirjax test", "language": "python"}))
    return where


def run(parameters: str, tmp_path: Path, monkeypatch, timeout: int):
    """The notebook executed with its parameter cell replaced by `parameters`."""
    monkeypatch.setenv("JUPYTER_PATH", str(kernel_spec(tmp_path / "jupyter")))
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    for cell in nb.cells:   # committed stripped: no outputs, no execution counts
        assert not cell.get("outputs") and not cell.get("execution_count"), cell.source[:60]
        if cell.cell_type == "markdown":   # prose, not a template: no {RATE}
            assert not re.search(r"\{[A-Za-z_]+\}", cell.source), cell.source[:60]
    install = next(c for c in nb.cells if c.cell_type == "code")
    # Colab installs from one variable the user sets; a checkout is used instead of it
    assert re.search(r'^DIRJAX_SOURCE = "', install.source, re.M), install.source[:200]
    cells = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(cells) == 1
    defaults = cells[0].source
    for name in ("MODEL", "TOKENS", "DATA_DIR", "EPOCHS"):
        assert re.search(rf"^{name} = ", defaults, re.M), name
    assert 'MODEL = "smollm2-135m"' in defaults and "EPOCHS = 30" in defaults
    cells[0].source = defaults + "\n# overridden by tests/test_notebook.py\n" + parameters
    client = NotebookClient(nb, kernel_name=KERNEL, timeout=timeout,
                            resources={"metadata": {"path": str(ROOT / "examples")}})
    client.execute()
    return nb


def text_of(nb) -> str:
    out = []
    for cell in nb.cells:
        for o in cell.get("outputs", []):
            if o.get("output_type") == "stream":
                out.append(o.get("text", ""))
            elif "text/plain" in o.get("data", {}) and "image/png" not in o["data"]:
                out.append(o["data"]["text/plain"] + "\n")
    return "".join(out)


def images(nb) -> int:
    return sum("image/png" in o.get("data", {}) for c in nb.cells for o in c.get("outputs", []))


def parse(table: str) -> list[dict]:
    """The markdown table's rows as {column title: cell}."""
    lines = table.splitlines()
    head = [c.strip() for c in lines[0].strip("|").split("|")]
    return [dict(zip(head, (c.strip() for c in line.strip("|").split("|")))) for line in lines[2:]]


def check(nb, out_dir: Path) -> tuple[str, list[str]]:
    text = text_of(nb)
    table = [line for line in text.splitlines() if line.startswith("|")]
    head = [c.strip() for c in table[0].strip("|").split("|")]
    assert head == ["method", "output", "rate asked", "reached", "ppl", "ppl ratio"], head
    body = table[2:]
    assert [line.split("|")[1].strip() for line in body] == [
        "uncompressed", "svd", "svd", "ae", "ae", "quant_gptq", "quant_gptq"]
    assert [line.split("|")[2].strip() for line in body][1:3] == ["tied", "input only"]
    continuations = [line for line in text.splitlines() if " -> " in line]
    assert len(continuations) == 2 and continuations[0].strip().startswith("uncompressed:")
    assert "reloaded logits identical: True" in text
    assert images(nb) == 1 and (out_dir / "perplexity.png").is_file()
    assert (out_dir / "quant_gptq-tied" / "dirjax_model.json").is_file()
    return "\n".join(table), continuations


def test_quickstart_runs_on_the_tiny_llama(tmp_path, monkeypatch):
    out = tmp_path / "out"
    nb = run(f'MODEL = {str(ROOT / "tests/fixtures/tiny-llama")!r}\nTOKENS = 300\n'
             f'EPOCHS = 2\nCALIB_HIDDEN = 128\nMAX_LENGTH = 64\nNEW_TOKENS = 6\n'
             f'PROMPT = "The class"\nOUT_DIR = {str(out)!r}\n', tmp_path, monkeypatch, 300)
    table, continuations = check(nb, out)
    rows = parse(table)
    ppl = [float(r["ppl"].replace(",", "")) for r in rows]
    assert all(p > 1 for p in ppl) and rows[0]["ppl ratio"] == "1.00x"


@pytest.mark.slow
def test_quickstart_on_smollm2(tmp_path, monkeypatch, capsys):
    """The notebook as committed (SmolLM2-135M, 4,096 tokens, 30 AE epochs); prints its table
    and the continuations of the original and of the compressed model."""
    out = tmp_path / "out"
    nb = run(f"OUT_DIR = {str(out)!r}\n", tmp_path, monkeypatch, 3000)
    table, continuations = check(nb, out)
    ppl = {(r["method"], r["output"]): float(r["ppl"].replace(",", "")) for r in parse(table)}
    # the quantiser keeps the model at rate 10, low rank does not (README)
    assert ppl[("quant_gptq", "tied")] < 1.3 * ppl[("uncompressed", "-")]
    assert ppl[("svd", "tied")] > 10 * ppl[("uncompressed", "-")]
    with capsys.disabled():
        print("\n" + table + "\n" + "\n".join(continuations))
