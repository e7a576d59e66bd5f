"""Train-state checkpoints of a run: Orbax CheckpointManager under <workdir>/checkpoints.

Layout of one step (<workdir>/checkpoints/<step>/):
    state/   the train state as a dict {step, params, opt_state, rng, lora} (RNG keys stored as
             their raw key data), saved asynchronously by Orbax's StandardCheckpointHandler
    data/    the data iterator's position and counts (grain's checkpoint handler, one file per
             process), so a resumed run sees exactly the batches that would have followed

Orbax writes each step into a temporary directory and renames it only once every item is
complete (on object stores, a commit marker instead); the manager never lists unfinished steps,
so a run killed mid-save resumes from the previous complete one, and leftover temporaries are
removed at start-up. Before every save the state is checked on the device (`finite.py`): a
state holding a NaN or an infinity is never written (CheckpointError naming the arrays).
Kept: the latest `keep` steps, plus the best one by an eval metric when `keep_best_metric` is
set.

Preemption: SIGTERM sets a flag (`PreemptionWatch`); the loop saves at the next step boundary
and exits cleanly. On multi-host runs JAX's preemption sync point (Orbax's `reached_preemption`)
makes every host stop at the same step.
"""

import dataclasses
import os
import signal
import threading
from typing import Any, Dict, Optional

import grain
import jax
import orbax.checkpoint as ocp
from absl import logging
from etils import epath
from jax.sharding import NamedSharding, PartitionSpec
from orbax.checkpoint.checkpoint_managers import preservation_policy as preservation

from qwen_audio_jax.errors import CheckpointError
from qwen_audio_jax.training import finite

CHECKPOINT_DIR = "checkpoints"
STATE_ITEM = "state"
DATA_ITEM = "data"


def _is_key(x) -> bool:
  return hasattr(x, "dtype") and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)


def _fields(state) -> Dict[str, Any]:
  """The train state's fields as a dict (dataclass or NamedTuple)."""
  if dataclasses.is_dataclass(state):
    return {f.name: getattr(state, f.name) for f in dataclasses.fields(state)}
  if hasattr(state, "_asdict"):
    return dict(state._asdict())
  raise TypeError(f"cannot checkpoint a train state of type {type(state).__name__}")


def _rebuild(template, fields: Dict[str, Any]):
  if dataclasses.is_dataclass(template):
    return dataclasses.replace(template, **fields)
  return template._replace(**fields)


def to_savable(state) -> Dict[str, Any]:
  """The state as a dict of arrays (typed PRNG keys as their key data)."""
  return jax.tree.map(lambda x: jax.random.key_data(x) if _is_key(x) else x, _fields(state))


def _key_data_struct(abstract):
  data = jax.eval_shape(jax.random.key_data, abstract)
  sharding = getattr(abstract, "sharding", None)
  if isinstance(sharding, NamedSharding):
    sharding = NamedSharding(sharding.mesh, PartitionSpec(*sharding.spec))
  return jax.ShapeDtypeStruct(data.shape, data.dtype, sharding=sharding)


def abstract_savable(abstract_state) -> Dict[str, Any]:
  """ShapeDtypeStructs (with shardings) of `to_savable(state)`."""
  return jax.tree.map(lambda x: _key_data_struct(x) if _is_key(x) else x, _fields(abstract_state))


def from_savable(restored: Dict[str, Any], abstract_state):
  """The train state back from its saved dict (key data re-wrapped with the default impl)."""
  impl = jax.random.key_impl(jax.random.key(0))
  fields = jax.tree.map(
      lambda saved, want: jax.random.wrap_key_data(saved, impl=impl) if _is_key(want) else saved,
      restored, _fields(abstract_state))
  return _rebuild(abstract_state, fields)


def lower_is_better(metric: str) -> bool:
  """Losses (and anything not an accuracy) are minimised; accuracies maximised."""
  return "accuracy" not in metric


def replica_parallel_writes() -> bool:
  """Whether Orbax should save replicated arrays in replica-parallel slices.

  Replica-parallel saving spreads the bytes of a replicated array over the processes holding
  replicas, which pays on a multi-host accelerator pod. With one process it only splits the work
  among that process's own devices; and it cuts every slice with an eager `lax.slice_in_dim`,
  one small compile per array shape on the first save of a process: for the 122 arrays of a
  tiny train state, 30 s and more on a CPU, against under a second for the whole write. So:
  only with several processes, and not on CPU hosts (Orbax itself turns it off on GPUs).
  """
  return jax.process_count() > 1 and jax.default_backend() != "cpu"


def _set_array_writes() -> None:
  """Orbax reads its jax.Array handler from a process-wide registry: set it once per process."""
  if getattr(_set_array_writes, "done", False):
    return
  if not replica_parallel_writes():
    ocp.type_handlers.register_type_handler(
        jax.Array, ocp.type_handlers.ArrayHandler(use_replica_parallel=False), override=True)
  _set_array_writes.done = True


