"""Per-task bookkeeping of what the pipeline delivered, rejected, dropped or truncated.

Bad data never disappears silently: every example that does not reach a batch is counted under a
reason, per task, and the first few are kept by name (manifest line, shard record, TFDS index) so
a report can point at them. Counts are produced inside the worker processes, travel to the main
process with the batches (`StatsDelta`), and are summed there into `DataStats`, which is part of
the iterator's checkpoint so that a resumed run keeps counting from where it stopped.
"""

import collections
import dataclasses
from typing import Any, Dict, List, Mapping, Sequence

from qwen_audio_jax.errors import DataQualityError  # pylint: disable=unused-import (re-exported)

# Bad data: the example itself is broken. These count towards the abort threshold.
BAD_REASONS = (
    "unreadable",  # the audio cannot be opened or decoded
    "empty",  # the audio (or the requested segment) has no samples
    "non_finite",  # NaN or infinite samples
    "too_long",  # longer than max_audio_seconds (when long_audio='skip')
    "too_short",  # too short to yield a single audio token
    "malformed",  # the row (JSON, fields, task-specific validation) is invalid
    "truncated_audio",  # the file is cut short of the length its container states
)
# Examples that are fine but do not fit the configured shapes; dropped by rule, counted.
RULE_REASONS = (
    "text_too_long",  # more tokens than the largest text bucket (and truncation impossible)
    "too_many_clips",  # more clips than max_clips_per_row
)


@dataclasses.dataclass(frozen=True)
class Rejection:
  """One example that will not reach a batch, and why."""
  task_id: int
  reason: str  # one of BAD_REASONS or RULE_REASONS
  origin: str  # where it came from: 'path/to/manifest.jsonl:17', 'shard.array_record[5]', ...
  detail: str = ""

  def __post_init__(self):
    if self.reason not in BAD_REASONS + RULE_REASONS:
      raise ValueError(f"Rejection: unknown reason {self.reason!r}")

  def describe(self) -> str:
    return f"{self.origin} ({self.reason}{': ' + self.detail if self.detail else ''})"


@dataclasses.dataclass
class TaskStats:
  """Counters of one task of the mixture."""
  examples: int = 0  # examples delivered in batches
  tokens: int = 0  # their non-padding tokens
  target_tokens: int = 0  # tokens carrying loss
  truncated: int = 0  # delivered with the text cut to the largest bucket
  rejected: Dict[str, int] = dataclasses.field(default_factory=dict)  # BAD_REASONS -> count
  dropped: Dict[str, int] = dataclasses.field(default_factory=dict)  # RULE_REASONS -> count
  first_rejected: List[str] = dataclasses.field(default_factory=list)  # described, oldest first

  @property
  def num_rejected(self) -> int:
    return sum(self.rejected.values())

  @property
  def num_dropped(self) -> int:
    return sum(self.dropped.values())

  @property
  def seen(self) -> int:
    """Examples the pipeline has finished with (delivered + rejected + dropped)."""
    return self.examples + self.num_rejected + self.num_dropped

  def bad_fraction(self) -> float:
    return self.num_rejected / self.seen if self.seen else 0.0


class StatsDelta:
  """Counts accumulated since the last batch; small and picklable (it rides along a batch)."""

  def __init__(self, keep_first: int = 10):
    self.keep_first = keep_first
    self.counts: Dict[int, collections.Counter] = collections.defaultdict(collections.Counter)
    self.first: Dict[int, List[str]] = collections.defaultdict(list)

  def add_rejection(self, rejection: Rejection) -> None:
    kind = "rejected" if rejection.reason in BAD_REASONS else "dropped"
    self.counts[rejection.task_id][f"{kind}/{rejection.reason}"] += 1
    first = self.first[rejection.task_id]
    if len(first) < self.keep_first:
      first.append(rejection.describe())

  def add_example(self, task_id: int, tokens: int, target_tokens: int, truncated: bool) -> None:
    counter = self.counts[task_id]
    counter["examples"] += 1
    counter["tokens"] += int(tokens)
    counter["target_tokens"] += int(target_tokens)
    counter["truncated"] += int(bool(truncated))

  def __bool__(self) -> bool:
    return bool(self.counts)

  def __getstate__(self):
    return {"keep_first": self.keep_first,
            "counts": {k: dict(v) for k, v in self.counts.items()},
            "first": dict(self.first)}

  def __setstate__(self, state):
    self.keep_first = state["keep_first"]
    self.counts = collections.defaultdict(collections.Counter,
                                          {k: collections.Counter(v)
                                           for k, v in state["counts"].items()})
    self.first = collections.defaultdict(list, state["first"])


