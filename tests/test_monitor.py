"""Pretraining-time evaluation: the online head's own optimizer, the kNN monitor, early stopping
and the best checkpoint, each against a reference computed apart from the code under test."""

import json
import os

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from helpers import scalars
from simclr_jax import monitor, parallel, train, validate
from simclr_jax import state as state_lib
from simclr_jax.configs import digits
from simclr_jax.data import sources

FAST_COMPILE = {"xla_backend_optimization_level": 0}    # the same HLO, half the compile time


def _tiny(**changes):
  c = digits.get_config("tiny")
  c.data.image_size = 16
  c.train.num_devices = 1           # compile time dominates; the sharded step has test_parallel
  c.optim.warmup_epochs = 0.0       # a real LARS step from the first one
  for key, value in changes.items():
    group, field = key.split(".")
    c[group][field] = value
  return c


# ---------------------------------------------------------------------------------------------
# kNN: a plain NumPy reference.
# ---------------------------------------------------------------------------------------------

def _knn_reference(bank, bank_y, queries, k, num_classes, temperature):
  """Float64, one query at a time: cosine similarities, the k largest, their votes."""
  bank = bank / np.linalg.norm(bank, axis=1, keepdims=True)
  out, ties = [], 0
  for q in queries:
    sim = bank @ (q / np.linalg.norm(q))
    nearest = np.argsort(-sim)[:k]
    votes = np.zeros(num_classes)
    for i in nearest:
      votes[bank_y[i]] += np.exp(sim[i] / temperature) if temperature else 1.0
    winners = np.flatnonzero(votes == votes.max())
    if len(winners) > 1:     # majority tie: the class of the closest neighbour among them
      ties += 1
      winners = [next(bank_y[i] for i in nearest if bank_y[i] in winners)]
    out.append(winners[0])
  return np.array(out), ties


@pytest.mark.parametrize("temperature", [0.0, 0.07, 0.5])
def test_knn_predict_matches_a_numpy_reference(temperature):
  rng = np.random.default_rng(0)
  bank, queries = rng.normal(size=(300, 12)), rng.normal(size=(80, 12))
  bank_y = rng.integers(0, 4, size=300)
  for k in (1, 4, 20):
    want, ties = _knn_reference(bank, bank_y, queries, k, 4, temperature)
    got = monitor.knn_predict(bank.astype(np.float32), bank_y, queries.astype(np.float32), k, 4,
                              temperature=temperature, chunk=32)   # chunks: 3 partial batches
    np.testing.assert_array_equal(got, want, err_msg=f"k={k}")
    if temperature == 0 and k == 4:
      assert ties > 5          # 2-2 and 1-1-1-1 splits: the tie-break is exercised
  # On well-separated clusters kNN is exact.
  centres = np.eye(3) * 10
  y = np.repeat(np.arange(3), 30)
  x = centres[y] + rng.normal(size=(90, 3))
  assert (monitor.knn_predict(x, y, x + 0.1, 5, 3, temperature) == y).all()


# ---------------------------------------------------------------------------------------------
# Early stopping: scripted metric sequences, the stopping evaluation derived by hand.
# ---------------------------------------------------------------------------------------------

def _first_stop(patience, mode, values, min_delta=0.0):
  """(index of the stopping value or None, best value, index of the best)."""
  stopper, best = monitor.early_stopping(patience, min_delta), None
  for i, v in enumerate(values):
    stopper = stopper.update(-v if mode == "max" else v)   # flax's minimises
    if stopper.has_improved:
      best = i
    if stopper.should_stop:
      return i, values[best], best
  return None, values[best], best


