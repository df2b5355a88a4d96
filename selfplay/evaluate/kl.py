"""KL(policy || initial) estimated from the policy's own eval samples.

For y ~ pi(. | x), log pi(y | x) - log pi0(y | x) has expectation KL(pi(. | x) || pi0(. | x)),
the sequence-level KL (the sum over tokens of the per-token KLs along the sampled path), so
its sample mean is an unbiased estimate (the "k1" estimator). Single values can be negative;
the mean is not, up to noise. Log-probs are summed over the response tokens
(sequence_logps.py), as every loss in this project uses them.

The estimate is the mean over prompts of each prompt's mean log-ratio (the mean over samples
when every prompt has the same number of samples, as evaluate.samples_per_prompt gives), and
its 95% interval bootstraps prompts (bootstrap.py), the same unit as the win rate's interval.
The eval samples are drawn at evaluate.temperature / top_p: at a temperature other than 1 (or
top_p < 1) they come from a tempered policy, not pi, and the number is KL-like, not KL.
"""

import numpy as np

from selfplay.evaluate.bootstrap import bootstrap_interval


def kl_estimate(policy_logps, initial_logps, prompt_ids, confidence: float = 0.95) -> tuple[float, float, float]:
    """(estimate, ci_low, ci_high) of KL(policy || initial) from per-sample sequence log-probs of
    the policy's samples under the policy and under the initial policy; prompt_ids groups the
    samples by prompt for the mean and the bootstrap."""
    policy_logps = np.asarray(policy_logps, dtype=np.float64)
    initial_logps = np.asarray(initial_logps, dtype=np.float64)
    prompt_ids = np.asarray(prompt_ids)
    if not (policy_logps.shape == initial_logps.shape == prompt_ids.shape) or policy_logps.ndim != 1 \
            or len(policy_logps) == 0:
        raise ValueError(f"kl_estimate needs equally long, non-empty lists of policy log-probs, initial log-probs "
                         f"and prompt ids; got shapes {policy_logps.shape}, {initial_logps.shape}, {prompt_ids.shape}")
    log_ratio = policy_logps - initial_logps
    if not np.all(np.isfinite(log_ratio)):
        raise ValueError("kl_estimate: a log-prob is not finite (a sample impossible under one of the policies?)")
    _, group = np.unique(prompt_ids, return_inverse=True)
    per_prompt = np.bincount(group, weights=log_ratio) / np.bincount(group)
    low, high = bootstrap_interval(per_prompt, confidence=confidence)
    return float(per_prompt.mean()), low, high


def kl_metrics(samples, policy_path, initial_path, name: str = "vs_initial", device: str | None = None) -> dict:
    """`kl_<name>` and its `_ci_low` / `_ci_high` for the policy's eval samples (a samples table:
    prompt_id, prompt_token_ids, token_ids), scored under both checkpoints (sequence_logps.py)."""
    from selfplay.evaluate.sequence_logps import sequence_logps

    prompts, responses = samples.column("prompt_token_ids").to_pylist(), samples.column("token_ids").to_pylist()
    policy = sequence_logps(policy_path, prompts, responses, device=device)
    initial = sequence_logps(initial_path, prompts, responses, device=device)
    estimate, low, high = kl_estimate(policy, initial, samples.column("prompt_id").to_numpy())
    return {f"kl_{name}": estimate, f"kl_{name}_ci_low": low, f"kl_{name}_ci_high": high}