class Checkpoints:
  """Saves and restores (train state, data iterator) pairs of one run."""

  def __init__(self, workdir: str, *, keep: int, keep_best_metric: str = "",
               async_save: bool = True):
    _set_array_writes()
    self.directory = os.path.join(absolute(workdir), CHECKPOINT_DIR)
    self.keep_best_metric = keep_best_metric
    policy = preservation.LatestN(n=keep)
    if keep_best_metric:
      policy = preservation.AnyPreservationPolicy([policy, preservation.BestN(
          get_metric_fn=lambda metrics: metrics[keep_best_metric],
          reverse=lower_is_better(keep_best_metric), n=1,
          keep_checkpoints_without_metrics=False)])
    options = ocp.CheckpointManagerOptions(
        save_interval_steps=1, preservation_policy=policy, create=True,
        cleanup_tmp_directories=True, enable_async_checkpointing=async_save)
    self.manager = ocp.CheckpointManager(
        self.directory, options=options,
        item_handlers={STATE_ITEM: ocp.StandardCheckpointHandler(),
                       DATA_ITEM: grain.checkpoint.CheckpointHandler()})

  def all_steps(self):
    return list(self.manager.all_steps())

  def latest_step(self) -> Optional[int]:
    """The newest complete checkpoint's step (unfinished ones are never listed)."""
    return self.manager.latest_step()

  def save(self, step: int, state, data_iterator, *,
           metrics: Optional[Dict[str, float]] = None) -> bool:
    """Starts saving (asynchronously when configured); False if `step` is already saved.

    Raises CheckpointError, writing nothing, when the state holds a non-finite array.
    """
    if step in self.manager.all_steps():
      return False
    savable = to_savable(state)
    bad = finite.nonfinite_paths(savable)
    if bad:
      raise CheckpointError(
          f"step {step}: the train state holds NaN or infinite values (first: {', '.join(bad)})"
          f"; not saved, so that a resume never starts from it (latest checkpoint: step "
          f"{self.latest_step()})")
    if self.keep_best_metric and metrics is not None and self.keep_best_metric not in metrics:
      metrics = None
    saved = self.manager.save(
        step, args=ocp.args.Composite(**{
            STATE_ITEM: ocp.args.StandardSave(savable),
            DATA_ITEM: grain.checkpoint.CheckpointSave(data_iterator)}),
        metrics=None if metrics is None else {k: float(v) for k, v in metrics.items()},
        force=True)
    if saved:
      logging.info("Saving checkpoint of step %d to %s", step, self.directory)
    return saved

  def restore(self, step: int, abstract_state, data_iterator):
    """The state saved at `step` (placed per the shardings of `abstract_state`); the data
    iterator is moved to its saved position in place."""
    restored = self.manager.restore(step, args=ocp.args.Composite(**{
        STATE_ITEM: ocp.args.StandardRestore(abstract_savable(abstract_state)),
        DATA_ITEM: grain.checkpoint.CheckpointRestore(data_iterator)}))
    logging.info("Restored step %d from %s", step, self.directory)
    return from_savable(restored[STATE_ITEM], abstract_state)

  def reached_preemption(self, step: int) -> bool:
    return self.manager.reached_preemption(step)

  def wait_until_finished(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.close()


def absolute(path: str) -> str:
  """Local paths made absolute (Orbax requires it); URLs such as gs://... are left alone."""
  path = os.fspath(path)
  return path if "://" in path else os.path.abspath(path)


def is_run_step_dir(path: str) -> bool:
  """True for a step directory written by `Checkpoints` (it holds a 'state' item)."""
  return (epath.Path(path) / STATE_ITEM).is_dir()


class PreemptionWatch:
  """SIGTERM -> a flag the loop polls at step boundaries (save, then exit 0).

  The handler only sets the flag: the loop decides when it is safe to save. With several
  processes JAX's preemption sync point (through Orbax's `reached_preemption`) decides, so that
  all stop at the same step.
  """

  def __init__(self, checkpoints: Optional[Checkpoints] = None):
    self._event = threading.Event()
    self._checkpoints = checkpoints
    self._previous = None
    # With several processes JAX's preemption notifier (started by jax.distributed) catches
    # SIGTERM itself and its sync point makes every process stop at the same step without a
    # collective of ours; a Python handler would replace its handler.
    if jax.process_count() == 1 and threading.current_thread() is threading.main_thread():
      self._previous = signal.signal(signal.SIGTERM, self._on_signal)

  def _on_signal(self, signum, frame):
    del frame
    logging.warning("Received signal %d: saving at the next step boundary, then exiting", signum)
    self._event.set()

  def request(self) -> None:
    """Asks the loop to stop as if a SIGTERM had arrived."""
    self._event.set()

  def should_stop(self, step: int) -> bool:
    if self._event.is_set():
      if jax.process_count() > 1:
        raise RuntimeError("PreemptionWatch.request() stops one process of a multi-process run; "
                           "send SIGTERM to every process instead")
      return True
    return self._checkpoints is not None and self._checkpoints.reached_preemption(step)

  def close(self) -> None:
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)
      self._previous = None
