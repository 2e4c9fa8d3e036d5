#!/usr/bin/env bash
# Exp2-shaped throughput and memory on one GPU, with random weights (nothing to download).
#
#   bash bench/gpu_exp2.sh [RESULTS_DIR]        # default: bench/results/<date>-<device>/
#   SMALL=1 bash bench/gpu_exp2.sh /tmp/check   # tiny shapes: checks the script on a CPU in about a minute
#
# Shapes (configs/exp2.py + preset:deepseek-r1-distill-qwen-1.5b): DeepSeek-R1-Distill-Qwen-1.5B
# (1.78 B parameters), 12 prompts x 6 samples = 72 rows, generated prompts of 512 tokens, 3,584 new
# tokens per row with EOS ignored, bf16 compute, fp32 master weights and AdamW, remat "full",
# micro-batch 6, beta 0.04 (reference pass). Runs, each writing RESULTS_DIR/<name>.json (+ .log):
#   step    warm-up + STEPS steps of the real GRPOTrainer (exp2's run config, the bench's cheap
#           custom reward), split by the trainer into rollout (the sampler's prefill and decode),
#           reward, reference and update; decode bandwidth use against the copy bandwidth measured
#           in the same process; update and reference MFU; the runtime's peak device memory.
#   memory  the ahead-of-time memory plan of the same programs for 1 device (PLAN=0 skips it).
#   decode_realistic  the sampler at the same shapes with rows stopping at recipe-like lengths (forced
#           EOS: 15% at the cap, the rest uniform over 1k-3.5k tokens), so that skipping finished rows
#           shows; compare its decode time with the step's, where every row runs to the cap
#           (REALISTIC=0 skips it).
#   sampler, update (SAMPLER=1, UPDATE=1; off by default, the step covers both): the standalone benches.
# Then prints a table of the figures against the issue's goals (decode >= 60% of copy bandwidth at
# 72 rows, update MFU >= 40%, a whole step < 60 s).
#
# Environment: STEPS (timed steps, default 2), PYTHON (default python), XLA_PYTHON_CLIENT_MEM_FRACTION
# (default 0.92), JAX_COMPILATION_CACHE_DIR (default /tmp/openrs-jax-cache: runs share compiled programs),
# WHEELS (default .whl): pure-Python wheels installed first when the directory holds any, for a machine
# that cannot reach a package index and lacks some of the project's dependencies (a GPU image without
# ml-collections and math-verify). Fetch them where pip works, e.g.
#   pip download --no-deps --only-binary=:all: --python-version 3.12 -d .whl ml-collections math-verify \
#     latex2sympy2_extended antlr4-python3-runtime==4.13.2
set -euo pipefail

cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python}
STEPS=${STEPS:-2}
PLAN=${PLAN:-1}
SAMPLER=${SAMPLER:-0}
UPDATE=${UPDATE:-0}
REALISTIC=${REALISTIC:-1}
export XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.92}
export JAX_COMPILATION_CACHE_DIR=${JAX_COMPILATION_CACHE_DIR:-/tmp/openrs-jax-cache}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
WHEELS=${WHEELS:-.whl}
if compgen -G "$WHEELS/*.whl" > /dev/null; then
  site=$(mktemp -d /tmp/openrs-wheels.XXXXXX)
  "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$site" "$WHEELS"/*.whl
  export PYTHONPATH="$PYTHONPATH:$site"  # after the repository and the image's own packages' paths
fi

device=$("$PYTHON" -c "import jax; d = jax.devices()[0]; print(d.device_kind if d.platform != 'cpu' else 'cpu')" \
  | tr -c 'A-Za-z0-9.\n-' '-' | tr -s '-' | sed 's/^-//; s/-$//')
RESULTS=${1:-bench/results/$(date -u +%Y-%m-%d)-${device}}
mkdir -p "$RESULTS"

if [[ "${SMALL:-0}" == 1 ]]; then
  MODEL="builtin:tiny"
  CONFIG="$RESULTS/small_config.py"
  cat > "$CONFIG" <<'EOF'
"""Exp2's settings at tiny shapes: a check of bench/gpu_exp2.sh on a CPU."""

from openrs_jax.recipe.config import base_config


def get_config():
    c = base_config()
    c.rollout.prompts_per_step, c.rollout.num_generations, c.grpo.micro_batch_size = 2, 2, 2
    c.data.max_prompt_length, c.rollout.max_completion_length = 16, 8
    c.model.compute_dtype, c.model.remat = "float32", "none"
    c.mesh.fsdp = 1
    return c
EOF
else
  MODEL="preset:deepseek-r1-distill-qwen-1.5b"
  CONFIG="configs/exp2.py"
fi

# `python -m openrs_jax.bench` (it leaves out the subcommands whose optional dependencies this
# machine lacks), its log kept in RESULTS.
bench() {
  local name=$1
  shift
  echo "== bench $* (log: $RESULTS/$name.log)"
  "$PYTHON" -m openrs_jax.bench "$@" --out "$RESULTS/$name.json" > "$RESULTS/$name.log" 2>&1 \
    || { tail -n 30 "$RESULTS/$name.log"; return 1; }
  echo "   wrote $RESULTS/$name.json"
}

status=0
# No system prompt: the preset's built-in tokenizer knows no English; the 512 prompt tokens are the sums.
bench step step --config "$CONFIG" --model "$MODEL" --steps "$STEPS" --system_prompt "" || status=1
if [[ "$PLAN" == 1 ]]; then
  bench memory memory --config "$CONFIG" --model "$MODEL" --devices 1 || status=1
fi
if [[ "$REALISTIC" == 1 ]]; then
  bench decode_realistic sampler --config "$CONFIG" --model "$MODEL" --repeats 1 --stop_lengths realistic \
    --no_copy_bandwidth || status=1
fi
if [[ "$SAMPLER" == 1 ]]; then
  bench sampler sampler --config "$CONFIG" --model "$MODEL" --repeats 1 || status=1
fi
if [[ "$UPDATE" == 1 ]]; then
  bench update update --config "$CONFIG" --model "$MODEL" --steps 2 --reference || status=1
fi

"$PYTHON" - "$RESULTS" <<'EOF'
import json
import sys
from pathlib import Path

results = Path(sys.argv[1])


def load(name):
    path = results / f"{name}.json"
    return json.loads(path.read_text()) if path.is_file() else None


def pct(x):
    return "n/a" if x is None else f"{100 * x:.0f}%"


def gb(x):
    return "n/a" if x is None else f"{x / 1e9:.1f} GB" if x >= 1e8 else f"{x / 1e6:.1f} MB"


def count(x):
    return f"{x / 1e9:.2f} B" if x >= 1e9 else f"{x / 1e6:.1f} M"


def rate(x):
    return "n/a" if not x else f"{x / 1e12:.2f} TB/s" if x >= 1e11 else f"{x / 1e9:.1f} GB/s"


rows = []
step = load("step")
if step:
    parts = " / ".join(f"{step.get(k, 0):.2f}" for k in ("rollout_s", "reward_s", "reference_s", "update_s"))
    rows += [
        ("device", f"{step['device_kind']} x {step['device_count']} ({step['date']})", ""),
        ("shapes", f"{count(step['num_params'])} params, {step['rows']} rows = {step['prompts_per_step']} x "
         f"{step['num_generations']}, prompt {step['prompt_len_bucketed']}, {step['max_new_tokens']} new tokens, "
         f"{step['dtype']}, remat {step['remat']}, micro-batch {step['micro_batch_size']}", ""),
        (f"step time (median of {step['steps']})", f"{step['step_time_s']:.2f} s (first step {step['first_step_s']:.0f} s)",
         "< 60 s"),
        ("  rollout / reward / reference / update", parts + " s", ""),
        ("  decode step", f"{1e3 * step['decode_step_s']:.2f} ms, {gb(step['decode_bytes_per_step'])} read "
         f"(weights {gb(step['weight_bytes_per_step'])} + KV cache attended {gb(step['kv_bytes_per_step_attended'])})", ""),
        ("decode bandwidth use", f"{pct(step.get('decode_bandwidth_use'))} of "
         f"{rate(step.get('copy_bandwidth_bytes_per_s'))} copy "
         f"(whole cache counted: {pct(step.get('decode_bandwidth_use_full_cache'))})", ">= 60%"),
        ("update MFU", f"{pct(step.get('update_mfu'))} ({step['update_tflops_per_s_per_device']:.3g} TFLOP/s per device)", ">= 40%"),
        ("reference MFU", f"{pct(step.get('reference_mfu'))} ({step.get('reference_tflops_per_s_per_device', 0):.3g} TFLOP/s per device)",
         ""),
        ("completion tokens/s", f"{step['completion_tokens_per_s']:.0f}", ""),
        ("peak memory (runtime)", gb(step.get("peak_bytes_in_use", step.get("host_peak_rss_bytes"))) +
         f" [{step['memory_source']}]", ""),
    ]
memory = load("memory")
if memory:
    rows.append(("memory plan (AOT): update / rollout / step", " / ".join(
        gb(memory.get(k)) for k in ("update_peak_bytes_per_device", "rollout_peak_bytes_per_device",
                                    "step_peak_estimate_bytes_per_device")), ""))
sampler = load("sampler")
if sampler:
    rows.append(("sampler: decode tokens/s, bandwidth use",
                 f"{sampler['decode_tokens_per_s']:.0f}, {pct(sampler.get('decode_bandwidth_use'))}", ""))
realistic = load("decode_realistic")
if realistic:
    rows.append(("decode, realistic lengths", f"{realistic['decode_s']:.2f} s for {realistic['rows']} rows of mean "
                 f"{realistic['mean_completion_length']:.0f} tokens (cap {realistic['new_tokens']}), "
                 f"{realistic['decode_tokens_per_s']:.0f} tokens/s [{realistic['decode_attention']} attention]", ""))
update = load("update")
if update:
    rows.append(("update bench: step, MFU", f"{update['step_time_s']:.1f} s, {pct(update.get('mfu'))}", ""))
width = max((len(r[0]) for r in rows), default=10)
print(f"\nresults in {results}/")
for name, value, goal in rows:
    print(f"{name:<{width}}  {value}" + (f"   [goal {goal}]" if goal else ""))
EOF
exit $status
