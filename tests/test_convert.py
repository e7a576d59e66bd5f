"""Checkpoint conversion: bit-exact round trips, sharded checkpoints, corrupted checkpoints, the
Orbax format (layouts, shardings, configs), combining a Whisper encoder with an LLM, and the CLI.

Numerical parity of converted models lives in tests/test_parity.py.
"""

import dataclasses
import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from jax.sharding import NamedSharding
from safetensors.numpy import load_file, save_file
from transformers import Qwen2AudioForConditionalGeneration, Qwen2ForCausalLM

import _reference_models as ref
from qwen_audio_jax import sharding
from qwen_audio_jax.config import EncoderConfig
from qwen_audio_jax.convert import (CheckpointError, SafetensorsReader, config_from_hf_dict,
                                    convert_checkpoint, convert_to_orbax, export_checkpoint,
                                    load_model_config, load_params, save_checkpoint,
                                    save_model_config, stack_layers, unstack_layers)
from qwen_audio_jax.convert import __main__ as cli
from qwen_audio_jax.convert import names
from qwen_audio_jax.convert.importer import fresh_parameters
from qwen_audio_jax.convert.tree import expected_shapes, flatten
from qwen_audio_jax.model.params import abstract_params
from qwen_audio_jax.model.qwen_audio import QwenAudio


def _tree_equal(a, b):
  fa, fb = flatten(a), flatten(b)
  assert sorted(fa) == sorted(fb)
  for k in fa:
    x, y = np.asarray(fa[k]), np.asarray(fb[k])
    assert x.dtype == y.dtype and x.shape == y.shape, k
    np.testing.assert_array_equal(x.view(np.uint8), y.view(np.uint8), err_msg=str(k))


def _read_json(path):
  with open(path, encoding="utf-8") as f:
    return json.load(f)


def _assert_same_tensors(dir_a, dir_b):
  """Same tensor names, dtypes and bits in two safetensors checkpoints."""
  with SafetensorsReader(dir_a) as a, SafetensorsReader(dir_b) as b:
    assert a.names() == b.names()
    for name in a.names():
      assert a.dtype_code(name) == b.dtype_code(name), name
      x, y = a.read(name), b.read(name)
      assert x.shape == y.shape, name
      assert x.tobytes() == y.tobytes(), f"{name} differs"


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
  """Tiny HF checkpoints saved with save_pretrained."""
  root = tmp_path_factory.mktemp("sources")
  qwen2 = ref.tiny_qwen2(seed=10, kv_heads=2)
  qwen2.save_pretrained(root / "qwen2", safe_serialization=True)
  qwen2.save_pretrained(root / "qwen2_sharded", safe_serialization=True, max_shard_size="60KB")
  qwen2.to(torch.bfloat16).save_pretrained(root / "qwen2_bf16", safe_serialization=True)
  ref.tiny_qwen2(seed=15, tie=True).save_pretrained(root / "qwen2_tied", safe_serialization=True)
  qwen2_audio = ref.tiny_qwen2_audio(seed=11)
  qwen2_audio.save_pretrained(root / "qwen2_audio", safe_serialization=True)
  whisper = ref.tiny_whisper(seed=12)
  whisper.save_pretrained(root / "whisper", safe_serialization=True)
  official_llm = ref.tiny_qwen2(seed=13, kv_heads=4)
  torch.manual_seed(14)
  tensors = ref.official_state_dict(official_llm, whisper, torch.randn(64, 64), torch.randn(64),
                                    torch.randn(2, 64))
  ref.save_official(str(root / "official"), tensors, ref.official_config(official_llm, whisper))
  return {k: str(root / k) for k in ("qwen2", "qwen2_sharded", "qwen2_bf16", "qwen2_tied",
                                     "qwen2_audio", "whisper", "official")}


@pytest.fixture(scope="module")
def qwen2_converted(sources, tmp_path_factory):
  out = str(tmp_path_factory.mktemp("qwen2_ours"))
  convert_to_orbax(sources["qwen2"], "qwen2", out, progress=False)
  return out