def test_early_stopping_stops_at_the_hand_derived_evaluation():
  # max, patience 3: best 0.5 (#0), 0.6 (#1); #2 ties (no improvement: 1), #3 lower (2); 0.61 at
  # #4 is a new best; #5, #6, #7 are not (1, 2, 3): the stop is at #7.
  seq = [0.5, 0.6, 0.6, 0.55, 0.61, 0.60, 0.59, 0.58, 0.9]
  assert _first_stop(3, "max", seq) == (7, 0.61, 4)
  # min_delta 0.02: 0.61 is not better than 0.6 by more than 0.02, so the count runs on from
  # #2: #2 (1), #3 (2), #4 (3) -> stop at #4.
  assert _first_stop(3, "max", seq, min_delta=0.02)[0] == 4
  # min, patience 2 on a loss: 1.0, 0.8 (best, #1), 0.9 (1), 0.7 (best, #3), 0.7 (1), 0.75 (2).
  assert _first_stop(2, "min", [1.0, 0.8, 0.9, 0.7, 0.7, 0.75])[0] == 5
  # patience 0 never stops; patience 1 stops at the first evaluation that is no better.
  assert _first_stop(0, "min", [3, 2, 1, 0])[0] is None
  assert _first_stop(1, "max", [1, 2, 2])[0] == 2


# ---------------------------------------------------------------------------------------------
# The online head's own optimizer leaves the encoder's update alone.
# ---------------------------------------------------------------------------------------------

def _one_step(setup, state, batch, augment_key):
  step = train.make_train_step(setup, augment_key)
  state = jax.device_put(state, parallel.replicated(setup.mesh))
  batch = train.device_batch(setup.mesh, batch)
  new, metrics = step.lower(state, batch).compile(compiler_options=FAST_COMPILE)(state, batch)
  return jax.device_get(new), jax.device_get(metrics)


# Two train steps compiled (~20 s): the slow tier. The everyday tier checks the optimizer on its
# own (test_optim.test_online_head_has_its_own_optimizer_and_leaves_the_ssl_update_alone) and
# the head's stop-gradient (test_models.test_online_head_does_not_train_encoder).
@pytest.mark.slow
def test_online_head_leaves_the_encoder_and_projection_update_unchanged():
  with_head = _tiny(**{"model.online_head": True, "model.online_dropout": 0.2,
                       "online_eval.learning_rate": 1e-3})
  without = _tiny(**{"model.online_head": False})
  src = sources.make_source(without.data, "train")
  idx = np.arange(32)
  batch = {"image": np.stack([src[i]["image"] for i in idx]), "label": src.labels[idx],
           "id": idx}
  init_rng, augment_key = state_lib.run_keys(without.seed)
  s_head = state_lib.build(with_head, len(src))
  s_ref = state_lib.build(without, len(src))
  state = jax.device_get(state_lib.init_state(s_head, init_rng))  # on the host: steps donate
  # The reference: the same encoder and projection, no head, the SSL optimizer alone.
  drop = lambda tree: {k: v for k, v in tree.items() if k != "online_head"}  # noqa: E731
  ref_state = jax.device_get(state_lib.TrainState.create(
      apply_fn=s_ref.model.apply, params=drop(state.params),
      batch_stats=drop(state.batch_stats), tx=s_ref.tx))
  new, metrics = _one_step(s_head, state, batch, augment_key)
  ref, _ = _one_step(s_ref, ref_state, batch, augment_key)
  assert metrics["online_loss"] > 0
  for part in ("encoder", "projection"):
    for a, b in ((new.params, ref.params), (new.batch_stats, ref.batch_stats)):
      for x, y in zip(jax.tree.leaves(a[part]), jax.tree.leaves(b[part])):
        np.testing.assert_array_max_ulp(x, y, maxulp=1)
  # The head trained with its own Adam at 1e-3 (not LARS at 0.75): a first Adam step moves
  # each parameter by lr * |g| / (|g| + eps), i.e. lr unless its gradient is ~0 (up to the
  # float32 rounding of new - old, ~1e-7 for parameters of magnitude ~1).
  moved = np.concatenate([np.abs(np.ravel(n - o)) for n, o in zip(
      jax.tree.leaves(new.params["online_head"]), jax.tree.leaves(state.params["online_head"]))])
  assert moved.max() <= 1e-3 + 1e-6 and np.median(moved) == pytest.approx(1e-3, rel=1e-2)


# ---------------------------------------------------------------------------------------------
# A real run: evaluation every step, early stopping, the best checkpoint restored.
# ---------------------------------------------------------------------------------------------

def _restore_params(directory, step):
  mngr = ocp.CheckpointManager(directory, item_names=("state",))
  state = mngr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))["state"]
  mngr.close()
  return jax.tree.map(np.asarray, state["params"])


