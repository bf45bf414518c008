"""python -m kmcl_jax.analyze: its statistics on known matrices, the correlated demo's
known answer, bad input in one sentence, and a whole analysis of the reference run."""

import json
import math
import sys

import jax
import numpy as np
import pytest
from runs import stopped_with_one_sentence
from scipy import stats

from kmcl_jax import losses
from kmcl_jax.analyze import analysis, statistics
from kmcl_jax.data import demo, get_source


def test_cooccurrence_of_a_known_label_matrix():
  positives = np.array([[1, 1, 0], [1, 1, 0], [1, 0, 1], [0, 0, 1]], bool)
  data = statistics.cooccurrence(positives)
  np.testing.assert_array_equal(data["counts"], [[3, 2, 1], [2, 2, 0], [1, 0, 2]])
  np.testing.assert_allclose(data["frequency"], [0.75, 0.5, 0.5])
  np.testing.assert_allclose(data["conditional"][0], [1, 2 / 3, 1 / 3])
  np.testing.assert_allclose(data["conditional"][1], [1, 1, 0])
  # P(0, 1) = 1/2 against P(0) P(1) = 3/8; classes 1 and 2 never co-occur.
  assert data["pmi"][0, 1] == pytest.approx(math.log(4 / 3))
  assert np.isnan(data["pmi"][1, 2])
  assert statistics.strong_pairs(np.array([[0, 1.0, 0.2], [1.0, 0, np.nan], [0.2, np.nan, 0]])) == [
    (0, 1)
  ]


def test_rank_correlation_is_spearmans_over_the_finite_pairs():
  rng = np.random.default_rng(0)
  a, b = rng.integers(0, 5, 30).astype(float), rng.normal(size=30)  # a has ties
  assert statistics.rank_correlation(a, b) == pytest.approx(stats.spearmanr(a, b).statistic)
  b_with_gap = b.copy()
  b_with_gap[3] = np.nan
  keep = np.arange(30) != 3
  assert statistics.rank_correlation(a, b_with_gap) == pytest.approx(
    stats.spearmanr(a[keep], b[keep]).statistic
  )
  assert np.isnan(statistics.rank_correlation(a[:2], b[:2]))
  assert statistics.rank_correlation(b, np.exp(b)) == pytest.approx(1.0)


def test_pair_agreement_and_the_class_map():
  pmi = np.array([[0, 2.0, -1, 0.1], [2.0, 0, 0.0, 0.2], [-1, 0.0, 0, 1.5], [0.1, 0.2, 1.5, 0]])
  # An affinity that ranks the pairs as the PMI does, but for swapping the two strongest.
  affinity = pmi.copy()
  affinity[0, 1] = affinity[1, 0] = 1.6
  affinity[2, 3] = affinity[3, 2] = 1.9
  agreement = statistics.pair_agreement(pmi, affinity)
  assert agreement["recovered"] == 1.0 and agreement["pairs"] == 6
  assert agreement["nearest_partner"] == 1.0
  assert agreement["rank_correlation"] == pytest.approx(1 - 6 * 2 / (6 * 35))
  affinity[0, 2] = affinity[2, 0] = 5.0  # now a weak pair is the top one
  agreement = statistics.pair_agreement(pmi, affinity)
  # Classes 0 and 2 are each other's nearest; 1 and 3 still have their partners.
  assert agreement["recovered"] == 0.5 and agreement["nearest_partner"] == 0.5
  # Points on a line in 3-D: one axis explains everything.
  points = np.outer([0.0, 1, 2, 5], [1.0, 2, -1])
  coordinates, explained = statistics.principal_map(points)
  np.testing.assert_allclose(explained, [1, 0], atol=1e-12)
  np.testing.assert_allclose(np.abs(coordinates[:, 0]), np.abs(points[:, 0] - 2) * math.sqrt(6))


def test_class_pair_distances_are_the_contrastive_terms_bd_between_components():
  keys = jax.random.split(jax.random.key(0), 2)
  mu = jax.random.normal(keys[0], (3, 5, 4))
  var = 2 + jax.random.uniform(keys[1], (3, 5, 4))
  pair_distances = jax.jit(losses.class_pair_distances, static_argnames=("kernel", "feature_dim"))
  distances = np.asarray(pair_distances(mu, var, kernel="anisotropic", feature_dim=5))
  sigma = np.sqrt(np.asarray(var, np.float64)) + losses.SIGMA_EPS
  m = np.asarray(mu, np.float64)
  for b, i, j in [(0, 0, 1), (1, 2, 3), (2, 3, 0)]:
    total = sigma[b, :, i] ** 2 + sigma[b, :, j] ** 2
    expected = np.sum(
      2.5 * np.log(total / (2 * sigma[b, :, i] * sigma[b, :, j]))
      + 1.25 * (m[b, :, i] - m[b, :, j]) ** 2 / total
    )
    assert distances[b, i, j] == pytest.approx(expected, rel=1e-5)
  np.testing.assert_allclose(distances, distances.transpose(0, 2, 1), atol=1e-5)
  np.testing.assert_allclose(np.diagonal(distances, axis1=1, axis2=2), 0, atol=1e-5)
  isotropic = pair_distances(mu[:, 0], var[:, 0], kernel="isotropic", feature_dim=7)
  assert isotropic.shape == (3, 4, 4)


def labels_of(source):
  return np.stack([source.annotations(i)["labels"] for i in range(len(source))]) > 0


