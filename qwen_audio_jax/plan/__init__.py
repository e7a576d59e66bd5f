"""Ahead-of-time planning of runs: compile for a virtual TPU slice, estimate for GPUs."""

from qwen_audio_jax.plan.hardware import parse_gpu, parse_tpu
from qwen_audio_jax.plan.planner import (PlannerError, StepPlan, plan_local, plan_step,
                                         plan_tpu, virtual_tpu_devices)
