"""Sampling from a Qwen2 model: one prefill and one jitted decode loop per batch.

One `Sampler` serves GRPO rollouts (G samples per prompt) and evaluation (one or more samples
per benchmark problem). A call to `Sampler.generate` runs two compiled programs:

1. prefill: the distinct prompts, left-padded to a bucketed length, go through the model once;
   their KV cache is copied to the G rows of each prompt in a cache sized for the whole
   completion (prompt bucket + max_new_tokens - 1 slots).
2. decode: the cache is donated to one `lax.while_loop` that samples a token for every row per
   step and stops when every row has produced an EOS id or max_new_tokens tokens. Rows that
   finished keep receiving the pad id and log-prob 0.

Programs are cached by their static shapes (prompt rows, prompt bucket, rows, max_new_tokens)
and sampling mode (greedy or not, top-k, top-p on or off, EOS and pad ids; temperature and
top_p values are arguments), so a training run compiles a handful of programs;
`Sampler.num_compilations` counts them and the logger "openrs_jax.core.sampling" records each one
at DEBUG level. Parameters are arguments of the programs, never constants: a refreshed
rollout copy is used without recompiling, as long as its dtypes and placement stay the same.

Rows are group-major: the samples of prompt i are rows i*G .. i*G+G-1. One call is one batch:
the KV cache of every row lives on the devices for the whole call, so callers with many prompts
(evaluation) split them into calls (see `python -m openrs_jax.generate --batch_size`).

Placement. With `mesh`, rows are split across the mesh's batch axes (every axis but "tensor"),
and the KV cache heads across "tensor" when it divides them. The caller places the parameters:
replicated on every device for a model the size of the 1.5B recipe (3.6 GB in bf16), or
tensor-parallel (projections split over "tensor") for larger ones; XLA then inserts the
collectives. Row counts that do not divide the batch devices are padded with dummy rows that
start finished and are dropped from the output.

Memory. The KV cache (one [rows, kv_heads, slots, head_dim] array per layer, in `cache_dtype`,
by default the compute dtype) is sized before anything is allocated (`memory_needed`); a call
that does not fit the devices' free memory raises a ValueError saying how many bytes it needs.
On a CPU with bf16 compute, pass cache_dtype="float32": XLA:CPU updates a bf16 cache out of
place.

Hot loop. Both programs read `DecodeWeights` (`prepare`) through a cached forward unrolled over
layers, so no step copies weights or cache slices; attention is `DecodeAttention` (a kernel on
GPUs reading only live slots, XLA elsewhere). Token selection (`Mode.next_tokens`) is exact
but avoids the costs that dominate a small model on a CPU (see its helpers).
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
import time
from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx, struct
from jax.sharding import NamedSharding, PartitionSpec

from openrs_jax.core.model import KVCache, Qwen2Config, Qwen2ForCausalLM, abstract_model
from openrs_jax.core.model.decode_attention import DecodeAttention, targets_gpu
from openrs_jax.core.model.qwen2 import DecodeWeights, cached_hidden_states, decode_weights
from openrs_jax.core.sharding import MESH_AXES, to_host, tree_shardings

log = logging.getLogger("openrs_jax.core.sampling")

TENSOR_AXIS = "tensor"
# With the decode-attention kernel (GPUs): decode steps run in chunks of this many between
# checks for an all-finished batch (each check is a device-to-host round trip that stalls
# the launch queue), and cache lengths are rounded to this bucket so that every prompt bucket
# of a run (Exp2: 64..512 prompt tokens + 3,583 fed tokens <= 4,096 slots) shares one decode
# program; the kernel reads only live slots, so the extra slots cost memory only up to the
# bucket and no bandwidth.
DEFAULT_CHECK_EVERY = 8
# XLA options of the decode program on GPUs. Its matmuls have few rows (one token per row):
# XLA's Triton gemms split them over K and write fp32 partial sums to memory (about 0.3 GB per
# step at Exp2 shapes), where cuBLAS does not.
DECODE_COMPILER_OPTIONS = {"xla_gpu_enable_triton_gemm": False}
DEFAULT_CACHE_BUCKET = 512


@dataclasses.dataclass(frozen=True)
class SamplingParams:
    """How tokens are chosen.

    temperature 0 means greedy. top_k 0/None and top_p 1.0 switch those filters off; they
    apply in the order temperature -> top-k -> top-p, as in `transformers` and vLLM. An empty
    `eos_ids` decodes exactly `max_new_tokens` tokens per row.
    """

    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int | None = None
    max_new_tokens: int = 256
    eos_ids: tuple[int, ...] = ()
    pad_id: int = 0

    def __post_init__(self) -> None:
        eos = () if self.eos_ids is None else self.eos_ids  # one id, a sequence of ids, or None
        object.__setattr__(self, "eos_ids", tuple(int(e) for e in np.ravel(eos)))
        if not self.temperature >= 0:
            raise ValueError(f"temperature must be >= 0 (0 = greedy), got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k is not None and self.top_k < 0:
            raise ValueError(f"top_k must be >= 0 (0 or None = off), got {self.top_k}")
        require_positive(max_new_tokens=self.max_new_tokens)

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


@dataclasses.dataclass
class SampleOutput:
    """The result of `Sampler.generate`, as numpy arrays; N = prompts x samples, group-major.

    completion_mask covers every token up to and including the first EOS (all max_new_tokens
    tokens when none came: such rows are `truncated`). completion_ids hold the pad id after
    the EOS, logprobs hold 0 there. prompt_ids/prompt_mask are the prompts as the model saw
    them (left-padded to the bucket, one row per sample), so `concatenate([prompt_ids,
    completion_ids], 1)` is the full sequence of each row.
    """

    prompt_ids: np.ndarray  # [N, prompt_len] int32
    prompt_mask: np.ndarray  # [N, prompt_len] bool
    completion_ids: np.ndarray  # [N, max_new_tokens] int32
    completion_mask: np.ndarray  # [N, max_new_tokens] bool
    lengths: np.ndarray  # [N] int32, completion_mask.sum(1)
    truncated: np.ndarray  # [N] bool, no EOS within max_new_tokens
    logprobs: np.ndarray  # [N, max_new_tokens] float32
    num_prompts: int
    num_samples: int
    timings: dict[str, float] = dataclasses.field(default_factory=dict)
    logits: np.ndarray | None = None  # [N, max_new_tokens, V] fp32, only with keep_logits=True

    def completions(self) -> list[list[int]]:
        """Each row's completion as a list of ids, ending with the EOS when one was generated."""
        return [row[:n].tolist() for row, n in zip(self.completion_ids, self.lengths)]


