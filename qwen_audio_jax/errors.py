"""Errors a person can act on, and the command-line handler that prints them without a stack.

Every known error subclasses `UserError`: its message alone says what is wrong and where (the
config key, the flag, the file, the step), so a command line prints `error: <message>` and
exits with status 1 instead of showing a traceback. `--traceback` on a command line, or the
environment variable QWEN_AUDIO_JAX_TRACEBACK=1, shows the stack as well (for bug reports).
Anything else (a bug) keeps its full traceback.

    python -m qwen_audio_jax.train ...        # absl: errors.run_absl(main)
    errors.run_main(lambda: main(argv))       # argparse-based commands (see convert)
"""

import difflib
import os
import re
import sys
from typing import Callable, List, Optional, Sequence

TRACEBACK_ENV = "QWEN_AUDIO_JAX_TRACEBACK"
TRACEBACK_FLAG = "--traceback"
TRACEBACK_HELP = (f"on a known error (bad config, flag, data or checkpoint) also print the stack "
                  f"trace (or set {TRACEBACK_ENV}=1)")
EXIT_ERROR = 1


class UserError(Exception):
  """An error whose message is the whole story (no traceback needed)."""


class ConfigError(UserError, ValueError):
  """A training config that cannot work; the message lists every problem found."""

  def __init__(self, problems: Sequence[str]):
    self.problems = list(problems)
    super().__init__("invalid training config:\n  " + "\n  ".join(self.problems))

  def __reduce__(self):  # pickles (e.g. out of a worker process) with its problems intact
    return type(self), (self.problems,)


class FlagError(UserError, ValueError):
  """A command-line flag that cannot work (the message names the flag)."""


class DataQualityError(UserError, RuntimeError):
  """A task's share of bad examples passed the configured limit."""


class CheckpointError(UserError, ValueError):
  """A checkpoint that cannot be read, converted or written; names the file, tensor or step."""


class NonFiniteError(UserError, FloatingPointError):
  """Training stopped on a non-finite loss, gradient or update (config.nonfinite='halt')."""


class StartupInterrupted(BaseException):
  """SIGTERM before the first step: nothing to save. A BaseException, like KeyboardInterrupt,
  so that no library's `except Exception` swallows it half-way through start-up."""


def wants_traceback(argv: Optional[Sequence[str]] = None) -> bool:
  """--traceback (absl or argparse spelling) on the command line, or the environment variable."""
  if os.environ.get(TRACEBACK_ENV, "").strip().lower() in ("1", "true", "yes", "on"):
    return True
  argv = sys.argv[1:] if argv is None else argv
  shown = False
  for arg in argv:
    if arg == "--":
      break
    if arg in (TRACEBACK_FLAG, f"{TRACEBACK_FLAG}=true", f"{TRACEBACK_FLAG}=1"):
      shown = True
    elif arg in ("--notraceback", f"{TRACEBACK_FLAG}=false", f"{TRACEBACK_FLAG}=0"):
      shown = False
  return shown


def report(error: BaseException, stream=None) -> None:
  """`error: <message>` on stderr (the message's own lines kept)."""
  print(f"error: {error}", file=stream or sys.stderr, flush=True)


def run_main(main: Callable[[], Optional[int]], *,
             known: Sequence[type] = ()) -> None:
  """Runs a command's `main`, printing known errors without a stack; exits with its status.

  known: further exception types a command treats as user errors (e.g. FileExistsError for an
    output directory that is in the way).
  """
  try:
    status = main()
  except (UserError, *known) as e:  # pylint: disable=catching-non-exception
    if wants_traceback():
      raise
    report(e)
    sys.exit(EXIT_ERROR)
  sys.exit(status or 0)


def run_absl(main: Callable[[List[str]], Optional[int]], *, known: Sequence[type] = ()) -> None:
  """absl's `app.run(main)` with readable errors, bad --config.<key> flags included."""
  from absl import app  # pylint: disable=g-import-not-at-top
  run_main(lambda: app.run(main, flags_parser=parse_absl_flags), known=known)


def parse_absl_flags(argv: List[str]) -> List[str]:
  """absl's flag parsing; a bad flag (an unknown `--config.<key>` included, see
  `qwen_audio_jax.configs`) becomes one FlagError line naming it."""
  from absl import flags  # pylint: disable=g-import-not-at-top
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    message = _without_stack_text(str(e))
    # absl prefixes `flag --config=...: `; a message naming its own flag needs no prefix.
    named = re.match(r"(?:flag --\S+: )?(--\S+: .*)", message, re.DOTALL)
    raise FlagError(named.group(1) if named else f"{message} (see --helpshort)") from e


def _without_stack_text(message: str) -> str:
  """ml_collections pastes a config file's whole traceback into its flag error: keep the
  exception line (the stack stays available with --traceback)."""
  head, marker, stack = message.partition("Traceback (most recent call last):")
  lines = [line.strip() for line in stack.splitlines() if line.strip()]
  if not marker or not lines or wants_traceback():
    return message
  return f"{head.strip()} {lines[-1]}"


def unknown_key_message(config, path: str) -> Optional[str]:
  """`unknown key 'total_stepz' (did you mean 'total_steps'?)` when the dotted `path` is not in
  `config` (a ConfigDict or nested dicts); None when it is."""
  node, walked = config, []
  for part in path.split("."):
    keys = list(node.keys()) if hasattr(node, "keys") else []
    if part not in keys:
      full = ".".join(walked + [part])
      close = difflib.get_close_matches(part, [str(k) for k in keys], n=1)
      hint = f" (did you mean {'.'.join(walked + close)!r}?)" if close else (
          f" (expected one of {sorted(str(k) for k in keys)})" if keys else "")
      return f"unknown key {full!r}{hint}"
    node, walked = node[part], walked + [part]
  return None
