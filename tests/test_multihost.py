"""One training job over two processes (jax.distributed, gloo CPU collectives, 2 devices each)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest

from openrs_jax.recipe.config import load_config
from openrs_jax.recipe.trainer import GRPOTrainer
from tests.conftest import REPO_ROOT

TINY = REPO_ROOT / "configs" / "tiny.py"
FAST = ["rewards.num_workers=0", "run.tensorboard=True", "run.log_completions=2"]
HEARTBEAT_S = 10


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_job(out: Path, *overrides: str) -> list[subprocess.Popen]:
    """Both processes of a two-process job, each with 2 emulated CPU devices."""
    address = f"127.0.0.1:{free_port()}"
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "JAX_PLATFORMS": "cpu",
           "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
    procs = []
    for pid in range(2):
        args = [sys.executable, "-m", "openrs_jax.train", "--config", str(TINY), f"--config.run.output_dir={out}",
                f"--config.distributed.coordinator_address={address}", "--config.distributed.num_processes=2", f"--config.distributed.process_id={pid}",
                f"--config.distributed.heartbeat_timeout_s={HEARTBEAT_S}", "--config.distributed.init_timeout_s=120",
                *(f"--config.{o}" for o in (*FAST, *overrides))]
        procs.append(subprocess.Popen(args, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, text=True))
    return procs


def finish(procs: list[subprocess.Popen], timeout: float = 300) -> list[str]:
    outputs = []
    for p in procs:
        try:
            outputs.append(p.communicate(timeout=timeout)[0])
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise
    for p, text in zip(procs, outputs):
        assert p.returncode == 0, text[-3000:]
    return outputs


def metrics_of(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def tensors(out: Path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    return load_file(str(out / "hf" / "model.safetensors"))


@pytest.mark.slow
def test_two_processes_train_like_one_process_with_four_devices(tmp_path):
    steps = ["grpo.max_steps=2", "run.save_steps=1"]
    procs = start_job(tmp_path / "job", *steps)
    # Meanwhile, the reference in this process: one process, 4 devices, the same (data=4) mesh.
    assert jax.device_count() == 4
    GRPOTrainer(load_config(TINY, [f"run.output_dir={tmp_path / 'one'}", *FAST, *steps])).train()
    logs = finish(procs)

    job, one = tmp_path / "job", tmp_path / "one"
    # The same rollouts and rewards: sampling and scoring do not depend on the process layout.
    assert [m["reward"] for m in metrics_of(job)] == [m["reward"] for m in metrics_of(one)]
    assert [m["step"] for m in metrics_of(job)] == [1, 2]
    # The same parameters up to reduction order (gloo sums across processes in another order
    # than XLA within one): the bound of the 4-vs-1-device test in test_train.py.
    a, b = tensors(job), tensors(one)
    assert sorted(a) == sorted(b)
    for name in a:
        np.testing.assert_allclose(a[name], b[name], rtol=0, atol=2e-4, err_msg=name)
    # One set of outputs, written by process 0; both processes wrote the checkpoints together.
    assert len(list((job / "tensorboard").glob("events.out.tfevents.*"))) == 1
    assert len((job / "completions.jsonl").read_text().splitlines()) == 4
    assert sorted(p.name for p in job.iterdir()) == sorted(p.name for p in one.iterdir())
    assert sorted(p.name for p in (job / "checkpoints").iterdir() if p.name.isdigit()) == ["1", "2"]
    assert "step 2 | reward" in logs[0] and "step 2 | reward" not in logs[1]


@pytest.mark.slow
def test_a_dead_process_stops_the_other_and_both_resume(tmp_path):
    out = tmp_path / "job"
    light = ["grpo.beta=0.0", "run.tensorboard=False"]  # fewer programs to compile; not what this test is about
    procs = start_job(out, "grpo.max_steps=1000", "run.save_steps=1", *light)
    deadline = time.monotonic() + 300
    while not (out / "checkpoints" / "2").is_dir():
        assert time.monotonic() < deadline and all(p.poll() is None for p in procs), procs[0].stdout.read()
        time.sleep(0.1)
    procs[1].kill()
    killed = time.monotonic()
    text, _ = procs[0].communicate(timeout=6 * HEARTBEAT_S)
    waited = time.monotonic() - killed
    procs[1].wait()
    print(f"process 0 exited {waited:.1f} s after process 1 was killed")
    assert procs[0].returncode != 0
    assert "lost the other processes of this job" in text and "--config.run.resume=True" in text, text[-3000:]
    assert "Traceback" not in text

    last = max(int(p.name) for p in (out / "checkpoints").iterdir() if p.name.isdigit())
    logs = finish(start_job(out, f"grpo.max_steps={last + 1}", "run.save_steps=1", "run.resume=True", *light))
    assert f"resuming from step {last} " in logs[0] and f"resuming from step {last} " in logs[1]
    assert [m["step"] for m in metrics_of(out)] == list(range(1, last + 2))
    assert (out / "hf" / "model.safetensors").is_file()


def test_incomplete_settings_are_named(monkeypatch):
    from openrs_jax.core import distributed

    for name in (distributed.ENV_ADDRESS, distributed.ENV_NUM, distributed.ENV_ID, "SLURM_STEP_NUM_TASKS"):
        monkeypatch.delenv(name, raising=False)
    assert distributed.maybe_initialize() is False  # nothing configured: one process
    monkeypatch.setenv(distributed.ENV_NUM, "2")
    with pytest.raises(ValueError, match="incomplete multi-process settings: coordinator_address=''"):
        distributed.maybe_initialize()
    with pytest.raises(ValueError, match="process_id=2; give all three"):
        distributed.maybe_initialize("127.0.0.1:1234", process_id=2)
