"""PyTorch checkpoints -> Flax variables: timm and original ASL/KMCL names, the KMCL
wrapper, errors that list every bad key, and the command."""

import argparse
import copy
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from kmcl_jax import convert
from kmcl_jax.models import KMCLModel, create_backbone

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
torch = pytest.importorskip("torch")
pytest.importorskip("timm")

from timm.layers import BlurPool2d  # noqa: E402
from timm_oracle import (  # noqa: E402
  assert_features_match,
  images,
  numpy_state,
  randomised_timm,
  randomised_tiny_timm,
  timm_features,
)


@pytest.fixture(scope="module")
def tresnet_m():
  """One randomised timm TResNet-M shared by this module's tests."""
  return randomised_timm("tresnet_m", seed=3)


@pytest.fixture(scope="module")
def tiny():
  """A randomised timm TResNet with `tresnet_tiny`'s settings (fast to save and convert)."""
  return randomised_tiny_timm(seed=9)


def convert_command(*flags):
  """`python -m kmcl_jax.convert FLAGS` in a fresh process."""
  return subprocess.run(
    [sys.executable, "-m", "kmcl_jax.convert", *flags], capture_output=True, text=True
  )


def to_original_layout(model):
  """A timm TResNet's state dict in the ASL/KMCL InPlaceABN layout (`conv.0` conv, `conv.1`
  norm), BN scale w stored as +-(w - 1e-5). The anti-aliased convs, those with a blur pool
  in timm, sit one level deeper there: Sequential(conv2d_ABN, AntiAliasDownsampleLayer)."""
  anti_aliased = {
    name
    for name, module in model.named_modules()
    if isinstance(getattr(module, "aa", None), BlurPool2d)
  }
  rng = np.random.default_rng(0)
  out = {}
  for key, value in numpy_state(model).items():
    if key.endswith("num_batches_tracked"):
      continue
    module, part, leaf = key.rsplit(".", 2)  # e.g. body.layer2.0.conv1, bn, weight
    if part in ("conv", "bn"):
      deeper = ".0" if module in anti_aliased else ""
      key = f"{module}{deeper}.{0 if part == 'conv' else 1}.{leaf}"
      if part == "bn" and leaf == "weight":
        value = (value - 1e-5) * rng.choice([-1.0, 1.0], size=value.shape)
    out[key] = value
  return out


@pytest.fixture(scope="module")
def tresnet_l_v2():
  """One randomised timm tresnet_v2_l (the authors' tresnet_l_v2) for this module."""
  return randomised_timm("tresnet_v2_l", seed=11)


@pytest.mark.parametrize(
  "arch, original_keys",
  [
    (
      "tresnet_m",
      [
        "body.layer2.0.conv1.0.0.weight",
        "body.layer3.0.conv2.0.1.running_var",
        "body.layer2.0.downsample.1.0.weight",
      ],
    ),
    # Bottlenecks from layer 1 on: a stride-1 widening shortcut, layer 2 strided in conv2.
    (
      "tresnet_l_v2",
      [
        "body.layer1.0.downsample.0.0.weight",
        "body.layer1.0.conv2.1.bias",
        "body.layer2.0.conv2.0.0.weight",
        "body.layer2.0.downsample.1.1.weight",
      ],
    ),
  ],
)
@pytest.mark.slow
def test_original_layout_with_kmcl_head_reproduces_reference_forward(request, arch, original_keys):
  """The authors' KMCL checkpoint (their TResNet layout under encoder.*, a random
  downsampler and kmm head) converts and gives the reference forward pass."""
  model = request.getfixturevalue(arch)
  classes = 5
  encoder = to_original_layout(model)
  assert all(key in encoder for key in original_keys)  # the authors' names, as they build them
  rng = np.random.default_rng(4)
  dim, width = 128, 2048
  head = {
    "downsampler.weight": rng.normal(scale=0.02, size=(dim, width, 1)),
    "downsampler.bias": rng.normal(size=(dim,)),
    "kmm.pi.weight": rng.normal(scale=0.1, size=(classes, dim)),
    "kmm.pi.bias": rng.normal(size=(classes,)),
    "kmm.mean.weight": rng.uniform(0, 0.1, size=(dim * classes, dim)),
    "kmm.mean.bias": rng.normal(size=(dim * classes,)),
    "kmm.var.weight": rng.normal(scale=0.1, size=(dim * classes, dim)),
    "kmm.var.bias": rng.normal(size=(dim * classes,)),
  }
  checkpoint = {
    "state_dict": {
      **{"encoder." + k: v for k, v in encoder.items()},
      **{k: v.astype(np.float32) for k, v in head.items()},
    }
  }
  variables = convert.convert_state_dict(checkpoint, arch)
  description = convert.model_description(checkpoint, arch)
  assert description == {
    "arch": arch,
    "kind": "kmcl",
    "num_classes": classes,
    "kernel": "anisotropic",
    "variance": "BC",
    "mode": "all",
    "embedding_dim": dim,
  }
  x = images(seed=5)
  module = KMCLModel(backbone=arch, num_classes=classes)
  out = jax.jit(lambda v, x: module.apply(v, x, train=False))(variables, x)

  # The reference forward, as the authors' KMCL wrapper computes it.
  pooled = timm_features(model, x).astype(np.float64)
  f = pooled @ head["downsampler.weight"][:, :, 0].T + head["downsampler.bias"]
  pi = f @ head["kmm.pi.weight"].T + head["kmm.pi.bias"]
  mu = (f @ head["kmm.mean.weight"].T + head["kmm.mean.bias"]).reshape(-1, dim, classes)
  raw_var = f @ head["kmm.var.weight"].T + head["kmm.var.bias"]
  var = (2 + 1e-7 + np.where(raw_var > 0, raw_var, np.expm1(raw_var))).reshape(-1, dim, classes)
  for name, reference in (("features", f), ("pi", pi), ("mu", mu), ("var", var)):
    assert_features_match(np.asarray(out[name]), reference)


