"""Exporting converted checkpoints and training runs in every layout users load, and starting a
run from a LoRA run's step.

- the official Qwen-Audio layout and the Whisper encoder alone round-trip bit-exact (tensors,
  config.json, qwen.tiktoken) and load where they are meant to (WhisperEncoder.from_pretrained);
- a LoRA run of the Qwen2-Audio family (its own transformers tokenizer) exports from its
  `checkpoints/<step>`: merged, it loads in transformers' Qwen2AudioForConditionalGeneration with
  our logits and converts back bit-exact; as a PEFT adapter, peft applies it to the base weights
  and gives the merged model's logits;
- `init.checkpoint=<run>/checkpoints/<step>` of that run starts from the merged model: its eval
  loss equals the run's last eval loss.
"""

import json
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
import soundfile
import torch
from transformers import Qwen2AudioForConditionalGeneration, WhisperFeatureExtractor
from transformers.models.whisper.modeling_whisper import WhisperEncoder

import _reference_models as ref
from _train_configs import NARROW, load_config
from qwen_audio_jax import checkpoints, sharding, train
from qwen_audio_jax.audio import lengths
from qwen_audio_jax.convert import (SafetensorsReader, config_from_hf, convert_to_orbax,
                                    export_checkpoint, load_model_config, load_params)
from qwen_audio_jax.convert import __main__ as cli
from qwen_audio_jax.convert.tree import flatten
from qwen_audio_jax.data import DataPipeline
from qwen_audio_jax.data.config import mixture_entry
from qwen_audio_jax.model.qwen_audio import QwenAudio
from qwen_audio_jax.text import tokenizer as tokenizer_lib
from qwen_audio_jax.training import initialization
from qwen_audio_jax.training import step as step_lib

STEPS = 3


def tensors(directory):
  with SafetensorsReader(directory) as r:
    return {n: r.read(n) for n in r.names()}


def assert_same_tensors(a, b):
  assert sorted(a) == sorted(b)
  for name in a:
    assert a[name].dtype == b[name].dtype and a[name].tobytes() == b[name].tobytes(), name


def assert_trees_equal(a, b):
  fa, fb = flatten(jax.device_get(a)), flatten(jax.device_get(b))
  assert sorted(fa) == sorted(fb)
  for k in fa:
    np.testing.assert_array_equal(np.asarray(fa[k]), np.asarray(fb[k]), err_msg=str(k))


# ----------------------------------------------------------------------------- converted


def test_official_qwen_audio_layout_round_trips_with_config_and_vocabulary(tmp_path):
  llm, whisper = ref.tiny_qwen2(seed=31, kv_heads=4), ref.tiny_whisper(seed=32)
  torch.manual_seed(33)
  official = ref.official_state_dict(llm, whisper, torch.randn(64, 64), torch.randn(64),
                                     torch.randn(2, 64))
  source, ours, out = (str(tmp_path / d) for d in ("official", "ours", "out"))
  ref.save_official(source, official, ref.official_config(llm, whisper))
  convert_to_orbax(source, "qwen_audio", ours, progress=False)
  assert cli.main(["export", "--checkpoint", ours, "--layout", "qwen_audio", "--out", out,
                   "--no-progress"]) == 0
  assert_same_tensors(tensors(source), tensors(out))
  assert config_from_hf(out, "qwen_audio") == load_model_config(ours)
  with open(os.path.join(out, "config.json")) as f:
    written = json.load(f)
  assert written["architectures"] == ["QWenLMHeadModel"] and written["model_type"] == "qwen"
  assert written["audio"]["audio_start_id"] == 155163
  with open(os.path.join(out, "qwen.tiktoken"), "rb") as f, \
       open(tokenizer_lib.dashscope_vocab_file(), "rb") as g:
    assert f.read() == g.read()
  # The Whisper encoder alone out of the same model: the official encoder's tensors by the
  # names of transformers' WhisperEncoder (its projection is not part of Whisper).
  whisper_out = str(tmp_path / "whisper")
  export_checkpoint(ours, "whisper", whisper_out, progress=False)
  exported = tensors(whisper_out)
  assert "layers.0.self_attn.q_proj.weight" in exported and not any("proj.w" == n[:6]
                                                                   for n in exported)
  np.testing.assert_array_equal(exported["conv1.weight"],
                                official["transformer.audio.conv1.weight"].numpy())


