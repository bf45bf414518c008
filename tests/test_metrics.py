"""multilabel_metrics against a loop transcription of the reference's meters and sklearn."""

import math

import numpy as np
import pytest
from sklearn.metrics import average_precision_score

from kmcl_jax.metrics import ap_table, multilabel_metrics


@np.errstate(divide="ignore", invalid="ignore")
def oracle(scores, raw, threshold=0.8):
  """The reference's AveragePrecisionMeter on raw labels (1 positive, 0 difficult,
  -1 negative; difficult skipped in AP), written as its loops."""
  n, k = scores.shape
  ap = np.zeros(k)
  for c in range(k):
    order = sorted(range(n), key=lambda i: -scores[i, c])  # stable, like ours
    positives = total = precision = 0.0
    for i in order:
      if raw[i, c] == 0:
        continue
      total += 1
      if raw[i, c] == 1:
        positives += 1
        precision += positives / total
    ap[c] = precision / positives if positives else 0.0
  targets = np.where(raw == 1, 1, 0)

  def evaluation(predicted):
    nc, np_, ng = np.zeros(k), np.zeros(k), np.zeros(k)
    for c in range(k):
      ng[c] = np.sum(targets[:, c] == 1)
      np_[c] = np.sum(predicted[:, c] == 1)
      nc[c] = np.sum(targets[:, c] * (predicted[:, c] == 1))
    np_[np_ == 0] = 1
    op, orr = nc.sum() / np_.sum(), nc.sum() / ng.sum()
    of1 = 2 * op * orr / (op + orr)
    cp, cr = np.sum(nc / np_) / k, np.sum(nc / ng) / k
    cf1 = 2 * cp * cr / (cp + cr)
    return [op, orr, 0 if math.isnan(of1) else of1, cp, cr, 0 if math.isnan(cf1) else cf1]

  overall = evaluation(np.where(scores >= threshold, 1, 0))
  top = np.zeros((n, k))
  for i in range(n):
    for c in np.argsort(-scores[i], kind="stable")[:3]:
      top[i, c] = 1 if scores[i, c] >= threshold else 0
  names = ["OP", "OR", "OF1", "CP", "CR", "CF1"]
  return {
    "map": 100 * ap.mean(),
    "ap": ap,
    **dict(zip(names, overall, strict=True)),
    **{f"{m}_3": v for m, v in zip(names, evaluation(top), strict=True)},
  }


@pytest.mark.parametrize("seed", range(4))
def test_metrics_equal_the_reference_protocol_with_difficult_entries(seed):
  rng = np.random.default_rng(seed)
  n, k = 60, 7
  raw = rng.choice([1, 0, -1], p=[0.3, 0.1, 0.6], size=(n, k))
  if seed % 2:  # a class with no positive: AP 0, and CR = 0/0 = NaN as in the reference
    raw[:, 3] = np.where(raw[:, 3] == 1, -1, raw[:, 3])
  scores = np.clip(rng.random((n, k)) * 0.6 + 0.5 * (raw == 1), 0, 1)
  scores[::5, 2] = 0.8  # exactly at the threshold, and ties
  got = multilabel_metrics(scores, (raw >= 0).astype(np.float32), ignore=raw == 0)
  want = oracle(scores, raw)
  np.testing.assert_allclose(got["ap"], want["ap"], rtol=1e-12)
  for name in want:
    if name != "ap":
      np.testing.assert_allclose(got[name], want[name], rtol=1e-12, err_msg=name)
  assert 0 < got["OF1"] < 1 and 0 < got["OF1_3"] < 1
  if seed % 2:
    assert got["ap"][3] == 0.0 and math.isnan(got["CR"]) and got["CF1"] == 0.0
  else:
    assert 0 < got["CF1"] < 1 and 0 < got["CF1_3"] < 1


def test_average_precision_equals_sklearn_on_tie_free_scores():
  rng = np.random.default_rng(7)
  targets = (rng.random((200, 5)) < 0.3).astype(np.float32)
  scores = rng.random((200, 5)) + 0.3 * targets
  got = multilabel_metrics(scores, targets)
  want = [average_precision_score(targets[:, c], scores[:, c]) for c in range(5)]
  np.testing.assert_allclose(got["ap"], want, rtol=1e-12)
  np.testing.assert_allclose(got["map"], 100 * np.mean(want), rtol=1e-12)


def test_hand_computed_case():
  scores = np.array([[0.9, 0.1], [0.85, 0.2], [0.3, 0.95], [0.7, 0.81]])
  targets = np.array([[1, 0], [0, 0], [1, 1], [0, 1]])
  got = multilabel_metrics(scores, targets)
  # class 0: ranks 1..4 hold 1, 0, 0(0.7), 1(0.3): AP = (1/1 + 2/4) / 2; class 1: 1, 1 -> 1.
  np.testing.assert_allclose(got["ap"], [0.75, 1.0])
  # predicted at 0.8: class 0 rows 0, 1; class 1 rows 2, 3. Correct: 1 + 2 of 4.
  assert got["OP"] == 0.75 and got["OR"] == 0.75
  np.testing.assert_allclose([got["CP"], got["CR"]], [0.75, 0.75])


def test_bad_inputs_and_the_table():
  with pytest.raises(ValueError, match="must both be"):
    multilabel_metrics(np.zeros((3, 2)), np.zeros((3, 3)))
  with pytest.raises(ValueError, match="0 or 1"):
    multilabel_metrics(np.zeros((3, 2)), np.full((3, 2), -1))
  table = ap_table(np.array([0.5, 0.25]), ["cat", "aeroplane"])
  assert table.splitlines()[1:] == ["cat         50.00", "aeroplane   25.00"]