def test_truncated_checkpoint_lists_missing_keys(tresnet_m):
  state = numpy_state(tresnet_m)
  del state["body.layer3.4.conv2.bn.running_var"]
  with pytest.raises(ValueError) as error:
    convert.convert_state_dict(state, "tresnet_m")
  assert "missing (1): body.layer3.4.conv2.bn.running_var" in str(error.value)


def test_wrong_architecture_reports_shapes_and_unexpected_keys(tresnet_m):
  with pytest.raises(ValueError) as error:
    convert.convert_state_dict(numpy_state(tresnet_m), "tresnet_l")
  message = str(error.value)
  assert "shape mismatch" in message and "body.conv1.conv.weight" in message
  assert "model expects (3, 3, 48, 76)" in message
  assert "missing" in message  # tresnet_l has more blocks than tresnet_m


def test_unknown_key_is_reported(tresnet_m):
  state = numpy_state(tresnet_m)
  state["body.layer9.0.conv1.conv.weight"] = np.zeros((1,))
  with pytest.raises(ValueError, match=r"unexpected \(1\): body.layer9.0.conv1.conv.weight"):
    convert.convert_state_dict(state, "tresnet_m")


@pytest.mark.slow
def test_convert_command_writes_orbax_checkpoints_that_load(tmp_path, tresnet_m):
  """timm .pth and original-layout KMCL .safetensors -> orbax -> the same model outputs."""
  from safetensors.numpy import save_file

  timm_file = tmp_path / "tresnet_m.pth"
  torch.save({"state_dict": tresnet_m.state_dict()}, timm_file)
  rng = np.random.default_rng(7)
  head = {
    "kmm.pi.weight": rng.normal(size=(3, 2048)),
    "kmm.pi.bias": rng.normal(size=(3,)),
    "kmm.mean.weight": rng.normal(size=(3, 2048)),
    "kmm.mean.bias": rng.normal(size=(3,)),
    "kmm.var.weight": rng.normal(size=(1, 2048)),
    "kmm.var.bias": rng.normal(size=(1,)),
  }
  kmcl_file = tmp_path / "kmcl_isotropic_rbf.safetensors"
  save_file(
    {
      **{
        "encoder." + k: np.ascontiguousarray(v, np.float32)
        for k, v in to_original_layout(tresnet_m).items()
      },
      **{k: v.astype(np.float32) for k, v in head.items()},
    },
    str(kmcl_file),
  )

  x = images(seed=8)
  for src in (timm_file, kmcl_file):
    dst = tmp_path / (src.stem + "_flax")
    result = convert_command(f"--src={src}", "--arch=tresnet_m", f"--dst={dst}")
    assert result.returncode == 0, result.stderr[-2000:]
    variables, description = convert.load_converted(str(dst))
    if description["kind"] == "backbone":
      out = create_backbone("tresnet_m").apply(variables, x, train=False)
      assert_features_match(np.asarray(out), timm_features(tresnet_m, x))
    else:
      assert description["kernel"] == "isotropic" and description["variance"] == "RBF"
      module = KMCLModel(
        backbone="tresnet_m",
        num_classes=description["num_classes"],
        kernel=description["kernel"],
        variance=description["variance"],
      )
      out = module.apply(variables, x, train=False)
      pooled = timm_features(tresnet_m, x).astype(np.float64)
      assert_features_match(
        np.asarray(out["pi"]), pooled @ head["kmm.pi.weight"].T + head["kmm.pi.bias"]
      )
      assert out["var"].shape == (2, 3)
      np.testing.assert_allclose(out["var"][:, 0], out["var"][:, 2])  # one variance per sample

  again = convert_command(
    f"--src={timm_file}", "--arch=tresnet_m", f"--dst={tmp_path / 'tresnet_m_flax'}"
  )
  assert again.returncode != 0 and "already holds a converted checkpoint" in again.stderr


