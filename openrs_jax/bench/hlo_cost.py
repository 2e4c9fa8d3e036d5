"""Bytes moved and matmul FLOPs of a compiled program, read from its optimized HLO text.

`program_cost(compiled.as_text())` walks the entry computation once, instruction by instruction,
the way the compiled program runs its kernels:

- Each kernel (a fusion, a library call such as a cuBLAS gemm or cuDNN attention, a copy, a
  collective, any other unfused op) writes its outputs to memory and reads its operands. Bytes
  written are the output's bytes, bytes read the operands' bytes, with three exceptions that
  follow what the kernel actually touches: a fusion parameter used only by slices
  (`slice`, `dynamic-slice`, `gather`) counts the slices' bytes; an in-place
  `dynamic-update-slice` (the root of a fusion whose buffer is a fusion parameter, or an unfused
  one) writes and reads only the update; a library call's trailing byte-typed workspace output is
  scratch, not a result.
- Instructions that move nothing are free: parameters, constants, tuples, get-tuple-element,
  bitcasts, the `-done` halves of asynchronous pairs.
- A `while` loop counts its body and condition `trip_count` times: XLA's `known_trip_count` where
  it proved one, else the caller's `unknown_trip_count` (e.g. the decode loop, which stops early
  when every row has finished, by its maximum length). `call` counts its callee, `conditional`
  its most expensive branch.
- FLOPs: 2 x output elements x contracted elements of every `dot` and `convolution` (also inside
  fusions, e.g. Triton gemm fusions), of cuBLAS gemm calls (from their dot dimension numbers), and
  of cuDNN attention calls (two matmuls forward, five backward, halved with a causal mask), and
  of the model's gated-MLP Pallas kernels (two matmuls, recognised by their kernel names).
  Element-wise arithmetic is not counted: against tensor-core peaks it is noise.

Shapes in a partitioned program are per device, so every figure is per device.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from typing import Any, Iterable

DTYPE_BYTES: dict[str, float] = {
    "pred": 1, "s2": 0.25, "u2": 0.25, "s4": 0.5, "u4": 0.5, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "s32": 4,
    "u32": 4, "s64": 8, "u64": 8, "f16": 2, "bf16": 2, "f32": 4, "f64": 8, "c64": 8, "c128": 16,
    "f4e2m1fn": 0.5, "f8e3m4": 1, "f8e4m3": 1, "f8e4m3fn": 1, "f8e4m3b11fnuz": 1, "f8e4m3fnuz": 1, "f8e5m2": 1,
    "f8e5m2fnuz": 1, "f8e8m0fnu": 1, "token": 0,
}
FREE_OPS = frozenset({
    "parameter", "constant", "tuple", "get-tuple-element", "bitcast", "after-all", "partition-id", "replica-id",
    "add-dependency", "opt-barrier", "domain", "get-dimension-size", "iota",
})
SLICING_OPS = frozenset({"slice", "dynamic-slice", "gather"})
# Asynchronous pairs: the "-start" half does the work, the "-done" half only waits.
ASYNC_DONE = re.compile(r"-(done|update)$")

_GATED_MLP_KERNEL = re.compile(r'name = \\?"gated_mlp_(forward|backward)')
_ARRAY = re.compile(r"\b([a-z][a-z0-9]*)\[([^\]]*)\]")
_INSTR = re.compile(r"^\s*(ROOT\s+)?%?([^\s=]+)\s*=\s*(.*)$")
_HEADER = re.compile(r"^\s*(ENTRY\s+)?%?([^\s(]+)\s*\(.*\{\s*$")


@dataclasses.dataclass
class Instruction:
    name: str
    shape: str
    opcode: str
    operands: list[str]
    attrs: str
    root: bool = False
    args: str = ""  # the text between the opcode's parentheses, e.g. a parameter's index

    def attr(self, key: str) -> str | None:
        """The value of `key=%computation` or `key="string"` in the attributes."""
        m = re.search(rf"\b{re.escape(key)}=(%?[\w.\-$]+|\"[^\"]*\")", self.attrs)
        return m.group(1).lstrip("%").strip('"') if m else None

    def called(self, key: str) -> list[str]:
        m = re.search(rf"\b{re.escape(key)}=\{{([^}}]*)\}}", self.attrs)
        return [c.strip().lstrip("%") for c in m.group(1).split(",") if c.strip()] if m else []

    def backend_config(self) -> dict[str, Any]:
        i = self.attrs.find("backend_config=")
        if i < 0:
            return {}
        text = self.attrs[i + len("backend_config="):]
        if text.startswith('"'):  # older printers quote the JSON
            m = re.match(r'"((?:[^"\\]|\\.)*)"', text)
            text = bytes(m.group(1), "utf-8").decode("unicode_escape") if m else "{}"
        else:
            text = text[: _balanced_end(text, 0, "{", "}")]
        try:
            return json.loads(text)
        except json.JSONDecodeError:
            return {}


@dataclasses.dataclass
class Cost:
    """Per-device totals of one program call (or one loop iteration)."""

    bytes_written: float = 0.0
    bytes_read: float = 0.0
    flops: float = 0.0
    kernels: float = 0.0  # kernels launched (fusions, library calls, unfused ops)

    @property
    def bytes_moved(self) -> float:
        return self.bytes_written + self.bytes_read

    def add(self, other: "Cost", times: float = 1.0) -> None:
        self.bytes_written += times * other.bytes_written
        self.bytes_read += times * other.bytes_read
        self.flops += times * other.flops
        self.kernels += times * other.kernels


@dataclasses.dataclass
class Loop:
    """A `while` loop of the entry computation."""

    name: str
    trip_count: int
    known: bool  # False: the caller's unknown_trip_count was assumed
    per_iteration: Cost


@dataclasses.dataclass
class ProgramCost:
    total: Cost
    loops: list[Loop]
    largest_writes: list[dict[str, Any]]  # the instructions that write the most bytes per call

    def token_loop(self) -> Loop | None:
        """The entry-level loop with no proven trip count (else the longest one): a decode loop."""
        if not self.loops:
            return None
        unknown = [loop for loop in self.loops if not loop.known]
        return max(unknown or self.loops, key=lambda loop: loop.trip_count)


def _balanced_end(text: str, start: int, open_: str, close: str) -> int:
    depth = 0
    for i in range(start, len(text)):
        if text[i] == open_:
            depth += 1
        elif text[i] == close:
            depth -= 1
            if depth == 0:
                return i + 1
    return len(text)


def shape_bytes(shape: str) -> float:
    """Bytes of every array in an HLO shape string (tuples summed; layouts ignored)."""
    total = 0.0
    for dtype, dims in _ARRAY.findall(shape):
        if dtype not in DTYPE_BYTES:
            continue
        sizes = [int(d.replace("<=", "")) for d in dims.split(",") if d.strip()]
        total += DTYPE_BYTES[dtype] * math.prod(sizes)
    return total


def shape_elements(shape: str) -> list[tuple[str, list[int]]]:
    return [(dtype, [int(d.replace("<=", "")) for d in dims.split(",") if d.strip()])
            for dtype, dims in _ARRAY.findall(shape) if dtype in DTYPE_BYTES]


def _parse_instruction(line: str) -> Instruction | None:
    m = _INSTR.match(line)
    if not m:
        return None
    root, name, rest = bool(m.group(1)), m.group(2).lstrip("%"), m.group(3)
    if rest.startswith("("):
        end = _balanced_end(rest, 0, "(", ")")
    else:
        m2 = re.match(r"[a-z][a-z0-9]*\[[^\]]*\](\{[^}]*\})?", rest)
        if not m2:
            return None
        end = m2.end()
    shape, rest = rest[:end], rest[end:].strip()
    m3 = re.match(r"([\w\-]+)\(", rest)
    if not m3:
        return None
    opcode = m3.group(1)
    close = _balanced_end(rest, m3.end() - 1, "(", ")")
    operands = re.findall(r"%([^\s,()]+)", rest[m3.end(): close - 1])
    return Instruction(name, shape, opcode, operands, rest[close:], root, rest[m3.end(): close - 1])


def parse_hlo(text: str) -> tuple[dict[str, list[Instruction]], str]:
    """The computations of an HLO module text (name -> instructions) and the entry's name."""
    computations: dict[str, list[Instruction]] = {}
    entry, current = "", None
    for line in text.splitlines():
        if current is None:
            m = _HEADER.match(line)
            if m and "=" not in line.split("(")[0]:
                current = m.group(2)
                computations[current] = []
                if m.group(1):
                    entry = current
            continue
        if line.strip() == "}":
            current = None
            continue
        instruction = _parse_instruction(line)
        if instruction is not None:
            computations[current].append(instruction)
    if not entry:
        raise ValueError("no ENTRY computation in the HLO text")
    return computations, entry


