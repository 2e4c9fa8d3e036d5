"""The offline default: a tiny random Qwen2 learns one-digit sums on a CPU in about a minute.

A completion is an answer token (`\\boxed{0}` ... `\\boxed{9}`), then EOS. Accuracy starts near
0.06 (a random answer token) and climbs past 0.7 by step 200; `truncated_fraction` (rows
without EOS) starts near 0.95 and falls to about 0.1 by step 200 once the policy has learnt to
stop, which the second reward (`openrs_jax.recipe.toy:stop_reward`: the right answer and nothing
after it) teaches. (Seeds 0, 1 and 2: accuracy 0.81, 0.72, 0.79 and truncation 0.11, 0.16,
0.09 over the last 20 steps.)

`builtin:tiny` is a 2-layer Qwen2 built at start with random weights and a 29-token tokenizer
that ships with the package; `builtin:sums` is a toy dataset of 25 sums (a + b, a, b < 5).
Override `model_path`, `tokenizer_path` or `dataset_name` with real paths to use your own.
"""

from openrs_jax.recipe.config import base_config


def get_config():
    c = base_config()
    c.model.path = "builtin:tiny"
    c.data.dataset = "builtin:sums"
    c.data.system_prompt = ""
    # accuracy: the answer is right; stop_reward: the right answer, then EOS. Stopping weighs
    # less: at 1.0 the policy learnt to stop well before it learnt the sums.
    c.rewards.funcs = ("accuracy", "openrs_jax.recipe.toy:stop_reward")
    c.rewards.weights = (1.0, 0.5)
    c.rewards.num_workers = 2
    c.rollout.num_generations = 8
    c.rollout.prompts_per_step = 16
    c.grpo.micro_batch_size = 64
    c.data.max_prompt_length = 16
    c.rollout.max_completion_length = 2  # an answer token, then EOS
    c.rollout.temperature = 1.0
    c.grpo.learning_rate = 1e-3  # 3e-3 learnt or stalled depending on the sampling stream (seed)
    c.grpo.warmup_ratio = 0.0
    c.grpo.min_lr_rate = 1.0  # constant learning rate
    c.grpo.max_steps = 200
    c.grpo.beta = 0.04
    c.model.compute_dtype = "float32"
    c.model.remat = "none"
    c.mesh.fsdp = 1
    c.mesh.data = -1
    c.run.seed = 0
    c.run.save_steps = 50
    c.run.export_dtype = "float32"
    c.grpo.logprob_chunk = 64
    c.eval.max_new_tokens = 2
    c.run.output_dir = "runs/tiny"
    return c
