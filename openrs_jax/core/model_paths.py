"""The kinds of folders a model argument may name: the words every help text and error uses.

Kept apart from `openrs_jax.core.model.sources` (which resolves them) so command-line parsers can
show them without importing JAX.
"""

# Named by every "this is not a model" error, so the user sees what would have worked.
ACCEPTED = (
    "a Hugging Face model directory (config.json + safetensors, e.g. RUN/hf or RUN/hf-step-N), "
    "a training run folder RUN (its latest checkpoint), a training checkpoint RUN/checkpoints/N, "
    "an openrs-jax checkpoint (from conversion.hf_to_flax) or builtin:tiny"
)
# The short form, for --model help texts.
MODEL_HELP = (
    "Hugging Face model directory (e.g. RUN/hf), training run folder RUN (its latest checkpoint), "
    "RUN/checkpoints/N, openrs-jax checkpoint or builtin:tiny"
)
