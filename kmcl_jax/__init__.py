"""KMCL (Kernel-based Multilabel Contrastive Learning) in JAX and Flax.

`from kmcl_jax import Classifier` puts a trained model to work (`kmcl_jax.classifier`);
it is imported on first use, so `import kmcl_jax` stays light.
"""


def __getattr__(name: str):
  if name == "Classifier":
    from kmcl_jax.classifier import Classifier

    return Classifier
  raise AttributeError(f"module 'kmcl_jax' has no attribute {name!r}")