def test_whisper_encoder_round_trips_and_loads_in_transformers(tmp_path):
  whisper = ref.tiny_whisper(seed=34)
  source, ours, out = (str(tmp_path / d) for d in ("hf", "ours", "out"))
  whisper.save_pretrained(source, safe_serialization=True)
  convert_to_orbax(source, "whisper", ours, progress=False)
  export_checkpoint(ours, "whisper", out, progress=False)
  encoder_tensors = {n[len("encoder."):]: t for n, t in tensors(source).items()
                     if n.startswith("encoder.")}  # WhisperModel: encoder.* and decoder.*
  assert_same_tensors(encoder_tensors, tensors(out))
  model, info = WhisperEncoder.from_pretrained(out, output_loading_info=True)
  assert not info["missing_keys"] and not info["unexpected_keys"]
  mel = torch.randn(1, 80, 3000)
  with torch.no_grad():
    torch.testing.assert_close(model.eval()(mel).last_hidden_state,  # same weights; SDPA vs
                               whisper.encoder.eval()(mel).last_hidden_state,  # eager attention
                               rtol=0, atol=1e-5)
  back = str(tmp_path / "back")
  convert_to_orbax(out, "whisper", back, progress=False)
  assert_trees_equal(load_params(back), load_params(ours))


# ----------------------------------------------------------------------------- a LoRA run


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory, qwen2_audio_tokenizer_dir):
  """A few stage-2 steps with LoRA (rank 2) of a Qwen2-Audio-family model on short tone
  dialogues, with a Qwen2-Audio-style tokenizer, evaluated at its last step."""
  root = tmp_path_factory.mktemp("export_run")
  tokenizer_dir = qwen2_audio_tokenizer_dir
  t = np.arange(4000) / lengths.SAMPLE_RATE
  rows = []
  for i in range(8):
    soundfile.write(root / f"t{i}.wav", (0.3 * np.sin(2 * np.pi * (300 + 50 * i) * t)
                                         ).astype(np.float32), lengths.SAMPLE_RATE)
    rows.append({"id": f"t{i}", "task": "chat", "messages": [
        {"role": "user", "content": [{"audio": str(root / f"t{i}.wav")},
                                     {"text": "Which tone?"}]},
        {"role": "assistant", "content": f"Tone {i % 3}."}]})
  (root / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
  c = load_config("sft")
  overrides = {k: dict(v) for k, v in NARROW.items()}
  overrides["encoder"].update(audio_bos_eos=False, cut_mel_to_batch_max=False)
  c.model.overrides = ml_collections.ConfigDict(overrides)
  for data in (c.data, c.eval_data):
    data.mixture = ml_collections.ConfigDict(
        {"chat": mixture_entry(paths=str(root / "rows.jsonl"), tasks="chat")})
    data.tokenizer_path = tokenizer_dir
    data.batch_size = 8
    data.text_buckets = (64,)
  c.total_steps = STEPS
  c.optim.warmup_steps = 1
  c.optim.learning_rate = 1e-2
  c.lora.rank, c.lora.alpha = 2, 4.0
  c.eval_every, c.eval_steps = STEPS, 1
  c.log_every = STEPS
  c.checkpoint.keep_best_metric = ""
  c.checkpoint.every_steps = STEPS
  c.compilation_cache_dir = str(root / "cache")
  result = train.run(c, str(root / "workdir"))
  assert initialization.model_config_from(c).family == "qwen2_audio"
  return c, result, str(root / "workdir" / "checkpoints" / str(STEPS))


def eval_losses(config, *param_trees):
  """The eval loss of each parameter tree on the run's eval batches (one compiled step)."""
  model_config = initialization.model_config_from(config)
  mesh = train.build_mesh(config)
  eval_step = jax.jit(step_lib.make_eval_step(config, model_config))
  with sharding.activation_sharding(mesh):
    return [train.evaluate(eval_step, params, DataPipeline(config.eval_data), mesh,
                           config.eval_steps)["eval/loss"] for params in param_trees]


def test_init_from_a_lora_run_keeps_its_adapters(lora_run):
  config, result, step_dir = lora_run
  c = ml_collections.ConfigDict(config.to_dict())
  c.init.checkpoint = step_dir
  model_config = initialization.model_config_from(c)
  mesh = train.build_mesh(c)
  params, sources = initialization.initial_params(c, model_config, mesh, jax.random.key(1))
  assert "LoRA factors" in sources[0] and "merged" in sources[0]
  base, _ = checkpoints.restore_run_params(step_dir, model_config, config, mesh)
  started, base_only = eval_losses(c, params, base)
  last = result.evals[STEPS]["eval/loss"]
  np.testing.assert_allclose(started, last, rtol=1e-6)
  assert abs(base_only - last) > 1e-4  # the adapters matter: the base weights alone differ


def our_logits(model_config, params, ids, mel, num_samples, start):
  return np.asarray(jax.jit(QwenAudio(model_config).apply)(
      {"params": params}, jnp.asarray(ids, jnp.int32),
      segment_ids=jnp.ones(ids.shape, jnp.int32), audio_mel=jnp.asarray(mel)[:, None],
      audio_lengths=jnp.asarray([[num_samples]]), audio_starts=jnp.asarray([[start]])))


def hf_inputs(tok):
  num_samples = 2 * lengths.SAMPLE_RATE
  audio = np.random.default_rng(5).uniform(-0.5, 0.5, num_samples).astype(np.float32)
  features = WhisperFeatureExtractor(feature_size=80)(
      [audio], sampling_rate=lengths.SAMPLE_RATE, return_tensors="np", padding="max_length",
      return_attention_mask=True)
  prefix = [9707, 11, 1879]
  ids = np.asarray([prefix + [tok.audio_start_id] + [tok.audio_pad_id] *
                    lengths.audio_tokens(num_samples) + [tok.audio_end_id] + [3838, 374, 432]])
  return (ids, features["input_features"].astype(np.float32), features["attention_mask"],
          num_samples, len(prefix))


def hf_logits(model, ids, mel, feature_mask):
  with torch.no_grad():
    return model.eval()(input_ids=torch.from_numpy(ids), input_features=torch.from_numpy(mel),
                        feature_attention_mask=torch.from_numpy(feature_mask)).logits.numpy()


def test_run_exports_merged_to_qwen2_audio_and_matches_transformers(lora_run, tmp_path):
  _, _, step_dir = lora_run
  out = str(tmp_path / "hf")
  assert cli.main(["export", "--checkpoint", step_dir, "--layout", "qwen2_audio", "--out", out,
                   "--no-progress"]) == 0
  loaded = checkpoints.load_model(step_dir)
  model, info = Qwen2AudioForConditionalGeneration.from_pretrained(out, output_loading_info=True)
  assert not info["missing_keys"] and not info["unexpected_keys"]
  assert model.config.audio_token_id == loaded.tokenizer.audio_pad_id
  assert os.path.exists(os.path.join(out, "tokenizer.json"))
  ids, mel, feature_mask, num_samples, start = hf_inputs(loaded.tokenizer)
  ours = our_logits(loaded.model_config, loaded.params, ids, mel, num_samples, start)
  expected = hf_logits(model, ids, mel, feature_mask)
  assert np.abs(ours - expected).max() <= 1e-4
  # Back again: bit-exact.
  back = str(tmp_path / "back")
  convert_to_orbax(out, "qwen2_audio", back, progress=False)
  assert_trees_equal(load_params(back), loaded.params)


def test_run_exports_lora_as_a_peft_adapter(lora_run, tmp_path):
  import peft  # pylint: disable=g-import-not-at-top  (test extras)
  config, _, step_dir = lora_run
  merged_dir, base_dir = str(tmp_path / "merged"), str(tmp_path / "base")
  export_checkpoint(step_dir, "qwen2_audio", merged_dir, progress=False)
  files = export_checkpoint(step_dir, "qwen2_audio", base_dir, lora="adapters", progress=False)
  assert any(f.endswith("adapter/adapter_model.safetensors") for f in files)
  model_config = checkpoints.run_model_config(step_dir)
  base, _ = checkpoints.restore_run_params(step_dir, model_config, config,
                                           checkpoints.single_device_mesh())
  back = str(tmp_path / "back")
  convert_to_orbax(base_dir, "qwen2_audio", back, progress=False)
  assert_trees_equal(load_params(back), base)  # the base weights, unmerged

  adapter = peft.PeftModel.from_pretrained(
      Qwen2AudioForConditionalGeneration.from_pretrained(base_dir),
      os.path.join(base_dir, "adapter"))
  lora_b = [p for n, p in adapter.named_parameters() if "lora_B" in n]
  assert len(lora_b) == 4 * model_config.llm.depth  # q, k, v, o of every layer
  assert all(float(p.abs().max()) > 0 for p in lora_b)  # the trained factors, not a fresh init
  merged = Qwen2AudioForConditionalGeneration.from_pretrained(merged_dir)
  ids, mel, feature_mask, _, _ = hf_inputs(checkpoints.load_model(step_dir).tokenizer)
  np.testing.assert_allclose(hf_logits(adapter, ids, mel, feature_mask),
                             hf_logits(merged, ids, mel, feature_mask), atol=1e-5, rtol=0)


def test_export_refuses_what_a_layout_cannot_hold(lora_run, tmp_path):
  _, _, step_dir = lora_run
  with pytest.raises(ValueError, match="PEFT layout of Qwen2-Audio only"):
    export_checkpoint(step_dir, "qwen2", str(tmp_path / "x"), lora="adapters", progress=False)
  with pytest.raises(ValueError, match="the 'qwen_audio' layout also needs 'audio_bos_eos'"):
    export_checkpoint(step_dir, "qwen_audio", str(tmp_path / "y"), progress=False)
