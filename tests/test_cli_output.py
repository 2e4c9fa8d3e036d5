"""What the commands print: no library chatter, log lines apart from the progress bar, where the outputs are."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap

import pytest

from tests.conftest import REPO_ROOT

PROBE = textwrap.dedent("""
    import logging
    from openrs_jax.cli import exit_on_user_error

    def main():
        logging.basicConfig(level=logging.INFO)
        import jax
        jax.devices()
        logging.getLogger("openrs_jax.probe").info("our own line")

    {call}
""")


def _run(code: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300,
                          cwd=REPO_ROOT)


def test_every_cli_hides_the_backend_probe():
    env = {k: v for k, v in os.environ.items() if k != "JAX_PLATFORMS"}  # let JAX probe for a TPU, as users' runs do
    env["PYTHONPATH"] = str(REPO_ROOT)
    plain = _run(PROBE.format(call="main()"), env)
    if "Unable to initialize backend" not in plain.stderr:
        pytest.skip("this JAX does not log its backend probing at INFO here (a TPU host?)")
    wrapped = _run(PROBE.format(call="exit_on_user_error(main)()"), env)
    assert wrapped.returncode == 0, wrapped.stderr
    assert "Unable to initialize backend" not in wrapped.stderr
    assert "INFO:openrs_jax.probe:our own line" in wrapped.stderr


@pytest.mark.slow
def test_train_log_lines_stay_off_the_bar_and_the_end_says_where_outputs_are(tmp_path):
    out = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    result = subprocess.run(
        [sys.executable, "-m", "openrs_jax.train", "--config", "configs/tiny.py", "--config.grpo.max_steps=2",
         "--config.run.save_steps=1", "--config.run.tensorboard=False", f"--config.run.output_dir={out}"],
        capture_output=True, text=True, env=env, timeout=600, cwd=REPO_ROOT,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    # The bar redraws with \r; a log line written over it used to continue the bar's line
    # ("...reward=0.039]2026-12-01 ... INFO ... saved checkpoint 1").
    segments = re.split(r"[\r\n]", result.stderr)
    saved = [s for s in segments if "saved checkpoint" in s]
    assert len(saved) == 2, result.stderr[-3000:]
    assert all(re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ INFO openrs_jax\.core\.checkpoint: saved", s) for s in saved), saved
    assert "Unable to initialize backend" not in result.stderr
    summary = result.stdout
    assert f"Hugging Face model: {out / 'hf'}" in summary
    assert f"{out / 'metrics.jsonl'} (plot: python -m openrs_jax.plot {out})" in summary
    assert f"checkpoints:        {out / 'checkpoints'}" in summary
    assert (out / "hf" / "model.safetensors").is_file() and (out / "metrics.jsonl").is_file()


FAILING = textwrap.dedent("""
    import json
    from openrs_jax.cli import exit_on_user_error

    def ours():
        from openrs_jax.recipe.config import load_config
        load_config("/nope/config.py")

    def library():
        json.loads("{{")  # a ValueError raised inside the standard library

    exit_on_user_error({name})()
""")


@pytest.mark.parametrize("name", ["ours", "library"])
def test_errors_are_one_line_unless_the_traceback_is_asked_for(name):
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    env.pop("OPENRS_TRACEBACK", None)
    short = _run(FAILING.format(name=name), env)
    assert short.returncode == 2 and len(short.stderr.strip().splitlines()) == 1, short.stderr
    if name == "ours":
        assert short.stderr.strip() == "error: config file /nope/config.py does not exist (e.g. --config configs/exp2.py)"
    else:  # not our message: say where it came from and how to see more
        assert short.stderr.startswith("error: Expecting property name") and "OPENRS_TRACEBACK=1" in short.stderr
    full = _run(FAILING.format(name=name), {**env, "OPENRS_TRACEBACK": "1"})
    assert full.returncode == 1 and "Traceback (most recent call last)" in full.stderr