class _Walker:
    def __init__(self, computations: dict[str, list[Instruction]], unknown_trip_count: int):
        self.computations = computations
        self.unknown_trip_count = unknown_trip_count
        self.by_name = {c: {i.name: i for i in instrs} for c, instrs in computations.items()}
        self.writes: dict[tuple[str, str], list[Any]] = {}

    # -- FLOPs -----------------------------------------------------------------------------

    def _dot_flops(self, comp: str, instr: Instruction) -> float:
        out = shape_elements(instr.shape)
        if not out or not instr.operands:
            return 0.0
        lhs = self.by_name[comp].get(instr.operands[0])
        if lhs is None:
            return 0.0
        lhs_dims = shape_elements(lhs.shape)[0][1]
        m = re.search(r"lhs_contracting_dims=\{([\d,]*)\}", instr.attrs)
        contracted = math.prod(lhs_dims[int(d)] for d in m.group(1).split(",") if d) if m else 1
        return 2.0 * math.prod(out[0][1]) * contracted

    def _conv_flops(self, comp: str, instr: Instruction) -> float:
        out = shape_elements(instr.shape)
        rhs = self.by_name[comp].get(instr.operands[1]) if len(instr.operands) > 1 else None
        if not out or rhs is None:
            return 0.0
        kernel = shape_elements(rhs.shape)[0][1]
        m = re.search(r"dim_labels=[^_]*_([^-]*)->", instr.attrs)
        # Kernel elements per output element: all kernel dims but the output feature dim.
        out_feature = m.group(1).index("o") if m and "o" in m.group(1) else len(kernel) - 1
        per_output = math.prod(d for i, d in enumerate(kernel) if i != out_feature)
        return 2.0 * math.prod(out[0][1]) * per_output

    def _custom_call_flops(self, comp: str, instr: Instruction) -> float:
        target = instr.attr("custom_call_target") or ""
        config = instr.backend_config()
        # cuBLAS gemms: "__cublas$gemm", and "__cublas$lt$matmul" (the decode's, Triton gemms off).
        if ("gemm" in target.lower() or "matmul" in target.lower()) and "gemm_backend_config" in config:
            dims = config["gemm_backend_config"].get("dot_dimension_numbers", {})
            lhs = self.by_name[comp].get(instr.operands[0]) if instr.operands else None
            out = shape_elements(instr.shape)
            if lhs is None or not out:
                return 0.0
            lhs_dims = shape_elements(lhs.shape)[0][1]
            contracted = math.prod(lhs_dims[int(d)] for d in dims.get("lhs_contracting_dimensions", []))
            return 2.0 * math.prod(out[0][1]) * contracted
        if "fmha" in target and "cudnn_fmha_backend_config" in config:
            fmha = config["cudnn_fmha_backend_config"]
            scores = math.prod(int(d) for d in fmha.get("intermediate_tensor_shape", {}).get("dimensions", []))
            q = self.by_name[comp].get(instr.operands[0]) if instr.operands else None
            # The head dimension, where Q (forward) or dO (backward, laid out like Q) is contracted.
            dims = fmha.get("bmm1_dot_dimension_numbers") or fmha.get("bmm2_grad_gemm2_dot_dimension_numbers") or {}
            contracting = dims.get("lhs_contracting_dimensions", [])
            if q is None or not contracting:
                return 0.0
            head_dim = math.prod(shape_elements(q.shape)[0][1][int(d)] for d in contracting)
            matmuls = 5 if "Backward" in target else 2
            causal = 0.5 if fmha.get("mask_type") == "CAUSAL" else 1.0
            return 2.0 * matmuls * scores * head_dim * causal
        if "triton" in target and _GATED_MLP_KERNEL.search(instr.attrs):
            # The model's gated-MLP Pallas kernels (model.gated_mlp): x [M, D] times two [D, I] weights,
            # and in the backward kernel also dy [M, D] times w_down [I, D] transposed.
            table = self.by_name[comp]
            x, w = (table.get(o) for o in instr.operands[:2])
            if x is None or w is None:
                return 0.0
            (m, d), (_, i) = shape_elements(x.shape)[0][1], shape_elements(w.shape)[0][1]
            matmuls = 3 if "gated_mlp_backward" in instr.attrs else 2
            return 2.0 * matmuls * m * d * i
        return 0.0

    def _flops_inside(self, comp: str) -> float:
        """Matmul FLOPs of a fused computation and what it calls."""
        total = 0.0
        for instr in self.computations.get(comp, []):
            if instr.opcode == "dot":
                total += self._dot_flops(comp, instr)
            elif instr.opcode == "convolution":
                total += self._conv_flops(comp, instr)
            elif instr.opcode == "custom-call":
                total += self._custom_call_flops(comp, instr)
            elif instr.opcode == "fusion" and instr.attr("calls"):
                total += self._flops_inside(instr.attr("calls"))
        return total

    # -- bytes -----------------------------------------------------------------------------

    def _operand_bytes(self, comp: str, names: Iterable[str]) -> float:
        table = self.by_name[comp]
        return sum(shape_bytes(table[n].shape) for n in names if n in table)

    def _fusion_bytes(self, comp: str, instr: Instruction) -> tuple[float, float]:
        """(written, read) of a fusion, looking inside it for slices and in-place updates."""
        fused = instr.attr("calls")
        body = self.computations.get(fused or "", [])
        table = self.by_name.get(fused or "", {})
        # Fusion parameter name -> its index among the fusion's operands.
        params = {i.name: int(i.args) for i in body if i.opcode == "parameter" and i.args.strip().isdigit()}
        users: dict[str, list[Instruction]] = {}
        for i in body:
            for o in i.operands:
                users.setdefault(o, []).append(i)

        def through_bitcasts(name: str) -> str:
            while name in table and table[name].opcode == "bitcast" and table[name].operands:
                name = table[name].operands[0]
            return name

        # Outputs: each root element; an in-place dynamic-update-slice writes only its update.
        root = next((i for i in body if i.root), None)
        outputs = [root] if root is not None else []
        if root is not None and root.opcode == "tuple":
            outputs = [table[o] for o in root.operands if o in table]
        written, in_place = 0.0, set()
        for out in outputs:
            out_src = table.get(through_bitcasts(out.name), out)
            if out_src.opcode == "dynamic-update-slice" and through_bitcasts(out_src.operands[0]) in params:
                in_place.add(through_bitcasts(out_src.operands[0]))
                written += shape_bytes(table[out_src.operands[1]].shape) if out_src.operands[1] in table else 0
            else:
                written += shape_bytes(out.shape)
        if not outputs:
            written = shape_bytes(instr.shape)
        read = 0.0
        for name, index in params.items():
            if name in in_place or index >= len(instr.operands):
                continue
            direct = users.get(name, [])
            if direct and all(u.opcode in SLICING_OPS and u.operands[0] == name for u in direct):
                read += sum(shape_bytes(u.shape) for u in direct)
            else:
                read += self._operand_bytes(comp, [instr.operands[index]])
        return written, read

    def _custom_call_bytes(self, comp: str, instr: Instruction) -> tuple[float, float]:
        elements = shape_elements(instr.shape)
        if instr.shape.startswith("(") and len(elements) > 1 and elements[-1][0] in ("s8", "u8"):
            elements = elements[:-1]  # the library's workspace
        written = sum(DTYPE_BYTES[d] * math.prod(s) for d, s in elements)
        return written, self._operand_bytes(comp, instr.operands)

    def _record(self, comp: str, instr: Instruction, written: float, times: float) -> None:
        if written <= 0:
            return
        key = (comp, instr.name)
        entry = self.writes.setdefault(key, [instr, written, 0.0])
        entry[2] += times

    def cost(self, comp: str, times: float = 1.0, loops: list[Loop] | None = None) -> Cost:
        """The cost of one run of `comp`; `times` (how often the caller runs it) ranks the writers."""
        total = Cost()
        table = self.by_name[comp]
        for instr in self.computations[comp]:
            op = instr.opcode
            if op in FREE_OPS or ASYNC_DONE.search(op):
                continue
            if op == "while":
                config = instr.backend_config().get("known_trip_count", {})
                known = "n" in config
                n = int(config["n"]) if known else self.unknown_trip_count
                body = Cost()
                body.add(self.cost(instr.attr("body"), times * n))
                body.add(self.cost(instr.attr("condition"), times * n))
                if loops is not None:
                    loops.append(Loop(instr.name, n, known, body))
                total.add(body, n)
                continue
            if op == "call" or (op == "async-start" and instr.attr("calls")):
                total.add(self.cost(instr.attr("to_apply") or instr.attr("calls"), times))
                continue
            if op == "conditional":
                branches = instr.called("branch_computations") or [
                    c for c in (instr.attr("true_computation"), instr.attr("false_computation")) if c
                ]
                costs = [self.cost(b, times) for b in branches]
                if costs:
                    total.add(max(costs, key=lambda c: c.bytes_moved))
                continue
            if op == "fusion":
                written, read = self._fusion_bytes(comp, instr)
                flops = self._flops_inside(instr.attr("calls") or "")
            elif op == "custom-call":
                written, read = self._custom_call_bytes(comp, instr)
                flops = self._custom_call_flops(comp, instr)
            elif op == "dynamic-update-slice":
                update = instr.operands[1] if len(instr.operands) > 1 else None
                written = shape_bytes(table[update].shape) if update in table else 0.0
                read = written
                flops = 0.0
            elif op in SLICING_OPS:
                written = shape_bytes(instr.shape)
                read = written + self._operand_bytes(comp, instr.operands[1:])
                flops = 0.0
            else:
                written = shape_bytes(instr.shape)
                read = self._operand_bytes(comp, instr.operands)
                if op.endswith("-start") and instr.shape.startswith("(") and len(instr.operands):
                    # Asynchronous collectives return (operands, results[, scratch]): the results are new.
                    written = max(0.0, written - read)
                flops = self._dot_flops(comp, instr) if op == "dot" else (
                    self._conv_flops(comp, instr) if op == "convolution" else 0.0)
            total.add(Cost(written, read, flops, 1.0))
            self._record(comp, instr, written, times)
        return total


