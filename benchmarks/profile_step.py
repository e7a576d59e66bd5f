"""Where the train step's time goes: a jax.profiler trace of our step, read back per XLA thunk.

    python benchmarks/profile_step.py [--lengths 30s|librispeech|demo] [--layers 4] [--width 512]
                                      [--batch 4] [--steps 2] [--top 25] [--dtype float32]

The same step, model and batches as `train_step.py` (ours only, no reference). After two
untimed steps it traces --steps steps, reads the trace (`jax.profiler.ProfileData`) and maps
every executed thunk to its HLO instruction's `op_name` metadata (from the compiled program's
text), then prints the time per step:

  by part      encoder / encoder attention / LLM / LLM attention / loss / optimizer / other,
               forward or backward (an op_name under `transpose(...)` is the backward pass);
  by kind      matmul (XLA:CPU's YNNPACK or dot thunks; on a GPU cuBLAS calls and gemm
               fusions), convolution, copy / transpose,
               scan stacking (the dynamic slices and updates of scanned layers' saved
               activations), reduction, other elementwise fusions;
  top thunks   the costliest instructions with their op_name.

The parts come from name scopes: 'attention' (`model/attention.py`), 'loss' and 'optimizer'
(`training/step.py`), and the model's module names. Control-flow thunks (while, conditional),
which contain others, are left out so nothing is counted twice. Times are wall times of each
thunk; XLA:CPU runs independent thunks on its threads at once, so their sum can exceed the
step's wall time, and tracing itself slows the step (the wall time is printed with and without).
On a GPU the thunks are the device's kernels, each credited to the HLO instruction that launched
it (the trace's `hlo_op`), and run one after another on the stream: their sum against the wall
time says how long the GPU waits for the host (launches, the Python loop). XLA:GPU replays runs
of kernels as command buffers (CUDA graphs), credited as a whole to `command_buffer_N`; for the
parts, turn them off (`XLA_FLAGS=--xla_gpu_enable_command_buffer=`), which also shows what the
launches cost without them.
"""

import argparse
import collections
import glob
import os
import re
import sys
import tempfile
import time

import flax.linen as nn
import jax
from jax.profiler import ProfileData

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import train_step as train_step_benchmark  # noqa: E402

from qwen_audio_jax.audio import buckets as audio_buckets  # noqa: E402
from qwen_audio_jax.model.params import init_params  # noqa: E402
from qwen_audio_jax.training import optimizer as optimizer_lib  # noqa: E402
from qwen_audio_jax.training import step as step_lib  # noqa: E402

_CONTAINERS = re.compile(r"^(while|cond|conditional|call)(\.\d+)?$")
_RUNTIME = ("ThunkExecutor", "SlinkyThreadPool")


def op_names(hlo_text: str):
  """HLO instruction name -> its op_name metadata ('' when it has none)."""
  out = {}
  for line in hlo_text.splitlines():
    match = re.match(r"\s*(?:ROOT )?%?([\w.\-]+) = ", line)
    if match:
      op = re.search(r'op_name="([^"]*)"', line)
      out[match.group(1)] = op.group(1) if op else ""
  return out


def _scope(name: str, op_name: str) -> bool:
  """The op is inside name scope `name` (`.../name/...`, or `jvp(name)` at the top)."""
  return re.search(rf"[/(]{name}[/)]", op_name) is not None


def part_of(op_name: str) -> str:
  direction = "backward" if "transpose(" in op_name else "forward"
  if _scope("attention", op_name):
    where = "encoder attention" if "audio_encoder" in op_name else "LLM attention"
  elif "audio_encoder" in op_name:
    where = "encoder"
  elif _scope("loss", op_name):
    where = "loss"
  elif _scope("optimizer", op_name):
    where = "optimizer"
  elif "/llm/" in op_name or "llm." in op_name:
    where = "LLM"
  else:
    where = "other"
  return f"{where}, {direction}"


def kind_of(thunk: str, op_name: str) -> str:
  if thunk.startswith("convolution") or ("conv_general_dilated" in op_name
                                          and thunk.startswith(("custom-call", "cudnn"))):
    return "convolution"
  if (thunk.startswith(("ynn", "dot", "cublas")) or "gemm" in thunk
      or ("dot_general" in op_name and "fusion" not in thunk)):
    return "matmul"
  if "dynamic-update-slice" in thunk or "dynamic-slice" in thunk:
    return "scan stacking / slicing"
  if "copy" in thunk or "transpose" in thunk:
    return "copy / transpose"
  if "reduce" in thunk:
    return "reduction"
  return "other elementwise"