# ----------------------------------------------------------------------------- round trips


def test_qwen2_round_trip_is_bit_exact_and_loads_in_transformers(sources, qwen2_converted,
                                                                   tmp_path):
  out = str(tmp_path / "hf")
  assert cli.main(["export", "--checkpoint", qwen2_converted, "--layout", "qwen2", "--out", out,
                   "--no-progress"]) == 0
  _assert_same_tensors(sources["qwen2"], out)

  original = Qwen2ForCausalLM.from_pretrained(sources["qwen2"]).eval()
  exported, info = Qwen2ForCausalLM.from_pretrained(out, output_loading_info=True)
  assert not info["missing_keys"] and not info["unexpected_keys"]
  assert exported.config.num_key_value_heads == original.config.num_key_value_heads
  ids = torch.tensor([[3, 14, 15, 92, 65, 35]])
  with torch.no_grad():
    torch.testing.assert_close(exported.eval()(ids).logits, original(ids).logits, rtol=0, atol=0)


def test_qwen2_audio_round_trip_is_bit_exact_and_loads_in_transformers(sources, tmp_path):
  ours, hf = str(tmp_path / "ours"), str(tmp_path / "hf")
  assert cli.main(["--source", sources["qwen2_audio"], "--layout", "qwen2_audio", "--out", ours,
                   "--no-progress"]) == 0
  export_checkpoint(ours, "qwen2_audio", hf, progress=False)
  _assert_same_tensors(sources["qwen2_audio"], hf)
  model, info = Qwen2AudioForConditionalGeneration.from_pretrained(hf, output_loading_info=True)
  assert not info["missing_keys"] and not info["unexpected_keys"]
  assert model.config.audio_token_id == ref.QWEN2_AUDIO_TOKENS["audio"]
  assert model.config.audio_config.num_mel_bins == 128


def test_bfloat16_checkpoint_round_trips_bit_exact(sources, tmp_path):
  ours = str(tmp_path / "ours")
  convert_to_orbax(sources["qwen2_bf16"], "qwen2", ours, progress=False)  # stored as float32
  assert load_model_config(ours).param_dtype == "float32"
  export_checkpoint(ours, "qwen2", str(tmp_path / "hf"), dtype="bfloat16", progress=False)
  _assert_same_tensors(sources["qwen2_bf16"], str(tmp_path / "hf"))

  params, config, _ = convert_checkpoint(sources["qwen2"], "qwen2", dtype="bfloat16",
                                         progress=False)
  assert config.param_dtype == "bfloat16"
  embed = params["llm"]["embed"]
  assert embed.dtype == jnp.bfloat16
  source = load_file(os.path.join(sources["qwen2"], "model.safetensors"))
  np.testing.assert_array_equal(embed, source["model.embed_tokens.weight"].astype(jnp.bfloat16))


def test_tied_qwen2_round_trips_without_lm_head(sources, tmp_path):
  ours, hf = str(tmp_path / "ours"), str(tmp_path / "hf")
  convert_to_orbax(sources["qwen2_tied"], "qwen2", ours, progress=False)
  assert load_model_config(ours).llm.tie_embeddings
  export_checkpoint(ours, "qwen2", hf, progress=False)
  _assert_same_tensors(sources["qwen2_tied"], hf)
  with open(os.path.join(hf, "config.json")) as f:
    assert json.load(f)["tie_word_embeddings"] is True