def _fast_compiling(make_train_step):
  """make_train_step whose step compiles at -O0 (the same HLO): a test about what the loop
  does around the step need not wait for LLVM."""
  def make(setup, augment_key):
    step, compiled = make_train_step(setup, augment_key), []

    def run(state, batch):
      if not compiled:
        compiled.append(step.lower(state, batch).compile(compiler_options=FAST_COMPILE))
      return compiled[0](state, batch)
    return run
  return make


# A whole run with an evaluation after every step: the slow tier. The everyday tier has the
# stopping rule (above) and the session's tiny run, whose best checkpoint (step 2, not the
# latest) test_evaluate.test_linear_eval_on_a_pretrained_run reads.
@pytest.mark.slow
def test_run_with_evaluation_keeps_the_best_checkpoint_and_stops_early(tmp_path, monkeypatch):
  monkeypatch.setattr(train, "make_train_step", _fast_compiling(train.make_train_step))
  patience, steps = 2, 6
  config = _tiny(**{"model.online_head": True, "train.steps": steps,
                    "train.checkpoint_every": 1, "train.keep_checkpoints": steps,
                    "train.patience": patience, "train.monitor": "knn_accuracy"})
  config.eval.every_epochs = 1 / (1437 // config.train.batch_size)     # every step
  config.data.image_size = 8        # the digits' own size: a quicker evaluation
  config.eval.knn_bank_size = 400   # a fixed subset of the 1437 train digits as the bank
  workdir = str(tmp_path)
  train.pretrain(config, workdir)
  # The metric as TensorBoard has it, and where a run with this patience must stop.
  knn = scalars(workdir)["eval/knn_accuracy"]
  values = [knn[s] for s in sorted(knn)]
  best, bad, stop = 0, 0, steps
  for i, v in enumerate(values):
    if v > values[best]:
      best, bad = i, 0
    elif i > 0:
      bad += 1
    if bad == patience:
      stop = i + 1
      break
  assert sorted(knn) == list(range(1, stop + 1))     # evaluated after every step, then stopped
  mngr = ocp.CheckpointManager(os.path.join(workdir, "checkpoints"))
  assert mngr.latest_step() == stop                  # the stopping step is saved
  mngr.close()
  with open(os.path.join(workdir, "monitor.json")) as f:
    report = json.load(f)
  assert report["best_step"] == best + 1 and report["stopped"] == (stop < steps)
  assert [e["knn_accuracy"] for e in report["history"]] == pytest.approx(values, abs=1e-6)
  # restore('best') gives the parameters orbax itself reads at the best step.
  variables, step, kind = state_lib.restore(config, workdir, "best", parallel.make_mesh(1))
  assert (step, kind) == (best + 1, "best")
  want = _restore_params(os.path.join(workdir, "checkpoints"), best + 1)
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(variables["params"]), want)
  if best + 1 != stop:      # and not the latest ones
    latest = _restore_params(os.path.join(workdir, "checkpoints"), stop)
    assert not np.array_equal(jax.tree.leaves(latest)[0], jax.tree.leaves(want)[0])
  # Started again, the stopped run stays stopped: no new step, no new evaluation.
  train.pretrain(config, workdir)
  assert sorted(scalars(workdir)["eval/knn_accuracy"]) == list(range(1, stop + 1))


def test_monitor_settings_are_refused_before_any_work():
  # The checks train.pretrain runs (simclr_jax/validate.py) before it builds the monitor.
  assert [monitor.eval_interval(e, 44) for e in (0.0, 0.001, 0.5, 2.0)] == [0, 1, 22, 88]
  config = _tiny(**{"train.patience": 3})               # eval.every_epochs = 0: nothing to watch
  with pytest.raises(ValueError, match=r"train.patience=3: .* set eval.every_epochs > 0"):
    validate.check(config, "pretrain", data=False)
  config.eval.every_epochs = 1.0
  config.train.monitor = "online_accuracy"              # model.online_head is off
  with pytest.raises(ValueError, match="train.monitor='online_accuracy'.*online_head"):
    validate.check(config, "pretrain", data=False)
