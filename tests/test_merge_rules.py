"""Baseline merge rules: each against its defining property on hand-built or random tensors."""
from __future__ import annotations

import pytest
import torch

from perturbmerge.merge import (add_scaled, dare, ewc_penalty, fisher_weighted_interpolation, magmax, running_mean,
                                task_arithmetic, ties)


def random_vectors(count: int, seed: int = 0) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [{"a": torch.randn(3, 4, generator=g, dtype=torch.float64),
             "b": torch.randn(5, generator=g, dtype=torch.float64)} for _ in range(count)]


def test_running_mean_equals_exact_mean_of_all_items():
    items = random_vectors(6)
    mean = None
    for t, item in enumerate(items, 1):
        mean = running_mean(mean, item, t)
        for k in item:
            torch.testing.assert_close(mean[k], torch.stack([x[k] for x in items[:t]]).mean(0), rtol=1e-12, atol=1e-12)


def test_task_arithmetic_is_base_plus_lambda_sum():
    base, *tvs = random_vectors(4)
    merged = add_scaled(base, task_arithmetic(tvs), 0.3)
    for k in base:
        torch.testing.assert_close(merged[k], base[k] + 0.3 * (tvs[0][k] + tvs[1][k] + tvs[2][k]))


def test_magmax_picks_largest_magnitude_with_ties_to_later_task():
    tvs = [{"w": torch.tensor([1.0, -3.0, 2.0, 0.5])},
           {"w": torch.tensor([-2.0, 3.0, 1.0, -0.5])},
           {"w": torch.tensor([0.0, 1.0, -2.0, 0.1])}]
    # element 0: |-2| wins; 1: |-3| = |3| tie → task 2 (3.0); 2: |2| = |-2| tie → task 3 (-2.0); 3: tie 0.5/-0.5 → -0.5
    assert magmax(tvs)["w"].tolist() == [-2.0, 3.0, -2.0, -0.5]


def test_magmax_matches_brute_force_on_random_vectors():
    tvs = random_vectors(5, seed=3)
    merged = magmax(tvs)
    for k in merged:
        flat = [tv[k].reshape(-1) for tv in tvs]
        for i in range(flat[0].numel()):
            best = max(range(5), key=lambda t: (flat[t][i].abs().item(), t))
            assert merged[k].reshape(-1)[i] == flat[best][i]


def test_ties_hand_example():
    tvs = [{"w": torch.tensor([3.0, -1.0, 2.0, 0.1])},
           {"w": torch.tensor([-1.0, -2.0, 4.0, 0.2])},
           {"w": torch.tensor([-1.5, 1.0, -0.5, 0.3])}]
    # keep 75 % (3 of 4 entries) per vector: [3, -1, 2, 0], [-1, -2, 4, 0], [-1.5, 1, -0.5, 0]
    # signs: col0 sum 0.5 → +, keep {3} → 3; col1 sum -2 → −, keep {-1, -2} → -1.5;
    #        col2 sum 5.5 → +, keep {2, 4} → 3; col3 all trimmed → 0
    torch.testing.assert_close(ties(tvs, keep_fraction=0.75)["w"], torch.tensor([3.0, -1.5, 3.0, 0.0]))


def test_ties_with_everything_kept_and_one_sign_is_the_mean():
    tvs = [{"w": torch.tensor([1.0, 2.0])}, {"w": torch.tensor([3.0, 4.0])}]
    torch.testing.assert_close(ties(tvs, keep_fraction=1.0)["w"], torch.tensor([2.0, 3.0]))


def test_dare_preserves_the_expectation_and_drops_at_rate_p():
    tv = {"w": torch.linspace(-1, 1, 50, dtype=torch.float64)}
    g = torch.Generator().manual_seed(0)
    draws = torch.stack([dare(tv, 0.7, g)["w"] for _ in range(4000)])
    kept = (draws != 0).double().mean()
    assert abs(kept.item() - 0.3) < 0.01
    standard_error = draws.std(0) / 4000 ** 0.5
    assert ((draws.mean(0) - tv["w"]).abs() <= 5 * standard_error + 1e-12).all()
    nonzero = draws[0] != 0
    torch.testing.assert_close(draws[0][nonzero], tv["w"][nonzero] / 0.3)


def test_fisher_weighted_interpolation():
    prev, cur = {"w": torch.tensor([0.0, 0.0, 1.0])}, {"w": torch.tensor([4.0, 4.0, 3.0])}
    fp, fc = {"w": torch.tensor([1.0, 3.0, 0.0])}, {"w": torch.tensor([3.0, 1.0, 0.0])}
    torch.testing.assert_close(fisher_weighted_interpolation(prev, cur, fp, fc)["w"], torch.tensor([3.0, 1.0, 2.0]))


def test_ewc_penalty_gradient_is_lambda_f_times_displacement():
    g = torch.Generator().manual_seed(1)
    theta = {"w": torch.randn(4, 3, generator=g, dtype=torch.float64, requires_grad=True)}
    anchor = {"w": torch.randn(4, 3, generator=g, dtype=torch.float64)}
    fisher = {"w": torch.rand(4, 3, generator=g, dtype=torch.float64)}
    penalty = ewc_penalty(theta, anchor, fisher, strength=7.0)
    (grad,) = torch.autograd.grad(penalty, [theta["w"]])
    torch.testing.assert_close(grad, 7.0 * fisher["w"] * (theta["w"] - anchor["w"]).detach())


@pytest.mark.parametrize("bad", [0.0, 1.5])
def test_ties_rejects_bad_fraction(bad):
    with pytest.raises(ValueError):
        ties([{"w": torch.ones(2)}], keep_fraction=bad)