def test_kmcl_checkpoint_without_head_is_named():
  state = {"encoder.body.conv1.conv.weight": np.zeros((64, 48, 3, 3), np.float32)}
  with pytest.raises(ValueError, match="KMCL encoder .* but no head: expected kmm.pi.weight"):
    convert.convert_state_dict(state, "tresnet_m")


def test_the_library_defines_no_flags_and_imports_beside_a_benchmark():
  """The converter's flags belong to its program: importing the library next to another
  program that defines --arch works (it raised DuplicateFlagError when both defined it)."""
  result = subprocess.run(
    [
      sys.executable,
      "-c",
      "from absl import flags; import kmcl_jax.convert as c; import kmcl_jax.benchmarks.backbone; "
      "print(flags.FLAGS['arch'].default, callable(c.convert_state_dict), 'src' in flags.FLAGS)",
    ],
    capture_output=True,
    text=True,
  )
  assert result.returncode == 0, result.stderr[-2000:]
  assert result.stdout.split() == ["tresnet_m", "True", "False"]


# --------------------------------------------------------------------------------------
# Reading torch files safely.
# --------------------------------------------------------------------------------------


class FileCreatingPayload:
  """Unpickling this calls open(path, "w"): the file appears iff the loader ran the pickle."""

  pickled_global = f"{open.__module__}.{open.__qualname__}"  # io.open, or _io.open from 3.13

  def __init__(self, path):
    self.path = str(path)

  def __reduce__(self):
    return (open, (self.path, "w"))


def tiny_kmcl_state(tiny, dim=128, classes=3, seed=10):
  """The authors' KMCL wrapper state dict around `tiny` (original layout, anisotropic BC
  head with a `dim`-d projection), as torch tensors."""
  rng = np.random.default_rng(seed)
  width = 512  # tresnet_tiny's pooled features
  head = {
    "downsampler.weight": rng.normal(scale=0.05, size=(dim, width, 1)),
    "downsampler.bias": rng.normal(size=(dim,)),
    "kmm.pi.weight": rng.normal(size=(classes, dim)),
    "kmm.pi.bias": rng.normal(size=(classes,)),
    "kmm.mean.weight": rng.uniform(0, 0.1, size=(dim * classes, dim)),
    "kmm.mean.bias": rng.normal(size=(dim * classes,)),
    "kmm.var.weight": rng.normal(scale=0.1, size=(dim * classes, dim)),
    "kmm.var.bias": rng.normal(size=(dim * classes,)),
  }
  encoder = {"encoder." + k: v for k, v in to_original_layout(tiny).items()}
  return {k: torch.from_numpy(np.asarray(v, np.float32)) for k, v in {**encoder, **head}.items()}


@pytest.mark.parametrize("zip_format", [True, False], ids=["zip", "legacy"])
def test_a_pickle_that_would_run_code_is_refused_and_not_run(tmp_path, tiny, zip_format):
  marker = tmp_path / "created_by_unpickling"
  src = tmp_path / "crafted.pth"
  torch.save(
    {"state_dict": tiny.state_dict(), "payload": FileCreatingPayload(marker)},
    src,
    _use_new_zipfile_serialization=zip_format,
  )
  with pytest.raises(ValueError) as error:
    convert.read_state_dict(str(src))
  assert not marker.exists()
  assert str(error.value) == (
    f"--src={str(src)!r} contains the type {FileCreatingPayload.pickled_global}, which a "
    "safe (weights-only) load does "
    "not read: load it yourself in a session you trust and save its state dict as "
    ".safetensors (safetensors.torch.save_file), or pass --allow_unsafe_pickle if you "
    "trust the file."
  )


