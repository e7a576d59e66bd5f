"""Metrics of a run: TensorBoard event files, optional Weights & Biases, a progress line.

Only process 0 writes. TensorBoard files go to <workdir>/tensorboard (tensorboardX, no
TensorFlow needed); `config.wandb=True` also logs to W&B when the `wandb` package is installed.
"""

import math
import os
import sys
import time
from typing import Dict, Iterable, List, Mapping, Optional, Sequence

import numpy as np
from absl import logging

TENSORBOARD_DIR = "tensorboard"
# Per-step metrics that add up over a logging window (the others are averaged).
SUMMED = ("target_tokens", "tokens", "audio_seconds", "nonfinite", "nonfinite_update",
          "task_target_tokens")
# Per-task means weighted by that task's target tokens in each step (a step without the task
# says nothing about it).
TOKEN_WEIGHTED = {"task_loss": "task_target_tokens", "task_accuracy": "task_target_tokens"}


def format_duration(seconds: float) -> str:
  if not math.isfinite(seconds) or seconds < 0:
    return "?"
  seconds = int(round(seconds))
  hours, rest = divmod(seconds, 3600)
  return f"{hours}:{rest // 60:02d}:{rest % 60:02d}"


def flatten_step_metrics(metrics: Mapping[str, np.ndarray],
                         task_names: Sequence[str]) -> Dict[str, float]:
  """Host metrics of one step as scalars; [num_tasks] arrays become '<name>/<task>' entries."""
  out = {}
  for key, value in metrics.items():
    value = np.asarray(value)
    if value.ndim == 0:
      out[key] = float(value)
    elif value.ndim == 1 and len(value) == len(task_names):
      for task, v in zip(task_names, value):
        out[f"{key}/{task}"] = float(v)
    else:
      raise ValueError(f"metric {key!r} has shape {value.shape}; expected a scalar or one value "
                       f"per task ({len(task_names)})")
  return out


def reduce_window(steps: List[Dict[str, float]]) -> Dict[str, float]:
  """One logging window: counts summed, per-task values token-weighted, the rest averaged."""
  keys = sorted({k for step in steps for k in step})
  out = {}
  for key in keys:
    base, _, task = key.partition("/")
    values = np.asarray([step[key] for step in steps if key in step])
    if base in SUMMED:
      out[key] = float(np.sum(values))
    elif base in TOKEN_WEIGHTED and task:
      weights = np.asarray([step.get(f"{TOKEN_WEIGHTED[base]}/{task}", 0.0)
                            for step in steps if key in step])
      if weights.sum() > 0:
        out[key] = float(np.sum(values * weights) / weights.sum())
    else:
      out[key] = float(np.mean(values))
  return out


class MetricsWriter:
  """Scalars to TensorBoard (and W&B); a one-line progress display on stdout."""

  def __init__(self, workdir: str, *, enabled: bool = True, tensorboard: bool = True,
               wandb: bool = False, wandb_project: str = "", run_config: Optional[dict] = None,
               total_steps: int = 0, stream=None):
    self.enabled = enabled
    self.total_steps = total_steps
    self.stream = stream or sys.stdout
    self._tb = None
    self._wandb = None
    self._start_time: Optional[float] = None
    self._start_step = 0
    if not enabled:
      return
    if tensorboard:
      from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
      self._tb = SummaryWriter(os.path.join(workdir, TENSORBOARD_DIR))
    if wandb:
      try:
        import wandb as wandb_lib  # pylint: disable=g-import-not-at-top
      except ImportError:
        logging.warning("config.wandb=True but the wandb package is not installed; logging to "
                        "TensorBoard only (pip install wandb)")
      else:
        self._wandb = wandb_lib.init(project=wandb_project or None, config=run_config,
                                     dir=workdir, name=os.path.basename(os.path.abspath(workdir)),
                                     resume="allow")

  def start_clock(self, step: int) -> None:
    """Marks where the timed part of the run starts (for the ETA)."""
    self._start_time, self._start_step = time.time(), step

  def write(self, step: int, scalars: Mapping[str, float]) -> None:
    if not self.enabled:
      return
    if self._tb is not None:
      for key, value in scalars.items():
        self._tb.add_scalar(key, value, step)
      self._tb.flush()
    if self._wandb is not None:
      self._wandb.log(dict(scalars), step=step)

  def write_text(self, step: int, key: str, text: str) -> None:
    if self.enabled and self._tb is not None:
      self._tb.add_text(key, text, step)

  def eta_seconds(self, step: int, step_seconds: Optional[float] = None) -> float:
    """Remaining steps times the latest step time (or the average since `start_clock`)."""
    if step_seconds is None:
      if self._start_time is None or step <= self._start_step:
        return float("nan")
      step_seconds = (time.time() - self._start_time) / (step - self._start_step)
    return step_seconds * (self.total_steps - step)

  def progress(self, step: int, scalars: Mapping[str, float],
               extra: Iterable[str] = ()) -> str:
    """The one-line display; printed on process 0."""
    parts = [f"step {step}/{self.total_steps}"]
    for key, fmt in (("train/loss", "loss {:.4f}"), ("train/accuracy", "acc {:.3f}"),
                     ("train/learning_rate", "lr {:.2e}"), ("train/grad_norm", "gnorm {:.3f}"),
                     ("perf/tokens_per_second", "{:,.0f} tok/s"),
                     ("perf/audio_seconds_per_second", "{:,.1f} audio s/s"),
                     ("perf/step_seconds", "{:.3f} s/step")):
      if key in scalars:
        parts.append(fmt.format(scalars[key]))
    if "perf/mfu" in scalars:
      parts.append(f"MFU {100 * scalars['perf/mfu']:.1f}%")
    elif "perf/step_seconds" in scalars:
      parts.append("MFU n/a")
    skipped = int(scalars.get("train/skipped_steps_total", 0))
    if skipped:
      parts.append(f"skipped {skipped}")
    parts.extend(extra)
    eta = self.eta_seconds(step, scalars.get("perf/step_seconds"))
    parts.append(f"ETA {format_duration(eta)}")
    line = " | ".join(parts)
    if self.enabled:
      print(line, file=self.stream, flush=True)
    return line

  def close(self) -> None:
    if self._tb is not None:
      self._tb.close()
      self._tb = None
    if self._wandb is not None:
      self._wandb.finish()
      self._wandb = None
