"""JAX's persistent compilation cache, placed on the workdir's filesystem.

Restarts and resumes then skip recompiling. The default directory is `.jax_cache` next to the
workdir (shared by the runs under one parent): local for a local workdir, on the same object
store for a URL such as `gs://bucket/runs/stage1` (`gs://bucket/runs/.jax_cache`; JAX reads and
writes the cache through `etils.epath`, so every host of a pod shares it). A URL is never turned
into a local path.
"""

import os

import jax

CACHE_NAME = ".jax_cache"


def is_url(path: str) -> bool:
  return "://" in path


def cache_dir(configured: str, workdir: str) -> str:
  """`configured` when set (local paths made absolute), else `.jax_cache` beside the workdir."""
  if configured:
    return configured if is_url(configured) else os.path.abspath(configured)
  workdir = os.fspath(workdir).rstrip("/")
  if is_url(workdir):
    scheme, _, rest = workdir.partition("://")
    bucket, _, path = rest.partition("/")
    parent = path.rpartition("/")[0] if "/" in path else ""
    return f"{scheme}://{bucket}/" + (f"{parent}/" if parent else "") + CACHE_NAME
  return os.path.join(os.path.dirname(os.path.abspath(workdir)), CACHE_NAME)


def enable(configured: str, workdir: str, min_compile_seconds: float = 1.0) -> str:
  """Turns the cache on for programs that take at least `min_compile_seconds` to compile."""
  directory = cache_dir(configured, workdir)
  jax.config.update("jax_compilation_cache_dir", directory)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", min_compile_seconds)
  return directory