def program_cost(hlo_text: str, unknown_trip_count: int = 1, top: int = 8) -> ProgramCost:
    """Bytes written and read and matmul FLOPs per call of the optimized HLO module `hlo_text`,
    per device; `unknown_trip_count` stands in for loops without a proven trip count."""
    computations, entry = parse_hlo(hlo_text)
    walker = _Walker(computations, unknown_trip_count)
    loops: list[Loop] = []
    total = walker.cost(entry, 1.0, loops)
    ranked = sorted(walker.writes.values(), key=lambda e: -e[1] * e[2])[:top]
    largest = [{"instruction": i.name, "opcode": i.opcode, "shape": _plain_shape(i.shape),
                "bytes_per_run": int(w), "runs_per_call": t, "bytes_per_call": int(w * t)} for i, w, t in ranked]
    return ProgramCost(total, loops, largest)


def _plain_shape(shape: str, limit: int = 160) -> str:
    """The shape without layouts or index comments, e.g. `f32[6,2,4096,4096]`, cut at `limit` characters."""
    plain = re.sub(r"/\*[^*]*\*/", "", re.sub(r"\{[^}]*\}", "", shape))
    return plain if len(plain) <= limit else plain[: limit - 3] + "..."


def top_writers(hlo_text: str, top: int = 40) -> list[dict[str, Any]]:
    """The `top` instructions writing the most bytes per call (loops counted by their trip counts),
    each with the opcodes its fused computation runs: the per-kernel breakdown behind a program's
    `bytes_written` (`python -m openrs_jax.bench.hlo_cost HLO_FILE [TOP]` prints it)."""
    computations, entry = parse_hlo(hlo_text)
    walker = _Walker(computations, 1)
    walker.cost(entry, 1.0, [])
    rows = []
    for instr, written, times in sorted(walker.writes.values(), key=lambda e: -e[1] * e[2])[:top]:
        ops: dict[str, int] = {}
        for i in computations.get(instr.attr("calls") or "", []):
            if i.opcode not in FREE_OPS and i.opcode != "broadcast":
                ops[i.opcode] = ops.get(i.opcode, 0) + 1
        rows.append({"instruction": instr.name, "opcode": instr.opcode,
                     "target": instr.attr("custom_call_target") or "", "shape": _plain_shape(instr.shape, 80),
                     "runs_per_call": times, "bytes_per_call": int(written * times), "fused_ops": ops})
    return rows


def main(argv: list[str] | None = None) -> None:
    """`python -m openrs_jax.bench.hlo_cost HLO_FILE [TOP]`: totals and the largest writers of a
    dumped optimized HLO module (`bench plan --dump_hlo`), one line each."""
    import sys
    from pathlib import Path

    args = sys.argv[1:] if argv is None else argv
    if not args:
        raise SystemExit("usage: python -m openrs_jax.bench.hlo_cost HLO_FILE [TOP]")
    text = Path(args[0]).read_text()
    total = program_cost(text).total
    print(f"written {total.bytes_written / 1e9:.1f} GB, read {total.bytes_read / 1e9:.1f} GB, "
          f"{total.flops / 1e12:.1f} TFLOP, {total.kernels:.0f} kernels per call (loops at known trip counts)")
    for row in top_writers(text, int(args[1]) if len(args) > 1 else 40):
        ops = ",".join(f"{k}x{v}" if v > 1 else k for k, v in row["fused_ops"].items())
        print(f"{row['bytes_per_call'] / 1e9:9.1f} GB  x{row['runs_per_call']:<6g} {row['shape']:<60} "
              f"{row['opcode']} {row['target']} {row['instruction']} {ops}")


if __name__ == "__main__":
    main()
