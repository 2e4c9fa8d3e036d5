"""The evaluation runner with a scripted generator: outputs, pass@1, batching, resuming, completions mode.

The generator stands in for the sampler: it decodes each prompt, finds its problem and answers
from a script, so the expected accuracy is known exactly. The tokenizer is a byte-level one built
here (256 byte tokens + a few specials), small enough for the tiny test models of the project.
"""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import shared_data
from openrs_jax.evaluate import main as evaluate_main
from openrs_jax.evaluation import EvalSettings, Generation, flat_metrics, format_table, pass_at_1
from openrs_jax.evaluation.runner import run_completions_eval, run_model_eval
from openrs_jax.evaluation.tasks import load_task, parse_task_names
from openrs_jax.recipe.prompts import EVAL_INSTRUCTION
from openrs_jax.core.tokenizer import Tokenizer, load_tokenizer

BYTE_SPECIALS = ("<pad>", "<bos>", "<eos>")
BYTE_ADDED = ("<|User|>", "<|Assistant|>", "<think>", "</think>")
BYTE_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}{% if m['role'] == 'system' %}{{ m['content'] }}"
    "{% elif m['role'] == 'user' %}<|User|>{{ m['content'] }}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|Assistant|><think>\n{% endif %}"
)
BYTE_VOCAB = len(BYTE_SPECIALS) + len(BYTE_ADDED) + 256  # 263 ids: pad 0, bos 1, eos 2 as in conftest


def make_byte_tokenizer(directory: Path) -> Path:
    """Writes a byte-level tokenizer directory (every byte is one token) with a chat template."""
    from tokenizers import AddedToken, decoders, models, pre_tokenizers
    from tokenizers import Tokenizer as Backend

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {t: i for i, t in enumerate(BYTE_SPECIALS + BYTE_ADDED)}
    vocab.update({ch: len(vocab) + i for i, ch in enumerate(sorted(alphabet))})
    tok = Backend(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(t, normalized=False, special=True) for t in BYTE_SPECIALS])
    tok.add_tokens([AddedToken(t, normalized=False, special=False) for t in BYTE_ADDED])
    directory.mkdir(parents=True, exist_ok=True)
    tok.save(str(directory / "tokenizer.json"))
    (directory / "tokenizer_config.json").write_text(json.dumps(
        {"bos_token": "<bos>", "eos_token": "<eos>", "pad_token": "<pad>", "chat_template": BYTE_TEMPLATE}))
    return directory


@pytest.fixture(scope="module")
def byte_tok(tmp_path_factory) -> Tokenizer:
    return load_tokenizer(make_byte_tokenizer(tmp_path_factory.mktemp("byte_tok")))


def test_byte_tokenizer_round_trip(byte_tok):
    text = "Find $x$: ünï 数 \\boxed{3}\n"
    ids = byte_tok.encode(text)
    assert max(ids) < BYTE_VOCAB and len(ids) == len(text.encode())
    assert byte_tok.decode(ids + [byte_tok.eos_id]) == text
    assert byte_tok.encode(byte_tok.apply_chat_template([{"role": "user", "content": "q"}]))[:2] == [1, 3]


class ScriptedGenerator:
    """Answers problem i (found from its prompt) with `answer(index, sample_no)`; records every call."""

    def __init__(self, tokenizer: Tokenizer, problems, answer):
        self.tok = tokenizer
        self.index = {p.problem: p.index for p in problems}
        self.answer = answer
        self.calls: list[tuple[list[int], int]] = []
        self.seen: dict[int, int] = {}

    def __call__(self, prompts: list[list[int]], num_samples: int, seed: int) -> list[Generation]:
        self.calls.append(([len(p) for p in prompts], num_samples))
        out = []
        for ids in prompts:
            text = self.tok.decode(ids)
            problem = text.split(EVAL_INSTRUCTION + "\n\n", 1)[1].rsplit("<|Assistant|>", 1)[0]
            i = self.index[problem]
            for _ in range(num_samples):
                s = self.seen.get(i, 0)
                self.seen[i] = s + 1
                completion = f"Therefore, the final answer is: $\\boxed{{{self.answer(i, s)}}}$. I hope it is correct"
                out.append(Generation(self.tok.encode(completion) + [self.tok.eos_id], truncated=False))
        return out

    @property
    def generated(self) -> int:
        return sum(len(lens) * k for lens, k in self.calls)


