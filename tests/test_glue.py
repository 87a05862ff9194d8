"""GLUE: metrics against hand-computed values, and the per-task TSV layouts."""
import math
from pathlib import Path

import numpy as np
import pytest

from dirjax.data import glue as glue_data
from dirjax.errors import ConfigError, DataError
from dirjax.evaluate import glue

PRED = np.array([1, 1, 0, 1, 0, 0, 1, 0])
GOLD = np.array([1, 0, 0, 1, 1, 0, 1, 0])
# TP = 3 (0, 3, 6), TN = 3 (2, 5, 7), FP = 1 (1), FN = 1 (4)


def test_accuracy_and_f1_by_hand():
    assert glue.accuracy(PRED, GOLD) == 6 / 8
    # F1 = 2 TP / (2 TP + FP + FN) = 6 / 8
    assert glue.f1(PRED, GOLD) == pytest.approx(6 / 8)
    assert glue.f1([1, 1, 1, 0], [1, 0, 0, 0]) == pytest.approx(2 / (2 + 2 + 0))
    assert glue.f1([0, 0], [1, 0]) == 0.0


def test_matthews_by_hand():
    # (3*3 - 1*1) / sqrt(4 * 4 * 4 * 4) = 8 / 16
    assert glue.matthews(PRED, GOLD) == pytest.approx(0.5)
    # TP=1, TN=2, FP=1, FN=0: (2 - 0) / sqrt(2 * 1 * 3 * 2)
    assert glue.matthews([1, 1, 0, 0], [1, 0, 0, 0]) == pytest.approx(2 / math.sqrt(12))
    assert glue.matthews([1, 1, 1], [1, 0, 1]) == 0.0  # one margin empty -> 0, as sklearn
    assert glue.matthews(GOLD, GOLD) == pytest.approx(1.0)
    assert glue.matthews(1 - GOLD, GOLD) == pytest.approx(-1.0)


def test_pearson_and_spearman_by_hand():
    x = np.array([1.0, 2.0, 3.0, 4.0])
    y = np.array([2.0, 1.0, 4.0, 3.0])
    # centred x = (-1.5, -.5, .5, 1.5), y = (-.5, -1.5, 1.5, .5): cov 3.0 / var 5.0
    assert glue.pearson(x, y) == pytest.approx(0.6)
    # y is already a ranking: Spearman = 1 - 6 * sum d^2 / (n (n^2 - 1)) = 1 - 6*4/60
    assert glue.spearman(x, y) == pytest.approx(0.6)
    # a monotone but non-linear map: Spearman 1, Pearson below 1
    assert glue.spearman(x, np.exp(3 * x)) == pytest.approx(1.0)
    assert glue.pearson(x, np.exp(3 * x)) < 0.95


def test_score_uses_each_tasks_metrics():
    assert set(glue.score("cola", PRED, GOLD)) == {"matthews"}
    assert glue.score("mrpc", PRED, GOLD) == {"f1": pytest.approx(0.75), "accuracy": 0.75}
    assert set(glue.score("qqp", PRED, GOLD)) == {"f1", "accuracy"}
    assert set(glue.score("STS-B", [1.0, 2, 3], [1.0, 3, 2])) == {"pearson", "spearman"}
    for t in ("sst2", "mnli", "qnli", "rte"):
        assert set(glue.score(t, PRED, GOLD)) == {"accuracy"}
    with pytest.raises(DataError):
        glue.score("rte", PRED[:3], GOLD)
    with pytest.raises(ConfigError):
        glue.get_task("wnli2")


def test_predictions_argmax_or_score():
    rte = glue.predictions(glue.get_task("rte"), np.array([[0.1, 2.0], [3.0, -1.0]]))
    assert list(rte) == [1, 0]
    np.testing.assert_array_equal(glue.predictions(glue.get_task("stsb"), np.array([[4.5], [0.2]])),
                                  [4.5, 0.2])


def write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text.encode("utf-8"))


def test_tsv_layouts(tmp_path):
    g = tmp_path / "glue"
    # MRPC: UTF-8 BOM, literal quotes that must survive (quoting off)
    write(g / "MRPC/dev.tsv", "\ufeffQuality\t#1 ID\t#2 ID\t#1 String\t#2 String\n"
          '1\t1\t2\tHe said "yes.\tThe "answer" was yes.\n0\t3\t4\tA b.\tC d.\n')
    # CoLA: no header; source, label, original label, sentence
    write(g / "CoLA/dev.tsv", "gj04\t1\t\tThe sailors rode.\ngj04\t0\t*\tRode sailors the.\n")
    # RTE: integer labels; QNLI: label strings (0 = entailment)
    write(g / "RTE/dev.tsv", "sentence1\tsentence2\tlabel\tidx\nA.\tB.\t1\t0\nC.\tD.\t0\t1\n")
    write(g / "QNLI/dev.tsv", "index\tquestion\tsentence\tlabel\n0\tQ?\tS.\tnot_entailment\n"
          "1\tR?\tT.\tentailment\n")
    write(g / "STS-B/dev.tsv", "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\t"
          "sentence1\tsentence2\tscore\n0\tx\tx\tx\t0\tn\tn\tA man.\tA guy.\t4.750\n")
    write(g / "MNLI/dev_mismatched.tsv", "index\tpromptID\tpairID\tgenre\tsentence1\tsentence2\t"
          "label1\tgold_label\n0\t1\t2\tg\tP.\tH.\tneutral\tcontradiction\n")

    m = glue_data.load("mrpc", "dev", tmp_path)
    assert m.text_a == ['He said "yes.', "A b."] and m.text_b[0] == 'The "answer" was yes.'
    assert list(m.labels) == [1, 0]
    c = glue_data.load("cola", "dev", tmp_path)
    assert c.text_a == ["The sailors rode.", "Rode sailors the."] and c.text_b is None
    assert list(c.labels) == [1, 0]
    assert list(glue_data.load("rte", "dev", tmp_path).labels) == [1, 0]
    q = glue_data.load("qnli", "dev", tmp_path)
    assert list(q.labels) == [1, 0] and q.text_a == ["Q?", "R?"] and q.text_b == ["S.", "T."]
    s = glue_data.load("stsb", "dev", tmp_path)
    assert s.labels.dtype == np.float32 and s.labels[0] == pytest.approx(4.75)
    assert s.text_b == ["A guy."]
    assert list(glue_data.load("mnli", "dev_mismatched", tmp_path).labels) == [2]
    with pytest.raises(DataError, match="missing GLUE file"):
        glue_data.load("sst2", "dev", tmp_path)


def test_bad_label_is_a_clear_error(tmp_path):
    write(tmp_path / "glue/RTE/dev.tsv", "sentence1\tsentence2\tlabel\tidx\nA.\tB.\tmaybe\t0\n")
    with pytest.raises(DataError, match="unknown label 'maybe'"):
        glue_data.load("rte", "dev", tmp_path)


SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.mark.slow  # needs ../shared/data

def test_shared_dev_files_have_official_sizes():
    counts = {"cola": (1043, 1), "sst2": (872, 1), "mrpc": (408, 2), "stsb": (1500, 2),
              "qnli": (5463, 2), "rte": (277, 2)}
    for task, (n, texts) in counts.items():
        ex = glue_data.load(task, "dev", SHARED)
        assert len(ex) == n and (ex.text_b is not None) == (texts == 2)
    mrpc = glue_data.load("mrpc", "dev", SHARED)
    assert int(mrpc.labels.sum()) == 279  # the official 68.4% positive rate
