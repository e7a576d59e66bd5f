"""What a run checks and guards before its first step: a usable workdir, SIGTERM during set-up.

Start-up (validation, data scans, compilation, restoring) can take minutes on a big model; a
job scheduler that cancels the run then must not see a crash or a killed process: with nothing
trained yet there is nothing to save, so SIGTERM ends the run at once with a message and exit
status 0. From the first step on, `checkpointing.PreemptionWatch` takes SIGTERM over (save at
the next step boundary, then exit).
"""

import contextlib
import os
import signal
import threading
import uuid

from absl import logging
from etils import epath

from qwen_audio_jax.errors import FlagError, StartupInterrupted


def check_workdir(workdir: str, flag: str = "--workdir") -> None:
  """Creates `workdir` if needed and proves it writable; FlagError naming `flag` otherwise.

  Object-store URLs (gs://, s3://) are left to their client: permissions there are per object.
  """
  workdir = os.fspath(workdir)
  if "://" in workdir:
    return
  path = epath.Path(workdir)
  if path.exists() and not path.is_dir():
    raise FlagError(f"{flag}={workdir}: is a file, not a directory; pass a directory (it is "
                    "created if missing)")
  try:
    path.mkdir(parents=True, exist_ok=True)
    probe = path / f".write_test_{uuid.uuid4().hex}"
    probe.write_text("")
    probe.unlink()
  except (NotADirectoryError, FileExistsError) as e:
    raise FlagError(f"{flag}={workdir}: a part of the path is a file, not a directory "
                    f"({e.strerror or e})") from e
  except OSError as e:
    raise FlagError(f"{flag}={workdir}: not writable ({e.strerror or e}); pass a directory "
                    "this user can write") from e


@contextlib.contextmanager
def sigterm_ends_startup():
  """Within the block SIGTERM raises StartupInterrupted (the caller exits 0 with a message).

  `PreemptionWatch`, installed when the loop starts, replaces this handler; it restores it when
  the loop is over, and the block restores the handler it found on exit. A no-op outside the
  main thread (signal handlers can only be installed there).
  """
  if threading.current_thread() is not threading.main_thread():
    yield
    return

  def on_signal(signum, frame):
    del frame
    raise StartupInterrupted(f"received signal {signum} ({signal.Signals(signum).name}) before "
                             "the first training step")

  previous = signal.signal(signal.SIGTERM, on_signal)
  try:
    yield
  finally:
    signal.signal(signal.SIGTERM, previous)


def report_interrupted(error: StartupInterrupted) -> None:
  """The message of a run stopped during start-up."""
  message = f"{error}: nothing was trained, nothing to save; exiting"
  logging.warning(message)
  print(message, flush=True)
