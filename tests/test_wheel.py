"""A non-editable install (a wheel) runs the README's commands from any directory: the configs
and the demo corpus are packaged, `--config` resolves packaged configs by name, and the console
scripts run their modules. Built and installed offline into a fresh virtual environment that
sees this machine's dependencies (--system-site-packages) but not the source tree."""

import glob
import os
import shutil
import subprocess
import sys
import textwrap
import zipfile

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(args, cwd, env=None, timeout=300):
  result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout, check=False)
  assert result.returncode == 0, f"{args}:\n{result.stdout}\n{result.stderr}"
  return result.stdout


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
  """(venv python, bin dir, env, an unrelated working directory)."""
  root = tmp_path_factory.mktemp("wheel")
  source = root / "source"  # a copy: building writes build/ and *.egg-info into the tree
  os.makedirs(source)
  for name in ("setup.py", "README.md"):
    shutil.copy(os.path.join(REPO, name), source / name)
  shutil.copytree(os.path.join(REPO, "qwen_audio_jax"), source / "qwen_audio_jax",
                  ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
  _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-index", "--no-build-isolation",
        "-q", "-w", str(root / "dist"), str(source)], cwd=root)
  wheel, = glob.glob(str(root / "dist" / "*.whl"))
  venv = root / "venv"
  _run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", str(venv)],
       cwd=root)
  python = str(venv / "bin" / "python")
  _run([sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "--no-index",
        "--ignore-installed", "-q", wheel], cwd=root)
  env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
  elsewhere = root / "elsewhere"
  os.makedirs(elsewhere)
  return python, str(venv / "bin"), env, str(elsewhere), wheel


def test_wheel_holds_configs_and_demo_corpus(installed):
  names = zipfile.ZipFile(installed[4]).namelist()
  for config in ("pretrain", "sft", "common"):
    assert f"qwen_audio_jax/configs/{config}.py" in names
  assert "qwen_audio_jax/data/demo/train.jsonl" in names
  audio = [n for n in names if n.startswith("qwen_audio_jax/data/demo/audio/")]
  assert len(audio) == len(os.listdir(os.path.join(REPO, "qwen_audio_jax", "data", "demo",
                                                   "audio")))
  # The demo's pretrained encoder (config.init.whisper of pretrain.py:demo), every file of it.
  encoder_dir = os.path.join(REPO, "qwen_audio_jax", "data", "demo_encoder")
  bundled = {os.path.relpath(os.path.join(d, f), REPO).replace(os.sep, "/")
             for d, _, files in os.walk(encoder_dir) for f in files}
  assert bundled and bundled <= set(names), sorted(bundled - set(names))


def test_installed_package_resolves_the_readme_configs_from_elsewhere(installed):
  python, _, env, elsewhere, _ = installed
  script = textwrap.dedent("""
      import sys
      import qwen_audio_jax
      assert "/venv/" in qwen_audio_jax.__file__, qwen_audio_jax.__file__
      from absl import flags
      from qwen_audio_jax import configs, train
      from qwen_audio_jax.data import DataPipeline
      from qwen_audio_jax.training import validation

      def check(spec, config):
        validation.validate(config, device_count=1, process_count=1)
        assert config.model.overrides.llm.depth == 1
        batch = next(DataPipeline(config.data).iterator())  # the packaged demo corpus
        print(spec, config.stage, batch["input_ids"].shape)

      # The training command's own flag, as the README types it.
      sys.argv = ["train", "--config=configs/pretrain.py:demo",
                  "--config.model.overrides.llm.depth=1"]
      flags.FLAGS(sys.argv)
      check(sys.argv[1], train.CONFIG.value)
      for spec in ("pretrain:demo", "sft:demo", "sft"):
        argv = ["train", f"--config={spec}", "--config.model.overrides.llm.depth=1"]
        flag_values = flags.FlagValues()
        holder = configs.DEFINE_config_file("config", flag_values=flag_values, sys_argv=argv)
        flag_values(argv)
        check(spec, holder.value)
      """)
  out = _run([python, "-c", script], cwd=elsewhere, env=env)
  assert out.count("pretrain") >= 2 and out.count("sft") >= 2, out


def test_console_scripts_run_their_modules(installed):
  _, bin_dir, env, elsewhere, _ = installed
  out = _run([os.path.join(bin_dir, "qwen-audio-convert"), "export", "--help"], cwd=elsewhere,
             env=env)
  assert "--checkpoint" in out
  result = subprocess.run([os.path.join(bin_dir, "qwen-audio-train"), "--helpshort"],
                          cwd=elsewhere, env=env, capture_output=True, text=True, timeout=120,
                          check=False)
  assert "pretrain:demo" in result.stdout, result.stdout + result.stderr  # absl help exits 1
  result = subprocess.run([os.path.join(bin_dir, "qwen-audio-train"), "--config=nonesuch:demo"],
                          cwd=elsewhere, env=env, capture_output=True, text=True, timeout=120,
                          check=False)
  assert result.returncode != 0 and "not a packaged config" in result.stderr
