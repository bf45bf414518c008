"""Session-wide test settings."""

import os
import tempfile

# Identical XLA programs compiled by several test processes (the trainer's subprocess
# runs) are compiled once: a persistent compilation cache private to this session.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", tempfile.mkdtemp(prefix="kmcl_jax_xla_"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")
