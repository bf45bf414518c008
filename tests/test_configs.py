"""Every config file and every variant it lists loads and passes validation."""

import importlib.util
import os

import pytest

from kmcl_jax import config as config_lib
from kmcl_jax.data.sources import NAMES

CONFIG_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")
CONFIGS = sorted(
  name[:-3] for name in os.listdir(CONFIG_DIR) if name.endswith(".py") and name != "ablations.py"
)


def config_module(name):
  spec = importlib.util.spec_from_file_location(name, os.path.join(CONFIG_DIR, f"{name}.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_the_paper_datasets_and_the_demo_have_configs():
  assert CONFIGS == ["adp", "chestxray", "coco", "custom", "demo", "nuswide", "voc"]


@pytest.mark.parametrize("name", CONFIGS)
def test_every_variant_loads_and_validates(name):
  module = config_module(name)
  assert module.VARIANTS and "" in module.VARIANTS
  for variant in module.VARIANTS:
    config = module.get_config(variant or None)
    config_lib.validate(config)
    assert config_lib.load(os.path.join(CONFIG_DIR, f"{name}.py:{variant}")) == config
    assert config.data.name in NAMES
    assert config.num_epochs > 0 and config.checkpoint_every_steps > 0
    backbones = set(variant.split(",")) & {"tresnet_l", "tresnet_l_v2"}
    if backbones:
      assert (config.model.backbone, config.data.image_size) == (backbones.pop(), 448)
      assert (config.batch_size, config.optim.lr, config.num_epochs) == (128, 4e-4, 80)
    elif name != "demo" and variant != "smoke":
      assert (config.model.backbone, config.data.image_size) == ("tresnet_m", 224)
  with pytest.raises(ValueError, match=f"configs/{name}.py: unknown variant"):
    module.get_config("no_such_variant")


def test_dataset_specific_settings():
  adp, chestxray, coco, voc = (config_module(n) for n in ("adp", "chestxray", "coco", "voc"))
  assert chestxray.get_config().data.augment == "affine"
  assert chestxray.get_config().data.std == (1.0, 1.0, 1.0)
  assert adp.get_config().data.mean[0] == pytest.approx(0.81233799)
  assert voc.get_config("tfds").data.name == "tfds:voc/2007"
  assert coco.get_config("tresnet_l,tfds").data.name == "tfds:coco/2014"
  assert voc.get_config("tresnet_l").optim.lr == 4e-4
  assert coco.get_config("tresnet_l_v2,tfds").model.backbone == "tresnet_l_v2"


def test_every_dataset_offers_both_multi_gpu_backbones_but_not_both_at_once():
  for name in CONFIGS:
    module = config_module(name)
    if name != "demo":
      assert {"tresnet_l", "tresnet_l_v2"} <= set(module.VARIANTS), name
      with pytest.raises(
        ValueError,
        match=f"configs/{name}.py: variants \\['tresnet_l', "
        "'tresnet_l_v2'\\] each choose the backbone",
      ):
        module.get_config("tresnet_l,tresnet_l_v2")


def test_each_ablation_is_the_voc_recipe_with_only_its_own_fields_changed():
  ablations, voc = config_module("ablations"), config_module("voc")
  base = flat(voc.get_config())
  for variant in ablations.VARIANTS:
    config = ablations.get_config(variant)
    config_lib.validate(config)
    name = variant.partition("=")[0]
    changed = {k for k, v in flat(config).items() if base.get(k) != v}
    expected = set(ablations.ABLATIONS[name]) | ({"data.subset_ids"} if "=" in variant else set())
    assert changed and changed <= expected, (variant, changed)
  with pytest.raises(ValueError, match="unknown variant 'coco_subset'"):
    ablations.get_config("coco_subset")  # needs the CSV


def flat(config):
  return dict(_flatten(config.to_dict()))


def _flatten(tree, prefix=""):
  for key, value in tree.items():
    if isinstance(value, dict):
      yield from _flatten(value, f"{prefix}{key}.")
    else:
      yield f"{prefix}{key}", value


@pytest.mark.slow
@pytest.mark.parametrize("variant", config_module("ablations").VARIANTS)
def test_every_ablation_trains_two_steps_on_the_demo_data(variant):
  import jax
  import numpy as np

  from kmcl_jax import optim
  from kmcl_jax.data import create_datasets
  from kmcl_jax.mesh import create_mesh, replicated, to_global_batch
  from kmcl_jax.state import create_model, initial_state
  from kmcl_jax.steps import jit_steps

  config = config_module("ablations").get_config(variant)
  demo = config_lib.load(os.path.join(CONFIG_DIR, "demo.py:smoke"))
  config.model.backbone = "tresnet_tiny"
  config.data = demo.data
  config.batch_size, config.eval_batch_size, config.train_steps = 8, 100, 2
  datasets = create_datasets(config)
  model = create_model(config, len(datasets.class_names))
  optimizer = optim.create_optimizer(config.optim, 2)
  mesh = create_mesh()
  state = initial_state(config, model, optimizer, replicated(mesh))
  train_step, _ = jit_steps(config, model, optimizer, mesh, state)
  batches = datasets.train_from(0)
  for _ in range(2):
    state, metrics = train_step(state, to_global_batch(next(batches), mesh))
  batches.close()
  metrics = jax.device_get(metrics)
  assert int(state.step) == 2 and int(metrics["skipped_steps"]) == 0
  assert np.isfinite(metrics["loss"]) and metrics["asl"] > 0
  weights = dict(config.loss.weights)
  for term in ("reconstruction", "contrastive"):
    computed = config.model.mode == "all" and weights[term] > 0
    assert (metrics[term] != 0) == computed, (term, metrics[term])
  assert np.isfinite(metrics["bc_positive"]) == (
    config.model.mode == "all" and weights["contrastive"] > 0
  )


def test_a_bad_update_layout_is_refused_with_its_field():
  config = config_module("demo").get_config()
  config.update_layout = "leafy"
  with pytest.raises(
    ValueError,
    match=r"config.update_layout='leafy': expected 'auto' or one "
    r"of \('per_leaf', 'flat'\)",
  ):
    config_lib.validate(config)
