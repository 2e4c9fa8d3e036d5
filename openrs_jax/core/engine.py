"""Continuous batching: a queue of (prompt, sample) requests through a fixed set of decode slots.

`Sampler.generate` runs a batch until its longest row stops, so one long completion keeps every
other row of its batch idle. The `Engine` instead holds `slots` rows in flight, each with its
own region of one KV cache ([slots, kv_heads, cache_len, head_dim] per layer), its own write
column and step. Its host loop repeats:

1. admit: waiting requests go into free slots. The requests of one prompt that start together
   share one prefill (the prompt runs once and its KV is copied into each of their slots).
2. decode a chunk: up to `chunk` steps for every slot in one compiled `while_loop`, which
   stops early once every slot has finished.
3. retire: finished rows are handed to the caller (as they finish) and their slots freed.

Both programs have fixed shapes: one admission program (`prefill_width` prompt rows of the
run's prompt cap) and one chunk program per run configuration, whatever the mix of prompts,
lengths and slot occupancy (`num_compilations` counts them).

Same samples as `Sampler.generate`. A slot's cache row is laid out as the sampler lays out a
row (the prompt left-padded to the run's prompt cap, then one column per fed token), the cache
has the sampler's length for that cap, and a row's random key is `sampling.sample_key(seed key,
prompt index, sample index)` folded with the step, so a request gives the completion that
`Sampler.generate` gives the same prompt and sample index for the same seed, whichever slot it
runs in and whatever else runs beside it. Single device only (no mesh).
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import logging
from typing import Any, Callable, Iterator, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from openrs_jax.core.model import KVCache
from openrs_jax.core.model.qwen2 import DecodeWeights, _decoder_layer, rms_norm, rope_tables
from openrs_jax.core.sampling import (
    Mode, Sampler, SamplingParams, as_key, bucket_length, check_prompts, free_device_bytes, left_pad, note_compile,
    project_logits, require_positive, sample_key, sampling_args,
)

log = logging.getLogger("openrs_jax.core.engine")

DEFAULT_CHUNK = 16
# Slots used when the device does not report its free memory (CPU): enough rows to keep a
# CPU's matmuls efficient for a small model, few enough to stay within a host's memory.
DEFAULT_CPU_SLOTS = 8
# Share of the free device memory the slots may take (the rest: XLA temporaries, fragmentation).
MEMORY_FRACTION = 0.8


@dataclasses.dataclass(frozen=True)
class Request:
    """One completion to generate: sample `sample` of prompt `prompt` (an index into the run's
    prompts). stop_at (benchmarks): the row emits the first EOS id at this length if still going."""

    prompt: int
    sample: int
    stop_at: int | None = None


@dataclasses.dataclass
class Completion:
    """A finished request: its completion ids (ending with the EOS when one came) and their
    log-probs, as `SampleOutput` gives them for one row."""

    request: Request
    token_ids: list[int]
    logprobs: np.ndarray
    truncated: bool


@struct.dataclass
class _Slots:
    """Device state of every slot (the programs' donated carry)."""

    k: tuple[jax.Array, ...]  # per layer [S, KV, C, D]
    v: tuple[jax.Array, ...]
    mask: jax.Array  # [S, C] bool: slots holding a real token
    col: jax.Array  # [S] int32: cache column the next fed token is written to
    step: jax.Array  # [S] int32: tokens sampled so far
    logits: jax.Array  # [S, V] fp32: next-token logits
    done: jax.Array  # [S] bool: finished (or empty)
    prompt: jax.Array  # [S] int32 prompt index (for the random key)
    sample: jax.Array  # [S] int32 sample index
    stop_at: jax.Array  # [S] int32 forced-EOS length (max_new_tokens + 1 = never)
    tokens: jax.Array  # [S, M] int32
    logprobs: jax.Array  # [S, M] fp32


@dataclasses.dataclass(frozen=True)
class _Shape:
    """Static shape and mode of a run's programs (their compile-cache key)."""

    slots: int
    prompt_len: int  # the run's prompt cap (bucketed)
    cache_len: int
    prefill_width: int
    chunk: int
    max_new_tokens: int
    mode: Mode


class Engine:
    """Continuous-batching generation on top of a `Sampler` (its weights layout, attention
    implementation, cache dtype and token selection)."""

    def __init__(self, sampler: Sampler, slots: int | None = None, *, chunk: int = DEFAULT_CHUNK,
                 prefill_width: int = 1):
        """slots: rows in flight (None: sized from free device memory per run, see `fit_slots`).
        chunk: decode steps between retirements (each is a device-to-host sync). prefill_width:
        distinct prompts one admission program prefills."""
        if sampler.mesh is not None and sampler.mesh.size > 1:
            raise ValueError("the slot engine runs on one device; build its Sampler without a multi-device mesh")
        require_positive(slots=slots, chunk=chunk, prefill_width=prefill_width)
        self.sampler = sampler
        self.config = sampler.config
        self.slots = slots
        self.chunk = chunk
        self.prefill_width = prefill_width
        self.num_compilations = 0
        self._admit = jax.jit(self._admit_impl, static_argnums=(0,), donate_argnums=(1,))
        self._decode = jax.jit(self._decode_impl, static_argnums=(0,), donate_argnums=(1,))

    # -- sizing ------------------------------------------------------------------------------

    def slot_bytes(self, prompt_len: int, max_new_tokens: int) -> int:
        """Device bytes one slot holds: its cache row, logits and output buffers."""
        return self.sampler.row_bytes(self.sampler.cache_length(prompt_len, max_new_tokens), max_new_tokens)

    def fit_slots(self, prompt_len: int, max_new_tokens: int, device: jax.Device | None = None) -> int:
        """Slots that fit in MEMORY_FRACTION of the device's free memory (at least 1), or
        DEFAULT_CPU_SLOTS where the device does not report it (CPU)."""
        free = free_device_bytes(device or jax.devices()[0])
        if free is None:
            return DEFAULT_CPU_SLOTS
        prefill = KVCache.num_bytes(self.config, self.prefill_width, prompt_len, self.sampler.cache_dtype)
        per_slot = self.slot_bytes(prompt_len, max_new_tokens)
        slots = int((free * MEMORY_FRACTION - prefill) // per_slot)
        if slots < 1:
            raise ValueError(f"one decode slot of {per_slot} bytes (prompt {prompt_len} + {max_new_tokens} tokens) does "
                            f"not fit the device's {free} free bytes; lower max_new_tokens or use a bf16 cache")
        return slots

    # -- programs ----------------------------------------------------------------------------

    def _empty(self, shape: _Shape) -> _Slots:
        c, s, m = self.config, shape.slots, shape.max_new_tokens
        cache = KVCache.create(c, s, shape.cache_len, self.sampler.cache_dtype)
        zeros = lambda: jnp.zeros((s,), jnp.int32)  # noqa: E731  (distinct buffers: all are donated)
        return _Slots(
            k=cache.k, v=cache.v, mask=cache.mask, col=zeros(), step=zeros(),
            logits=jnp.zeros((s, c.vocab_size), jnp.float32), done=jnp.ones((s,), bool), prompt=zeros(),
            sample=zeros(), stop_at=jnp.full((s,), m + 1, jnp.int32), tokens=jnp.full((s, m), shape.mode.pad_id, jnp.int32),
            logprobs=jnp.zeros((s, m), jnp.float32),
        )

    def _admit_impl(self, shape: _Shape, st: _Slots, weights: DecodeWeights, ids: jax.Array, mask: jax.Array,
                    dest: jax.Array, src: jax.Array, prompt: jax.Array, sample: jax.Array,
                    stop_at: jax.Array) -> _Slots:
        """Prefills `ids` [A, P] (left-padded) once and starts row src[j] in slot dest[j] for
        every j (dest = slots: unused entry, dropped)."""
        note_compile(self, log, "admit", shape)
        small, logits = self.sampler.prefill_prompts(weights, ids, mask)
        p = shape.prompt_len
        # Columns past the prompt keep the slot's previous values: the mask hides them.
        put = lambda x, new: x.at[dest, :, :p].set(jnp.take(new, src, axis=0), mode="drop")  # noqa: E731
        row_mask = jnp.pad(jnp.take(small.mask, src, axis=0), ((0, 0), (0, shape.cache_len - p)))
        at = lambda x, new: x.at[dest].set(new, mode="drop")  # noqa: E731
        return dataclasses.replace(
            st, k=tuple(map(put, st.k, small.k)), v=tuple(map(put, st.v, small.v)), mask=at(st.mask, row_mask),
            col=at(st.col, jnp.full(dest.shape, p, jnp.int32)), step=at(st.step, jnp.zeros(dest.shape, jnp.int32)),
            logits=at(st.logits, jnp.take(logits, src, axis=0)), done=at(st.done, jnp.zeros(dest.shape, bool)),
            prompt=at(st.prompt, prompt), sample=at(st.sample, sample), stop_at=at(st.stop_at, stop_at),
        )

    def _forward(self, weights: DecodeWeights, st: _Slots, tok: jax.Array, feed: jax.Array) -> _Slots:
        """Feeds tok [S] to the rows with `feed`, each at its own cache column; new logits."""
        c, dtype = self.config, jnp.dtype(self.config.dtype)
        s, cache_len = tok.shape[0], st.mask.shape[1]
        rows = jnp.arange(s)
        positions = st.mask.sum(-1, dtype=jnp.int32)  # real tokens so far (as `positions_from_mask`)
        write = jnp.where(feed, st.col, cache_len)  # out of range: not written
        mask = st.mask.at[rows, write].set(True, mode="drop")
        start = jnp.argmax(mask, axis=-1).astype(jnp.int32)
        length = jnp.where(feed, st.col + 1, 0)  # rows not fed read nothing (the kernel skips them)
        cos, sin = rope_tables(positions[:, None], c.head_dim, c.rope_theta)
        h = jnp.take(weights.embed, tok[:, None], axis=0).astype(dtype)
        ks, vs = list(st.k), list(st.v)
        for i in range(c.num_hidden_layers):

            def attend(q, k, v, i=i):
                ks[i] = ks[i].at[rows, :, write].set(k[:, 0].astype(ks[i].dtype), mode="drop")
                vs[i] = vs[i].at[rows, :, write].set(v[:, 0].astype(vs[i].dtype), mode="drop")
                out = self.sampler.attention(q[:, 0], ks[i].astype(dtype), vs[i].astype(dtype), start, length)
                return out.reshape(s, 1, -1)

            h = _decoder_layer(c, h, weights.layers[i], cos, sin, None, attend=attend)
        h = rms_norm(h, weights.norm, c.rms_norm_eps)
        return dataclasses.replace(st, k=tuple(ks), v=tuple(vs), mask=mask, col=st.col + feed,
                                   logits=project_logits(h[:, 0], weights))

    def _decode_impl(self, shape: _Shape, st: _Slots, weights: DecodeWeights, key: jax.Array,
                     temperature: jax.Array, top_p: jax.Array, refill_at: jax.Array) -> _Slots:
        """Up to `chunk` steps of every live slot: sample from its logits, record, feed. Stops
        early when every slot is done, or when `refill_at` slots are done (waiting requests can
        take them)."""
        note_compile(self, log, "decode", shape)
        m, mode = shape.max_new_tokens, shape.mode
        rows = jnp.arange(shape.slots)

        def one(carry: tuple[jax.Array, _Slots]) -> tuple[jax.Array, _Slots]:
            i, st = carry
            live = ~st.done
            keys = jax.vmap(lambda p, n, t: jax.random.fold_in(sample_key(key, p, n), t))(st.prompt, st.sample, st.step)
            tok, lp = mode.next_tokens(st.logits, keys, temperature, top_p, st.step + 1, st.stop_at, st.done)
            at = jnp.where(live, st.step, m)  # out of range: not written
            finished = live & (mode.is_eos(tok) | (st.step + 1 >= m))
            st = dataclasses.replace(
                st, tokens=st.tokens.at[rows, at].set(tok, mode="drop"),
                logprobs=st.logprobs.at[rows, at].set(lp, mode="drop"),
                step=st.step + live, done=st.done | finished,
            )
            return i + 1, self._forward(weights, st, tok, live & ~finished)

        def cond(carry: tuple[jax.Array, _Slots]) -> jax.Array:
            i, st = carry
            return (i < shape.chunk) & (jnp.sum(st.done) < refill_at)

        return jax.lax.while_loop(cond, one, (jnp.zeros((), jnp.int32), st))[1]

    # -- public ------------------------------------------------------------------------------

    def _run_shape(self, slots: int, prompt_len: int, sampling: SamplingParams) -> _Shape:
        m = sampling.max_new_tokens
        return _Shape(
            slots=slots, prompt_len=prompt_len, cache_len=self.sampler.cache_length(prompt_len, m),
            prefill_width=self.prefill_width, chunk=self.chunk, max_new_tokens=m,
            mode=Mode.of(sampling, self.sampler.top_p_candidates),
        )

    def compile(self, params: Any, slots: int, prompt_len: int, sampling: SamplingParams) -> dict[str, Any]:
        """Compiles, without running, the admission and decode programs of a run (memory planning
        for a GPU target from any host: `compiled.memory_analysis()`). params may be abstract
        (jax.ShapeDtypeStruct leaves with shardings); prompt_len is rounded up to the bucket."""
        shape = self._run_shape(slots, bucket_length(prompt_len, self.sampler.prompt_bucket), sampling)
        prepare, weights = self.sampler.compile_prepare(params)
        spec = functools.partial(jax.ShapeDtypeStruct, sharding=prepare.output_shardings.embed)  # weights' device
        st = jax.tree.map(lambda x: spec(x.shape, x.dtype), jax.eval_shape(lambda: self._empty(shape)))
        key = jax.eval_shape(lambda: jax.random.key(0))
        decode = self._decode.lower(shape, st, weights, key, spec((), jnp.float32), spec((), jnp.float32),
                                    spec((), jnp.int32)).compile()
        rows = spec((slots,), jnp.int32)
        ids, mask = (spec((self.prefill_width, shape.prompt_len), dtype) for dtype in (jnp.int32, jnp.bool_))
        admit = self._admit.lower(shape, st, weights, ids, mask, rows, rows, rows, rows, rows).compile()
        return {"prepare": prepare, "admit": admit, "decode": decode}

    def run(
        self,
        params: Any,
        prompts: Sequence[Sequence[int]],
        requests: Sequence[Request],
        sampling: SamplingParams,
        key_or_seed: int | jax.Array = 0,
        *,
        on_chunk: Callable[[dict[str, int]], None] | None = None,
    ) -> Iterator[Completion]:
        """Generates every request, yielding each `Completion` as soon as its row finishes.

        prompts: token-id lists, indexed by `Request.prompt` (the same index keys the sampling,
        so give every prompt of a task its stable index). Requests start in the given order;
        consecutive requests of one prompt share a prefill. on_chunk receives progress counts
        after every chunk: requests done, tokens generated, slots live.
        """
        for r in requests:
            if not 0 <= r.prompt < len(prompts):
                raise ValueError(f"request {r} names prompt {r.prompt}, but there are {len(prompts)} prompts")
        used = sorted({r.prompt for r in requests})
        prompts = check_prompts(prompts, self.config.vocab_size, used)
        if not requests:
            return
        m = sampling.max_new_tokens
        prompt_len = bucket_length(max(prompts[i].size for i in used), self.sampler.prompt_bucket)
        slots = self.slots or self.fit_slots(prompt_len, m)
        shape = self._run_shape(slots, prompt_len, sampling)
        weights = self.sampler.prepare(params)
        key = as_key(key_or_seed)
        temperature, top_p = sampling_args(sampling)
        eos = np.asarray(sampling.eos_ids or (-1,), np.int64)

        st = self._empty(shape)
        queue = collections.deque(requests)
        held: list[Request | None] = [None] * slots
        finished = tokens = 0
        while queue or any(r is not None for r in held):
            st = self._fill(shape, st, weights, prompts, queue, held)
            # With requests waiting, the chunk ends as soon as enough slots are free to refill
            # (a quarter of them, or all the queue needs): short rows do not idle until its end.
            refill_at = min(len(queue), max(1, slots // 4)) if queue else slots
            st = self._decode(shape, st, weights, key, temperature, top_p, np.int32(refill_at))
            done, step = jax.device_get((st.done, st.step))
            out_tokens = out_logprobs = None
            for s, r in enumerate(held):
                if r is None or not done[s]:
                    continue
                if out_tokens is None:
                    out_tokens, out_logprobs = jax.device_get((st.tokens, st.logprobs))
                n = int(step[s])
                ids = out_tokens[s, :n]
                held[s] = None
                finished += 1
                tokens += n
                yield Completion(r, ids.tolist(), np.asarray(out_logprobs[s, :n], np.float32),
                                 truncated=not bool(np.isin(ids, eos).any()))
            if on_chunk is not None:
                live = sum(r is not None for r in held)
                on_chunk({"requests_done": finished, "tokens": tokens + int(step[[s for s in range(slots) if held[s]]].sum()),
                          "slots_live": live})

    def _fill(self, shape: _Shape, st: _Slots, weights: DecodeWeights, prompts: list[np.ndarray],
              queue: collections.deque, held: list[Request | None]) -> _Slots:
        """Admits waiting requests into free slots, `prefill_width` distinct prompts per program."""
        free = [s for s, r in enumerate(held) if r is None]
        while free and queue:
            s_count = shape.slots
            dest = np.full(s_count, s_count, np.int32)
            src, prompt, sample = (np.zeros(s_count, np.int32) for _ in range(3))
            stop = np.full(s_count, shape.max_new_tokens + 1, np.int32)
            rows: list[np.ndarray] = []  # the distinct prompts of this admission
            j = 0
            while free and queue and len(rows) < shape.prefill_width:
                # This prompt row serves the consecutive requests of one prompt (shared prefill).
                first = queue[0].prompt
                rows.append(prompts[first])
                while free and queue and queue[0].prompt == first:
                    r = queue.popleft()
                    slot = free.pop(0)
                    held[slot] = r
                    dest[j], src[j], prompt[j], sample[j] = slot, len(rows) - 1, r.prompt, r.sample
                    if r.stop_at is not None:
                        stop[j] = min(max(int(r.stop_at), 1), shape.max_new_tokens + 1)
                    j += 1
            ids, mask = left_pad(rows, shape.prompt_len, shape.mode.pad_id, shape.prefill_width)
            st = self._admit(shape, st, weights, ids, mask, dest, src, prompt, sample, stop)
        return st


def decode_devices(slots: int | None) -> tuple[list[jax.Device], bool]:
    """Devices for a decode-only queue (evaluation, curation) and whether the slot engine takes it.

    slots 0: static `Sampler.generate` batches over every device. slots None: the engine on one
    device, static batches where several are visible. slots > 0: the engine, on the first device.
    """
    if slots is not None and slots < 0:
        raise ValueError(f"--slots must be >= 0 (0 = static batches), got {slots}")
    devices = jax.devices()
    if slots == 0 or (slots is None and len(devices) > 1):
        return devices, False
    if len(devices) > 1:
        log.warning("--slots: the slot engine runs on one device; using %s of the %d", devices[0], len(devices))
    return devices[:1], True


def stream_by_index(engine: Engine, params: Any, prompts: Mapping[int, Sequence[int]],
                    requests: Sequence[tuple[int, int]], sampling: SamplingParams, seed: int,
                    on_chunk: Callable[[dict[str, int]], None] | None = None) -> Iterator[Completion]:
    """`Engine.run` for prompts keyed by a stable index (a benchmark's problem index, a dataset
    row): (index, sample) requests; each yielded `Completion.request.prompt` is that index."""
    table = [prompts.get(i, ()) for i in range(max(prompts) + 1 if prompts else 0)]
    return engine.run(params, table, [Request(i, s) for i, s in requests], sampling, seed, on_chunk=on_chunk)

