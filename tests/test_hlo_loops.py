"""The planner's loop-aware FLOP count (plan/hlo_loops.py) on compiled programs whose products
are known exactly: XLA's own cost analysis counts each loop body once, the count here runs it."""

import jax
import jax.numpy as jnp
import numpy as np

from qwen_audio_jax.plan import hlo_loops


def compiled_text(fn, *args) -> str:
  return jax.jit(fn).lower(*args).compile().as_text()


def xla_flops(fn, *args) -> float:
  cost = jax.jit(fn).lower(*args).compile().cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return cost["flops"]


def test_a_loop_runs_its_products_trip_count_times():
  x, w = jnp.ones((16, 64)), jnp.ones((64, 64))
  def seven_products(x, w):
    return jax.lax.fori_loop(0, 7, lambda i, h: jnp.tanh(h @ w), x)
  counts = hlo_loops.count(compiled_text(seven_products, x, w))
  one = 2 * 16 * 64 * 64
  assert counts.once == one and counts.executed == 7 * one
  assert counts.loops == (7,) and counts.unknown_loops == 0 and counts.scale == 7
  # What XLA's cost analysis reports: the body once (plus the loop's elementwise work).
  assert one <= xla_flops(seven_products, x, w) < 2 * one


def test_nested_scans_multiply_and_straight_line_products_count_once():
  x, w, v = jnp.ones((8, 32)), jnp.ones((32, 32)), jnp.ones((32, 48))
  def nested(x, w, v):
    def outer(h, _):
      inner, _ = jax.lax.scan(lambda g, _: (jnp.tanh(g @ w), None), h, None, length=5)
      return inner, None
    h, _ = jax.lax.scan(outer, x, None, length=3)
    return h @ v  # outside every loop
  counts = hlo_loops.count(compiled_text(nested, x, w, v))
  body, tail = 2 * 8 * 32 * 32, 2 * 8 * 32 * 48
  assert counts.executed == 15 * body + tail
  assert counts.once == body + tail
  assert sorted(counts.loops) == [3, 5]


def test_convolutions_count_only_the_taps_that_read_the_input():
  # A strided, padded 1-D convolution (Whisper's conv2: kernel 3, stride 2, padding 1): the
  # first output's first tap reads padding, so it is not a multiply-add.
  x, k = jnp.ones((2, 100, 8)), jnp.ones((3, 8, 16))
  def conv(x, k):
    return jax.lax.conv_general_dilated(x, k, (2,), ((1, 1),),
                                        dimension_numbers=("NWC", "WIO", "NWC"))
  counts = hlo_loops.count(compiled_text(conv, x, k))
  outputs = 50
  taps = sum(1 for o in range(outputs) for t in range(3) if 0 <= 2 * o + t - 1 < 100)
  assert counts.executed == 2 * 2 * 16 * 8 * taps
  # XLA's own count of the same program agrees (no loops here).
  np.testing.assert_allclose(counts.executed, xla_flops(conv, x, k), rtol=0.02)


def test_batched_products_match_xla_on_a_loop_free_program():
  q, kk = jnp.ones((2, 4, 50, 16)), jnp.ones((2, 4, 60, 16))
  def scores(q, kk):
    return jnp.einsum("bhqd,bhkd->bhqk", q, kk)
  counts = hlo_loops.count(compiled_text(scores, q, kk))
  assert counts.executed == 2 * 2 * 4 * 50 * 60 * 16 and counts.scale == 1.0


def test_dilated_input_windows_count_only_real_input_elements():
  # A TPU program writes a batched matmul as a convolution whose batch dimension is a window
  # over a dilated input (size 2, lhs_dilate 2): only one of the two taps reads an element.
  x, k = jnp.ones((1, 40, 4)), jnp.ones((2, 4, 6))
  def dilated(x, k):
    return jax.lax.conv_general_dilated(x, k, (1,), ((0, 0),), lhs_dilation=(2,),
                                        dimension_numbers=("NWC", "WIO", "NWC"))
  counts = hlo_loops.count(compiled_text(dilated, x, k))
  outputs = 2 * 40 - 1 - 2 + 1  # dilated length 79, kernel 2
  taps = sum(1 for o in range(outputs) for t in range(2) if (o + t) % 2 == 0)
  assert counts.executed == 2 * 6 * 4 * taps
  np.testing.assert_allclose(counts.executed, xla_flops(dilated, x, k), rtol=0.02)
