"""The persistent compilation cache follows the workdir's filesystem: a gs:// workdir never puts
it under a local './gs:/...' directory."""

import os

import jax
import pytest

from qwen_audio_jax.training import compilation_cache


@pytest.mark.parametrize("workdir,expected", [
    ("gs://bucket/runs/stage1", "gs://bucket/runs/.jax_cache"),
    ("gs://bucket/runs/stage1/", "gs://bucket/runs/.jax_cache"),
    ("gs://bucket/stage1", "gs://bucket/.jax_cache"),
    ("gs://bucket", "gs://bucket/.jax_cache"),
    ("s3://b/a/b/c", "s3://b/a/b/.jax_cache"),
])
def test_url_workdirs_keep_the_cache_on_their_filesystem(workdir, expected):
  assert compilation_cache.cache_dir("", workdir) == expected


def test_local_workdirs_and_configured_directories(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  assert compilation_cache.cache_dir("", "workdir/demo") == str(tmp_path / "workdir" / ".jax_cache")
  assert compilation_cache.cache_dir("cache", "gs://b/run") == str(tmp_path / "cache")
  assert compilation_cache.cache_dir("gs://c/cache", "run") == "gs://c/cache"


def test_enable_sets_jax_and_creates_nothing_locally(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  before = jax.config.jax_compilation_cache_dir
  try:
    directory = compilation_cache.enable("", "gs://bucket/runs/stage1")
    assert directory == jax.config.jax_compilation_cache_dir == "gs://bucket/runs/.jax_cache"
  finally:
    jax.config.update("jax_compilation_cache_dir", before)
  assert not os.listdir(tmp_path)