@dataclasses.dataclass(frozen=True)
class Mode:
    """What a decode program is compiled for besides shapes (temperature and top_p are arguments)."""

    greedy: bool
    top_k: int  # 0 = off
    use_top_p: bool
    eos_ids: tuple[int, ...]
    pad_id: int
    top_p_candidates: int

    @classmethod
    def of(cls, sampling: SamplingParams, top_p_candidates: int) -> "Mode":
        return cls(greedy=sampling.greedy, top_k=int(sampling.top_k or 0), use_top_p=sampling.top_p < 1.0,
                   eos_ids=sampling.eos_ids, pad_id=sampling.pad_id, top_p_candidates=top_p_candidates)

    def is_eos(self, tok: jax.Array) -> jax.Array:
        return functools.reduce(jnp.logical_or, [tok == e for e in self.eos_ids], jnp.zeros(tok.shape, bool))

    def next_tokens(self, logits: jax.Array, keys: jax.Array, temperature: jax.Array, top_p: jax.Array,
                    length: jax.Array, stop_at: jax.Array, done: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Next token and its log-prob for each row of fp32 logits [N, V]; keys [N] (one per row).

        Greedy: argmax, log-prob under log_softmax(logits). Otherwise: logits / temperature, then
        top-k, then top-p (when `use_top_p`), then a draw; log-prob under that filtered
        distribution. A row reaching `length` == stop_at emits the first EOS id instead
        (benchmarks' realistic lengths), a `done` row the pad id with log-prob 0.
        """
        if self.greedy:
            tok = first_argmax(logits)
            lp = _take(logits, tok) - jax.nn.logsumexp(logits, axis=-1)
        else:
            x = mask_top_k(logits / temperature, self.top_k)
            if self.use_top_p:
                x = mask_top_p(x, top_p, self.top_p_candidates)
            tok, lp = sample_categorical(x, jax.vmap(lambda k: jax.random.uniform(k, (2,)))(keys))
        if self.eos_ids:
            tok = jnp.where(length == stop_at, self.eos_ids[0], tok)
        return jnp.where(done, self.pad_id, tok), jnp.where(done, 0.0, lp)


def sampling_args(sampling: SamplingParams) -> tuple[jax.Array, jax.Array]:
    """The (temperature, top_p) arguments of a decode program (greedy ignores them)."""
    return jnp.float32(sampling.temperature if not sampling.greedy else 1.0), jnp.float32(sampling.top_p)


@dataclasses.dataclass(frozen=True)
class _Plan:
    """Static shape and mode of one decode program (its compile-cache key)."""

    num_prompts: int  # distinct prompts in the call
    num_samples: int  # G
    rows: int  # prompts x samples, padded to a multiple of the batch devices
    cache_len: int  # prompt bucket + max_new_tokens - 1, rounded up (`Sampler.cache_length`)
    max_new_tokens: int
    mode: Mode
    keep_logits: bool


@struct.dataclass
class _DecodeState:
    """Loop carry of the decode `while_loop`; the cache and buffers are updated in place."""

    step: jax.Array  # scalar int32: next column of `tokens` to fill
    last: jax.Array  # [N] int32: token fed to the model in this step
    done: jax.Array  # [N] bool: row produced an EOS (or is a padding row)
    tokens: jax.Array  # [N, M] int32
    logprobs: jax.Array  # [N, M] float32
    cache: KVCache
    logits: jax.Array | None  # [N, M, V] fp32 when keep_logits


# ---------------------------------------------------------------------------------------------
# Token selection (pure functions of logits; usable on their own)
# ---------------------------------------------------------------------------------------------


def first_argmax(x: jax.Array) -> jax.Array:
    """Index of the first maximum along the last axis (as `torch.argmax`), int32.

    Built from two plain reductions: XLA:CPU runs these several times faster than its
    variadic-reduce argmax over a large vocabulary.
    """
    v = x.shape[-1]
    best = jnp.max(x, axis=-1, keepdims=True)
    iota = jax.lax.broadcasted_iota(jnp.int32, x.shape, x.ndim - 1)
    idx = jnp.min(jnp.where(x == best, iota, v), axis=-1)
    return jnp.minimum(idx, v - 1)  # NaN rows match nothing: return a valid index anyway


def _take(x: jax.Array, idx: jax.Array) -> jax.Array:
    """x[..., idx] per row: x [N, V], idx [N] -> [N]."""
    return jnp.take_along_axis(x, idx[:, None], axis=-1)[:, 0]


def mask_top_k(x: jax.Array, k: int) -> jax.Array:
    """Keeps the k largest entries per row (ties with the k-th included, as `transformers`)."""
    if k <= 0 or k >= x.shape[-1]:
        return x
    kth = jax.lax.top_k(x, k)[0][:, -1:]
    return jnp.where(x >= kth, x, -jnp.inf)


def _bisect_top_p_threshold(p: jax.Array, target: jax.Array) -> jax.Array:
    """Largest float t per row with sum(p[p >= t]) >= target, by bisection on t's bit pattern.

    p [N, V] are probabilities (non-negative fp32, whose bit patterns order like the values);
    the answer is always one of the p values, so `p >= t` selects the nucleus exactly.
    """
    n = p.shape[0]
    bits_of = lambda f: jax.lax.bitcast_convert_type(f, jnp.int32)  # noqa: E731
    lo = jnp.zeros((n,), jnp.int32)  # t = 0 keeps everything: f(lo) >= target
    hi = bits_of(jnp.max(p, axis=-1)) + 1  # above the largest p: keeps nothing

    def body(_, bounds):
        lo, hi = bounds
        mid = lo + (hi - lo) // 2
        t = jax.lax.bitcast_convert_type(mid, jnp.float32)
        ok = jnp.sum(jnp.where(p >= t[:, None], p, 0.0), axis=-1) >= target
        return jnp.where(ok, mid, lo), jnp.where(ok, hi, mid)

    lo, _ = jax.lax.fori_loop(0, 32, body, (lo, hi))
    return jax.lax.bitcast_convert_type(lo, jnp.float32)


def mask_top_p(x: jax.Array, top_p: jax.Array, candidates: int = 64) -> jax.Array:
    """Keeps the smallest set of highest-probability entries whose mass reaches top_p.

    An entry is kept when the probability mass strictly above it (in descending order) is
    below top_p, which is `transformers`' TopPLogitsWarper rule; ties at the threshold are kept.
    The threshold comes from the `candidates` largest logits when their mass covers top_p
    (the usual case: a sort over the whole vocab costs more than the model step on a CPU);
    otherwise a bisection over the vocab finds it.
    """
    n, v = x.shape
    lse = jax.nn.logsumexp(x, axis=-1, keepdims=True)
    k = min(candidates, v)
    top = jax.lax.top_k(x, k)[0]  # [N, k] descending
    probs = jnp.exp(top - lse)
    cum = jnp.cumsum(probs, axis=-1)
    n_keep = jnp.maximum(jnp.sum(cum - probs < top_p, axis=-1), 1)
    threshold = _take(top, n_keep - 1)
    covered = (cum[:, -1] >= top_p) | (k == v)
    keep_fast = x >= threshold[:, None]

    def slow(_):
        p = jnp.exp(x - lse)
        t = _bisect_top_p_threshold(p, top_p * jnp.sum(p, axis=-1))
        return jnp.where(covered[:, None], keep_fast, p >= t[:, None])

    keep = jax.lax.cond(jnp.all(covered), lambda _: keep_fast, slow, None)
    return jnp.where(keep, x, -jnp.inf)


def _last_positive(a: jax.Array) -> jax.Array:
    """Index of the last entry > 0 along the last axis (0 when there is none)."""
    iota = jax.lax.broadcasted_iota(jnp.int32, a.shape, a.ndim - 1)
    return jnp.max(jnp.where(a > 0, iota, 0), axis=-1)


def sample_categorical(x: jax.Array, u: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Draws one index per row from softmax(x), exactly, by inverting the CDF in two levels.

    x [N, V] fp32 logits (-inf = excluded); u [N, 2] uniforms in [0, 1). The first uniform picks
    a block of vocab entries in proportion to its mass, the second an entry within it. Needs two
    random numbers per row instead of V, and passes over the vocab only for exp and block sums.
    Returns (index [N] int32, log-prob [N] of that index under softmax(x)).
    """
    n, v = x.shape
    block = 128 * max(1, math.ceil(math.sqrt(v) / 128))  # about sqrt(V), a multiple of 128
    blocks = -(-v // block)
    top = jnp.max(x, axis=-1, keepdims=True)
    p = jnp.exp(x - top)  # unnormalised; excluded entries are exactly 0
    p = jnp.pad(p, ((0, 0), (0, blocks * block - v))).reshape(n, blocks, block)
    mass = jnp.sum(p, axis=-1)  # [N, blocks]
    cum = jnp.cumsum(mass, axis=-1)
    total = cum[:, -1]
    # The chosen block is the first whose cumulative mass exceeds the draw; a zero-mass block
    # never is (its cumulative equals its predecessor's). The clamp only guards rounding at the top.
    b = jnp.sum(cum <= u[:, :1] * total[:, None], axis=-1)
    b = jnp.minimum(b, _last_positive(mass))
    inner = jnp.take_along_axis(p, b[:, None, None], axis=1)[:, 0]  # [N, block]
    cum_inner = jnp.cumsum(inner, axis=-1)
    j = jnp.sum(cum_inner <= u[:, 1:] * cum_inner[:, -1:], axis=-1)
    j = jnp.minimum(j, _last_positive(inner))
    idx = (b * block + j).astype(jnp.int32)
    logprob = _take(x, idx) - top[:, 0] - jnp.log(total)
    return idx, logprob


def project_logits(hidden: jax.Array, weights: DecodeWeights) -> jax.Array:
    """fp32 logits [..., V] of final hidden states [..., D] (as `Qwen2ForCausalLM.logits`)."""
    return jnp.dot(hidden, weights.lm_head, preferred_element_type=jnp.float32)


# ---------------------------------------------------------------------------------------------
# Host-side helpers
# ---------------------------------------------------------------------------------------------


def require_positive(**values: int | None) -> None:
    """Raises a ValueError naming the first of `values` given (not None) that is below 1."""
    for name, value in values.items():
        if value is not None and value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")


def bucket_length(n: int, bucket: int) -> int:
    """n rounded up to a multiple of `bucket` (at least one bucket)."""
    return max(bucket, -(-n // bucket) * bucket)


def left_pad(prompts: Sequence[Sequence[int]], width: int, pad_id: int, rows: int | None = None
             ) -> tuple[np.ndarray, np.ndarray]:
    """Prompts right-aligned in `width` columns, as the sampler feeds them: (ids [rows, width]
    int32, mask [rows, width] bool). Rows past the prompts (rows > len(prompts): dummy rows of a
    program's fixed shape) copy the first prompt, so that they compute finite numbers."""
    rows = len(prompts) if rows is None else rows
    ids = np.full((rows, width), pad_id, np.int32)
    mask = np.zeros((rows, width), bool)
    for i, p in enumerate(prompts):
        if len(p):
            ids[i, width - len(p):] = p
            mask[i, width - len(p):] = True
    ids[len(prompts):], mask[len(prompts):] = ids[:1], mask[:1]
    return ids, mask


def as_key(key_or_seed: int | jax.Array) -> jax.Array:
    """A typed PRNG key from an int seed, a typed key, or a raw uint32 key."""
    if isinstance(key_or_seed, (int, np.integer)):
        return jax.random.key(int(key_or_seed))
    key = jnp.asarray(key_or_seed)
    if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        return key
    return jax.random.wrap_key_data(key)


def sample_key(key: jax.Array, prompt: jax.Array | int, sample: jax.Array | int) -> jax.Array:
    """The random key of one completion: a function of the run's key and the (prompt index,
    sample index) only; step t of that completion draws from fold_in(sample_key, t)."""
    return jax.random.fold_in(jax.random.fold_in(key, prompt), sample)


def free_device_bytes(device: jax.Device) -> int | None:
    """Bytes the allocator can still hand out on `device`, or None where it does not say (CPU)."""
    try:
        stats = device.memory_stats()
    except Exception:  # backends without allocator statistics
        return None
    if not stats or "bytes_limit" not in stats:
        return None
    return int(stats["bytes_limit"]) - int(stats.get("bytes_in_use", 0))


def placed_shapes(shapes: Any, shardings: Any) -> Any:
    """Abstract arrays (jax.ShapeDtypeStruct) with these shapes and shardings, for lowering."""
    return jax.tree.map(lambda x, p: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=p), shapes, shardings)


def check_prompts(prompts: Sequence[Sequence[int]], vocab_size: int, used: Sequence[int] | None = None
                  ) -> list[np.ndarray]:
    """The prompts as int64 arrays; those with an index in `used` (default all) must be
    non-empty and within the vocabulary."""
    prompts = [np.asarray(p, dtype=np.int64).reshape(-1) for p in prompts]
    for i in range(len(prompts)) if used is None else used:
        p = prompts[i]
        if p.size == 0:
            raise ValueError(f"prompt {i} is empty")
        if p.min() < 0 or p.max() >= vocab_size:
            raise ValueError(f"prompt {i} has token ids outside [0, {vocab_size})")
    return prompts


def note_compile(owner: Any, logger: logging.Logger, what: str, detail: Any) -> None:
    """Counts a new program in `owner.num_compilations` and logs it at DEBUG level. Call it from
    a jitted function's body: that runs only while jax traces, i.e. once per compilation."""
    owner.num_compilations += 1
    logger.debug("compiling %s program #%d: %s", what, owner.num_compilations, detail)


def _gib(n: float) -> str:
    return f"{n / 2**30:.2f} GiB"


class Sampler:
    """Generates completions for batches of token-id prompts with one model configuration.

    Build it once (per config and mesh) and call `generate` for every batch: compiled programs
    are reused for every call with the same bucketed shapes and sampling mode.
    """

    def __init__(
        self,
        config: Qwen2Config,
        *,
        mesh: jax.sharding.Mesh | None = None,
        prompt_bucket: int = 64,
        cache_dtype: Any = None,
        top_p_candidates: int = 64,
        check_memory: bool = True,
        decode_attention: str | None = None,
        check_every: int | None = None,
        cache_bucket: int | None = None,
    ):
        """config: model shape and compute dtype (the cache is in `cache_dtype`, default the
        compute dtype). mesh: rows are split over all its axes but "tensor". prompt_bucket:
        prompt lengths are rounded up to a multiple of it. decode_attention: "xla", "pallas" or
        "pallas_interpret" (default: the kernel on GPUs, XLA elsewhere). check_every: decode
        steps between checks for an all-finished batch (default 8 with the kernel, 1 otherwise).
        cache_bucket: cache slots are rounded up to a multiple of it, so that prompt buckets
        share one decode program (default 512 with the kernel, 1 otherwise)."""
        require_positive(prompt_bucket=prompt_bucket, check_every=check_every, cache_bucket=cache_bucket)
        self.config = config
        self.mesh = mesh
        self.prompt_bucket = prompt_bucket
        self.cache_dtype = jnp.dtype(cache_dtype or config.dtype)
        self.top_p_candidates = top_p_candidates
        self.check_memory = check_memory
        axes = mesh.shape if mesh is not None else {}
        self.batch_axes = tuple(a for a in axes if a != TENSOR_AXIS)
        self.row_devices = math.prod(axes[a] for a in self.batch_axes)
        tp = self.tensor_parallel = axes.get(TENSOR_AXIS, 1)
        self._kv_axis = TENSOR_AXIS if tp > 1 and config.num_key_value_heads % tp == 0 else None
        self.attention = DecodeAttention.auto(
            decode_attention, mesh=mesh, batch_axes=self.batch_axes, kv_axis=self._kv_axis
        )
        kernel = self.attention.uses_kernel
        self.check_every = check_every or (DEFAULT_CHECK_EVERY if kernel else 1)
        self.cache_bucket = cache_bucket or (DEFAULT_CACHE_BUCKET if kernel else 1)
        log.info("decode attention: %s, finished rows checked every %d steps, cache slots in multiples of %d",
                 self.attention.implementation, self.check_every, self.cache_bucket)
        self._graphdef, self._param_template = nnx.split(abstract_model(config))
        self.num_compilations = 0
        # On GPUs the q/k/v and gate/up kernels are fused once per call (not with a tensor split,
        # which would mix their columns in one shard).
        self._fuse = targets_gpu(mesh) and tp == 1
        self._prepare = jax.jit(self._prepare_impl)
        self._prefill = jax.jit(self._prefill_impl, static_argnums=(3,))
        self._decode = jax.jit(self._decode_impl, static_argnums=(7,), donate_argnums=(1,),
                               compiler_options=DECODE_COMPILER_OPTIONS if targets_gpu(mesh) else None)

    # -- placement ---------------------------------------------------------------------------

    def _constrain(self, x: jax.Array, row_axis: int, kv_axis: int | None = None) -> jax.Array:
        """Splits `row_axis` of x over the batch axes (and `kv_axis` over "tensor")."""
        if self.mesh is None:
            return x
        spec: list[Any] = [None] * x.ndim
        spec[row_axis] = self.batch_axes or None
        if kv_axis is not None and self._kv_axis:
            spec[kv_axis] = self._kv_axis
        return jax.lax.with_sharding_constraint(x, NamedSharding(self.mesh, PartitionSpec(*spec)))

    def _constrain_cache(self, cache: KVCache) -> KVCache:
        return dataclasses.replace(
            cache,
            k=tuple(self._constrain(x, 0, 1) for x in cache.k),
            v=tuple(self._constrain(x, 0, 1) for x in cache.v),
            mask=self._constrain(cache.mask, 0),
        )

    def cache_length(self, prompt_len: int, max_new_tokens: int) -> int:
        """KV cache slots of a call: the bucketed prompt and every fed token (the last sampled
        token is never fed), rounded up to the cache bucket and to what the kernel takes."""
        needed = prompt_len + max_new_tokens - 1
        return self.attention.cache_slots(-(-needed // self.cache_bucket) * self.cache_bucket)

    def padded_rows(self, n: int) -> int:
        """n rows rounded up to a multiple of the batch devices."""
        return -(-n // self.row_devices) * self.row_devices

    def _state(self, params: Any) -> nnx.State:
        """Model state from a module, an nnx.State or a pure dict of parameters."""
        if isinstance(params, Qwen2ForCausalLM):
            return nnx.state(params)
        if isinstance(params, nnx.State):
            return params
        if isinstance(params, Mapping):
            state = jax.tree.map(lambda x: x, self._param_template)
            nnx.replace_by_pure_dict(state, dict(params))
            return state
        raise TypeError(f"params must be a Qwen2ForCausalLM, an nnx.State or a dict, got {type(params).__name__}")

    def prepare(self, params: Any) -> DecodeWeights:
        """The parameters in the layout the programs read (`DecodeWeights`: compute dtype, one
        array per layer, q/k/v and gate/up fused on GPUs), placed for rollouts (replicated
        except along "tensor") when the sampler has a mesh.

        params may be the sharded training parameters (fp32): one program casts, gathers and
        lays them out. `generate` calls it when given anything but `DecodeWeights`; a caller that
        passes `prepare(train_params)` instead of a stacked rollout copy keeps one copy of the
        weights alive during the call instead of two.
        """
        if isinstance(params, DecodeWeights):
            return params
        return self._prepare(self._state(params))

    # -- programs ----------------------------------------------------------------------------

    def _prepare_impl(self, state: nnx.State) -> DecodeWeights:
        if self.mesh is not None:
            # Rollout placement (replicated but for "tensor"), cast before gathering: prepare
            # also takes the sharded fp32 training parameters directly.
            pure = jax.tree.map(lambda x: x.astype(self.config.dtype), nnx.to_pure_dict(state))
            placed = (tree_shardings(pure, self.mesh, fsdp=False) if set(MESH_AXES) <= set(self.mesh.axis_names)
                      else NamedSharding(self.mesh, PartitionSpec()))  # other meshes: replicated
            pure = jax.lax.with_sharding_constraint(pure, placed)
            state = self._state(pure)
        return decode_weights(nnx.merge(self._graphdef, state), fuse=self._fuse)

    def prefill_prompts(self, weights: DecodeWeights, ids: jax.Array, mask: jax.Array) -> tuple[KVCache, jax.Array]:
        """Runs left-padded prompts ids [P, L] through the model (inside a program): their KV cache
        of L slots and the next-token logits [P, V] (only the last position: left padding)."""
        small = KVCache.create(self.config, ids.shape[0], ids.shape[1], self.cache_dtype)
        h, small = cached_hidden_states(self.config, weights, ids, mask.astype(bool), None, small)
        return small, project_logits(h[:, -1], weights)

    def _prefill_impl(
        self, weights: DecodeWeights, ids: jax.Array, mask: jax.Array, rows: tuple[int, int, int, int]
    ) -> tuple[KVCache, jax.Array]:
        """Runs the distinct prompts once; returns the cache expanded to all rows and each
        row's next-token logits."""
        num_prompts, num_samples, num_rows, cache_len = rows
        prompt_rows, prompt_len = ids.shape
        note_compile(self, log, "prefill", f"prompts={prompt_rows}x{prompt_len} rows={num_rows} cache_len={cache_len}")
        small, logits = self.prefill_prompts(weights, self._constrain(ids, 0), self._constrain(mask, 0))
        # Row r samples prompt r // G; padding rows reuse prompt 0 and start finished.
        source = np.zeros(num_rows, np.int32)
        source[: num_prompts * num_samples] = np.arange(num_prompts * num_samples) // num_samples
        pad = ((0, 0), (0, 0), (0, cache_len - prompt_len), (0, 0))
        expand = lambda x: jnp.pad(jnp.take(x, source, axis=0), pad)  # noqa: E731
        cache = KVCache(
            k=tuple(map(expand, small.k)),
            v=tuple(map(expand, small.v)),
            mask=jnp.pad(jnp.take(small.mask, source, axis=0), ((0, 0), (0, cache_len - prompt_len))),
            index=small.index,
            live=jnp.ones((num_rows,), bool),
            attention=self.attention,
        )
        return self._constrain_cache(cache), self._constrain(jnp.take(logits, source, axis=0), 0)

    def _decode_impl(
        self,
        weights: DecodeWeights,
        cache: KVCache,
        logits: jax.Array,
        key: jax.Array,
        temperature: jax.Array,
        top_p: jax.Array,
        stop_at: jax.Array,
        plan: _Plan,
    ) -> tuple[jax.Array, jax.Array, jax.Array | None, KVCache]:
        """Samples up to max_new_tokens per row in one while_loop over the donated cache.

        The final cache is returned (and dropped by the caller) so that XLA can alias it to the
        donated input and run the loop in place instead of copying the cache first.
        """
        note_compile(self, log, "decode", plan)
        n, m = plan.rows, plan.max_new_tokens
        row_ids = jnp.arange(n)
        # One key per row, derived from its (prompt, sample) indices: a row's samples do not depend
        # on how many rows share the batch, how they are split over devices, or (the slot engine)
        # which slot it ran in.
        g = plan.num_samples
        row_keys = self._constrain(jax.vmap(lambda i: sample_key(key, i // g, i % g))(row_ids), 0)
        mode = plan.mode

        def advance(s: _DecodeState, logits: jax.Array, cache: KVCache) -> _DecodeState:
            keys = jax.vmap(jax.random.fold_in, (0, None))(row_keys, s.step)
            tok, lp = mode.next_tokens(logits, keys, temperature, top_p, s.step + 1, stop_at, s.done)
            kept = s.logits
            if kept is not None:
                kept = jax.lax.dynamic_update_slice(kept, logits[:, None], (0, s.step, 0))
            return _DecodeState(
                step=s.step + 1,
                last=tok,
                done=s.done | mode.is_eos(tok),
                tokens=jax.lax.dynamic_update_slice(s.tokens, tok[:, None], (0, s.step)),
                logprobs=jax.lax.dynamic_update_slice(s.logprobs, lp[:, None], (0, s.step)),
                cache=cache,
                logits=kept,
            )

        def step(_: Any, s: _DecodeState) -> _DecodeState:
            cache = dataclasses.replace(s.cache, live=~s.done)  # the kernel skips finished rows
            h, cache = cached_hidden_states(self.config, weights, s.last[:, None], jnp.ones((n, 1), bool), None, cache)
            return advance(s, project_logits(h[:, 0], weights), self._constrain_cache(cache))

        def chunk(s: _DecodeState) -> _DecodeState:
            # `check_every` steps with a static trip count, so only `cond` syncs with the host.
            # Steps past max_new_tokens write buffer columns that are cut off below, and cache
            # slots no real step reads afterwards (dynamic_update_slice clamps at the end).
            return jax.lax.fori_loop(0, k, step, s) if k > 1 else step(0, s)

        def cond(s: _DecodeState) -> jax.Array:
            return (s.step < m) & ~jnp.all(s.done)

        k = self.check_every
        width = m + k - 1  # room for the overshoot of the last chunk
        start = _DecodeState(
            step=jnp.zeros((), jnp.int32),
            last=jnp.full((n,), mode.pad_id, jnp.int32),
            done=row_ids >= plan.num_prompts * plan.num_samples,
            tokens=self._constrain(jnp.full((n, width), mode.pad_id, jnp.int32), 0),
            logprobs=self._constrain(jnp.zeros((n, width), jnp.float32), 0),
            cache=cache,
            logits=jnp.zeros((n, width, logits.shape[-1]), jnp.float32) if plan.keep_logits else None,
        )
        # The first token comes from the prefill logits; each loop step feeds one token.
        final = jax.lax.while_loop(cond, chunk, advance(start, logits, cache))
        kept = None if final.logits is None else final.logits[:, :m]
        return final.tokens[:, :m], final.logprobs[:, :m], kept, final.cache

    # -- public ------------------------------------------------------------------------------

    def memory_needed(self, num_prompts: int, num_samples: int, prompt_len: int, max_new_tokens: int) -> int:
        """Bytes per device that one call allocates (KV caches and loop buffers), before it runs.

        prompt_len is the bucketed length. Both caches (distinct prompts, then all rows) are
        alive while the prefill program copies one into the other.
        """
        prompt_rows, rows = self.padded_rows(num_prompts), self.padded_rows(num_prompts * num_samples)
        cache_len = self.cache_length(prompt_len, max_new_tokens)
        total = (prompt_rows * self.row_bytes(prompt_len, 0)
                 + rows * self.row_bytes(cache_len, max_new_tokens + self.check_every - 1))
        return -(-total // self.row_devices)

    def row_bytes(self, cache_len: int, buffer_len: int) -> int:
        """Device bytes of one row: its KV cache of `cache_len` slots, its fp32 next-token logits
        and `buffer_len` columns of sampled tokens and log-probs."""
        return (KVCache.num_bytes(self.config, 1, cache_len, self.cache_dtype) + self.config.vocab_size * 4
                + buffer_len * 8)

    def prepared_bytes(self) -> int:
        """Bytes per device of the weights `prepare` makes (compute dtype; split over "tensor")."""
        count = sum(math.prod(x.shape) for x in jax.tree.leaves(self._param_template))
        return count * jnp.dtype(self.config.dtype).itemsize // self.tensor_parallel

    def _plan(self, num_prompts: int, num_samples: int, prompt_len: int, sampling: SamplingParams,
              keep_logits: bool = False) -> _Plan:
        """The decode program's static plan for a call; prompt_len is the bucketed length."""
        return _Plan(
            num_prompts=num_prompts, num_samples=num_samples, rows=self.padded_rows(num_prompts * num_samples),
            cache_len=self.cache_length(prompt_len, sampling.max_new_tokens), max_new_tokens=sampling.max_new_tokens,
            mode=Mode.of(sampling, self.top_p_candidates), keep_logits=keep_logits,
        )

    def compile(
        self, params: Any, num_prompts: int, num_samples: int, prompt_len: int, sampling: SamplingParams
    ) -> dict[str, Any]:
        """Compiles, without running, the programs a `generate` call with these shapes uses.

        For planning memory ahead of time (`compiled.memory_analysis()`): params may be abstract
        (jax.ShapeDtypeStruct leaves, with shardings), and prompt_len is rounded up to the
        bucket as `generate` does. Returns {"prepare": Compiled, "prefill": Compiled, "decode":
        Compiled} ("prepare" lays out the weights: `generate` runs it unless given `DecodeWeights`).
        """
        prompt_len = bucket_length(prompt_len, self.prompt_bucket)
        plan = self._plan(num_prompts, num_samples, prompt_len, sampling)
        prepare, weights = self.compile_prepare(params)
        ids, mask = (jax.ShapeDtypeStruct((self.padded_rows(num_prompts), prompt_len), dtype)
                     for dtype in (jnp.int32, jnp.bool_))
        rows = (num_prompts, num_samples, plan.rows, plan.cache_len)
        prefill = self._prefill.lower(weights, ids, mask, rows).compile()
        # The decode program receives the cache and logits as the prefill leaves them.
        cache, logits = placed_shapes(
            jax.eval_shape(lambda w, i, m: self._prefill_impl(w, i, m, rows), weights, ids, mask),
            prefill.output_shardings,
        )
        key = jax.eval_shape(lambda: jax.random.key(0))
        scalar = jax.ShapeDtypeStruct((), jnp.float32)
        stop_at = jax.ShapeDtypeStruct((plan.rows,), jnp.int32)
        decode = self._decode.lower(weights, cache, logits, key, scalar, scalar, stop_at, plan).compile()
        return {"prepare": prepare, "prefill": prefill, "decode": decode}

    def compile_prepare(self, params: Any) -> tuple[Any, DecodeWeights]:
        """The compiled `prepare` program for (possibly abstract) params, and the abstract
        `DecodeWeights` it leaves (with their shardings): what the other programs receive."""
        state = self._state(params)
        prepare = self._prepare.lower(state).compile()
        return prepare, placed_shapes(jax.eval_shape(self._prepare_impl, state), prepare.output_shardings)

    def _check_memory(self, needed: int, rows: int, cache_len: int) -> None:
        devices = list(self.mesh.devices.flat) if self.mesh is not None else [jax.devices()[0]]
        for device in devices:
            free = free_device_bytes(device)
            if free is not None and needed > free:
                raise ValueError(
                    f"sampling {rows} rows with a KV cache of {cache_len} slots needs {_gib(needed)} "
                    f"({needed} bytes) per device, but {device} has {_gib(free)} free; use fewer "
                    "prompts or samples per call, fewer max_new_tokens, a bf16 cache, or more devices"
                )

    def generate(
        self,
        params: Any,
        prompts: Sequence[Sequence[int]],
        num_samples: int,
        sampling: SamplingParams,
        key_or_seed: int | jax.Array = 0,
        *,
        keep_logits: bool = False,
        stop_lengths: Sequence[int] | np.ndarray | None = None,
    ) -> SampleOutput:
        """Samples `num_samples` completions for each prompt (lists of token ids, any lengths).

        params: the model (Qwen2ForCausalLM), its nnx.State, or its pure parameter dict, in the
        compute dtype and placed by the caller. keep_logits (tests, debugging) also returns the
        raw fp32 logits of every step, [N, max_new_tokens, V]. stop_lengths (benchmarks: realistic
        completion lengths from a model with random weights): [N] lengths at which row n emits
        the first EOS id instead of its sampled token (its log-prob stays that of the replaced
        token) if it has not stopped before; values above max_new_tokens never apply.
        """
        t0 = time.perf_counter()
        c = self.config
        require_positive(num_samples=num_samples)
        if len(prompts) == 0:  # a list of id lists or an [N, T] array
            raise ValueError("no prompts to sample from")
        prompts = check_prompts(prompts, c.vocab_size)
        if not 0 <= sampling.pad_id < c.vocab_size:
            raise ValueError(f"pad id {sampling.pad_id} is outside the vocabulary [0, {c.vocab_size})")

        num_prompts, m = len(prompts), sampling.max_new_tokens
        prompt_len = bucket_length(max(p.size for p in prompts), self.prompt_bucket)
        plan = self._plan(num_prompts, num_samples, prompt_len, sampling, keep_logits)
        prompt_rows = self.padded_rows(num_prompts)
        if self.check_memory:
            needed = self.memory_needed(num_prompts, num_samples, prompt_len, m)
            if not isinstance(params, DecodeWeights):  # `prepare` makes a copy for the call
                needed += self.prepared_bytes()
            self._check_memory(needed, plan.rows, plan.cache_len)

        ids, mask = left_pad(prompts, prompt_len, sampling.pad_id, prompt_rows)

        compiled_before = self.num_compilations
        t1 = time.perf_counter()
        weights = self.prepare(params)
        cache, logits = self._prefill(weights, ids, mask, (num_prompts, num_samples, plan.rows, plan.cache_len))
        jax.block_until_ready(logits)
        t2 = time.perf_counter()
        stop_at = np.full(plan.rows, m + 1, np.int32)
        if stop_lengths is not None:
            stop_lengths = np.asarray(stop_lengths).reshape(-1)
            if stop_lengths.size != num_prompts * num_samples or not sampling.eos_ids:
                raise ValueError(f"stop_lengths needs one length per row ({num_prompts * num_samples}) and an EOS id")
            stop_at[: stop_lengths.size] = np.clip(stop_lengths, 1, m + 1)
        tokens, logprobs, kept, cache = self._decode(
            weights, cache, logits, as_key(key_or_seed), *sampling_args(sampling), stop_at, plan
        )
        del cache
        tokens, logprobs, kept = to_host((tokens, logprobs, kept))
        t3 = time.perf_counter()

        n = num_prompts * num_samples
        tokens, logprobs = np.asarray(tokens[:n]), np.asarray(logprobs[:n])
        is_eos = np.isin(tokens, np.asarray(sampling.eos_ids or (-1,), np.int64))
        has_eos = is_eos.any(axis=1)
        lengths = np.where(has_eos, is_eos.argmax(axis=1) + 1, m).astype(np.int32)
        completion_mask = np.arange(m)[None, :] < lengths[:, None]
        source = np.arange(n) // num_samples
        return SampleOutput(
            prompt_ids=ids[source],
            prompt_mask=mask[source],
            completion_ids=tokens,
            completion_mask=completion_mask,
            lengths=lengths,
            truncated=~has_eos,
            logprobs=np.where(completion_mask, logprobs, 0.0).astype(np.float32),
            num_prompts=num_prompts,
            num_samples=num_samples,
            timings={
                "prefill_s": t2 - t1,
                "decode_s": t3 - t2,
                "total_s": t3 - t0,
                "compiled": float(self.num_compilations > compiled_before),
            },
            logits=None if kept is None else np.asarray(kept[:n]),
        )
