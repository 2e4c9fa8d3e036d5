"""Throughput and memory benchmarks: `python -m openrs_jax.bench SUBCOMMAND ... --out FILE.json`.

Each subcommand lives in its own module with `add_arguments(parser)` and `run(args) -> dict`;
the dispatcher adds the common fields (date, device, command), writes the JSON and prints a
short summary (`bench.summary`).
"""

SUBCOMMANDS: dict[str, str] = {
    "sampler": "openrs_jax.bench.sampler",
    "update": "openrs_jax.bench.update",
    "step": "openrs_jax.bench.step",
    "memory": "openrs_jax.bench.memory",
    "rewards": "openrs_jax.bench.rewards",
    "plan": "openrs_jax.bench.plan",
    "engine": "openrs_jax.bench.engine",
}
