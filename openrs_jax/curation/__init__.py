"""Dataset curation steps behind `python -m openrs_jax.curate` (docs/recipe.md section Experiments).

- `format_filter`: rows whose gold answer math-verify parses;
- `difficulty`: pass rates under a model (sampler + accuracy reward) and a band to keep;
- `decontaminate`: training problems that copy an evaluation benchmark problem;
- `dedup`: repeated problems within a source and against other sources;
- `mix`: a seeded draw of given counts from several sources.

Each works on lists of row dicts; `openrs_jax.curate` reads datasets and writes the outputs.
"""
