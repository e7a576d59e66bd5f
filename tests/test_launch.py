"""Every launch script's --dry-run: the exact commands it would run, checked word for word."""

import os
import shlex
import subprocess

import pytest

from _train_configs import REPO

TRAIN = ["--config=configs/pretrain.py:qwen_audio", "--workdir=gs://b/runs/stage 1"]


def dry_run(script, *args, env=None):
  run = subprocess.run(["bash", os.path.join(REPO, "launch", script), "--dry-run", *args],
                       capture_output=True, text=True, timeout=60, cwd=REPO,
                       env=dict(os.environ, **(env or {})))
  assert run.returncode == 0, run.stderr
  return [shlex.split(line) for line in run.stdout.splitlines()], run.stdout


def test_tpu_vm_create_single_and_multislice():
  (cmd,), _ = dry_run("tpu_vm.sh", "create", "--name", "qa", "--zone", "us-east5-a", "--type",
                      "v5p-64", "--project", "p1")
  assert cmd == ["gcloud", "compute", "tpus", "queued-resources", "create", "qa", "--node-id",
                 "qa", "--zone", "us-east5-a", "--project", "p1", "--accelerator-type", "v5p-64",
                 "--runtime-version", "v2-alpha-tpuv5"]
  (cmd,), _ = dry_run("tpu_vm.sh", "create", "--name", "qa", "--zone", "z", "--type", "v5e-16",
                      "--slices", "2", "--spot")
  assert cmd[6:10] == ["--node-count", "2", "--node-prefix", "qa"]
  assert cmd[cmd.index("--accelerator-type") + 1] == "v5litepod-16" and cmd[-1] == "--spot"


def test_tpu_vm_setup_copies_and_installs_on_every_worker_of_every_slice():
  cmds, _ = dry_run("tpu_vm.sh", "setup", "--name", "qa", "--zone", "z", "--slices", "2")
  assert cmds[0][:3] == ["git", "-C", REPO] and cmds[0][3] == "archive"
  scps = [c for c in cmds if c[3:5] == ["tpu-vm", "scp"]]
  sshs = [c for c in cmds if c[3:5] == ["tpu-vm", "ssh"]]
  assert [c[6].split(":")[0] for c in scps] == ["qa-0", "qa-1"]
  assert [c[5] for c in sshs] == ["qa-0", "qa-1"]
  assert all("--worker=all" in c for c in scps + sshs)
  assert all("pip install -q -e '.[tpu]'" in c[-1] for c in sshs)


def test_tpu_vm_run_starts_the_trainer_on_all_workers_with_quoted_flags():
  (cmd,), _ = dry_run("tpu_vm.sh", "run", "--name", "qa", "--zone", "z", "--", *TRAIN)
  assert cmd[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "qa"] and "--worker=all" in cmd
  remote = cmd[cmd.index("--command") + 1]
  # The remote shell sees the flags as the user gave them (the space stays inside one word).
  words = shlex.split(remote.split("&&", 1)[1].split(">", 1)[0])
  assert words == ["nohup", "python", "-m", "qwen_audio_jax.train", "--distributed=true", *TRAIN]
  assert remote.endswith("> ~/qwen_audio_jax.log 2>&1 &")


def test_tpu_vm_logs_status_delete():
  (cmd,), _ = dry_run("tpu_vm.sh", "logs", "--name", "qa", "--zone", "z", "--slices", "2",
                      "--slice", "1", "--worker", "all")
  assert cmd[5] == "qa-1" and "--worker=all" in cmd and cmd[-1].startswith("tail -n +1 -f")
  (cmd,), _ = dry_run("tpu_vm.sh", "status", "--name", "qa", "--zone", "z")
  assert cmd[:6] == ["gcloud", "compute", "tpus", "queued-resources", "describe", "qa"]
  (cmd,), _ = dry_run("tpu_vm.sh", "delete", "--name", "qa", "--zone", "z")
  assert cmd[4:6] == ["delete", "qa"] and cmd[-2:] == ["--force", "--quiet"]


@pytest.mark.parametrize("args,message", [
    (["create", "--zone", "z", "--type", "v5p-8"], "--name is required"),
    (["create", "--name", "a", "--zone", "z"], "--type is required"),
    (["create", "--name", "a", "--zone", "z", "--type", "v9-8"], "no default --runtime"),
    (["run", "--name", "a", "--zone", "z"], "give the training flags after --"),
    (["launch", "--name", "a", "--zone", "z"], "unknown command 'launch'"),
    (["create", "--name", "a", "--zone", "z", "--slices", "0"], "--slices must be >= 1"),
])
def test_tpu_vm_errors_name_the_flag(args, message):
  run = subprocess.run(["bash", os.path.join(REPO, "launch", "tpu_vm.sh"), "--dry-run", *args],
                       capture_output=True, text=True, timeout=60)
  assert run.returncode == 2 and message in run.stderr


def test_xpk_workload():
  (cmd,), _ = dry_run("xpk.sh", "--cluster", "c1", "--workload", "stage1", "--type", "v5p-128",
                      "--slices", "2", "--image", "gcr.io/p/qa:1", "--zone", "z", "--", *TRAIN)
  assert cmd[:3] == ["xpk", "workload", "create"]
  flags = dict(zip(cmd[3::2], cmd[4::2]))
  assert flags["--cluster"] == "c1" and flags["--tpu-type"] == "v5p-128"
  assert flags["--num-slices"] == "2" and flags["--docker-image"] == "gcr.io/p/qa:1"
  assert shlex.split(flags["--command"]) == ["python", "-m", "qwen_audio_jax.train",
                                             "--distributed=true", *TRAIN]


def test_slurm_dry_run():
  cmds, out = dry_run("slurm_gpu.sbatch", *TRAIN, env={"XLA_FLAGS": ""})
  assert "XLA_PYTHON_CLIENT_MEM_FRACTION=0.9" in out
  assert "--xla_gpu_enable_latency_hiding_scheduler=true" in out
  assert cmds[-1] == ["srun", "--kill-on-bad-exit=1", "python", "-m", "qwen_audio_jax.train",
                      "--distributed=auto", *TRAIN]
