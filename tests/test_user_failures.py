"""Failures that used to hide themselves: each now stops (or reports) at once with the fix in one line."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from openrs_jax.recipe.config import load_config
from openrs_jax.recipe.trainer import GRPOTrainer
from tests.conftest import REPO_ROOT

TINY = REPO_ROOT / "configs" / "tiny.py"
FAST = ["rewards.num_workers=0", "run.tensorboard=False", "run.log_completions=0"]
REFUSED = "http://127.0.0.1:9"  # the discard port: nothing listens, the connection is refused at once


def tiny(out: Path, *overrides: str) -> GRPOTrainer:
    return GRPOTrainer(load_config(TINY, [f"run.output_dir={out}", *FAST, *overrides]))


# ----------------------------------------------------------------------------- reward workers


SCRIPT = """
from openrs_jax.recipe.rewards import RewardScorer

{indent}scorer = RewardScorer(["accuracy"], num_workers=2, timeout_s=30)
{indent}result = scorer.score(["\\\\boxed{{2}}", "\\\\boxed{{3}}"], ["$2$", "$2$"], num_generations=2)
{indent}print("total", result.total)
{indent}scorer.close()
"""


def run_script(tmp_path: Path, guarded: bool) -> subprocess.CompletedProcess:
    body = SCRIPT.format(indent="    " if guarded else "")
    if guarded:
        body = body.replace("\n    scorer = ", '\nif __name__ == "__main__":\n    scorer = ', 1)
    script = tmp_path / "score.py"
    script.write_text(textwrap.dedent(body))
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    return subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=240)


def test_scorer_in_a_script_without_main_guard_stops_with_one_line(tmp_path):
    proc = run_script(tmp_path, guarded=False)
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert 'if __name__ == "__main__":' in lines[0] and "RewardScorer" in lines[0]
    assert "total" not in proc.stdout  # no all-zero rewards pretending to be results


def test_scorer_in_a_guarded_script_scores(tmp_path):
    proc = run_script(tmp_path, guarded=True)
    assert proc.returncode == 0, proc.stderr
    assert "total [1.0, 0.0]" in proc.stdout


# ----------------------------------------------------------------------------- offline Hub


@pytest.fixture
def hub_unreachable(monkeypatch):
    """No offline switch, a Hub address that refuses connections, and no download may be tried."""
    import datasets
    import huggingface_hub

    from openrs_jax import hub

    for name in hub.OFFLINE_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HF_ENDPOINT", REFUSED)

    def no_hub(*args, **kwargs):
        raise AssertionError("datasets.load_dataset was called: the command waited on the Hub")

    monkeypatch.setattr(datasets, "load_dataset", no_hub)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", no_hub)


def test_evaluate_offline_fails_fast_and_leaves_no_settings(hub_unreachable, tmp_path, capsys):
    from openrs_jax.evaluate import main

    completions = tmp_path / "c.jsonl"
    completions.write_text(json.dumps({"task": "aime24", "index": 0, "completion": "\\boxed{3}"}) + "\n")
    out = tmp_path / "e"
    with pytest.raises(SystemExit) as e:
        main(["--completions", str(completions), "--out", str(out), "--no_progress"])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "cannot be reached" in err and "--data_dir" in err
    assert not (out / "eval_config.json").exists()

    data = tmp_path / "data"
    data.mkdir()
    (data / "aime24.jsonl").write_text(json.dumps({"problem": "1+2=?", "answer": "3"}) + "\n")
    # A settings file that an older version left behind without samples is no reason to refuse.
    out.mkdir()
    (out / "eval_config.json").write_text(json.dumps({"generation": {"source": "completions", "data_dir": None},
                                                      "scoring": "paper"}))
    assert main(["--completions", str(completions), "--out", str(out), "--data_dir", str(data),
                 "--no_progress"]) == 0
    assert json.loads((out / "results.json").read_text())["aime24"]["accuracy"] == 1.0
    assert json.loads((out / "eval_config.json").read_text())["generation"]["data_dir"] == str(data.resolve())


def test_evaluate_still_refuses_to_mix_samples_of_other_settings(tmp_path):
    from openrs_jax.evaluate import main

    data = tmp_path / "data"
    data.mkdir()
    (data / "aime24.jsonl").write_text(json.dumps({"problem": "1+2=?", "answer": "3"}) + "\n")
    completions = tmp_path / "c.jsonl"
    completions.write_text(json.dumps({"task": "aime24", "index": 0, "completion": "\\boxed{3}"}) + "\n")
    out = tmp_path / "e"
    assert main(["--completions", str(completions), "--out", str(out), "--data_dir", str(data), "--no_progress"]) == 0
    other = tmp_path / "other"
    other.mkdir()
    (other / "aime24.jsonl").write_text((data / "aime24.jsonl").read_text())
    with pytest.raises(SystemExit):
        main(["--completions", str(completions), "--out", str(out), "--data_dir", str(other), "--no_progress"])


@pytest.mark.parametrize("override, what", [("data.dataset=nobody/problems", "dataset 'nobody/problems'"),
                                             ("model.path=nobody/model", "model 'nobody/model'")])
def test_train_with_hub_names_offline_fails_fast(hub_unreachable, tmp_path, override, what):
    with pytest.raises(ValueError, match=f"{what} would be downloaded .* cannot be reached .*HF_HUB_OFFLINE=1"):
        tiny(tmp_path / "run", override)


def test_decontaminate_without_a_benchmarks_folder_offline_fails_fast(hub_unreachable):
    from openrs_jax.curation.decontaminate import load_benchmarks

    with pytest.raises(ValueError, match=r"the benchmarks \(aime24\) would be downloaded .*--benchmarks_dir"):
        load_benchmarks(None, ["aime24"])


def test_offline_switch_skips_the_probe(monkeypatch):
    from openrs_jax import hub

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hub, "unreachable", lambda *a: pytest.fail("probed although HF_HUB_OFFLINE is set"))
    hub.require_hub("x", "y")  # datasets reads its cache at once: nothing to wait for


# ----------------------------------------------------------------------------- resume


def messages(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name.startswith("openrs_jax")]


def test_resume_with_only_an_interrupted_save_says_so_and_starts_at_0(tmp_path, caplog):
    out = tmp_path / "run"
    partial = out / "checkpoints" / "2.orbax-checkpoint-tmp-1733000000"
    (partial / "state").mkdir(parents=True)
    (out / "metrics.jsonl").write_text(json.dumps({"step": 1, "reward": 0.0}) + "\n")
    with pytest.raises(ValueError, match="already holds a run"):
        tiny(out)  # without resume: refused as before
    caplog.set_level(logging.INFO)
    trainer = tiny(out, "run.resume=True", "grpo.max_steps=1")
    trainer.close()
    assert trainer.step == 0 and not partial.exists()
    text = "\n".join(messages(caplog))
    assert "removing 1 incomplete checkpoint folder(s)" in text and partial.name in text
    assert f"no complete checkpoint in {out.resolve() / 'checkpoints'}: starting from step 0" in text


def test_resume_says_where_it_starts_and_leaves_a_finished_run_alone(tmp_path, caplog):
    out = tmp_path / "run"
    tiny(out, "grpo.max_steps=2", "run.save_steps=2").train()
    hf = out / "hf" / "model.safetensors"
    before = (hf.stat().st_mtime_ns, (out / "metrics.jsonl").read_text())

    caplog.set_level(logging.INFO)
    assert tiny(out, "run.resume=True", "grpo.max_steps=2", "run.save_steps=2").train() == {}
    assert "is complete (step 2, max_steps=2): nothing to train; raise --config.grpo.max_steps" in "\n".join(messages(caplog))
    assert (hf.stat().st_mtime_ns, (out / "metrics.jsonl").read_text()) == before

    caplog.clear()
    trainer = tiny(out, "run.resume=True", "grpo.max_steps=3", "run.save_steps=2")
    trainer.close()
    assert "resuming from step 2 (checkpoint " in "\n".join(messages(caplog))


# ----------------------------------------------------------------------------- curate


def test_curate_refuses_an_output_folder_that_overlaps_its_input(tmp_path, capsys):
    from openrs_jax.curate import main

    data = tmp_path / "data"
    data.mkdir()
    rows = "".join(json.dumps({"problem": f"{a}+1", "answer": str(a + 1)}) + "\n" for a in range(5))
    (data / "train.jsonl").write_text(rows)
    cases = [(data, "is the input"), (data / "sub", "lies inside the input"), (tmp_path, "holds the input")]
    for output_dir, relation in cases:
        with pytest.raises(SystemExit) as e:
            main(["format", "--input", str(data), "--output_dir", str(output_dir), "--no_progress"])
        assert e.value.code == 2
        assert relation in capsys.readouterr().err
    assert (data / "train.jsonl").read_text() == rows and not (data / "stats.json").exists()
    with pytest.raises(SystemExit):  # a file input: the folder that holds it
        main(["dedup", "--input", str(data / "train.jsonl"), "--output_dir", str(data), "--no_progress"])
    with pytest.raises(SystemExit):  # the other inputs count too
        main(["mix", "--source", f"a={data}", "--output_dir", str(data)])
    main(["format", "--input", str(data), "--output_dir", str(tmp_path / "out"), "--no_progress"])
    assert (tmp_path / "out" / "train.jsonl").is_file()