class DataStats:
  """Running per-task totals for one process, with the abort rule.

  A task is aborted when at least `min_examples` of its examples have been seen and more than
  `max_bad_fraction` of them were bad (BAD_REASONS; rule-based drops do not count as bad).
  """

  def __init__(self, task_names: Sequence[str], *, max_bad_fraction: float = 0.05,
               min_examples: int = 100, keep_first: int = 10):
    if not 0.0 <= max_bad_fraction <= 1.0:
      raise ValueError(f"max_bad_fraction must be in [0, 1], got {max_bad_fraction}")
    self.task_names = tuple(task_names)
    self.max_bad_fraction = float(max_bad_fraction)
    self.min_examples = int(min_examples)
    self.keep_first = int(keep_first)
    self.tasks: Dict[str, TaskStats] = {name: TaskStats() for name in self.task_names}
    self.load_rejected: Dict[str, TaskStats] = {name: TaskStats() for name in self.task_names}

  def merge(self, delta: StatsDelta) -> None:
    for task_id, counter in delta.counts.items():
      task = self.tasks[self.task_names[task_id]]
      for key, value in counter.items():
        if "/" in key:
          kind, reason = key.split("/", 1)
          table = task.rejected if kind == "rejected" else task.dropped
          table[reason] = table.get(reason, 0) + value
        else:
          setattr(task, key, getattr(task, key) + value)
      room = self.keep_first - len(task.first_rejected)
      if room > 0:
        task.first_rejected.extend(delta.first.get(task_id, [])[:room])

  def record_load_rejections(self, task_name: str, rejections: Sequence[Rejection],
                             total_rows: int) -> None:
    """Rows refused when a manifest was read; raises if they alone pass the bad fraction.

    The same rule as `check`: only once at least `min_examples` rows were read (a manifest
    smaller than that is never aborted on here; its refused rows are counted and reported).
    """
    task = self.load_rejected[task_name]
    for rejection in rejections:
      task.rejected[rejection.reason] = task.rejected.get(rejection.reason, 0) + 1
      if len(task.first_rejected) < self.keep_first:
        task.first_rejected.append(rejection.describe())
    task.examples = total_rows - len(rejections)
    if total_rows >= self.min_examples and len(rejections) / total_rows > self.max_bad_fraction:
      raise DataQualityError(
          f"task {task_name!r}: {len(rejections)} of {total_rows} rows are malformed "
          f"(limit {self.max_bad_fraction:.2%}); first: " + "; ".join(task.first_rejected))

  def check(self) -> None:
    """Raises DataQualityError naming the task and its first bad examples past the limit."""
    for name, task in self.tasks.items():
      if task.seen >= self.min_examples and task.bad_fraction() > self.max_bad_fraction:
        raise DataQualityError(
            f"task {name!r}: {task.num_rejected} of {task.seen} examples were bad "
            f"({task.bad_fraction():.2%} > limit {self.max_bad_fraction:.2%}; by reason "
            f"{dict(sorted(task.rejected.items()))}); first: " + "; ".join(task.first_rejected))

  def metrics(self, prefix: str = "data") -> Dict[str, float]:
    """Flat scalars for a metrics writer: per-task counts and rates."""
    out = {}
    total = sum(task.examples for task in self.tasks.values())
    for name, task in self.tasks.items():
      out[f"{prefix}/{name}/examples"] = task.examples
      out[f"{prefix}/{name}/share"] = task.examples / total if total else 0.0
      out[f"{prefix}/{name}/tokens"] = task.tokens
      out[f"{prefix}/{name}/target_tokens"] = task.target_tokens
      out[f"{prefix}/{name}/truncated"] = task.truncated
      out[f"{prefix}/{name}/rejected"] = task.num_rejected
      out[f"{prefix}/{name}/dropped"] = task.num_dropped
      out[f"{prefix}/{name}/malformed_rows_at_load"] = self.load_rejected[name].num_rejected
    return out

  def report(self) -> str:
    """Human-readable summary naming the first bad examples of each task."""
    lines = []
    for name, task in self.tasks.items():
      loaded = self.load_rejected[name]
      lines.append(
          f"{name}: {task.examples} examples ({task.truncated} truncated), "
          f"{task.num_rejected} bad {dict(sorted(task.rejected.items()))}, "
          f"{task.num_dropped} dropped by rule {dict(sorted(task.dropped.items()))}, "
          f"{loaded.num_rejected} malformed rows at load")
      for described in loaded.first_rejected + task.first_rejected:
        lines.append(f"  - {described}")
    return "\n".join(lines)

  def to_state(self) -> Dict[str, Any]:
    """JSON-serialisable snapshot (stored with the iterator's checkpoint)."""
    return {"tasks": {name: dataclasses.asdict(task) for name, task in self.tasks.items()},
            "load_rejected": {name: dataclasses.asdict(task)
                              for name, task in self.load_rejected.items()}}

  def set_state(self, state: Mapping[str, Any]) -> None:
    for key, table in (("tasks", self.tasks), ("load_rejected", self.load_rejected)):
      saved = state[key]
      if set(saved) != set(self.task_names):
        raise ValueError(f"data stats checkpoint has tasks {sorted(saved)}, the mixture has "
                         f"{sorted(self.task_names)}")
      for name in self.task_names:
        table[name] = TaskStats(**saved[name])

