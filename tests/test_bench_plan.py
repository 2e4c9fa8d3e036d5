"""`bench plan`: HLO byte and FLOP counting, GPU target files, and the plan of a tiny model.

The counting is checked against hand computations on a hand-written HLO module (loops, in-place
updates, slices, library calls) and on a program compiled here for the CPU. The GPU plan itself
needs `jax[cuda12]` (the gpu extra); without it that test is skipped and the emulated-CPU
fallback is checked instead.
"""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import jax
import jax.numpy as jnp
import pytest

from openrs_jax.bench import hlo_cost, plan
from tests.conftest import REPO_ROOT

REPO = Path(__file__).resolve().parents[1]
STEP_PROGRAMS = {"rollout_params", "prepare", "prefill", "decode", "reference", "update"}
HAS_CUDA_PLUGIN = importlib.util.find_spec("jax_cuda12_plugin") is not None

# A loop of 10 known iterations (a slice of a stacked array, a cast, a gemm fusion, an in-place row
# update), a cuBLAS gemm with a workspace output, a causal cuDNN attention call, and a loop with no
# proven trip count.
HAND_WRITTEN_HLO = """\
HloModule hand_written, entry_computation_layout={(bf16[4,8]{1,0})->bf16[4,8]{1,0}}

%fused_update (param_0: bf16[4,8], param_1: bf16[1,8], param_2: s32[]) -> bf16[4,8] {
  %param_0 = bf16[4,8]{1,0} parameter(0)
  %param_1 = bf16[1,8]{1,0} parameter(1)
  %param_2 = s32[] parameter(2)
  %constant_0 = s32[] constant(0)
  ROOT %dynamic-update-slice.1 = bf16[4,8]{1,0} dynamic-update-slice(%param_0, %param_1, %param_2, %constant_0)
}

%fused_slice (param_0.1: f32[10,16,32], param_1.1: s32[]) -> f32[1,16,32] {
  %param_0.1 = f32[10,16,32]{2,1,0} parameter(0)
  %param_1.1 = s32[] parameter(1)
  %constant_1 = s32[] constant(0)
  ROOT %dynamic-slice.1 = f32[1,16,32]{2,1,0} dynamic-slice(%param_0.1, %param_1.1, %constant_1, %constant_1), dynamic_slice_sizes={1,16,32}
}

%gemm_computation (p0: bf16[16,32], p1: bf16[32,64]) -> f32[16,64] {
  %p0 = bf16[16,32]{1,0} parameter(0)
  %p1 = bf16[32,64]{1,0} parameter(1)
  ROOT %dot.1 = f32[16,64]{1,0} dot(%p0, %p1), lhs_contracting_dims={1}, rhs_contracting_dims={0}
}

%body (param: (s32[], bf16[4,8], f32[10,16,32], bf16[32,64])) -> (s32[], bf16[4,8], f32[10,16,32], bf16[32,64]) {
  %param = (s32[], bf16[4,8]{1,0}, f32[10,16,32]{2,1,0}, bf16[32,64]{1,0}) parameter(0)
  %i = s32[] get-tuple-element(%param), index=0
  %buf = bf16[4,8]{1,0} get-tuple-element(%param), index=1
  %stack = f32[10,16,32]{2,1,0} get-tuple-element(%param), index=2
  %w = bf16[32,64]{1,0} get-tuple-element(%param), index=3
  %slice_fusion = f32[1,16,32]{2,1,0} fusion(%stack, %i), kind=kLoop, calls=%fused_slice
  %cast = bf16[1,16,32]{2,1,0} convert(%slice_fusion)
  %flat = bf16[16,32]{1,0} bitcast(%cast)
  %gemm = f32[16,64]{1,0} fusion(%flat, %w), kind=kCustom, calls=%gemm_computation
  %c = bf16[] constant(1)
  %row = bf16[1,8]{1,0} broadcast(%c), dimensions={}
  %dus = bf16[4,8]{1,0} fusion(%buf, %row, %i), kind=kLoop, calls=%fused_update
  %one = s32[] constant(1)
  %next = s32[] add(%i, %one)
  ROOT %t = (s32[], bf16[4,8]{1,0}, f32[10,16,32]{2,1,0}, bf16[32,64]{1,0}) tuple(%next, %dus, %stack, %w)
}

%cond (p: (s32[], bf16[4,8], f32[10,16,32], bf16[32,64])) -> pred[] {
  %p = (s32[], bf16[4,8]{1,0}, f32[10,16,32]{2,1,0}, bf16[32,64]{1,0}) parameter(0)
  %ic = s32[] get-tuple-element(%p), index=0
  %ten = s32[] constant(10)
  ROOT %lt = pred[] compare(%ic, %ten), direction=LT
}

%body2 (q: (s32[], f32[256])) -> (s32[], f32[256]) {
  %q = (s32[], f32[256]{0}) parameter(0)
  %j = s32[] get-tuple-element(%q), index=0
  %v = f32[256]{0} get-tuple-element(%q), index=1
  %v2 = f32[256]{0} multiply(%v, %v)
  %one2 = s32[] constant(1)
  %j2 = s32[] add(%j, %one2)
  ROOT %t2 = (s32[], f32[256]{0}) tuple(%j2, %v2)
}

%cond2 (r: (s32[], f32[256])) -> pred[] {
  %r = (s32[], f32[256]{0}) parameter(0)
  %jc = s32[] get-tuple-element(%r), index=0
  %lim = s32[] get-tuple-element(%r), index=0
  ROOT %lt2 = pred[] compare(%jc, %lim), direction=LT
}

ENTRY %main (buf0: bf16[4,8], stack0: f32[10,16,32], w0: bf16[32,64], a: bf16[16,32], q: bf16[2,64,4,32], v0: f32[256]) -> bf16[4,8] {
  %buf0 = bf16[4,8]{1,0} parameter(0)
  %stack0 = f32[10,16,32]{2,1,0} parameter(1)
  %w0 = bf16[32,64]{1,0} parameter(2)
  %a = bf16[16,32]{1,0} parameter(3)
  %q = bf16[2,64,4,32]{3,2,1,0} parameter(4)
  %v0 = f32[256]{0} parameter(5)
  %zero = s32[] constant(0)
  %init = (s32[], bf16[4,8]{1,0}, f32[10,16,32]{2,1,0}, bf16[32,64]{1,0}) tuple(%zero, %buf0, %stack0, %w0)
  %loop = (s32[], bf16[4,8]{1,0}, f32[10,16,32]{2,1,0}, bf16[32,64]{1,0}) while(%init), condition=%cond, body=%body, backend_config={"known_trip_count":{"n":"10"}}
  %cublas = (f32[16,64]{1,0}, s8[1024]{0}) custom-call(%a, %w0), custom_call_target="__cublas$gemm", backend_config={"gemm_backend_config":{"dot_dimension_numbers":{"lhs_contracting_dimensions":["1"],"rhs_contracting_dimensions":["0"],"lhs_batch_dimensions":[],"rhs_batch_dimensions":[]}}}
  %fmha = (bf16[2,4,64,32]{3,2,1,0}, u8[0]{0}) custom-call(%q, %q, %q), custom_call_target="__cudnn$fmhaSoftmax", backend_config={"cudnn_fmha_backend_config":{"intermediate_tensor_shape":{"dimensions":["2","4","64","64"]},"mask_type":"CAUSAL","bmm1_dot_dimension_numbers":{"lhs_contracting_dimensions":["3"]}}}
  %fmha_bwd = (bf16[2,64,4,32]{3,2,1,0}, bf16[2,64,4,32]{3,2,1,0}, bf16[2,64,4,32]{3,2,1,0}, u8[0]{0}) custom-call(%q, %q, %q, %q), custom_call_target="__cudnn$fmhaSoftmaxBackward", backend_config={"cudnn_fmha_backend_config":{"intermediate_tensor_shape":{"dimensions":["2","4","64","64"]},"mask_type":"CAUSAL","bmm2_grad_gemm2_dot_dimension_numbers":{"lhs_contracting_dimensions":["3"]}}}
  %init2 = (s32[], f32[256]{0}) tuple(%zero, %v0)
  %loop2 = (s32[], f32[256]{0}) while(%init2), condition=%cond2, body=%body2
  ROOT %out = bf16[4,8]{1,0} get-tuple-element(%loop), index=1
}
"""