def test_the_correlated_demo_has_exactly_its_constructed_pairs():
  correlated = statistics.cooccurrence(labels_of(get_source("demo_correlated", "test")))
  assert statistics.strong_pairs(correlated["pmi"]) and set(
    statistics.strong_pairs(correlated["pmi"])
  ) == set(demo.PAIRS)
  for a, b in demo.PAIRS:
    assert correlated["conditional"][a, b] > 0.85 and correlated["conditional"][b, a] > 0.85
  assert (
    statistics.strong_pairs(statistics.cooccurrence(labels_of(get_source("demo", "test")))["pmi"])
    == []
  )
  # The plain demo renders as it did before the correlated variant existed.
  assert demo.DigitGridSource("test")[5]["id"] == "demo-test-00005"


def test_a_split_without_positives_for_a_class_is_one_sentence():
  positives = np.array([[1, 0, 0], [1, 0, 1]], bool)
  with pytest.raises(ValueError, match=r"^The split 'val' has no positive image of class 'b': "):
    statistics.check_positives(positives, ["a", "b", "c"], "The split 'val'")


def test_an_asl_only_head_is_analysed_through_its_logits():
  rng = np.random.default_rng(1)
  positives = rng.random((40, 3)) < 0.5
  positives[0] = True
  logits = np.where(positives, 2.0, -2.0) + rng.normal(size=(40, 3))
  data = statistics.cooccurrence(positives)
  classifier = rng.normal(size=(8, 3))
  features = rng.normal(size=(40, 8))
  outputs = {"logits": logits, "feature_sum": features.T @ positives}
  record, _ = analysis.analyse_variant(
    outputs, positives, np.zeros_like(positives), data, ["a", "b", "c"], 8, classifier
  )
  assert record["uncertainty"] is None
  assert list(record["affinity"]) == [
    "logit_correlation",
    "classifier_cosine",
    "feature_prototypes",
  ]
  means = [features[positives[:, k]].mean(0) for k in range(3)]
  assert record["affinity"]["feature_prototypes"]["matrix"][1, 2] == pytest.approx(
    -np.linalg.norm(means[1] - means[2])
  )
  np.testing.assert_allclose(
    record["affinity"]["logit_correlation"]["matrix"], np.corrcoef(logits.T), atol=1e-12
  )
  cosine = record["affinity"]["classifier_cosine"]["matrix"]
  assert cosine[0, 2] == pytest.approx(
    classifier[:, 0]
    @ classifier[:, 2]
    / np.linalg.norm(classifier[:, 0])
    / np.linalg.norm(classifier[:, 2])
  )
  assert "classifier" in record["class_map"]["what"]
  assert record["map"] > 90  # logits that follow the labels


def test_the_run_config_is_the_recorded_one_over_the_current_defaults(tmp_path):
  from kmcl_jax.workdir import WorkdirError, run_config

  with pytest.raises(WorkdirError, match=r"run.json does not exist: .* is not the folder of a"):
    run_config(str(tmp_path))
  # A run.json of an older version: no `threshold`, the mean as JSON gives it back.
  recorded = {"model": {"mode": "asl_only"}, "data": {"name": "demo", "mean": [0.1, 0.2, 0.3]}}
  (tmp_path / "run.json").write_text(json.dumps({"config": recorded, "class_names": ["a"]}))
  config = run_config(str(tmp_path))
  assert (config.model.mode, config.model.kernel) == ("asl_only", "anisotropic")
  assert config.data.mean == (0.1, 0.2, 0.3) and config.threshold == 0.8


@pytest.mark.slow
def test_a_workdir_without_checkpoints_is_one_sentence(tmp_path):
  sentence, _ = stopped_with_one_sentence(
    [sys.executable, "-m", "kmcl_jax.analyze", f"--workdir={tmp_path}"]
  )
  assert f"--workdir='{tmp_path}' has no checkpoint" in sentence


@pytest.mark.slow
def test_the_analysis_of_the_reference_run(reference_run, tmp_path):
  from kmcl_jax.analyze.report import analyse

  # auto: the variant that scored the best checkpoint (one pass, one set of plots).
  record = analyse(str(reference_run), output=str(tmp_path), variant="auto")
  written = json.loads((tmp_path / "analysis.json").read_text())
  assert written["images"] == record["images"] == 1000
  summary = json.loads((reference_run / "summary.json").read_text())
  assert list(written["variants"]) == [summary["best_of"]]
  for variant in written["variants"]:
    assert written["variants"][variant]["map"] == pytest.approx(summary[f"map_{variant}"], abs=1e-3)
    affinity = written["variants"][variant]["affinity"]
    assert set(affinity) == {
      "kernel_pair",
      "kernel_prototype",
      "prototype_means",
      "logit_correlation",
      "classifier_cosine",
      "feature_prototypes",
    }
    pair = np.array(affinity["kernel_pair"]["matrix"], float)
    np.testing.assert_allclose(pair, pair.T, rtol=1e-5)
    assert (
      affinity["kernel_pair"]["pairs"] == 45
      and -1 <= affinity["kernel_pair"]["rank_correlation"] <= 1
    )
    variance = written["variants"][variant]["uncertainty"]["class_variance"]
    assert min(variance.values()) > 1  # var = 2 + 1e-7 + ELU(x) > 1
  # The data side is the split's labels as the source gives them.
  expected = statistics.cooccurrence(labels_of(get_source("demo", "test")))
  np.testing.assert_allclose(written["data"]["conditional"], expected["conditional"])
  assert sorted(p.rsplit("/", 1)[1] for p in written["plots"]) == sorted(
    f"{kind}_{summary['best_of']}.png" for kind in ("affinity", "uncertainty", "class_map")
  )
  assert all((tmp_path / p.rsplit("/", 1)[1]).stat().st_size > 10_000 for p in written["plots"])
