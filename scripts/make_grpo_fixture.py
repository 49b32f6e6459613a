#!/usr/bin/env python3
"""Builds tests/fixtures/grpo_parity.json: TRL's GRPO family on fixed inputs, computed by TRL's
own code.

Losses: `GRPOTrainer._compute_loss` itself, called on an object that carries the trainer's
settings, with the policy's per-token log-probabilities handed in as a leaf tensor (the model
call is the only part replaced). For every case the file holds the inputs, the loss TRL returns
(one process, no gradient accumulation) and its gradient with respect to those
log-probabilities. Cases cover each `loss_type` hone offers (grpo, bnpo, dr_grpo, dapo), both
`importance_sampling_level`s, `epsilon_high`, `beta` (the k3 KL term), old log-probabilities
that differ from the new ones (a second pass of `num_iterations`, where clipping bites) and
that are absent (the first pass: ratio 1), and a completion masked out whole (as
`mask_truncated_completions` masks a cut one).

Advantages: the statements of `GRPOTrainer._generate_and_score_completions` (scale_rewards
group | batch | none, "sum_then_normalize") and of `RLOOTrainer` (leave-one-out baseline,
normalize_advantages false), restated here on fixed rewards with TRL's own `nanstd`: TRL
computes them inline in the generation step, which needs a model and a tokenizer to call.

Run by hand: python3 scripts/make_grpo_fixture.py (needs torch and trl; written with trl
1.16.0). The Rust test tests/it/grpo_parity.rs reads the file and needs no Python.
"""
import json
import pathlib
from collections import defaultdict
from types import SimpleNamespace

import torch
import trl
from trl.trainer.grpo_trainer import GRPOTrainer
from trl.trainer.utils import nanstd

ROOT = pathlib.Path(__file__).resolve().parent.parent
B, T, MAX_COMPLETION_LENGTH = 4, 6, 8


def accelerator():
    return SimpleNamespace(
        num_processes=1,
        gather=lambda x: x,
        gather_for_metrics=lambda x: x,
        reduce=lambda x, reduction="sum": x,
        sync_gradients=True,
    )


def trl_loss(case, lp, old, ref, adv, mask):
    """TRL's `_compute_loss` with `lp` as the policy's log-probabilities; returns (loss, grad)."""
    lp = lp.clone().requires_grad_(True)
    trainer = SimpleNamespace(
        _get_per_token_logps_and_entropies=lambda *a, **k: (lp, torch.zeros_like(lp), None),
        top_entropy_quantile=1.0,
        off_policy_mask_threshold=None,
        importance_sampling_level=case["importance_sampling_level"],
        beta=case["beta"],
        loss_type=case["loss_type"],
        epsilon_low=case["epsilon"],
        epsilon_high=case["epsilon_high"],
        use_vllm=False,
        vllm_importance_sampling_correction=False,
        model=SimpleNamespace(training=True),
        current_gradient_accumulation_steps=case["micro_batches"],
        accelerator=accelerator(),
        max_completion_length=MAX_COMPLETION_LENGTH,
        _entropy_bonus_enabled=False,
        aux_loss_enabled=False,
        _metrics={"train": defaultdict(list), "eval": defaultdict(list)},
        args=SimpleNamespace(
            use_bias_correction_kl=False, delta=None, steps_per_generation=case["micro_batches"]
        ),
    )
    inputs = {
        "prompt_ids": torch.ones(B, 1, dtype=torch.long),
        "prompt_mask": torch.ones(B, 1, dtype=torch.long),
        "completion_ids": torch.ones(B, T, dtype=torch.long),
        "completion_mask": mask.long(),
        "advantages": adv,
        # The generation batch's tokens: this micro-batch's and the other micro-batches'.
        "num_items_in_batch": mask.sum() + case["other_tokens"],
    }
    if old is not None:
        inputs["old_per_token_logps"] = old
    if case["beta"] != 0.0:
        inputs["ref_per_token_logps"] = ref
    loss = GRPOTrainer._compute_loss(trainer, None, inputs)
    loss.backward()
    return loss.item(), lp.grad