def test_hlo_cost_follows_loops_slices_in_place_updates_and_library_calls():
    cost = hlo_cost.program_cost(HAND_WRITTEN_HLO, unknown_trip_count=7)
    # One iteration of %body, by hand (bytes written / read):
    #   slice fusion  2,048 / 2,048 (the slice of the stacked array) + 4 (the index)
    #   convert       1,024 / 2,048
    #   gemm fusion   4,096 / 1,024 + 4,096                       FLOPs 2 x 16 x 64 x 32 = 65,536
    #   broadcast        16 / 2
    #   in-place DUS     16 / 16 (the row) + 4 (the index): the 64-byte buffer is neither copied nor read
    #   add               4 / 8
    # and %cond: compare 1 / 8.
    first, second = cost.loops
    assert (first.trip_count, first.known) == (10, True)
    assert first.per_iteration.bytes_written == 2048 + 1024 + 4096 + 16 + 16 + 4 + 1
    assert first.per_iteration.bytes_read == 2052 + 2048 + 5120 + 2 + 20 + 8 + 8
    assert first.per_iteration.flops == 65536
    assert first.per_iteration.kernels == 7  # 6 in the body, the compare in the condition
    # The second loop has no proven trip count: 7 (the caller's) x (multiply 1,024 / 2,048, add 4 / 8,
    # compare 1 / 8).
    assert (second.trip_count, second.known) == (7, False)
    assert (second.per_iteration.bytes_written, second.per_iteration.bytes_read) == (1029, 2064)
    assert cost.token_loop() is second
    # cuBLAS: the f32 result (not the s8 workspace), both operands, 2 x 16 x 64 x 32 FLOPs.
    # cuDNN attention: its bf16 output (not the empty u8 scratch), three operands, two matmuls over
    # [2, 4, 64, 64] scores of head_dim 32, halved by the causal mask.
    # Its backward: dQ, dK, dV written, four operands read, five matmuls.
    cublas = (4096, 1024 + 4096, 65536)
    qkv = 2 * 64 * 4 * 32 * 2  # bytes of one [2, 64, 4, 32] bf16 tensor
    scores = 2 * 4 * 64 * 64
    fmha = (qkv, 3 * qkv, 2 * 2 * scores * 32 * 0.5)
    fmha_bwd = (3 * qkv, 4 * qkv, 2 * 5 * scores * 32 * 0.5)
    assert cost.total.bytes_written == 10 * 7205 + cublas[0] + fmha[0] + fmha_bwd[0] + 7 * 1029
    assert cost.total.bytes_read == 10 * 9258 + cublas[1] + fmha[1] + fmha_bwd[1] + 7 * 2064
    assert cost.total.flops == 10 * 65536 + cublas[2] + fmha[2] + fmha_bwd[2]
    # The largest writers per call: the attention backward, the gemm fusion (4,096 bytes x 10
    # iterations), then the attention forward.
    top = [(w["instruction"], w["runs_per_call"], w["bytes_per_call"]) for w in cost.largest_writes[:3]]
    assert top == [("fmha_bwd", 1, 3 * qkv), ("gemm", 10, 40960), ("fmha", 1, qkv)]
    assert cost.largest_writes[2]["shape"] == "(bf16[2,4,64,32], u8[0])"


