"""What the planner prints: one plan, or one GPU estimate, in words a person reads."""

import collections

from qwen_audio_jax.plan import gpu_estimate, planner


def _gib(n: float) -> str:
  return f"{n / 2**30:,.1f} GiB"


def format_plan(p: planner.StepPlan) -> str:
  mesh = " x ".join(f"{k} {v}" for k, v in p.mesh.items())
  lines = [
      f"{p.step} step on {p.topology}{f' x {p.num_slices} slices' if p.num_slices > 1 else ''}: "
      f"{p.devices} devices, {p.hosts} hosts, mesh {mesh}, remat {p.remat_policy}, "
      f"accumulation {p.grad_accum_steps}, global batch {p.global_batch} x {p.text_length}",
      "memory per device:",
      f"  parameters        {_gib(p.params_bytes)}",
      f"  optimizer state   {_gib(p.opt_state_bytes)}",
      f"  arguments (state + batch) {_gib(p.argument_bytes)}, outputs {_gib(p.output_bytes)} "
      f"(aliased to donated inputs {_gib(p.alias_bytes)})",
      f"  temporaries       {_gib(p.temp_bytes)} (activations, gradients, workspaces)",
      f"  total             {_gib(p.total_bytes)} of {_gib(p.hbm_bytes)} HBM: "
      f"{'fits' if p.fits else 'DOES NOT FIT'}",
  ]
  if p.xla_flops:
    counts = collections.Counter(p.loop_trip_counts)
    loops = (f"; loops run {', '.join(f'{n} x {k}' for k, n in sorted(counts.items()))} times"
             f": x {p.loop_scale:.4g}" if counts else "; no loops")
    if p.unknown_loops:
      loops += f"; {p.unknown_loops} loop(s) of unknown trip count counted once"
    lines.append(f"FLOPs per device and step: XLA {p.executed_xla_flops:.4g} (each loop body "
                 f"counted once {p.xla_flops:.4g}{loops}), analytic (training/flops.py) "
                 f"{p.analytic_flops:.4g} (ratio {p.executed_xla_flops / p.analytic_flops:.2f})")
  else:
    lines.append(f"FLOPs per device and step: analytic {p.analytic_flops:.4g} (no XLA figure: "
                 f"the program was refused)")
  if p.predicted_seconds:
    how = {"xla": "XLA's estimate", "roofline": "roofline of XLA's FLOPs and bytes"}[p.prediction]
    if p.loop_scale != 1.0:
      how += f" x {p.loop_scale:.4g} for the loops"
    lines.append(f"predicted step time ({how}): {p.predicted_seconds:.3f} s -> "
                 f"{p.tokens_per_second:,.0f} tokens/s, MFU {100 * p.mfu:.1f}% at "
                 f"{p.peak_flops / 1e12:.0f} TFLOP/s peak per chip")
  lines.append(f"compiled in {p.compile_seconds:.1f} s")
  return "\n".join(lines)


def format_estimate(e: gpu_estimate.GpuEstimate) -> str:
  mesh = " x ".join(f"{k} {v}" for k, v in e.mesh.items())
  return "\n".join([
      f"ESTIMATE (analytic, no compile) for {e.devices} x {e.gpu}: mesh {mesh}, remat "
      f"{e.remat_policy}, accumulation {e.grad_accum_steps}",
      f"  parameters {_gib(e.params_bytes)}, optimizer state {_gib(e.opt_state_bytes)}, "
      f"activations ~{_gib(e.activation_bytes)} per GPU",
      f"  total ~{_gib(e.total_bytes)} of {_gib(e.hbm_bytes)}: "
      f"{'fits' if e.fits else 'DOES NOT FIT'}",
      f"  step time ~{e.step_seconds:.2f} s at an assumed {100 * e.assumed_mfu:.0f}% MFU "
      f"({e.flops_per_device:.4g} FLOPs per GPU, {e.peak_flops / 1e12:.0f} TFLOP/s peak)",
  ])
