"""Mesh and logical-axis rules from the training config: the command line reaches the shardings
through Flax's rules context, the default table is unchanged, bad tables are refused."""

import dataclasses
import os
import sys
from unittest import mock

import flax.linen as nn
import pytest
from absl import flags
from jax.sharding import PartitionSpec
from ml_collections import config_flags

from qwen_audio_jax import sharding
from qwen_audio_jax.config import get_preset
from qwen_audio_jax.model import params as params_lib
from qwen_audio_jax.training import validation

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODEL = dataclasses.replace(get_preset("tiny"),
                            llm=dataclasses.replace(get_preset("tiny").llm, vocab_size=64))


def parse(*overrides):
  """The demo config as `python -m qwen_audio_jax.train` parses it, with `overrides` (the config
  file flag reads sys.argv when defined, as in the real command)."""
  argv = ["train", f"--config={os.path.join(ROOT, 'configs', 'pretrain.py')}:demo", *overrides]
  values = flags.FlagValues()
  with mock.patch.object(sys, "argv", argv):
    config_flags.DEFINE_config_file("config", None, "", flag_values=values, lock_config=True)
    values(argv)
  return values.config


def spec_of(path, rules=None):
  mesh = sharding.make_mesh((1, 4, 2))
  shardings = sharding.param_shardings(params_lib.abstract_params(MODEL), mesh, rules)
  return params_lib.flat_paths(shardings)[path].spec


def test_default_rules_are_the_table_and_the_config_carries_it():
  assert tuple(parse().mesh.logical_axis_rules) == sharding.LOGICAL_AXIS_RULES
  assert sharding.axis_rules() == sharding.LOGICAL_AXIS_RULES
  assert spec_of("llm/embed") == PartitionSpec("tensor", "fsdp")  # (vocab, embed)


def test_command_line_rules_reach_the_shardings_through_flax_context():
  table = [(n, None if n == "embed" else a) for n, a in sharding.LOGICAL_AXIS_RULES]
  config = parse(f"--config.mesh.logical_axis_rules={tuple(table)!r}")
  validation.validate(config, device_count=2, process_count=1)
  with nn.logical_axis_rules(config.mesh.logical_axis_rules):
    assert sharding.axis_rules() == tuple(table)
    assert spec_of("llm/embed") == PartitionSpec("tensor", None)
  assert spec_of("llm/embed") == PartitionSpec("tensor", "fsdp")  # outside: the default
  # An explicit table wins over the context.
  with nn.logical_axis_rules(table):
    assert spec_of("llm/embed", sharding.LOGICAL_AXIS_RULES) == PartitionSpec("tensor", "fsdp")


def test_bad_rule_tables_are_refused_with_the_key_named():
  config = parse()
  config.mesh.logical_axis_rules = (("act_batch", ("data", "pipe")), ("vocab", "tensor"),
                                    ("vocab", None))
  with pytest.raises(validation.ConfigError) as error:
    validation.validate(config, device_count=1, process_count=1)
  text = str(error.value)
  assert "config.mesh.logical_axis_rules: 'vocab' appears more than once" in text
  assert "'act_batch' maps to 'pipe', not a mesh axis" in text
  assert "no entry for 'act_length'" in text
  config.mesh.logical_axis_rules = ("embed",)
  with pytest.raises(validation.ConfigError, match="expected a sequence of"):
    validation.validate(config, device_count=1, process_count=1)


@pytest.mark.parametrize("shape,devices,filled", [
    ((-1, 1, 1), 8, [8, 1, 1]), ((2, -1, 1), 8, [2, 4, 1]), ((1, 2, 2), 4, [1, 2, 2])])
def test_mesh_fill(shape, devices, filled):
  assert sharding.fill_mesh_shape(shape, devices) == filled


def test_mesh_fill_errors():
  with pytest.raises(ValueError, match="not divisible by 3"):
    sharding.fill_mesh_shape((3, -1, 1), 8)
  with pytest.raises(ValueError, match="at most one entry may be -1"):
    sharding.fill_mesh_shape((-1, -1, 1), 8)
  with pytest.raises(ValueError, match="needs 6 devices, 8 are available"):
    sharding.fill_mesh_shape((3, 2, 1), 8)