def test_hlo_cost_of_a_program_compiled_here():
    """A loop of 6 matmuls compiled for the CPU: FLOPs exact, every iteration's outputs written."""

    def f(x, w):
        return jax.lax.fori_loop(0, 6, lambda i, x: jnp.tanh(x @ w), x)

    args = (jax.ShapeDtypeStruct((32, 64), jnp.float32), jax.ShapeDtypeStruct((64, 64), jnp.float32))
    compiled = jax.jit(f).lower(*args).compile()
    cost = hlo_cost.program_cost(compiled.as_text())
    assert cost.total.flops == 6 * 2 * 32 * 64 * 64
    (loop,) = cost.loops
    assert (loop.trip_count, loop.known) == (6, True)
    # At least the matmul's output and the tanh's, each [32, 64] fp32, every iteration; at most a
    # few more copies of that size (the CPU compiler may fuse the tanh away).
    assert 32 * 64 * 4 <= loop.per_iteration.bytes_written <= 4 * 32 * 64 * 4
    assert loop.per_iteration.bytes_read >= 32 * 64 * 4 + 64 * 64 * 4  # x and w


def test_shape_bytes_reads_tuples_and_ignores_layouts():
    assert hlo_cost.shape_bytes("(bf16[2,3]{1,0:T(2,128)(2,1)}, f32[], s8[0]{0}, pred[5])") == 12 + 4 + 0 + 5