def thunk_times(trace_dir: str, steps: int):
  """Thunk (HLO instruction) name -> milliseconds per step, from the newest trace under
  `trace_dir`: XLA:CPU's worker threads' thunks, or a GPU's kernels by their `hlo_op`."""
  paths = glob.glob(os.path.join(trace_dir, "**", "*.xplane.pb"), recursive=True)
  if not paths:
    raise SystemExit(f"no *.xplane.pb trace under {trace_dir}")
  planes = ProfileData.from_file(max(paths, key=os.path.getmtime)).planes
  times = collections.Counter()
  for plane in planes:
    gpu = plane.name.startswith("/device:GPU")
    for line in plane.lines:
      # XLA:CPU's client threads; a GPU's streams (not its derived summary lines).
      if not (line.name.startswith("tf_XLA") or (gpu and line.name.startswith("Stream"))):
        continue
      for event in line.events:
        if event.name.startswith(_RUNTIME) or _CONTAINERS.match(event.name):
          continue
        name = dict(event.stats).get("hlo_op", event.name) if gpu else event.name
        times[name] += event.duration_ns / 1e6 / steps
  if not times:
    lines = [f"{plane.name}: {[line.name for line in plane.lines]}" for plane in planes]
    raise SystemExit("no XLA thunk or GPU kernel events in the trace; its planes and lines:\n"
                     + "\n".join(lines))
  return times


def table(title: str, rows, total: float):
  print(f"\n{title}")
  for name, ms in sorted(rows.items(), key=lambda kv: -kv[1]):
    print(f"  {name:44s} {ms:9.1f} ms  {100 * ms / total:5.1f}%")


def main():
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--lengths", default="30s", choices=("30s", "librispeech", "demo"))
  parser.add_argument("--layers", type=int, default=4)
  parser.add_argument("--width", type=int, default=512)
  parser.add_argument("--batch", type=int, default=4)
  parser.add_argument("--text-tokens", type=int, default=128)
  parser.add_argument("--vocab", type=int, default=32768)
  parser.add_argument("--chunk", type=int, default=128)
  parser.add_argument("--steps", type=int, default=2)
  parser.add_argument("--top", type=int, default=25)
  parser.add_argument("--trace_dir", default="", help="default: a temporary directory")
  parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
  args = parser.parse_args()

  model, _ = train_step_benchmark.configs(args.layers, args.width, args.vocab)
  model = train_step_benchmark.with_dtype(model, args.dtype)
  config = train_step_benchmark.train_config(args.chunk)
  params = jax.jit(lambda: nn.unbox(init_params(model, jax.random.key(0))))()
  optimizer = optimizer_lib.make_optimizer(config, params)
  state = step_lib.init_train_state(config, params, jax.random.key(1))
  del params
  (raw,) = train_step_benchmark.make_batches(args.lengths, 1, args.batch, args.text_tokens,
                                             args.vocab)
  batch = train_step_benchmark.ours_batch(
      raw, train_step_benchmark.TEXT_BUCKETS,
      audio_buckets.bucket_samples(audio_buckets.DEFAULT_SECONDS))
  step = jax.jit(step_lib.make_train_step(config, model, optimizer), donate_argnums=0)
  compiled = step.lower(state, batch).compile()
  names = op_names(compiled.as_text())

  def run(steps):
    nonlocal state
    start = time.perf_counter()
    for _ in range(steps):
      state, metrics = compiled(state, batch)
      jax.block_until_ready(metrics)
    return (time.perf_counter() - start) / steps

  run(1)
  untraced = run(args.steps)
  trace_dir = args.trace_dir or tempfile.mkdtemp(prefix="profile_step_")
  with jax.profiler.trace(trace_dir):
    traced = run(args.steps)
  times = thunk_times(trace_dir, args.steps)
  total = sum(times.values())

  parts, kinds = collections.Counter(), collections.Counter()
  for thunk, ms in times.items():
    op = names.get(thunk, "")
    parts[part_of(op)] += ms
    kinds[f"{part_of(op).split(',')[0]}: {kind_of(thunk, op)}"] += ms
  print(f"train step, {args.layers}+{args.layers} layers, width {args.width}, batch "
        f"{args.batch}, clips '{args.lengths}' (audio {batch['audio_mel'].shape[-1]} frames, text "
        f"{batch['input_ids'].shape[1]} tokens), {args.dtype}, jax {jax.__version__} on "
        f"{jax.devices()[0].platform} ({jax.devices()[0].device_kind}), load average "
        f"{os.getloadavg()[0]:.1f}")
  print(f"wall {1000 * untraced:.0f} ms per step ({1000 * traced:.0f} ms traced); thunks "
        f"{total:.0f} ms per step; trace in {trace_dir}")
  table("by part (ms per step):", parts, total)
  table("by part and kind:", kinds, total)
  print(f"\ntop {args.top} thunks:")
  for thunk, ms in times.most_common(args.top):
    print(f"  {ms:9.1f} ms  {thunk:34s} {names.get(thunk, '')[-120:]}")


if __name__ == "__main__":
  main()