def aime_problems(limit=6):
    return load_task("aime24", shared_data("benchmarks"), limit=limit)


def read_details(out: Path, task: str) -> list[dict]:
    return [json.loads(line) for line in (out / f"details_{task}.jsonl").read_text().splitlines()]


def test_outputs_and_pass_at_1(byte_tok, tmp_path):
    problems = aime_problems()
    golds = [p.gold for p in problems]
    # Sample s of problem i is right when (i + s) % 3 == 0: per-problem rates are known exactly.
    gen = ScriptedGenerator(byte_tok, problems, lambda i, s: golds[i] if (i + s) % 3 == 0 else "1")
    settings = EvalSettings(num_samples=3, batch_size=6, seed=1)
    res = run_model_eval(gen, byte_tok, "aime24", settings, data_dir=shared_data("benchmarks"), limit=6,
                         out_dir=tmp_path, model="scripted", progress=False)
    per_problem = [sum((i + s) % 3 == 0 for s in range(3)) / 3 for i in range(6)]  # 1/3 each
    r = res["aime24"]
    assert r["accuracy"] == pytest.approx(np.mean(per_problem))
    assert r["stderr"] == pytest.approx(np.std(per_problem, ddof=1) / np.sqrt(6))
    assert (r["n"], r["k"], r["samples"], r["missing"]) == (6, 3, 18, 0)
    assert (r["temperature"], r["top_p"], r["max_new_tokens"], r["scoring"]) == (0.6, 0.95, 32768, "paper")
    assert json.loads((tmp_path / "results.json").read_text()) == res
    details = read_details(tmp_path, "aime24")
    assert [(d["index"], d["sample"]) for d in details] == [(i, s) for i in range(6) for s in range(3)]
    for d in details:
        assert d["correct"] == ((d["index"] + d["sample"]) % 3 == 0)
        assert d["prompt"].startswith("<bos><|User|>" + EVAL_INSTRUCTION) and d["prompt"].endswith("<think>\n")
        assert d["gold"] == golds[d["index"]] and d["completion"].endswith("I hope it is correct")
        assert d["prediction"] == (str(int(golds[d["index"]])) if d["correct"] else "1")
        assert d["length"] == len(byte_tok.encode(d["completion"])) + 1 and d["truncated"] is False
    # 6 rows per call: 2 problems x 3 samples, prompts sorted by length.
    assert [k for _, k in gen.calls] == [3, 3, 3]
    lengths = [n for lens, _ in gen.calls for n in lens]
    assert lengths == sorted(lengths)
    assert "aime24" in format_table(res) and flat_metrics(res)["eval/aime24/accuracy"] == r["accuracy"]


def test_rerun_resumes(byte_tok, tmp_path):
    problems = aime_problems(4)
    kw = dict(data_dir=shared_data("benchmarks"), limit=4, out_dir=tmp_path, model="m", progress=False)
    first = ScriptedGenerator(byte_tok, problems, lambda i, s: problems[i].gold)
    run_model_eval(first, byte_tok, "aime24", EvalSettings(num_samples=1), **kw)
    assert first.generated == 4

    again = ScriptedGenerator(byte_tok, problems, lambda i, s: "wrong")
    res = run_model_eval(again, byte_tok, "aime24", EvalSettings(num_samples=1), **kw)
    assert again.generated == 0 and res["aime24"]["accuracy"] == 1.0

    # An interrupted run: the last sample and a torn line. Only that sample is generated again.
    path = tmp_path / "details_aime24.jsonl"
    lines = path.read_text().splitlines()
    path.write_text("\n".join(lines[:-1]) + '\n{"index": 3, "samp')
    fix = ScriptedGenerator(byte_tok, problems, lambda i, s: "wrong")
    res = run_model_eval(fix, byte_tok, "aime24", EvalSettings(num_samples=1), **kw)
    assert fix.generated == 1 and res["aime24"]["accuracy"] == 0.75

    # More samples per problem: only the new ones are drawn, in one group of 2 per problem.
    more = ScriptedGenerator(byte_tok, problems, lambda i, s: "wrong")
    res = run_model_eval(more, byte_tok, "aime24", EvalSettings(num_samples=3), **kw)
    assert more.generated == 8 and {k for _, k in more.calls} == {2}
    assert res["aime24"]["k"] == 3 and res["aime24"]["accuracy"] == pytest.approx(0.25)
    assert len(read_details(tmp_path, "aime24")) == 12

    # Fewer samples than stored: the first K count.
    res = run_model_eval(more, byte_tok, "aime24", EvalSettings(num_samples=1), **kw)
    assert res["aime24"]["accuracy"] == 0.75 and res["aime24"]["k"] == 1

    # A smaller limit counts fewer problems but keeps the other rows on disk.
    res = run_model_eval(more, byte_tok, "aime24", EvalSettings(num_samples=3), **{**kw, "limit": 2})
    assert (res["aime24"]["n"], res["aime24"]["accuracy"]) == (2, pytest.approx(1 / 3))
    assert len(read_details(tmp_path, "aime24")) == 12

    # Other generation settings must not mix into the same directory.
    with pytest.raises(ValueError, match="temperature"):
        run_model_eval(more, byte_tok, "aime24", EvalSettings(temperature=1.0), **kw)

    # Another scoring mode rescores what is stored, without generating.
    res = run_model_eval(more, byte_tok, "aime24", EvalSettings(num_samples=3, scoring="fixed"), **kw)
    assert more.generated == 8 and res["aime24"]["scoring"] == "fixed"