def test_targets_hold_the_datasheet_figures():
    h200, h100, a40 = (plan.load_target(n) for n in ("h200", "h100", "a40"))
    assert (h200.memory_bytes, h200.bandwidth_bytes_per_s) == (141e9, 4.8e12)
    assert (h100.memory_bytes, h100.bandwidth_bytes_per_s) == (80e9, 3.35e12)
    assert (a40.memory_bytes, a40.bandwidth_bytes_per_s) == (48e9, 696e9)
    assert (h100.peak_bf16_flops_per_s, a40.peak_bf16_flops_per_s) == (989.4e12, 149.7e12)
    assert re.search(r"cuda_compute_capability \{ major: 8 minor: 6 \}", a40.text)
    assert re.search(r"^\s*core_count: 84$", a40.text, re.MULTILINE)
    assert a40.device_kind == "NVIDIA A40" and set(plan.target_names()) >= {"h100", "h200", "a40"}


def _tiny_config(tmp_path: Path) -> Path:
    config = tmp_path / "tiny_config.py"
    # bf16 like the real runs (the GPU compiler finds no Triton tiling for some fp32 gemms this small).
    config.write_text(
        "from openrs_jax.recipe.config import base_config\n\n\n"
        "def get_config():\n"
        "    c = base_config()\n"
        "    c.rollout.prompts_per_step, c.rollout.num_generations, c.grpo.micro_batch_size = 2, 2, 2\n"
        "    c.data.max_prompt_length, c.rollout.max_completion_length = 16, 16\n"
        "    c.model.compute_dtype, c.model.remat = 'bfloat16', 'full'\n"
        "    return c\n"
    )
    return config


def _run_plan(tmp_path: Path, target: str, devices: int) -> dict:
    from openrs_jax.bench.__main__ import main

    # builtin:tiny's shape with a 512-token vocabulary: with 29 the GPU compiler turns the tiny
    # decode matmuls into loop fusions, and the FLOP count has no dot left to check.
    model = tmp_path / "model"
    model.mkdir(exist_ok=True)
    shape = json.loads((REPO_ROOT / "openrs_jax" / "assets" / "tiny" / "config.json").read_text())
    (model / "config.json").write_text(json.dumps({**shape, "vocab_size": 512}))
    return main(["plan", "--config", str(_tiny_config(tmp_path)), "--model_config", str(model),
                 "--target", target, "--devices", str(devices), "--dump_hlo", str(tmp_path / "hlo"),
                 "--out", str(tmp_path / "plan.json")])


