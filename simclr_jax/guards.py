"""What guards the training loop: the stop signals (SIGTERM/SIGINT) and the non-finite check.

Kept apart from the loop (simclr_jax/train.py) so that each is tested on its own.
"""

from __future__ import annotations

import os
import signal
import threading

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging


def apply_if_finite(state, loss, grads, batch_stats):
  """(the state after the optimizer's update of `grads`, {'l2_grads', 'l2_updates',
  'finite'}), in a jitted step.

  A non-finite loss or gradient leaves params, optimizer state and BatchNorm statistics as
  they were (the step count still advances: it counts the batches consumed, which the data
  iterator and the random keys follow). `finite` tells the host, which reads it only when it
  syncs anyway (logs, checkpoints). Not optax.apply_if_finite: it wraps the optimizer state
  (the checkpoints of existing runs would no longer restore) and guards neither the BatchNorm
  statistics nor the loss.
  """
  updates, opt_state = state.tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  l2_grads = optax.tree.norm(grads)
  finite = jnp.isfinite(loss) & jnp.isfinite(l2_grads)
  keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)
  new_state = state.replace(step=state.step + 1, params=keep(params, state.params),
                            opt_state=keep(opt_state, state.opt_state),
                            batch_stats=keep(batch_stats, state.batch_stats))
  return new_state, {"l2_grads": l2_grads, "l2_updates": optax.tree.norm(updates),
                     "finite": finite}


class StopSignals:
  """SIGTERM and SIGINT, for the duration of a `with` block (main thread only): the first one
  sets `.signum` (the loop stops after the step in flight), and from then on both have their
  default action again, so a second one ends the process at once even while the main thread
  waits in XLA or a save. The previous handlers come back on exit."""

  SIGNALS = (signal.SIGTERM, signal.SIGINT)

  def __init__(self):
    self.signum, self._previous = None, {}

  def __enter__(self):
    if threading.current_thread() is threading.main_thread():
      for s in self.SIGNALS:
        self._previous[s] = signal.signal(s, self._handle)
    return self

  def _handle(self, signum, frame):
    del frame
    if self.signum is not None:          # two signals before the handler could reset them
      os._exit(128 + signum)
    self.signum = signum
    for s in self.SIGNALS:
      signal.signal(s, signal.SIG_DFL)
    logging.warning("%s: stopping after the current step, saving a checkpoint (send it again "
                    "to exit at once, without one)", signal.Signals(signum).name)

  def __exit__(self, *exc):
    for s, handler in self._previous.items():
      signal.signal(s, handler if handler is not None else signal.SIG_DFL)
    return False


class FiniteCheck:
  """The steps' `finite` flags, fetched from the device only when the loop syncs anyway
  (before a log, an evaluation, a checkpoint save, and at the end)."""

  def __init__(self, max_bad_steps: int, checkpoints):
    if max_bad_steps < 0:
      raise ValueError(f"train.max_bad_steps={max_bad_steps}: must be >= 0 (0 = stop at the "
                       "first non-finite step)")
    self.max_bad, self.bad, self.pending, self.checkpoints = max_bad_steps, 0, [], checkpoints

  def add(self, step: int, metrics: dict) -> None:
    self.pending.append((step, metrics["finite"], metrics["loss"], metrics["l2_grads"]))

  def __call__(self) -> None:
    if not self.pending:
      return
    values = jax.device_get([p[1:] for p in self.pending])
    steps = [p[0] for p in self.pending]
    self.pending = []
    for step, (finite, loss, l2_grads) in zip(steps, values):
      if finite:
        continue
      self.bad += 1
      what = "loss" if not np.isfinite(loss) else "gradient"
      detail = f"non-finite {what} at step {step} (loss {loss}, l2_grads {l2_grads})"
      if self.bad > self.max_bad:
        latest = self.checkpoints.latest_step()
        raise FloatingPointError(
            f"{detail}: stopping. Its update was not applied and no state from step {step} on "
            f"was saved; the last checkpoint is step {latest} in {self.checkpoints.directory}. "
            "Check the data for NaN/inf, lower optim.base_lr, or set train.max_bad_steps to "
            f"skip such steps ({self.bad - 1} skipped so far, train.max_bad_steps="
            f"{self.max_bad}).")
      logging.warning("%s: update skipped (%d of train.max_bad_steps=%d)", detail, self.bad,
                      self.max_bad)
