"""Training configs: presets load and validate, bad configs are refused with messages naming the
key, and the step-FLOPs formula matches XLA's own count."""

import importlib.util
import os

import flax.linen as nn
import jax
import numpy as np
import pytest

from qwen_audio_jax.config import get_preset
from qwen_audio_jax.model.params import count_params, example_inputs
from qwen_audio_jax.model.qwen_audio import QwenAudio
from qwen_audio_jax.training import flops, initialization, metrics, validation

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_config(name, preset):
  spec = importlib.util.spec_from_file_location(f"config_{name}",
                                                os.path.join(REPO, "configs", f"{name}.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(preset)


def problems_of(config, devices=8):
  with pytest.raises(validation.ConfigError) as info:
    validation.validate(config, device_count=devices, process_count=1)
  return info.value.problems


@pytest.mark.parametrize("name,devices", [("pretrain", 256), ("sft", 32)])
def test_presets_validate(name, devices):
  demo = load_config(name, "demo")
  validation.validate(demo, device_count=1, process_count=1)
  assert demo.stage == name and demo.model.preset == "tiny"
  full = load_config(name, "qwen_audio")
  validation.validate(full, device_count=devices, process_count=devices // 8)
  assert initialization.model_config_from(full).llm.width == 4096
  assert full.data.batch_size == {"pretrain": 2048, "sft": 256}[name]


def test_unknown_preset_of_config_file():
  with pytest.raises(ValueError, match="unknown preset 'big'"):
    load_config("pretrain", "big")


def test_mesh_that_does_not_fit_the_devices():
  c = load_config("pretrain", "demo")
  c.mesh.fsdp = 3
  (message,) = [p for p in problems_of(c) if "mesh" in p]
  assert message.startswith("config.mesh.fsdp=3:") and "8 available devices" in message
  c.mesh.fsdp, c.mesh.data, c.mesh.tensor = 2, -1, -1
  assert any(p.startswith("config.mesh.tensor=-1: only one mesh axis") for p in problems_of(c))


def test_batch_not_divisible_by_data_times_fsdp():
  c = load_config("sft", "demo")
  c.mesh.data, c.mesh.fsdp = 2, 4
  c.data.batch_size = 12
  assert any(p.startswith("config.data.batch_size=12: not divisible by the mesh's batch shards "
                          "data x fsdp = 2 x 4 = 8") for p in problems_of(c))


def test_grad_accum_must_divide_the_per_device_batch():
  c = load_config("pretrain", "demo")
  c.data.batch_size = c.eval_data.batch_size = 16
  c.optim.grad_accum_steps = 3
  assert any(p.startswith("config.optim.grad_accum_steps=3: does not divide the per-device batch 2")
             for p in problems_of(c))


def test_missing_paths_are_named(tmp_path):
  c = load_config("pretrain", "demo")
  c.init.whisper = str(tmp_path / "no_whisper")
  c.data.mixture.asr.paths = str(tmp_path / "nothing.jsonl")
  problems = problems_of(c, devices=1)
  assert any(p.startswith("config.init.whisper=") and "no such file" in p for p in problems)
  assert any(p.startswith("config.data.mixture.asr.paths:") and "does not exist" in p
             for p in problems)


def test_unknown_model_preset_and_override():
  c = load_config("pretrain", "demo")
  c.model.preset = "qwen_audio_70b"
  assert any(p.startswith("config.model.preset='qwen_audio_70b': unknown preset")
             for p in problems_of(c, devices=1))
  c = load_config("pretrain", "demo")
  c.model.overrides.llm = {"depht": 1}
  assert any(p.startswith("config.model.overrides.llm.depht: not a field of LLMConfig")
             for p in problems_of(c, devices=1))


def test_stage_rules():
  c = load_config("pretrain", "demo")
  c.trainable = r"^audio_encoder/|^llm/"
  c.train_llm_in_pretrain = False
  (message,) = [p for p in problems_of(c, devices=1) if "LLM frozen" in p]
  assert message.startswith("config.trainable=") and "llm/" in message
  assert "config.train_llm_in_pretrain=True" in message
  c.train_llm_in_pretrain = True  # a model without a pretrained LLM (the demo) trains it too
  validation.validate(c, device_count=1, process_count=1)
  c = load_config("pretrain", "demo")
  c.lora.rank = 8
  assert any(p.startswith("config.lora.rank=8: LoRA adapts the LLM") for p in
             problems_of(c, devices=1))
  c = load_config("sft", "demo")
  c.trainable = r"^llm/|^audio_encoder/blocks/"
  assert any(p.startswith("config.trainable=") and "keeps the audio encoder frozen" in p
             for p in problems_of(c, devices=1))
  c = load_config("sft", "demo")
  c.trainable = r"^nothing/"
  assert any(p.startswith("config.trainable='^nothing/': matches no parameter")
             for p in problems_of(c, devices=1))


def test_specaugment_optimizer_and_loop_keys():
  c = load_config("pretrain", "demo")
  c.specaugment.max_freq_width = -2
  c.optim.schedule = "exponential"
  c.nonfinite = "ignore"
  c.checkpoint.keep_best_metric = "loss"
  c.precompile = "all"
  problems = problems_of(c, devices=1)
  for prefix in ("config.specaugment: max_freq_width", "config.optim.schedule='exponential'",
                 "config.nonfinite='ignore'", "config.checkpoint.keep_best_metric='loss'",
                 "config.precompile='all': expected one of ('largest', 'first_batch')"):
    assert any(p.startswith(prefix) for p in problems), (prefix, problems)


def test_wandb_without_the_package_is_refused_early(monkeypatch):
  real_find_spec = validation.importlib.util.find_spec
  monkeypatch.setattr(validation.importlib.util, "find_spec",
                      lambda name, *a: None if name == "wandb" else real_find_spec(name, *a))
  c = load_config("pretrain", "demo")
  c.wandb = True
  assert "config.wandb=True: the wandb package is not installed (pip install wandb)" in (
      problems_of(c, devices=1))


def test_all_problems_reported_together():
  c = load_config("sft", "demo")
  c.total_steps = 0
  c.optim.learning_rate = -1.0
  c.data.n_mels = 128
  problems = problems_of(c, devices=1)
  assert any(p.startswith("config.total_steps=0") for p in problems)
  assert any(p.startswith("config.optim.learning_rate=-1.0") for p in problems)
  assert any(p.startswith("config.data.n_mels=128: the model's encoder takes 80") for p in problems)


def test_model_overrides_reach_nested_fields():
  c = load_config("pretrain", "demo")
  c.model.overrides.dtype = "bfloat16"
  c.model.overrides.llm = {"depth": 1}
  model_config = initialization.model_config_from(c)
  assert model_config.dtype == "bfloat16" and model_config.llm.depth == 1
  assert model_config.llm.width == get_preset("tiny").llm.width


def _xla_flops(fn, *args):
  cost = jax.jit(fn).lower(*args).compile().cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return float(cost["flops"])


def test_llm_weight_count_matches_the_model():
  config = get_preset("tiny")
  tree = nn.unbox(jax.eval_shape(lambda: QwenAudio(config).init(
      jax.random.key(0), **_inputs(config))["params"]))
  llm = tree["llm"]
  matmul_entries = sum(int(np.prod(x.shape)) for path, x in
                       jax.tree_util.tree_flatten_with_path(llm)[0]
                       if getattr(path[-1], "key", "") in ("kernel", "lm_head"))
  assert flops.llm_weight_entries(config) == matmul_entries
  assert count_params(config)["llm"] > matmul_entries  # embeddings, norms, biases on top


def _inputs(config, batch=1, length=8):
  inputs = example_inputs(config, batch=batch, length=length)
  return dict(input_ids=inputs.pop("input_ids"), **inputs)


def test_forward_flops_match_xla_cost_analysis():
  """Frozen everything (forward only): our count vs XLA's, within 10% (XLA adds elementwise).

  Layers unrolled and attention through XLA's fused call: XLA's cost analysis counts a loop's
  body once (a scan over layers, or over the key blocks of the flash attention).
  """
  config = get_preset("tiny", scan_layers=False, attention_impl="xla")
  model = QwenAudio(config)
  params = model.init(jax.random.key(0), **_inputs(config))["params"]
  inputs = _inputs(config, batch=2, length=64)
  measured = _xla_flops(lambda p, i: model.apply({"params": p}, **i), params, inputs)
  ours = flops.step_flops(config, rows=2, text_length=64, audio_slots=1,
                          trained=flops.TrainedParts(audio=False, encoder_body=False, llm=False))
  assert ours["total"] == pytest.approx(measured, rel=0.10)


def test_training_flops_terms():
  config = get_preset("tiny")
  kw = dict(rows=4, text_length=128, audio_slots=1)
  none = flops.step_flops(config, **kw, trained=flops.TrainedParts(False, False, False))
  stage1 = flops.step_flops(config, **kw, trained=flops.TrainedParts(True, True, False))
  stage2 = flops.step_flops(config, **kw, trained=flops.TrainedParts(False, False, True))
  n, t = flops.llm_weight_entries(config), 4 * 128
  l = config.llm
  attention = 4 * 4 * 128**2 * l.heads * l.head_dim * l.depth
  assert none["llm"] == 2 * n * t + attention
  assert stage1["llm"] == 4 * n * t + 3 * attention  # frozen, gradients pass through
  assert stage2["llm"] == 6 * n * t + 3 * attention  # the classic 6 N D
  assert stage1["encoder"] == 3 * none["encoder"]
  assert stage2["encoder"] == none["encoder"]


def test_peak_flops_and_mfu():
  assert flops.peak_flops("cpu") is None
  assert flops.mfu(1e12, 1.0, 8, "cpu") is None
  assert flops.peak_flops("TPU v4") == 275e12
  assert flops.peak_flops("NVIDIA H100 80GB HBM3") == 989e12
  assert flops.mfu(275e12, 2.0, 4, "TPU v4") == pytest.approx(1 / 8)


def test_metric_windows():
  steps = [metrics.flatten_step_metrics(
      {"loss": np.float32(v), "tokens": np.int32(10), "task_loss": np.array([v, 2 * v]),
       "task_target_tokens": np.array([1.0, w])}, ["asr", "event"])
      for v, w in ((1.0, 0.0), (3.0, 2.0))]
  window = metrics.reduce_window(steps)
  # Per-task losses are weighted by the task's target tokens (event is absent from step 1).
  assert window == {"loss": 2.0, "tokens": 20.0, "task_loss/asr": 2.0, "task_loss/event": 6.0,
                    "task_target_tokens/asr": 2.0, "task_target_tokens/event": 2.0}
  with pytest.raises(ValueError, match="metric 'odd' has shape"):
    metrics.flatten_step_metrics({"odd": np.zeros((3, 2))}, ["a", "b"])
  assert metrics.format_duration(3725) == "1:02:05"


def test_multi_process_launches_are_recognised():
  from qwen_audio_jax.training import distributed
  assert distributed.launched_processes({}) is None
  assert distributed.launched_processes({"SLURM_NTASKS": "1", "TPU_WORKER_HOSTNAMES": "h0"}) is None
  assert "SLURM_NTASKS=4" in distributed.launched_processes({"SLURM_NTASKS": "4"})
  assert "several hosts" in distributed.launched_processes({"TPU_WORKER_HOSTNAMES": "h0,h1"})
  assert distributed.launched_processes({"JAX_COORDINATOR_ADDRESS": "10.0.0.1:1234"})
  assert distributed.initialize("false", {"SLURM_NTASKS": "4"}) is None
  assert distributed.initialize("auto", {}) is None
  with pytest.raises(ValueError, match="--distributed='yes'"):
    distributed.initialize("yes", {})


def test_default_workdir_names_config_and_preset():
  from qwen_audio_jax import train
  assert train.default_workdir("configs/pretrain.py:demo") == os.path.join("workdir", "pretrain_demo")
  assert train.default_workdir("/abs/configs/sft.py") == os.path.join("workdir", "sft")