def test_sharded_checkpoint_converts_and_exports_sharded(sources, tmp_path):
  assert os.path.exists(os.path.join(sources["qwen2_sharded"], "model.safetensors.index.json"))
  shards = [f for f in os.listdir(sources["qwen2_sharded"]) if f.endswith(".safetensors")]
  assert len(shards) > 2
  sharded, _, _ = convert_checkpoint(sources["qwen2_sharded"], "qwen2", progress=False)
  single, _, _ = convert_checkpoint(sources["qwen2"], "qwen2", progress=False)
  _tree_equal(sharded, single)

  ours, hf = str(tmp_path / "ours"), str(tmp_path / "hf")
  convert_to_orbax(sources["qwen2_sharded"], "qwen2", ours, progress=False)
  files = export_checkpoint(ours, "qwen2", hf, max_shard_size="60KB", progress=False)
  assert any(f.endswith("model.safetensors.index.json") for f in files)
  with open(os.path.join(hf, "model.safetensors.index.json")) as f:
    index = json.load(f)
  assert len(set(index["weight_map"].values())) > 2
  _assert_same_tensors(sources["qwen2"], hf)


def test_memory_mapped_conversion_matches_and_cleans_up(sources, tmp_path):
  in_memory, _, _ = convert_checkpoint(sources["qwen2"], "qwen2", progress=False)
  mapped, _, _ = convert_checkpoint(sources["qwen2"], "qwen2", progress=False,
                                    scratch_dir=str(tmp_path), memory_limit_bytes=0)
  assert isinstance(mapped["llm"]["embed"], np.memmap)
  assert not os.listdir(tmp_path)  # scratch files are unlinked once mapped
  _tree_equal(jax.tree.map(np.array, mapped), in_memory)

  out = str(tmp_path / "ours")
  convert_to_orbax(sources["qwen2"], "qwen2", out, progress=False, memory_limit_bytes=0)
  assert sorted(os.listdir(out)) == ["conversion.json", "model_config.json", "params"]
  _tree_equal(jax.tree.map(np.asarray, load_params(out)), in_memory)


# ----------------------------------------------------------------------------- bad checkpoints


def _corrupt_copy(source, dest, edit):
  shutil.copytree(source, dest)
  path = os.path.join(dest, "model.safetensors")
  tensors = load_file(path)
  edit(tensors)
  save_file(tensors, path, metadata={"format": "pt"})
  return dest