def test_the_command_reads_a_pickle_only_with_allow_unsafe_pickle_after_a_warning(tmp_path, tiny):
  marker = tmp_path / "created_by_unpickling"
  src = tmp_path / "crafted.pth"
  torch.save({"state_dict": tiny.state_dict(), "payload": FileCreatingPayload(marker)}, src)
  flags = [f"--src={src}", "--arch=tresnet_tiny", f"--dst={tmp_path / 'out'}"]
  refused = convert_command(*flags)
  assert refused.returncode != 0 and (
    f"contains the type {FileCreatingPayload.pickled_global}," in refused.stderr
  )
  assert not marker.exists() and not (tmp_path / "out").exists()

  allowed = convert_command(*flags, "--allow_unsafe_pickle")
  assert allowed.returncode == 0, allowed.stderr[-2000:]
  assert marker.exists()  # the flag really unpickles everything
  assert f"--allow_unsafe_pickle: unpickling {src}, which can run any code" in allowed.stderr
  assert allowed.stdout.startswith(f"Converted {src} (backbone, ")


def optimizer_state(tiny):
  """torch Adam's state dict after one step on a copy of `tiny` (step counts, moments,
  param groups with tuples, booleans and None)."""
  model = copy.deepcopy(tiny).train()
  optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
  model(torch.zeros(2, 3, 32, 32)).square().mean().backward()
  optimizer.step()
  return optimizer.state_dict()


CHECKPOINT_FORMATS = {
  "timm_state_dict.pth": lambda tiny: tiny.state_dict(),
  "imagenet_tresnet.pth": lambda tiny: {"state_dict": tiny.state_dict()},
  "asl_model_zoo.pth": lambda tiny: {
    "model": tiny.state_dict(),
    "num_classes": 3,
    "idx_to_class": {0: "cat", 1: "dog", 2: "bird"},
  },
  "training_checkpoint.pt": lambda tiny: {
    "epoch": 7,
    "state_dict": tiny.state_dict(),
    "optimizer": optimizer_state(tiny),
  },
  "timm_train_py_last.pth.tar": lambda tiny: {
    "epoch": 7,
    "arch": "tresnet_tiny",
    "state_dict": tiny.state_dict(),
    "optimizer": optimizer_state(tiny),
    "version": 2,
    "metric": 61.5,
    "args": argparse.Namespace(model="tresnet_tiny", lr=4e-4, epochs=80),
  },
  "kmcl_wrapper.ckpt": tiny_kmcl_state,
}


@pytest.mark.parametrize("name", sorted(CHECKPOINT_FORMATS))
def test_known_checkpoint_formats_are_read_safely_and_convert_unchanged(tmp_path, tiny, name):
  checkpoint = CHECKPOINT_FORMATS[name](tiny)
  torch.save(checkpoint, tmp_path / name)
  assert torch.serialization.get_unsafe_globals_in_checkpoint(tmp_path / name) == (
    ["argparse.Namespace"] if "args" in checkpoint else []
  )
  from_file = convert.convert_state_dict(
    convert.read_state_dict(str(tmp_path / name)), "tresnet_tiny"
  )
  in_memory = convert.convert_state_dict(
    tiny_kmcl_state(tiny) if name == "kmcl_wrapper.ckpt" else tiny.state_dict(), "tresnet_tiny"
  )
  assert jax.tree.structure(from_file) == jax.tree.structure(in_memory)
  for a, b in zip(jax.tree.leaves(from_file), jax.tree.leaves(in_memory), strict=True):
    np.testing.assert_array_equal(a, b)


# --------------------------------------------------------------------------------------
# The embedding size travels with the converted model.
# --------------------------------------------------------------------------------------


