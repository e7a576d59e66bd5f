"""The planner: slice names, the real train step compiled for a virtual TPU slice (libtpu, no
TPU), the same memory figures the trainer logs when planned for this machine's devices, the
multislice mesh, the search and the GPU estimate."""

import logging
import re
import subprocess
import sys

import ml_collections
import pytest

from qwen_audio_jax import train
from qwen_audio_jax.model import params as params_lib
from qwen_audio_jax.plan import gpu_estimate, hardware, planner, report, search
from qwen_audio_jax.training import initialization

from _train_configs import narrow, REPO, load_config


def small_config(stage="pretrain", batch=8):
  c = load_config(stage)
  narrow(c)
  c.data.batch_size = batch
  c.data.text_buckets = (64,)
  c.eval_every = 0
  c.checkpoint.keep_best_metric = ""
  return c


@pytest.mark.parametrize("name,chips,topology,bounds,hosts", [
    ("v4-8", 4, "v4:2x2x1", (2, 2, 1), 1),
    ("v4-32", 16, "v4:2x2x4", (2, 2, 1), 4),
    ("v5p-64", 32, "v5p:2x4x4", (2, 2, 1), 8),
    ("v5p-1024", 512, "v5p:8x8x8", (2, 2, 1), 128),
    ("v5e-16", 16, "v5e:4x4", (2, 2, 1), 4),
    ("v5litepod-4", 4, "v5e:2x2", (2, 2, 1), 1),
    ("v6e-8", 8, "v6e:2x4", (2, 4, 1), 1),
    ("v6e-256", 256, "v6e:16x16", (2, 2, 1), 64),
])
def test_slice_names_map_to_topologies(name, chips, topology, bounds, hosts):
  tpu = hardware.parse_tpu(name)
  assert (tpu.chips, tpu.topology_name, tpu.chips_per_host_bounds, tpu.hosts) == (
      chips, topology, bounds, hosts)


@pytest.mark.parametrize("name,message", [
    ("v9-8", "unknown TPU slice.*v4.*v5e.*v5p.*v6e"),
    ("v5p-7", "count TensorCores"),
    ("v5e-12", "power-of-two"),
    ("h100", "unknown TPU slice"),
])
def test_bad_slice_names_are_refused(name, message):
  with pytest.raises(ValueError, match=message):
    hardware.parse_tpu(name)


@pytest.fixture(scope="module")
def v5e2_plan():
  """The small config's train step compiled once for a virtual v5e-2 (the smallest slice with
  more than one mesh layout); the tests below read it, and the search finds it again."""
  return planner.plan_tpu(small_config(batch=4), "v5e-2")


def test_virtual_tpu_plan_compiles_the_train_step(v5e2_plan):
  plan = v5e2_plan
  assert plan.devices == 2 and plan.mesh == {"data": 2, "fsdp": 1, "tensor": 1}
  assert plan.hbm_bytes == 16 * 2**30 and plan.fits
  # The state is an argument and donated: its outputs alias its inputs.
  assert plan.params_bytes > 0 and plan.opt_state_bytes > 0
  assert plan.argument_bytes >= plan.params_bytes + plan.opt_state_bytes
  assert 0 < plan.alias_bytes <= plan.output_bytes
  assert plan.total_bytes == (plan.argument_bytes + plan.output_bytes - plan.alias_bytes
                              + plan.temp_bytes + plan.code_bytes)
  # Both FLOP counts are there. XLA counts a loop body once; the plan adds what the loops
  # repeat (here the chunked loss's two chunks, one loop: the loss forms its gradient in the
  # forward pass, so its backward has no loop; tests/test_hlo_loops.py).
  assert plan.xla_flops > 0 and plan.analytic_flops > 0
  assert plan.loop_trip_counts == (2,) and plan.unknown_loops == 0
  assert plan.executed_xla_flops > plan.xla_flops
  assert plan.prediction == "roofline" and plan.predicted_seconds > 0 and 0 < plan.mfu <= 1
  text = report.format_plan(plan)
  assert "fits" in text and "v5e-2" in text and "roofline" in text