def test_truncated_file_is_named(sources, tmp_path):
  dest = str(tmp_path / "truncated")
  shutil.copytree(sources["qwen2"], dest)
  path = os.path.join(dest, "model.safetensors")
  with open(path, "r+b") as f:
    f.truncate(os.path.getsize(path) // 2)
  with pytest.raises(CheckpointError, match="model.safetensors"):
    convert_checkpoint(dest, "qwen2", progress=False)


def test_truncated_shard_is_named(sources, tmp_path):
  dest = str(tmp_path / "sharded")
  shutil.copytree(sources["qwen2_sharded"], dest)
  shard = sorted(f for f in os.listdir(dest) if f.endswith(".safetensors"))[1]
  with open(os.path.join(dest, shard), "r+b") as f:
    f.truncate(100)
  with pytest.raises(CheckpointError, match=shard):
    convert_checkpoint(dest, "qwen2", progress=False)


def test_index_with_missing_shard_is_named(sources, tmp_path):
  dest = str(tmp_path / "sharded")
  shutil.copytree(sources["qwen2_sharded"], dest)
  shard = sorted(f for f in os.listdir(dest) if f.endswith(".safetensors"))[0]
  os.remove(os.path.join(dest, shard))
  with pytest.raises(CheckpointError, match=shard):
    convert_checkpoint(dest, "qwen2", progress=False)


def test_wrong_shape_names_tensor_and_shapes(sources, tmp_path):
  name = "model.layers.1.self_attn.k_proj.weight"

  def edit(t):
    t[name] = np.ascontiguousarray(t[name].T)  # [32, 64] -> [64, 32]

  dest = _corrupt_copy(sources["qwen2"], str(tmp_path / "bad"), edit)
  with pytest.raises(CheckpointError, match=r"k_proj.weight.*\[64, 32\], expected \[32, 64\]"):
    convert_checkpoint(dest, "qwen2", progress=False)


def test_missing_tensor_is_named(sources, tmp_path):
  dest = _corrupt_copy(sources["qwen2"], str(tmp_path / "bad"),
                       lambda t: t.pop("model.layers.0.mlp.up_proj.weight"))
  with pytest.raises(CheckpointError, match=r"'model\.layers\.0\.mlp\.up_proj\.weight' is missing"):
    convert_checkpoint(dest, "qwen2", progress=False)


def test_unexpected_tensor_is_named(sources, tmp_path):
  def edit(t):
    t["model.layers.0.self_attn.extra.weight"] = np.zeros((2, 2), np.float32)

  dest = _corrupt_copy(sources["qwen2"], str(tmp_path / "bad"), edit)
  with pytest.raises(CheckpointError,
                     match=r"unexpected tensor 'model\.layers\.0\.self_attn\.extra"):
    convert_checkpoint(dest, "qwen2", progress=False)


def test_wrong_layout_and_missing_config_are_explained(sources, tmp_path):
  with open(os.path.join(sources["qwen2_audio"], "config.json")) as f:
    qwen2_audio_config = config_from_hf_dict(json.load(f), "qwen2_audio")
  with pytest.raises(CheckpointError, match="unexpected tensor.*wrong --layout"):
    convert_checkpoint(sources["qwen2"], "qwen2_audio", config=qwen2_audio_config, progress=False)
  dest = str(tmp_path / "no_config")
  shutil.copytree(sources["qwen2"], dest)
  os.remove(os.path.join(dest, "config.json"))
  with pytest.raises(CheckpointError, match="config.json is missing"):
    convert_checkpoint(dest, "qwen2", progress=False)


def test_official_checkpoint_without_positions_gets_whisper_sinusoids(sources, tmp_path):
  name = "transformer.audio.positional_embedding"
  dest = _corrupt_copy(sources["official"], str(tmp_path / "no_positions"), lambda t: t.pop(name))
  params, _, report = convert_checkpoint(dest, "qwen_audio", progress=False)
  assert "sinusoids" in report.fresh["audio_encoder/positional_embedding"]
  stored = load_file(os.path.join(sources["official"], "model.safetensors"))[name]
  # Whisper's own buffer computes the angles (up to 1500 rad) in float32: ~1e-4 apart from ours.
  np.testing.assert_allclose(params["audio_encoder"]["positional_embedding"], stored, atol=2e-4)


def test_official_config_requires_its_fields():
  base = {"vocab_size": 64, "hidden_size": 32, "kv_channels": 8, "intermediate_size": 128,
          "num_hidden_layers": 1, "num_attention_heads": 4, "seq_length": 2048,
          "rotary_emb_base": 10000, "layer_norm_epsilon": 1e-6, "use_dynamic_ntk": True,
          "use_logn_attn": True,
          "audio": {"n_mels": 80, "n_ctx": 1500, "n_state": 16, "n_head": 2, "n_layer": 1,
                    "output_dim": 32, "avg_pool": True, "add_audio_bos_eos_token": True}}
  config = config_from_hf_dict(base, "qwen_audio")
  assert config.llm.mlp_dim == 64 and config.llm.head_dim == 8 and config.encoder.mlp_dim == 64
  for field in ("kv_channels", "seq_length"):
    broken = {k: v for k, v in base.items() if k != field}
    with pytest.raises(CheckpointError, match=f"'{field}' is missing"):
      config_from_hf_dict(broken, "qwen_audio")
  broken = dict(base, audio={k: v for k, v in base["audio"].items() if k != "output_dim"})
  with pytest.raises(CheckpointError, match="'output_dim' is missing"):
    config_from_hf_dict(broken, "qwen_audio")


def test_sparse_qwen2_audio_config_takes_transformers_defaults():
  # The released Qwen2-Audio-7B config.json lists only a few text_config fields.
  released = {"architectures": ["Qwen2AudioForConditionalGeneration"], "model_type": "qwen2_audio",
              "audio_token_index": 151646,
              "audio_config": {"model_type": "qwen2_audio_encoder", "num_mel_bins": 128,
                               "encoder_layers": 32, "encoder_attention_heads": 20,
                               "encoder_ffn_dim": 5120, "d_model": 1280},
              "text_config": {"intermediate_size": 11008, "max_position_embeddings": 8192,
                              "model_type": "qwen2", "rms_norm_eps": 1e-5, "vocab_size": 156032,
                              "rope_theta": 10000}}
  config = config_from_hf_dict(released, "qwen2_audio", dtype="bfloat16")
  llm = config.llm
  assert (llm.width, llm.depth, llm.heads, llm.kv_heads, llm.head_dim) == (4096, 32, 32, 32, 128)
  assert (llm.mlp_dim, llm.vocab_size, llm.rms_norm_eps) == (11008, 156032, 1e-5)
  assert config.encoder.output_dim == 4096 and config.encoder.n_mels == 128
  assert config.param_dtype == "bfloat16"
  # ... which is the qwen2_audio_7b preset, field for field.
  from qwen_audio_jax.config import QWEN2_AUDIO_7B  # pylint: disable=g-import-not-at-top
  assert config.llm == QWEN2_AUDIO_7B.llm
  assert config.encoder == QWEN2_AUDIO_7B.encoder


# ----------------------------------------------------------------------------- Orbax format


def test_load_params_restores_both_layouts_and_shardings(qwen2_converted, tmp_path):
  params = load_params(qwen2_converted)
  config = load_model_config(qwen2_converted)
  reference, _, _ = convert_checkpoint(
      _read_json(os.path.join(qwen2_converted, "conversion.json"))["source"], "qwen2",
      progress=False)
  _tree_equal(jax.tree.map(np.asarray, params), reference)
  resaved = save_checkpoint(str(tmp_path / "resaved"), params, config)  # jax leaves
  _tree_equal(jax.tree.map(np.asarray, load_params(resaved)), reference)

  unrolled_config = dataclasses.replace(config, scan_layers=False)
  unrolled = load_params(qwen2_converted, config=unrolled_config)
  assert "block_1" in unrolled["llm"]["layers"] and "block" not in unrolled["llm"]["layers"]
  _tree_equal(jax.tree.map(np.asarray, unrolled), unstack_layers(reference))

  mesh = sharding.make_mesh((1, 4, 2))
  for cfg in (config, unrolled_config):
    shardings = sharding.param_shardings(abstract_params(cfg), mesh)
    restored = load_params(qwen2_converted, config=cfg, shardings=shardings)
    want = flatten(shardings)
    for path, leaf in flatten(restored).items():
      assert isinstance(leaf.sharding, NamedSharding)
      assert leaf.sharding.is_equivalent_to(want[path], leaf.ndim), path
    embed_spec = flatten(restored)[("llm", "embed")].sharding.spec
    assert embed_spec == want[("llm", "embed")].spec and "tensor" in str(embed_spec)

  # Same logits from the scanned and the unrolled parameters.
  llm_only = dataclasses.replace(config, encoder=EncoderConfig(
      n_mels=8, width=16, depth=1, heads=2, mlp_dim=32, output_dim=None, audio_bos_eos=False))
  ids = jnp.array([[5, 6, 7, 8]], jnp.int32)
  scanned_logits = jax.jit(QwenAudio(llm_only).apply)({"params": params}, ids)
  unrolled_logits = jax.jit(QwenAudio(dataclasses.replace(llm_only, scan_layers=False)).apply)(
      {"params": unrolled}, ids)
  np.testing.assert_allclose(scanned_logits, unrolled_logits, rtol=1e-6, atol=1e-6)


def test_load_params_casts_to_the_configured_dtype(qwen2_converted):
  config = dataclasses.replace(load_model_config(qwen2_converted), param_dtype="bfloat16")
  params = load_params(qwen2_converted, config=config)
  reference = load_params(qwen2_converted)
  embed = params["llm"]["embed"]
  assert embed.dtype == jnp.bfloat16
  np.testing.assert_array_equal(embed, reference["llm"]["embed"].astype(jnp.bfloat16))


def test_load_params_rejects_a_mismatched_config(qwen2_converted):
  config = load_model_config(qwen2_converted)
  wrong = dataclasses.replace(config, llm=dataclasses.replace(config.llm, vocab_size=300))
  with pytest.raises(CheckpointError, match=r"llm/embed has shape \(512, 64\).*\(300, 64\)"):
    load_params(qwen2_converted, config=wrong)


def test_stack_and_unstack_are_inverse():
  rng = np.random.default_rng(0)
  tree = {"encoder": {"blocks": {"block": {"w": rng.normal(size=(3, 2, 4)),
                                           "ln": {"scale": rng.normal(size=(3, 4))}}},
                      "conv": {"kernel": rng.normal(size=(3, 5))}}}
  unrolled = unstack_layers(tree)
  assert sorted(unrolled["encoder"]["blocks"]) == ["block_0", "block_1", "block_2"]
  np.testing.assert_array_equal(unrolled["encoder"]["blocks"]["block_2"]["w"],
                                tree["encoder"]["blocks"]["block"]["w"][2])
  np.testing.assert_array_equal(unrolled["encoder"]["conv"]["kernel"],
                                tree["encoder"]["conv"]["kernel"])
  _tree_equal(stack_layers(unrolled), tree)
  with pytest.raises(ValueError, match="numbered"):
    stack_layers({"block_0": {"w": np.zeros(2)}, "block_2": {"w": np.zeros(2)}})


def test_model_config_round_trips_and_rejects_unknown_fields(qwen2_converted, tmp_path):
  config = load_model_config(qwen2_converted)
  path = save_model_config(config, str(tmp_path))
  assert load_model_config(path) == config
  data = _read_json(path)
  data["llm"]["n_experts"] = 8
  with open(path, "w", encoding="utf-8") as f:
    json.dump(data, f)
  with pytest.raises(ValueError, match="unknown field 'n_experts' for LLMConfig"):
    load_model_config(path)


# ----------------------------------------------------------------------------- combining


def test_whisper_plus_official_llm_makes_a_stage1_initialisation(sources, tmp_path, capsys):
  out = str(tmp_path / "stage1")
  assert cli.main(["--source", sources["official"], "--layout", "qwen", "--out", out,
                   "--combine-encoder", sources["whisper"], "--encoder-layout", "whisper",
                   "--seed", "3", "--no-progress"]) == 0
  printed = capsys.readouterr().out
  assert "freshly initialised 3 parameters" in printed and "audio_bos_eos" in printed
  n_audio_tensors = sum(k.startswith("transformer.audio.")
                        for k in SafetensorsReader(sources["official"]).names())
  assert f"{n_audio_tensors} x audio encoder of a Qwen-Audio checkpoint" in printed

  config = load_model_config(out)
  assert config.encoder.avg_pool and config.encoder.audio_bos_eos
  assert config.encoder.output_dim == config.llm.width == 64
  info = _read_json(os.path.join(out, "conversion.json"))
  assert sorted(info["fresh"]) == ["audio_bos_eos", "audio_encoder/proj/bias",
                                   "audio_encoder/proj/kernel"]
  assert info["parts"] == ["audio_encoder", "audio_bos_eos", "llm"]

  params = load_params(out)
  whisper, _, _ = convert_checkpoint(sources["whisper"], "whisper", progress=False)
  official, _, _ = convert_checkpoint(sources["official"], "qwen", progress=False)
  _tree_equal(jax.tree.map(np.asarray, params["llm"]), official["llm"])
  encoder = jax.tree.map(np.asarray, params["audio_encoder"])
  proj = encoder.pop("proj")
  _tree_equal(encoder, whisper["audio_encoder"])
  fresh = fresh_parameters(
      {p: s for p, s in expected_shapes(config, ["audio_encoder", "audio_bos_eos"]).items()
       if p[-2:] in (("proj", "kernel"), ("proj", "bias")) or p == ("audio_bos_eos",)},
      seed=3, dtype="float32")
  np.testing.assert_array_equal(proj["kernel"], fresh[("audio_encoder", "proj", "kernel")])
  np.testing.assert_array_equal(params["audio_bos_eos"], fresh[("audio_bos_eos",)])
  assert 0.015 < np.std(proj["kernel"]) < 0.025 and not np.any(proj["bias"])

  # The whole model runs on the combined parameters.
  mel = np.random.default_rng(0).normal(size=(1, 1, 80, 3000)).astype(np.float32)
  logits = jax.jit(QwenAudio(config).apply)(
      {"params": params}, jnp.arange(60, dtype=jnp.int32)[None], audio_mel=jnp.asarray(mel),
      audio_lengths=jnp.array([[16000]]), audio_starts=jnp.array([[2]]))
  assert logits.shape == (1, 60, 512) and bool(jnp.all(jnp.isfinite(logits)))


def test_qwen2_plus_whisper_gets_qwen2_audio_output_side(sources, tmp_path):
  out = str(tmp_path / "stage1")
  report = convert_to_orbax(sources["qwen2"], "qwen2", out, combine_encoder=sources["whisper"],
                            progress=False)
  config = load_model_config(out)
  assert not config.encoder.audio_bos_eos and not config.encoder.cut_mel_to_batch_max
  assert sorted(report.fresh) == ["audio_encoder/proj/bias", "audio_encoder/proj/kernel"]
  with pytest.raises(FileExistsError, match="already exists"):
    convert_to_orbax(sources["qwen2"], "qwen2", out, progress=False)
  with pytest.raises(ValueError, match="LLM-only layout"):
    convert_to_orbax(sources["qwen2_audio"], "qwen2_audio", str(tmp_path / "x"),
                     combine_encoder=sources["whisper"], progress=False)


# ----------------------------------------------------------------------------- name tables


_SMALL_HF_CONFIGS = {
    "whisper": {"num_mel_bins": 8, "d_model": 16, "encoder_layers": 2,
                "encoder_attention_heads": 2, "encoder_ffn_dim": 32},
    "qwen2": {"vocab_size": 64, "hidden_size": 32, "intermediate_size": 64,
              "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2},
    "qwen": {"vocab_size": 64, "hidden_size": 32, "kv_channels": 8, "intermediate_size": 128,
             "num_hidden_layers": 2, "num_attention_heads": 4, "seq_length": 2048,
             "rotary_emb_base": 10000, "layer_norm_epsilon": 1e-6, "use_dynamic_ntk": False,
             "use_logn_attn": False},
}
_SMALL_HF_CONFIGS["qwen_audio"] = dict(
    _SMALL_HF_CONFIGS["qwen"],
    audio={"n_mels": 8, "n_ctx": 1500, "n_state": 16, "n_head": 2, "n_layer": 2,
           "output_dim": 32, "avg_pool": True, "add_audio_bos_eos_token": True})
_SMALL_HF_CONFIGS["qwen2_audio"] = {"text_config": _SMALL_HF_CONFIGS["qwen2"],
                                    "audio_config": _SMALL_HF_CONFIGS["whisper"]}


@pytest.mark.parametrize("layout", names.LAYOUTS)
def test_rule_tables_are_exact_inverses(layout):
  rng = np.random.default_rng(1)
  config = config_from_hf_dict(_SMALL_HF_CONFIGS[layout], layout)
  parts = [p for p in names.LAYOUT_PARTS[layout]
           if p != "audio_bos_eos" or config.encoder.audio_bos_eos]
  expected = expected_shapes(config, parts)
  rules = names.rules_for_tree(names.rules_for_layout(layout), expected)
  assert sorted({t for r in rules for t in r.targets}) == sorted(expected)
  for rule in rules:
    shapes = [expected[t][1:] if rule.layered else expected[t] for t in rule.targets]
    source = rng.normal(size=rule.source_shape(shapes)).astype(np.float32)
    ours = rule.to_ours(source, shapes)
    assert [o.shape for o in ours] == [tuple(s) for s in shapes]
    np.testing.assert_array_equal(rule.to_source(ours), source)