@pytest.mark.slow
def test_embedding_dim_is_read_off_the_checkpoint_and_must_match_the_config(tmp_path, tiny):
  """A checkpoint whose projection has D = 64 outputs converts to a 64-d head, loads into
  a config with model.embedding_dim = 64 and is refused, naming the field, with 128."""
  from kmcl_jax import config as config_lib
  from kmcl_jax import optim
  from kmcl_jax.mesh import create_mesh, replicated
  from kmcl_jax.state import create_model, initial_state, load_initial_weights

  classes = 3
  checkpoint = tiny_kmcl_state(tiny, dim=64, classes=classes)
  description = convert.model_description(checkpoint, "tresnet_tiny")
  assert description["embedding_dim"] == 64
  variables = convert.convert_state_dict(checkpoint, "tresnet_tiny")
  assert variables["params"]["head"]["projection"]["kernel"].shape == (512, 64)
  assert variables["params"]["head"]["kmm"]["mu"]["kernel"].shape == (64, 64 * classes)
  folder = str(tmp_path / "kmcl_64")
  convert.save_converted(variables, description, folder)

  config = config_lib.load(os.path.join(ROOT, "configs", "demo.py:smoke"))  # tresnet_tiny
  config.model.embedding_dim = 64
  model = create_model(config, classes)
  optimizer = optim.create_optimizer(config.optim, config.train_steps)
  state = initial_state(config, model, optimizer, replicated(create_mesh()))
  loaded = load_initial_weights(state, folder, config, classes)
  for name in ("projection", "kmm"):
    for ours, theirs in zip(
      jax.tree.leaves(loaded.params["head"][name]),
      jax.tree.leaves(variables["params"]["head"][name]),
      strict=True,
    ):
      np.testing.assert_array_equal(ours, theirs)

  config.model.embedding_dim = 128
  with pytest.raises(ValueError) as error:
    load_initial_weights(state, folder, config, classes)
  assert str(error.value) == (
    f"config.init_from={folder!r} is a KMCL model with {{'num_classes': 3, 'kernel': "
    "'anisotropic', 'variance': 'BC', 'mode': 'all', 'embedding_dim': 64}; the config asks "
    "for {'num_classes': 3, 'kernel': 'anisotropic', 'variance': 'BC', 'mode': 'all', "
    "'embedding_dim': 128}."
  )


def test_a_kmcl_model_converted_by_an_earlier_version_loads_in_todays_form(tmp_path, tiny):
  """Earlier folders named the mu layer "mean" and recorded no embedding_dim (always 128)."""
  variables = convert.convert_state_dict(tiny_kmcl_state(tiny), "tresnet_tiny")
  description = convert.model_description(tiny_kmcl_state(tiny), "tresnet_tiny")
  earlier_head = {
    **variables["params"]["head"],
    "kmm": {("mean" if k == "mu" else k): v for k, v in variables["params"]["head"]["kmm"].items()},
  }
  convert.save_converted(
    {**variables, "params": {**variables["params"], "head": earlier_head}},
    {k: v for k, v in description.items() if k != "embedding_dim"},
    str(tmp_path / "earlier"),
  )
  loaded, loaded_description = convert.load_converted(str(tmp_path / "earlier"))
  assert loaded_description == description and description["embedding_dim"] == 128
  assert set(loaded["params"]["head"]["kmm"]) == {"pi", "mu", "var"}
  assert jax.tree.structure(loaded) == jax.tree.structure(variables)
  for a, b in zip(jax.tree.leaves(loaded), jax.tree.leaves(variables), strict=True):
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize(
  "content, message",
  [
    ([1, 2, 3], "holds a list, not a state dict"),
    (torch.zeros(3), "holds a Tensor, not a state dict"),
    ({"epoch": 3, "lr": 0.1}, "holds a dict without tensors by name, not a state dict"),
    (b"\x89PNG not a checkpoint", "is not a PyTorch checkpoint (neither the zip archive"),
  ],
)
def test_a_file_without_a_state_dict_is_named_in_one_sentence(tmp_path, content, message):
  path = tmp_path / "model.pth"
  if isinstance(content, bytes):
    path.write_bytes(content)
  else:
    torch.save(content, path)
  with pytest.raises(ValueError) as error:
    convert.read_state_dict(str(path))
  assert str(error.value).startswith(f"--src={str(path)!r} ") and message in str(error.value)
  result = subprocess.run(
    [sys.executable, "-m", "kmcl_jax.convert", f"--src={path}", f"--dst={tmp_path / 'out'}"],
    capture_output=True,
    text=True,
  )
  assert result.returncode == 1 and "Traceback" not in result.stderr
  assert message in result.stderr.strip().splitlines()[-1]
