"""Every field of the model config (and every encoder.* / llm.* sub-field) can be overridden from
the command line on every preset, through the real flag parser, typed, the key named on error."""

import dataclasses
import os

import pytest
from absl import flags

from qwen_audio_jax import config as model_config_lib
from qwen_audio_jax import configs
from qwen_audio_jax.training import initialization

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PRESETS = [(name, preset) for name in ("pretrain", "sft") for preset in ("demo", "qwen_audio")]
CHOICES = {"remat_policy": model_config_lib.REMAT_POLICIES,
           "attention_impl": model_config_lib.ATTENTION_IMPLS,
           "dtype": model_config_lib.DTYPES, "param_dtype": model_config_lib.DTYPES}


def parse(config_arg, *overrides):
  """--config=<file>:<preset> plus overrides, through the training command's config flag."""
  argv = ["train", f"--config={config_arg}", *overrides]
  flag_values = flags.FlagValues()
  holder = configs.DEFINE_config_file("config", flag_values=flag_values, lock_config=True,
                                      sys_argv=argv)
  flag_values(argv)
  return holder.value


def model_fields(config):
  """(dotted name, current value) of every scalar field of a QwenAudioConfig."""
  out = []
  for f in dataclasses.fields(config):
    value = getattr(config, f.name)
    if dataclasses.is_dataclass(value):
      out += [(f"{f.name}.{name}", v) for name, v in model_fields(value)]
    else:
      out.append((f.name, value))
  return out


def new_value(name, value, current):
  """A value different from `value` that still makes a valid model (with companions)."""
  leaf = name.rsplit(".", 1)[-1]
  if leaf in CHOICES:
    return {name: next(c for c in CHOICES[leaf] if c != value)}
  if isinstance(value, bool):
    if name in ("encoder.audio_bos_eos", "encoder.avg_pool"):  # bos/eos live in the LLM width
      return {name: not value, "encoder.audio_bos_eos": False} if value else {name: True}
    return {name: not value}
  if name in ("encoder.output_dim", "llm.width"):  # the projection meets the LLM width
    width = 2 * current["llm.width"]
    return {"encoder.output_dim": width, "llm.width": width}
  if name == "llm.kv_heads":  # heads must stay a multiple of kv_heads
    return {name: value // 2 if value > 1 else current["llm.heads"]}
  return {name: value * 2}


@pytest.mark.parametrize("name,preset", PRESETS)
def test_every_model_field_is_overridable_from_the_command_line(name, preset):
  base = initialization.model_config_from(parse(f"{REPO}/configs/{name}.py:{preset}"))
  current = dict(model_fields(base))
  nested = (model_config_lib.EncoderConfig, model_config_lib.LLMConfig)
  assert len(current) == sum(len(dataclasses.fields(c)) for c in nested) + len(
      dataclasses.fields(model_config_lib.QwenAudioConfig)) - len(nested)  # all of them
  for field, value in current.items():
    changes = new_value(field, value, current)
    flags_ = [f"--config.model.overrides.{k}={v}" for k, v in changes.items()]
    config = parse(f"{REPO}/configs/{name}.py:{preset}", *flags_)
    model = dict(model_fields(initialization.model_config_from(config)))
    for key, want in changes.items():
      assert model[key] == want and type(model[key]) is type(want), (field, key, model[key])
    untouched = {k: v for k, v in model.items() if k not in changes}
    assert untouched == {k: v for k, v in current.items() if k not in changes}, field


def test_float_fields_accept_integers_and_types_are_checked():
  config = parse(f"{REPO}/configs/pretrain.py:demo", "--config.model.overrides.llm.rope_theta=5")
  assert initialization.model_config_from(config).llm.rope_theta == 5.0
  with pytest.raises(flags.IllegalFlagValueError,
                     match=r"--config\.model\.overrides\.llm\.depth=deep"):
    parse(f"{REPO}/configs/pretrain.py:demo", "--config.model.overrides.llm.depth=deep")
  with pytest.raises(flags.IllegalFlagValueError,
                     match=r"--config\.model\.overrides\.scan_layers=maybe"):
    parse(f"{REPO}/configs/sft.py:qwen_audio", "--config.model.overrides.scan_layers=maybe")


def test_bad_override_values_and_names_are_named():
  with pytest.raises(flags.IllegalFlagValueError,
                     match=r"--config\.model\.overrides\.llm\.depht: unknown key "
                     r"'model\.overrides\.llm\.depht' \(did you mean "
                     r"'model\.overrides\.llm\.depth'\?\)"):
    parse(f"{REPO}/configs/pretrain.py:demo", "--config.model.overrides.llm.depht=4")
  config = parse(f"{REPO}/configs/sft.py:demo", "--config.model.overrides.attention_impl=cuda")
  with pytest.raises(ValueError, match=r"config\.model\.overrides: .*attention_impl 'cuda'"):
    initialization.model_config_from(config)


def test_model_overrides_refuses_unknown_fields():
  with pytest.raises(ValueError, match=r"config\.model\.overrides\.llm\.depht: not a field of "
                     r"LLMConfig"):
    initialization.model_overrides(llm={"depht": 1})
  overrides = initialization.model_overrides(dtype="bfloat16", encoder={"depth": 3})
  assert overrides.dtype == "bfloat16" and overrides.encoder.depth == 3
  assert overrides.llm.depth is None and overrides.attention_impl is None