def test_plan_for_local_devices_matches_the_trainers_log(tmp_path, caplog):
  """The planner builds the trainer's program: the memory the trainer logs at compile time is
  the memory the planner reports for the same config on the same devices."""
  config = small_config()
  config.total_steps = 2
  config.optim.warmup_steps = 1
  config.compilation_cache_dir = str(tmp_path / "cache")
  # The demo compiles its first batch's shape; the largest pair is what the planner plans.
  config.precompile = "largest"
  plan = planner.plan_local(config)
  with caplog.at_level(logging.INFO):
    # Stopped before step 1: the largest pair is compiled ahead of time, before any step.
    train.run(config, str(tmp_path / "run"), stop_at_step=0)
  # The largest (text, audio) pair is compiled first: the 30 s audio bucket the plan reports.
  line = next(r.getMessage() for r in caplog.records
              if re.match(r"train_step \(text length 64, audio 480000 samples\) memory per "
                          r"device", r.getMessage()))
  logged = {k: float(v.replace(",", "")) for k, v in re.findall(r"(\w+) ([\d,.]+) MiB", line)}
  mib = lambda n: round(n / 2**20, 1)  # noqa: E731  (the log's precision)
  assert logged["argument"] == mib(plan.argument_bytes)
  assert logged["output"] == mib(plan.output_bytes)
  assert logged["temp"] == mib(plan.temp_bytes)


def test_multislice_plan_spans_the_slices():
  config = small_config(batch=2)
  config.mesh.dcn_data = 2
  plan = planner.plan_tpu(config, "v5e-1", num_slices=2)
  assert plan.devices == 2 and plan.num_slices == 2 and plan.hosts == 2
  assert plan.mesh["data"] == 2


def test_a_program_too_big_for_the_chip_is_reported_not_raised():
  config = small_config(batch=8)
  config.data.text_buckets = (4096,)
  with config.unlocked():
    config.model.overrides.llm.width = 1024
    config.model.overrides.llm.heads = 8
    config.model.overrides.llm.head_dim = 128
    config.model.overrides.llm.mlp_dim = 4096
    config.model.overrides.llm.depth = 16
    config.model.overrides.encoder.output_dim = 1024
  plan = planner.plan_tpu(config, "v5e-1")
  assert not plan.fits and plan.temp_bytes > plan.hbm_bytes and plan.predicted_seconds is None


def test_search_finds_fitting_layouts_best_first(v5e2_plan):
  # v5e-2's layouts: (data 1, fsdp 2), then (data 2, fsdp 1), the fixture's plan.
  results = search.search(small_config(batch=4), "v5e-2", budget=2)
  assert 1 <= len(results) <= 2
  fitting = [p for p in results if p.fits]
  assert fitting, "the tiny model fits a v5e-2 in some layout"
  speeds = [p.tokens_per_second for p in fitting]
  assert speeds == sorted(speeds, reverse=True)
  table = search.format_table(results)
  assert table.count("\n") == len(results) + 1
  # A candidate the process has compiled already is not compiled again: same figures.
  same = [p for p in results if p.mesh == v5e2_plan.mesh]
  assert same and same[0].as_dict() == v5e2_plan.as_dict()


def test_mesh_layouts_cover_the_slice():
  layouts = search.mesh_layouts(8, heads=32)
  assert (1, 8, 1) == layouts[0]  # least tensor parallelism, most FSDP first
  assert all(d * f * t == 8 for d, f, t in layouts)
  assert {t for _, _, t in layouts} == {1, 2, 4, 8}
  assert all(t != 8 for _, _, t in search.mesh_layouts(8, heads=20))


def test_gpu_estimate_shards_the_state_exactly():
  config = small_config(stage="sft", batch=8)
  model_config = initialization.model_config_from(config)
  total = params_lib.count_params(model_config)["total"] * 4  # float32 master weights
  one = gpu_estimate.estimate_gpu(config, "h100x1")
  assert one.params_bytes == total
  config.mesh.data, config.mesh.fsdp = 1, 8
  eight = gpu_estimate.estimate_gpu(config, "h100x8")
  assert eight.params_bytes < total / 4 and eight.opt_state_bytes < one.opt_state_bytes
  assert eight.step_seconds < one.step_seconds
  assert eight.as_dict()["estimate"] is True


def test_cli_errors_name_the_flag():
  run = subprocess.run(
      [sys.executable, "-m", "qwen_audio_jax.plan", "--config=configs/pretrain.py:demo",
       "--topology=v9-8"], cwd=REPO, capture_output=True, text=True, timeout=300)
  assert run.returncode != 0
  assert "--topology='v9-8': unknown TPU slice" in run.stderr
  run = subprocess.run(
      [sys.executable, "-m", "qwen_audio_jax.plan", "--config=configs/pretrain.py:demo"],
      cwd=REPO, capture_output=True, text=True, timeout=300)
  assert run.returncode != 0 and "exactly one of --topology" in run.stderr