def group_advantages(rewards, group, scale):
    """GRPOTrainer's advantages (multi_objective_aggregation "sum_then_normalize")."""
    mean = torch.nanmean(rewards.view(-1, group), dim=1).repeat_interleave(group, dim=0)
    if scale in ["group", "none"]:
        std = nanstd(rewards.view(-1, group), dim=1).repeat_interleave(group, dim=0)
    else:
        std = nanstd(rewards).expand_as(rewards)
    adv = rewards - mean
    if scale != "none":
        adv = adv / (std + 1e-4)
    return adv


def rloo_advantages(rewards, group):
    """RLOOTrainer's advantages: each reward minus the mean of the others in its group."""
    grouped = rewards.view(-1, group)
    counts = (~torch.isnan(grouped)).sum(dim=1, keepdim=True)
    total = torch.nansum(grouped, dim=1, keepdim=True)
    return rewards - ((total - grouped) / (counts - 1)).view(-1)


def main() -> None:
    g = torch.Generator().manual_seed(32)
    # Log-probabilities of sampled tokens: negative, a few nats at most.
    lp = -torch.rand(B, T, generator=g, dtype=torch.float64).float() * 3.0 - 0.05
    # A later pass: the policy moved since the rollout, by enough that some ratios clip.
    old = lp + torch.randn(B, T, generator=g).float() * 0.3
    ref = lp + torch.randn(B, T, generator=g).float() * 0.2
    adv = torch.tensor([1.2, -0.7, 0.4, -1.5])
    lengths = [6, 3, 5, 0]  # the last completion is masked out whole
    mask = torch.zeros(B, T)
    for i, n in enumerate(lengths):
        mask[i, :n] = 1.0

    cases = []
    for loss_type in ["grpo", "bnpo", "dr_grpo", "dapo"]:
        for level in ["token", "sequence"]:
            for beta, epsilon_high, with_old in [(0.04, 0.28, True), (0.0, 0.2, False)]:
                cases.append(
                    {
                        "loss_type": loss_type,
                        "importance_sampling_level": level,
                        "beta": beta,
                        "epsilon": 0.2,
                        "epsilon_high": epsilon_high,
                        "old": with_old,
                        "micro_batches": 1,
                        "other_tokens": 0,
                    }
                )
    # dapo's normaliser is the whole step's tokens: here this micro-batch is one of two, and the
    # other holds 9 valid tokens.
    cases.append(dict(cases[-4], micro_batches=2, other_tokens=9))
    for case in cases:
        loss, grad = trl_loss(case, lp, old if case["old"] else None, ref, adv, mask)
        case["loss"] = loss
        case["grad"] = grad.flatten().tolist()

    rewards = torch.tensor([1.0, 0.0, 0.5, 1.0, 0.2, 0.9, 0.4, 0.4])
    group = 4
    advantages = {f"group_{s}": group_advantages(rewards, group, s).tolist() for s in ["group", "batch", "none"]}
    advantages["rloo"] = rloo_advantages(rewards, group).tolist()

    out = {
        "trl_version": trl.__version__,
        "max_completion_length": MAX_COMPLETION_LENGTH,
        "logps": lp.flatten().tolist(),
        "old_logps": old.flatten().tolist(),
        "ref_logps": ref.flatten().tolist(),
        "shape": [B, T],
        "lengths": lengths,
        "advantages": adv.tolist(),
        "cases": cases,
        "rewards": rewards.tolist(),
        "group": group,
        "expected_advantages": advantages,
    }
    path = ROOT / "tests/fixtures/grpo_parity.json"
    path.write_text(json.dumps(out, indent=1) + "\n")
    print(f"{path.relative_to(ROOT)}: {len(cases)} loss cases from trl {trl.__version__}")


if __name__ == "__main__":
    main()
