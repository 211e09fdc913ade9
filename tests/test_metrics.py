"""Tests of crab_rt.train.metrics and crab_rt.train.reporting."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from crab_rt.errors import ConfigError
from crab_rt.train.metrics import classification_report
from crab_rt.train.reporting import format_comparison_table, format_report_table, plot_confusion_matrix, write_report

# Hand-computed example, labels a, b, c:
#   y_true = a a a b b c
#   y_pred = a a b b c c
# confusion (rows true, cols predicted):
#   a: [2, 1, 0]
#   b: [0, 1, 1]
#   c: [0, 0, 1]
# WAR = 4/6 = 0.666667
# recall:    a 2/3, b 1/2, c 1/1   -> UAR = (2/3 + 1/2 + 1) / 3 = 0.722222
# precision: a 2/2, b 1/2, c 1/2
# F1: a 2*1*(2/3)/(5/3) = 0.8, b 0.5, c 2*0.5*1/1.5 = 2/3 -> macro-F1 = 0.655556
Y_TRUE = [0, 0, 0, 1, 1, 2]
Y_PRED = [0, 0, 1, 1, 2, 2]
LABELS = ["a", "b", "c"]


def test_hand_computed_example():
    r = classification_report(Y_TRUE, Y_PRED, LABELS)
    assert r["confusion"] == [[2, 1, 0], [0, 1, 1], [0, 0, 1]]
    assert r["war"] == pytest.approx(4 / 6)
    assert r["uar"] == pytest.approx((2 / 3 + 1 / 2 + 1) / 3)
    assert r["macro_f1"] == pytest.approx((0.8 + 0.5 + 2 / 3) / 3)
    assert r["per_class"]["a"] == pytest.approx({"precision": 1.0, "recall": 2 / 3, "f1": 0.8, "support": 3})
    assert r["per_class"]["b"] == pytest.approx({"precision": 0.5, "recall": 0.5, "f1": 0.5, "support": 2})
    assert r["per_class"]["c"] == pytest.approx({"precision": 0.5, "recall": 1.0, "f1": 2 / 3, "support": 1})
    assert r["labels"] == LABELS
    assert r["num_samples"] == 6
    json.dumps(r)  # plain Python types only


def test_numpy_inputs_give_same_result():
    r1 = classification_report(Y_TRUE, Y_PRED, LABELS)
    r2 = classification_report(np.array(Y_TRUE, dtype=np.int32), np.array(Y_PRED), tuple(LABELS))
    assert r1 == r2


def test_perfect_prediction():
    r = classification_report([0, 1, 2, 1], [0, 1, 2, 1], LABELS)
    assert r["war"] == r["uar"] == r["macro_f1"] == 1.0


def test_class_absent_everywhere_is_ignored_in_averages():
    # label "d" is neither true nor predicted: zeros, no NaN, and it does not dilute UAR / macro-F1.
    r = classification_report(Y_TRUE, Y_PRED, LABELS + ["d"])
    ref = classification_report(Y_TRUE, Y_PRED, LABELS)
    assert r["per_class"]["d"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
    assert r["uar"] == pytest.approx(ref["uar"])
    assert r["macro_f1"] == pytest.approx(ref["macro_f1"])
    assert r["confusion"][3] == [0, 0, 0, 0]


def test_class_predicted_but_absent_from_truth():
    # y_true = a a, y_pred = a b: recall a = 1/2; b has no support (recall 0, not in UAR);
    # precision a = 1, b = 0; F1 a = 2/3, b = 0; macro-F1 over {a, b} = 1/3.
    r = classification_report([0, 0], [0, 1], ["a", "b"])
    assert r["uar"] == pytest.approx(0.5)
    assert r["war"] == pytest.approx(0.5)
    assert r["macro_f1"] == pytest.approx(1 / 3)
    assert r["per_class"]["b"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}


def test_class_never_predicted_has_zero_precision():
    r = classification_report([0, 1, 1], [0, 0, 0], ["a", "b"])
    assert r["per_class"]["b"]["precision"] == 0.0
    assert r["per_class"]["b"]["f1"] == 0.0
    assert r["per_class"]["a"]["precision"] == pytest.approx(1 / 3)
    assert r["uar"] == pytest.approx(0.5)
    for c in r["per_class"].values():
        assert all(math.isfinite(v) for v in c.values())


@pytest.mark.parametrize(
    ("y_true", "y_pred", "match"),
    [
        ([], [], "empty"),
        ([0, 1], [0], "2 items but y_pred has 1"),
        ([0, 3], [0, 1], r"y_true\[1\] = 3 is out of range \[0, 2\]"),
        ([0, 1], [0, -1], r"y_pred\[1\] = -1 is out of range"),
        ([0.5, 1], [0, 1], "integer class ids"),
    ],
)
def test_bad_inputs_raise(y_true, y_pred, match):
    with pytest.raises(ValueError, match=match):
        classification_report(y_true, y_pred, LABELS)


def test_bad_labels_raise():
    with pytest.raises(ValueError, match="labels is empty"):
        classification_report([0], [0], [])
    with pytest.raises(ValueError, match="duplicates"):
        classification_report([0], [0], ["a", "a"])


def test_format_report_table():
    r = classification_report(Y_TRUE, Y_PRED, LABELS)
    table = format_report_table(r)
    lines = table.splitlines()
    row_a = next(line for line in lines if line.startswith("a "))
    assert row_a.split() == ["a", "1.0000", "0.6667", "0.8000", "3"]
    assert any(line.startswith("WAR") and "0.6667" in line for line in lines)
    assert any(line.startswith("UAR") and "0.7222" in line for line in lines)
    assert any(line.startswith("macro-F1") and "0.6556" in line for line in lines)


def test_write_report_json_and_png(tmp_path):
    r = classification_report(Y_TRUE, Y_PRED, LABELS + ["unused"])
    paths = write_report(r, tmp_path / "out", stem="dev")
    assert paths["json"] == tmp_path / "out" / "dev.json"
    assert json.loads(paths["json"].read_text()) == r
    png = paths["confusion_png"]
    assert png == tmp_path / "out" / "dev_confusion.png"
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(data) > 2000


def test_plot_confusion_matrix_custom_path(tmp_path):
    r = classification_report(Y_TRUE, Y_PRED, LABELS)
    out = plot_confusion_matrix(r, tmp_path / "deep" / "cm.png", title="test")
    assert out.read_bytes()[:4] == b"\x89PNG"


def test_reporting_rejects_non_report(tmp_path):
    with pytest.raises(ConfigError, match="missing key"):
        format_report_table({"war": 1.0})
    with pytest.raises(ConfigError, match="missing key"):
        write_report({}, tmp_path)


def test_format_comparison_table_rows_and_mismatch():
    a = classification_report([0, 1, 1, 0], [0, 1, 0, 0], ["x", "y"])  # WAR 0.75, UAR 0.75
    b = classification_report([0, 1, 1, 0], [1, 1, 1, 1], ["x", "y"])  # WAR 0.5, UAR 0.5
    lines = format_comparison_table([a, b], ["both", "speech"]).splitlines()
    assert lines[2].split() == ["both", "0.7500", "0.7500", f"{a['macro_f1']:.4f}"]
    assert lines[3].split() == ["speech", "0.5000", "0.5000", f"{b['macro_f1']:.4f}"]
    c = classification_report([0, 1], [0, 1], ["x", "y"])
    with pytest.raises(ConfigError, match=r"different numbers of samples \(\[2, 4\]\)"):
        format_comparison_table([a, c])
