"""``model=flow``: flow matching's training pairs against torchcfm, its Euler steps against diffusers'
FlowMatchEulerDiscreteScheduler, its solvers against dopri5, and its OT coupling against scipy's assignment."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from genbench.diffusion import build_sampler
from genbench.diffusion.flow import TIME_SCALE, FlowPath, ot_pairing




def test_rectified_flow_pairs_equal_torchcfm_conditional_flow_matcher():
    cfm = pytest.importorskip("torchcfm.conditional_flow_matching")
    torch.manual_seed(0)
    data, noise = torch.randn(8, 1, 6, 6), torch.randn(8, 1, 6, 6)
    t_cfm = torch.rand(8)  # torchcfm's time runs from noise (0) to data (1); genbench's the other way
    _, xt, ut = cfm.ConditionalFlowMatcher(sigma=0.0).sample_location_and_conditional_flow(noise, data, t_cfm)
    x_t, target = FlowPath(sigma_min=0.0).interpolate(data, noise, 1 - t_cfm)
    torch.testing.assert_close(x_t, xt, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(target, -ut)  # dx/dt in genbench's time is -dx/dt in torchcfm's


def test_sigma_min_pairs_equal_torchcfm_target_flow_matcher():
    """Lipman et al.'s path with sigma_min > 0: torchcfm's TargetConditionalFlowMatcher draws the noise itself."""
    cfm = pytest.importorskip("torchcfm.conditional_flow_matching")
    torch.manual_seed(0)
    data, source = torch.randn(8, 1, 6, 6), torch.randn(8, 1, 6, 6)
    t_cfm = torch.rand(8)
    matcher = cfm.TargetConditionalFlowMatcher(sigma=0.05)
    _, xt, ut, eps = matcher.sample_location_and_conditional_flow(source, data, t_cfm, return_noise=True)
    x_t, target = FlowPath(sigma_min=0.05).interpolate(data, eps, 1 - t_cfm)
    torch.testing.assert_close(x_t, xt, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(target, -ut, rtol=1e-4, atol=1e-5)


def test_euler_steps_equal_diffusers_flow_match_euler_step_for_step():
    schedulers = pytest.importorskip("diffusers.schedulers")
    torch.manual_seed(0)
    path = FlowPath()
    steps = 8
    reference = schedulers.FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=1.0)
    reference.set_timesteps(sigmas=np.linspace(1.0, 1 / steps, steps))
    ours = path.grid(steps)
    assert np.allclose(reference.sigmas.numpy(), ours.taus, atol=1e-6)  # the same time grid, ending at 0
    weights = torch.randn(1, 1, 4, 4)
    velocity = lambda x, t: torch.tanh(x * weights + t.view(-1, 1, 1, 1) / TIME_SCALE)  # noqa: E731 - a smooth field
    seen = []

    def model_fn(x, t):
        seen.append(x.clone())
        return velocity(x, t)

    noise = torch.randn(3, 1, 4, 4)
    sampler = build_sampler("euler", steps)
    sampler.clip_denoised = False
    ours_out = sampler(model_fn, path, noise, space=_Unclipped())
    x = noise.clone()
    for i, t in enumerate(reference.timesteps):
        torch.testing.assert_close(seen[i], x, rtol=1e-5, atol=1e-5)  # each state, step for step
        x = reference.step(velocity(x, torch.full((3,), float(reference.sigmas[i]) * TIME_SCALE)), t, x).prev_sample
    torch.testing.assert_close(ours_out, x, rtol=1e-5, atol=1e-5)


class _Unclipped:
    clips = False

    def decode(self, states):
        return states


def test_fixed_step_solvers_converge_to_dopri5():
    torch.manual_seed(0)
    path = FlowPath()
    weights = torch.randn(1, 1, 4, 4) * 0.5

    def model_fn(x, t):
        return torch.tanh(x * weights) - 0.3 * torch.sin(t.view(-1, 1, 1, 1) / TIME_SCALE * 3) * x

    noise = torch.randn(4, 1, 4, 4)
    solve = lambda sampler: (setattr(sampler, "clip_denoised", False),  # noqa: E731
                             sampler(model_fn, path, noise, space=_Unclipped()))[1]  # fmt: skip
    reference = solve(build_sampler("dopri5", 1, rtol=1e-7, atol=1e-7))
    for name in ("euler", "heun", "midpoint"):
        errors = [float((solve(build_sampler(name, steps)) - reference).abs().max()) for steps in (2, 8, 32)]
        assert errors[2] < errors[1] < errors[0], (name, errors)
        order = 1 if name == "euler" else 2  # each 4x more steps: 4x (first order) or 16x (second) less error
        assert errors[1] / errors[2] > 4 ** order * 0.6, (name, errors)


def test_ot_pairing_is_the_optimal_assignment():
    from scipy.optimize import linear_sum_assignment

    torch.manual_seed(0)
    data, noise = torch.randn(32, 1, 5, 5), torch.randn(32, 1, 5, 5)
    perm = ot_pairing(data, noise)
    cost = torch.cdist(data.flatten(1).double(), noise.flatten(1).double()).pow(2).numpy()
    rows, cols = linear_sum_assignment(cost)
    assert sorted(perm.tolist()) == list(range(32)), "a permutation: every noise draw used once"
    assert cost[np.arange(32), perm.numpy()].sum() == pytest.approx(cost[rows, cols].sum())
    assert cost[np.arange(32), perm.numpy()].sum() < cost[np.arange(32), np.arange(32)].sum()


def test_logit_normal_times_concentrate_in_the_middle():
    torch.manual_seed(0)
    uniform = FlowPath().sample_times(20000, "cpu")
    logit = FlowPath(time_sampling="logit_normal").sample_times(20000, "cpu")
    middle = lambda t: float(((t > 0.25) & (t < 0.75)).float().mean())  # noqa: E731
    assert middle(uniform) == pytest.approx(0.5, abs=0.02)
    assert middle(logit) > 0.6  # sigmoid(N(0, 1)): P(|n| < ln 3) = 0.73


@pytest.mark.parametrize("coupling", ["independent", "ot"])
def test_flow_model_learns_and_samples_with_every_solver(coupling):
    from test_core import _tiny_model, assert_learns_and_samples

    torch.manual_seed(0)
    model = _tiny_model([f"model.path.coupling={coupling}"], model="flow")
    assert model.family == "flow"
    assert_learns_and_samples(model)