def _check_every_program_listed_dumped_and_sized(result: dict, tmp_path: Path) -> None:
    assert json.loads((tmp_path / "plan.json").read_text())["programs"].keys() == result["programs"].keys()
    assert set(result["programs"]) == STEP_PROGRAMS
    for name, p in result["programs"].items():
        hlo = (tmp_path / "hlo" / p["hlo"]).read_text()
        assert hlo.startswith("HloModule"), name
        assert p["peak_bytes_per_device"] == p["argument_bytes"] + p["output_bytes"] + p["temp_bytes"] - p["alias_bytes"]
        assert p["peak_bytes_per_device"] > 0 and p["bytes_written_per_call"] > 0 and p["estimated_s_per_step"] > 0
        assert p["calls_per_step"] == 1
        if name not in ("rollout_params", "prepare"):  # the weights' cast and layout: no matmuls
            assert p["flops_per_call"] > 0, name
    decode = result["programs"]["decode"]
    # 16 new tokens; on GPUs each loop iteration decodes several (finished rows checked every few steps).
    assert decode["per"] == "generated token"
    assert decode["loop_trip_count"] * decode["tokens_per_loop_iteration"] == 16
    # Per generated token and device, by hand: rows x 2 FLOPs per weight of the matmuls (per layer
    # q, o 64x64, k, v 64x32, the MLP 3 x 64x128; the output head 64x512), plus attention over at
    # most the whole cache of 31 slots (4 heads of 16: QK and PV, 2 FLOPs each).
    rows = 4 // result["mesh"]["fsdp"]
    per_row = 2 * (2 * (2 * 64 * 64 + 2 * 64 * 32 + 3 * 64 * 128) + 64 * 512)
    # The GPU decode may pad its rows (the compiled gemms are [8, ...] for 4 rows): count whole rows.
    padded = round(decode["flops_per_call"] / per_row)
    assert padded in (rows, -(-rows // 8) * 8)
    attention = padded * 2 * 4 * 31 * 16 * 2 * 2
    assert padded * per_row <= decode["flops_per_call"] <= padded * per_row + attention
    assert result["estimated_step_s"] == pytest.approx(sum(p["estimated_s_per_step"] for p in result["programs"].values()))
    assert result["fits"] and result["step_peak_bytes_per_device"] >= result["programs"]["update"]["peak_bytes_per_device"]


@pytest.mark.slow
@pytest.mark.skipif(not HAS_CUDA_PLUGIN, reason="jax[cuda12] (the gpu extra) is not installed: no compile-only GPU devices")
def test_plan_of_a_tiny_model_for_an_h100(tmp_path):
    result = _run_plan(tmp_path, "h100", 1)
    assert "fallback" not in result
    assert result["device_kind"] == "NVIDIA H100 80GB HBM3" and result["compiled_for"].endswith("(compile-only)")
    _check_every_program_listed_dumped_and_sized(result, tmp_path)
    # The GPU compiler's kernels: gemm fusions or cuBLAS calls.
    update_hlo = (tmp_path / "hlo" / "update.hlo.txt").read_text()
    assert "__triton" in update_hlo or "__cublas$gemm" in update_hlo


@pytest.mark.slow
@pytest.mark.skipif(HAS_CUDA_PLUGIN, reason="checks the fallback used where jax[cuda12] is absent")
def test_plan_falls_back_to_emulated_cpu_devices(tmp_path, capsys):
    result = _run_plan(tmp_path, "a40", 2)
    assert "jax[cuda12] is not installed" in result["fallback"] and result["compiled_for"] == "cpu (emulated)"
    assert "falling back to the emulated-CPU plan" in capsys.readouterr().err
    assert result["mesh"]["fsdp"] == 2 and result["device_kind"] == "NVIDIA A40"
    _check_every_program_listed_dumped_and_sized(result, tmp_path)
