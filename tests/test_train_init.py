"""Where a run's first parameters come from (config.init): stage 1 from converted Whisper and
Qwen checkpoints with a fresh projection, stage 2 from a converted full model; paths may be
relative; a checkpoint that does not fit the model config is refused by name.

A stage-2 start from a stage-1 run's step directory is tested with the training loop
(tests/test_train_loop.py), where such directories exist.
"""


import jax
import ml_collections
import numpy as np
import pytest
import torch

import _reference_models as ref
import _train_configs
from qwen_audio_jax import train
from qwen_audio_jax.convert import convert_to_orbax, load_params
from qwen_audio_jax.training import initialization

# The tiny preset resized to the tiny transformers references below.
MATCHING = dict(encoder=dict(mlp_dim=256, output_dim=64),
                llm=dict(vocab_size=512, width=64, heads=4, kv_heads=4, head_dim=16, mlp_dim=128))


def load_config(name):
  c = _train_configs.load_config(name)
  c.model.overrides = ml_collections.ConfigDict(MATCHING)
  # The demo's reduced vocabulary and compact tables do not fit a 512-token model.
  c.loss.output_vocab, c.optim.vocab_rows = "full", "all"
  return c


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
  """Tiny HF Whisper and Qwen2 checkpoints converted to ours, alone and combined."""
  root = tmp_path_factory.mktemp("init")
  whisper = ref.tiny_whisper(seed=21, d_model=64, layers=2, heads=4, ffn=256)
  whisper.save_pretrained(root / "hf_whisper", safe_serialization=True)
  qwen2 = ref.tiny_qwen2(seed=22, vocab=512, hidden=64, layers=2, heads=4, kv_heads=4,
                         intermediate=128)
  qwen2.save_pretrained(root / "hf_qwen2", safe_serialization=True)
  # A Qwen-Audio release in the official layout (what stage 2 of the paper starts from).
  torch.manual_seed(23)
  tensors = ref.official_state_dict(qwen2, whisper, torch.randn(64, 64), torch.randn(64),
                                    torch.randn(2, 64))
  ref.save_official(str(root / "hf_qwen_audio"), tensors, ref.official_config(qwen2, whisper))
  convert_to_orbax(str(root / "hf_whisper"), "whisper", str(root / "whisper"), progress=False)
  convert_to_orbax(str(root / "hf_qwen2"), "qwen2", str(root / "qwen2"), progress=False)
  convert_to_orbax(str(root / "hf_qwen_audio"), "qwen_audio", str(root / "qwen_audio"),
                   progress=False)
  # Qwen2 + Whisper: a Qwen2-Audio-shaped model (no audio bos/eos rows).
  convert_to_orbax(str(root / "hf_qwen2"), "qwen2", str(root / "qwen2_audio_shaped"),
                   progress=False, combine_encoder=str(root / "hf_whisper"))
  return root


def assert_trees_equal(a, b):
  a, b = jax.device_get(a), jax.device_get(b)
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def start(config):
  model_config = initialization.model_config_from(config)
  mesh = train.build_mesh(config)
  rng = jax.random.key(7)
  params, sources = initialization.initial_params(config, model_config, mesh, rng)
  return params, sources, initialization.random_params(model_config, mesh, rng)


def test_stage1_starts_from_converted_whisper_and_llm(converted, monkeypatch):
  monkeypatch.chdir(converted)  # relative paths, as typed on a command line
  c = load_config("pretrain")
  c.init.whisper, c.init.llm = "whisper", "qwen2"
  params, sources, fresh = start(c)

  whisper = load_params(str(converted / "whisper"))["audio_encoder"]
  encoder = dict(jax.device_get(params["audio_encoder"]))
  projection = encoder.pop("proj")
  assert_trees_equal(encoder, whisper)
  assert_trees_equal(params["llm"], load_params(str(converted / "qwen2"))["llm"])
  # The projection and the audio bos/eos rows are not in either checkpoint: fresh.
  assert_trees_equal(projection, fresh["audio_encoder"]["proj"])
  assert_trees_equal(params["audio_bos_eos"], fresh["audio_bos_eos"])
  text = "; ".join(sources)
  assert "from whisper" in text and "from qwen2" in text and "audio_bos_eos" in text


def test_stage2_starts_from_a_converted_full_model(converted, monkeypatch):
  monkeypatch.chdir(converted)
  c = load_config("sft")
  c.init.checkpoint = "qwen_audio"
  params, sources, _ = start(c)
  assert_trees_equal(params, load_params(str(converted / "qwen_audio")))
  assert sources == ["all from qwen_audio"]


def test_checkpoint_that_does_not_fit_the_model_is_named(converted):
  c = load_config("pretrain")
  c.model.overrides.llm.mlp_dim = 96
  c.init.whisper = ""  # the demo's own encoder does not fit this file's model sizes
  c.init.llm = str(converted / "qwen2")
  with pytest.raises(ValueError, match=r"config\.init\.llm=.*: parameter llm/.* has shape "
                     r".*128.*expects.*96.*set it to '' to start this part from a random init"):
    start(c)
  c = load_config("sft")
  c.init.checkpoint = str(converted / "qwen2_audio_shaped")
  with pytest.raises(ValueError, match=r"config\.init\.checkpoint=.*missing, first audio_bos_eos"):
    start(c)
