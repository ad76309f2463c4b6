"""The plan printed before training: counts from the data, and warnings that predict over- and underfitting."""

from __future__ import annotations

import pytest

from lmwright.models.gpt import GPT, GPTConfig
from lmwright.tasks.train.loop import TrainParams, step_budget
from lmwright.tasks.train.plan import measure_step_seconds, plan_training

CFG = GPTConfig.preset("tiny", vocab_size=4096)


def test_plan_counts_epochs_and_tokens_per_parameter() -> None:
    plan = plan_training(CFG, train_tokens=273_096, val_tokens=12_710, tokens_per_step=4096, steps=600, max_steps=600)
    assert plan.params == GPT(CFG).num_params(non_embedding=False)
    assert plan.epochs == pytest.approx(600 * 4096 / 273_096, rel=1e-3)
    assert plan.tokens_per_param == pytest.approx(600 * 4096 / plan.params, rel=1e-3)
    assert any("overfitting likely" in w for w in plan.warnings)  # ~9 epochs: the default run that overfit
    assert "9.0 epochs" in "\n".join(plan.lines("pretrain"))


def test_a_data_sized_budget_does_not_warn() -> None:
    plan = plan_training(CFG, train_tokens=10_000_000, val_tokens=500_000, tokens_per_step=4096, steps=1000, max_steps=1000)
    assert plan.warnings == []


def test_too_few_tokens_per_parameter_warns_underfitting() -> None:
    plan = plan_training(CFG, train_tokens=10_000_000, val_tokens=500_000, tokens_per_step=4096, steps=50, max_steps=50)
    assert any("underfitting likely" in w for w in plan.warnings)


def test_the_default_run_on_the_builtin_corpus_does_not_warn() -> None:
    """4 epochs of a small corpus: fewer tokens than parameters, but the budget is not what is short."""
    plan = plan_training(CFG, train_tokens=213_154, val_tokens=8_535, tokens_per_step=4096, steps=208, max_steps=600)
    assert plan.tokens_per_param < 1 and plan.warnings == []


def test_a_guard_below_the_expected_time_warns() -> None:
    plan = plan_training(CFG, 10_000_000, 500_000, 4096, steps=1000, max_steps=1000, max_seconds=60, step_seconds=0.5, watts=10)
    assert plan.expected_seconds == pytest.approx(500)
    assert plan.expected_kwh == pytest.approx(500 * 10 / 3.6e6, rel=1e-3)
    assert any("max_seconds guard" in w for w in plan.warnings)


def test_max_epochs_caps_the_planned_steps() -> None:
    p = TrainParams(max_steps=600, max_epochs=3)
    assert step_budget(p, train_tokens=273_096, tokens_per_step=4096) == int(3 * 273_096 / 4096)
    assert step_budget(TrainParams(max_steps=600), 273_096, 4096) == 600


def test_measuring_the_step_time_leaves_the_rng_and_weights_alone() -> None:
    import torch

    model = GPT(GPTConfig.preset("tiny", vocab_size=256, n_layer=1))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    state = torch.get_rng_state()
    assert measure_step_seconds(model, batch_size=2, grad_accum=1, device="cpu") > 0
    assert torch.equal(state, torch.get_rng_state())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
