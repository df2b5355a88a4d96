"""Length-controlled win rate, in the spirit of AlpacaEval 2 LC (Dubois et al. 2024).

A judge that likes long answers rewards a policy for growing longer, and SPPO and DPO do grow
answers. So the verdicts are explained by a logistic model with the length difference as a
covariate, and the win rate is read off at zero length difference:

    P(win) = sigmoid(a + b * x),   x = tanh(d / sd(d)),   d = policy_tokens - other_tokens,
    LC win rate = sigmoid(a).

Choices, and why:
1. x = tanh(d / sd(d)), as AlpacaEval: d in units of its own spread over the comparisons, so
   the fit does not depend on the tokenizer or typical answer length; tanh bounds each
   comparison's leverage, so a few run-away answers of thousands of tokens cannot set the
   slope. x = 0 exactly where the lengths are equal, so sigmoid(a) is the equal-length rate.
2. Targets are the verdicts themselves (1, 0.5 for a tie, 0): a fractional-target logistic
   fit, maximising sum_k w_k [y_k log p_k + (1 - y_k) log(1 - p_k)], solved by Newton's method
   (IRLS) in numpy.
3. Weak Gaussian priors (ridge penalties): sd SLOPE_PRIOR_SD on b and INTERCEPT_PRIOR_SD on a.
   A judge that always prefers the longer answer separates the data perfectly; without the
   prior b and a would run off to infinity and sigmoid(a) would be set by the few comparisons
   nearest d = 0. With it the fit stays finite and a stays near 0 (LC near 0.5). The intercept
   prior only keeps a finite when every verdict is a win (or a loss); on real data it moves
   the answer by well under 0.01.
4. No per-prompt (instruction difficulty) term, unlike AlpacaEval: with a few dozen eval
   prompts it would add as many parameters as prompts.
When all lengths are equal (sd(d) = 0) x is 0 everywhere and the LC win rate is the raw win rate
(up to the intercept prior).
"""

import numpy as np

SLOPE_PRIOR_SD = 30.0      # flat over any slope a real judge has; binds only when length separates the verdicts
INTERCEPT_PRIOR_SD = 10.0  # logit 10 = a win rate of 0.99995


def _sigmoid(z):
    return np.exp(-np.logaddexp(0.0, -z))


def _objective(theta, design, y, w, penalty):
    z = design @ theta
    # y log p + (1 - y) log(1 - p), with log p = -log(1 + e^-z), log(1 - p) = -log(1 + e^z)
    loglik = -(y * np.logaddexp(0.0, -z) + (1 - y) * np.logaddexp(0.0, z))
    return float(np.sum(w * loglik) - 0.5 * np.sum(penalty * theta ** 2))


def fit_fractional_logistic(x, y, weights=None, slope_prior_sd: float = SLOPE_PRIOR_SD,
                            intercept_prior_sd: float = INTERCEPT_PRIOR_SD, max_steps: int = 100) -> tuple[float, float]:
    """(a, b) maximising sum_k w_k [y_k log p_k + (1 - y_k) log(1 - p_k)] - a^2 / (2 sa^2) - b^2 / (2 sb^2),
    p_k = sigmoid(a + b x_k), y_k in [0, 1]. Newton steps with step halving (the objective is
    strictly concave, so this converges from a = b = 0)."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    w = np.ones_like(y) if weights is None else np.asarray(weights, dtype=np.float64)
    if x.shape != y.shape or w.shape != y.shape or y.ndim != 1 or len(y) == 0:
        raise ValueError(f"logistic fit needs equally long, non-empty 1-D x, y, weights; got {x.shape}, {y.shape}, "
                         f"{w.shape}")
    if np.any((y < 0) | (y > 1)) or np.any(w < 0):
        raise ValueError("logistic fit: targets must lie in [0, 1] and weights be >= 0")
    design = np.stack([np.ones_like(x), x], axis=1)
    penalty = np.array([1.0 / intercept_prior_sd ** 2, 1.0 / slope_prior_sd ** 2])
    theta = np.zeros(2)
    value = _objective(theta, design, y, w, penalty)
    for _ in range(max_steps):
        p = _sigmoid(design @ theta)
        gradient = design.T @ (w * (y - p)) - penalty * theta
        hessian = (design * (w * p * (1 - p))[:, None]).T @ design + np.diag(penalty)  # minus the Hessian
        step = np.linalg.solve(hessian, gradient)
        scale = 1.0
        while scale > 1e-8:
            candidate = theta + scale * step
            new_value = _objective(candidate, design, y, w, penalty)
            if new_value >= value - 1e-12:
                break
            scale /= 2
        theta, value = candidate, new_value
        if np.max(np.abs(scale * step)) < 1e-10:
            break
    return float(theta[0]), float(theta[1])


def length_covariate(policy_tokens, other_tokens) -> np.ndarray:
    """x = tanh(d / sd(d)) for d = policy_tokens - other_tokens (population sd); 0 when sd(d) = 0."""
    d = np.asarray(policy_tokens, dtype=np.float64) - np.asarray(other_tokens, dtype=np.float64)
    spread = d.std()
    return np.tanh(d / spread) if spread > 0 else np.zeros_like(d)


def length_controlled_win_rate(wins, policy_tokens, other_tokens, weights=None) -> float:
    """sigmoid(a) of the fit above on one head-to-head's comparisons (HeadToHead.comparisons:
    `win`, `policy_tokens`, `other_tokens`): the win rate at equal length."""
    a, _ = fit_fractional_logistic(length_covariate(policy_tokens, other_tokens), wins, weights)
    return float(_sigmoid(a))


def length_controlled_win_rate_of(comparisons) -> float:
    """length_controlled_win_rate of a HeadToHead.comparisons table."""
    return length_controlled_win_rate(comparisons.column("win").to_numpy(), comparisons.column("policy_tokens").to_numpy(),
                                      comparisons.column("other_tokens").to_numpy())