def test_tasks_accumulate_in_results(byte_tok, tmp_path):
    data = shared_data("benchmarks")
    for task in ("amc23", "math500"):
        problems = load_task(task, data, limit=2)
        gen = ScriptedGenerator(byte_tok, problems, lambda i, s: "7")
        run_model_eval(gen, byte_tok, task, EvalSettings(), data_dir=data, limit=2, out_dir=tmp_path,
                       model="m", progress=False)
    assert set(json.loads((tmp_path / "results.json").read_text())) == {"amc23", "math500"}


def test_in_memory_run_writes_nothing(byte_tok, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    problems = aime_problems(2)
    gen = ScriptedGenerator(byte_tok, problems, lambda i, s: problems[i].gold)
    res = run_model_eval(gen, byte_tok, ["aime24"], EvalSettings(num_samples=2), data_dir=shared_data("benchmarks"),
                         limit=2, progress=False)
    assert res["aime24"]["accuracy"] == 1.0 and list(tmp_path.iterdir()) == []


def test_pass_at_1_edge_cases():
    assert pass_at_1([1.0]) == (1.0, 0.0)
    mean, se = pass_at_1([0.0, 0.5, 1.0, 1.0])
    assert mean == pytest.approx(0.625) and se == pytest.approx(np.std([0, 0.5, 1, 1], ddof=1) / 2)
    assert all(np.isnan(pass_at_1([])))


# --- completions mode --------------------------------------------------------------------------


def write_completions(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def boxed(answer: str) -> str:
    return f"<think>\nwork\n</think>\n\nTherefore, the final answer is: $\\boxed{{{answer}}}$. I hope it is correct"


def test_completions_mode(tmp_path, capsys):
    data = shared_data("benchmarks")
    aime = load_task("aime24", data)
    math = load_task("math500", data)
    rows = [
        {"task": "aime24", "index": 0, "completion": boxed(aime[0].gold)},
        {"task": "aime24", "index": 0, "completion": boxed("1")},  # second sample of problem 0
        {"task": "aime24", "index": 7, "completion": boxed("25"), "length": 99},  # gold "025"
        {"task": "math500", "index": 0, "completion": boxed("\\left( 3, \\frac{\\pi}{2} \\right)")},
    ]
    comp = write_completions(tmp_path / "c.jsonl", rows)
    out = tmp_path / "out"
    assert evaluate_main(["--completions", str(comp), "--data_dir", str(data), "--out", str(out), "--no_progress"]) == 0
    printed = capsys.readouterr().out
    assert "aime24" in printed and "math500" in printed and "average" in printed
    res = json.loads((out / "results.json").read_text())
    assert res["aime24"]["accuracy"] == pytest.approx((0.5 + 1.0) / 2)
    assert (res["aime24"]["n"], res["aime24"]["k"], res["aime24"]["missing"]) == (2, 2, 28)
    assert res["math500"]["accuracy"] == 1.0 and "temperature" not in res["math500"]
    details = read_details(out, "aime24")
    assert [(d["index"], d["sample"], d["correct"]) for d in details] == [(0, 0, True), (0, 1, False), (7, 0, True)]
    assert details[2]["length"] == 99 and details[0]["length"] is None
    assert details[0]["prompt"].startswith(EVAL_INSTRUCTION)  # no tokenizer: the user message

    # A rerun rescores only rows whose text changed; dropped rows leave the details.
    rows[1]["completion"] = boxed(aime[0].gold)
    write_completions(comp, rows[:2])
    res = run_completions_eval(comp, EvalSettings(), tasks="aime24", data_dir=data, out_dir=out, progress=False)
    assert res["aime24"]["accuracy"] == 1.0 and len(read_details(out, "aime24")) == 2


def test_completions_mode_errors(tmp_path, capsys):
    data = str(shared_data("benchmarks"))
    out = str(tmp_path / "out")
    bad = [
        ("not json\n", "bad.jsonl:1 is not valid JSON"),
        ('{"task": "gsm8k", "index": 0, "completion": "x"}\n', "unknown task"),
        ('{"task": "aime24", "index": -1, "completion": "x"}\n', "index must be"),
        ('{"task": "aime24", "index": 30, "completion": "x"}\n', "has 30 rows"),
        ('{"task": "aime24", "completion": "x"}\n', "expected a JSON object"),
        ('{"task": ["aime24"], "index": 0, "completion": "x"}\n', "unknown task"),
        ('{"task": "aime24", "index": 0, "completion": "x", "length": "5"}\n', "length must be"),
        ('{"task": "aime24", "index": 0, "completion": "x", "truncated": 1}\n', "truncated must be"),
    ]
    for text, message in bad:
        path = tmp_path / "bad.jsonl"
        path.write_text(text)
        with pytest.raises(SystemExit) as e:
            evaluate_main(["--completions", str(path), "--data_dir", data, "--out", out, "--no_progress"])
        assert e.value.code == 2 and message in capsys.readouterr().err
    with pytest.raises(ValueError, match="no completions for task math500"):
        write_completions(tmp_path / "one.jsonl", [{"task": "aime24", "index": 0, "completion": "x"}])
        run_completions_eval(tmp_path / "one.jsonl", EvalSettings(), tasks="math500", data_dir=data, progress=False)


# --- task data ----------------------------------------------------------------------------------


def test_task_names():
    assert parse_task_names("aime24, math500,aime24") == ["aime24", "math500"]
    with pytest.raises(ValueError, match="unknown task 'gsm8k'"):
        parse_task_names("gsm8k")


def test_every_shared_benchmark_loads():
    data = shared_data("benchmarks")
    sizes = {t: len(load_task(t, data)) for t in ("aime24", "aime25", "amc23", "math500", "minerva", "olympiadbench")}
    assert sizes == {"aime24": 30, "aime25": 30, "amc23": 40, "math500": 500, "minerva": 272, "olympiadbench": 675}
    assert load_task("aime24", data)[7].gold == "025"
    assert load_task("olympiadbench", data)[0].problem.startswith("Xenia and Sergey")


def test_data_dir_errors(tmp_path):
    with pytest.raises(ValueError, match="aime24.jsonl not found"):
        load_task("aime24", tmp_path)
    (tmp_path / "aime24.jsonl").write_text('{"problem": "p"}\n')
    with pytest.raises(ValueError, match="no 'answer' field"):
        load_task("aime24", tmp_path)
    (tmp_path / "aime24.jsonl").write_text('[1, 2]\n')
    with pytest.raises(ValueError, match="row 0 is list, not a JSON object"):
        load_task("aime24", tmp_path)


def test_hub_loading(monkeypatch):
    calls = []

    def load_dataset(name, split):
        calls.append((name, split))
        if name == "knoveleng/AMC-23":
            raise ConnectionError("offline")
        return [{"problem": "p", "solution": "$\\boxed{1}$"}, {"problem": "q", "solution": "$\\boxed{2}$"}]

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    problems = load_task("math500", limit=1)
    assert calls == [("HuggingFaceH4/MATH-500", "test")] and [p.gold for p in problems] == ["$\\boxed{1}$"]
    with pytest.raises(ValueError, match="offline, pass --data_dir"):
        load_task("amc23")


def test_cli_argument_errors(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        evaluate_main(["--out", str(tmp_path)])  # neither --model nor --completions
    assert e.value.code == 2
    with pytest.raises(SystemExit) as e:
        evaluate_main(["--model", str(tmp_path / "none"), "--out", str(tmp_path), "--num_samples", "0"])
    assert e.value.code == 2 and "num_samples must be >= 1" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        evaluate_main(["--model", str(tmp_path / "none"), "--out", str(tmp_path)])
    assert e.value.code == 2 and "does not exist" in capsys.readouterr().err
