"""Grain worker processes die with the process that started them, however it dies.

grain starts its `mp_prefetch` workers with multiprocessing's 'spawn' and stops them from the
parent's clean-up code, which a kill -9 (or the OOM killer) never runs: the workers, and the
resource tracker that waits on them, would then live on under PID 1 holding hundreds of MB
each. `die_with_parent(...)` is the `worker_init_fn` that prevents it; in each worker it

* on Linux asks the kernel for a parent-death signal (`prctl(PR_SET_PDEATHSIG)`): SIGUSR2 as
  soon as the thread that started the worker exits. Its handler exits only when the parent
  process is really gone (grain may start workers from a helper thread, whose end alone must
  not stop them);
* everywhere (macOS included) runs a daemon thread that polls `os.getppid()` every
  POLL_SECONDS: once the worker has been re-parented (its parent died), it exits.

Exits use `os._exit` (no clean-up code of a half-torn pipeline). Once the workers are gone the
resource tracker sees its last writer close and exits too.
"""

import ctypes
import ctypes.util
import functools
import os
import signal
import sys
import threading
from typing import Callable

POLL_SECONDS = 0.5
# Exit status of a worker that outlived its parent (128 + SIGKILL, as if killed with it).
ORPHAN_EXIT_STATUS = 137
_PR_SET_PDEATHSIG = 1
_DEATH_SIGNAL = signal.SIGUSR2


def die_with_parent() -> Callable[[int, int], None]:
  """grain's `worker_init_fn(worker_index, worker_count)`, bound to this process's pid."""
  return functools.partial(_watch_parent, os.getpid())


def _exit_if_orphaned(parent_pid: int) -> None:
  if os.getppid() != parent_pid:
    os._exit(ORPHAN_EXIT_STATUS)  # pylint: disable=protected-access


def _watch_parent(parent_pid: int, worker_index: int = 0, worker_count: int = 1) -> None:
  """Runs in the worker: arranges to exit when `parent_pid` is no longer its parent."""
  del worker_index, worker_count
  if sys.platform.startswith("linux"):
    _request_parent_death_signal(parent_pid)
  thread = threading.Thread(target=_poll_parent, args=(parent_pid,), daemon=True,
                            name="qwen_audio_jax-parent-watch")
  thread.start()
  _exit_if_orphaned(parent_pid)  # the parent may have died before any of this was armed


def _poll_parent(parent_pid: int) -> None:
  event = threading.Event()
  while True:
    _exit_if_orphaned(parent_pid)
    event.wait(POLL_SECONDS)


def _request_parent_death_signal(parent_pid: int) -> None:
  if threading.current_thread() is threading.main_thread():
    signal.signal(_DEATH_SIGNAL, lambda signum, frame: _exit_if_orphaned(parent_pid))
  try:
    libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, int(_DEATH_SIGNAL), 0, 0, 0)
  except (OSError, AttributeError):
    pass  # the polling thread still covers it
