"""The oracle of `optim.update_or_skip`'s layouts: the update as the train step made it
before, the optimiser, the EMA (written out here) and the skip of a non-finite step
applied leaf by leaf, and a context in which traced train steps use it
(tests/update_identity_run.py compares the two bit for bit; tests/update_cost_run.py what
each compiles to). It applies the optimiser it is given: the optimiser itself is judged
against torch in tests/test_optim_oracle.py."""

import contextlib
from unittest import mock

import jax
import jax.numpy as jnp
import optax

from kmcl_jax import optim
from kmcl_jax.state import all_finite


def _ema(ema, new, decay):
  return jax.tree.map(lambda e, n: decay * e + (1.0 - decay) * n, ema, new)


def per_leaf_update(optimizer, state, grads, batch_stats, loss, ema_decay, layout=None):
  """(state, hyperparams, finite) as `optim.update_or_skip` returns them, computed as the
  train step did before it (whatever the layout asked for)."""
  del layout
  updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  finite = jnp.isfinite(loss) & all_finite(grads, params, batch_stats)
  updated = state.replace(
    params=params,
    batch_stats=batch_stats,
    opt_state=opt_state,
    ema_params=_ema(state.ema_params, params, ema_decay),
    ema_batch_stats=_ema(state.ema_batch_stats, batch_stats, ema_decay),
  )
  new_state = jax.tree.map(lambda new, old: jnp.where(finite, new, old), updated, state)
  return new_state, opt_state.hyperparams, finite


@contextlib.contextmanager
def per_leaf_updates():
  """While active, a train step traced (first called, lowered) uses `per_leaf_update`
  instead of `optim.update_or_skip`; everything else of the step is today's."""
  with mock.patch.object(optim, "update_or_skip", per_leaf_update):
    yield
