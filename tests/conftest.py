"""Test-wide set-up: 8 simulated CPU devices (sharding tests) before jax is imported."""

import os

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# libtpu (the test extra) describes virtual TPU slices; each pytest-xdist worker loads its own.
os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import jax  # noqa: E402  (after the flags above)

jax.config.update("jax_default_matmul_precision", "highest")

import pytest  # noqa: E402


def pytest_configure(config):
  """Every run lists its slowest tests, so the suite's time budget stays visible."""
  if config.option.durations is None:
    config.option.durations = 25


@pytest.fixture(scope="session")
def qwen2_audio_tokenizer_dir(tmp_path_factory):
  """A Qwen2-Audio-style transformers tokenizer directory (built once: ~10 s of CPU)."""
  import _reference_models as ref  # pylint: disable=g-import-not-at-top
  from qwen_audio_jax.text import tokenizer  # pylint: disable=g-import-not-at-top
  return ref.save_qwen2_audio_tokenizer(str(tmp_path_factory.mktemp("qwen2_audio_tokenizer")),
                                        tokenizer.SPLIT_PATTERN)
