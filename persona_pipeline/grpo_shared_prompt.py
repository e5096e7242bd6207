"""GRPO log-probs with each group's shared prompt read once.

A GRPO group is ``num_generations`` completions of ONE prompt. TRL scores every row over its
whole sequence — on a CPU its fused head even scores every prompt position ("every position
is scored instead" off Triton) — so a group of 4 reads the ~300-token persona prompt 4 times
for 8 completion tokens each, in the reference pass and again in the training forward and
backward. Here each distinct prompt goes through the model once (with grad when training:
the prompt's keys and values depend on the LoRA weights too); its key/value states are
repeated for the group's rows and only the completion tokens run on top, with logits for
them alone. Same log-probs and gradients (``persona_pipeline_tests/test_grpo_shared_prompt.py``).
"""

from __future__ import annotations

import torch


def _groups(input_ids: torch.Tensor, attention_mask: torch.Tensor, width: int) -> list[list[int]]:
    """Rows sharing the same prompt (ids and mask over the first ``width`` columns), in first-seen order."""
    seen: dict[tuple, list[int]] = {}
    for r in range(input_ids.shape[0]):
        key = (tuple(input_ids[r, :width].tolist()), tuple(attention_mask[r, :width].tolist()))
        seen.setdefault(key, []).append(r)
    return list(seen.values())


def shared_prompt_logps(
    model,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    logits_to_keep: int,
    temperature: float = 1.0,
    compute_entropy: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None] | None:
    """Per completion token log-prob (and entropy) like TRL's ``_get_per_token_logps_and_entropies``:
    [rows, logits_to_keep], 0 at padding. None when no two rows share a prompt (nothing to gain)."""
    from transformers import DynamicCache
    from trl.trainer.utils import entropy_from_logits, selective_log_softmax

    width = input_ids.shape[1] - logits_to_keep
    groups = _groups(input_ids, attention_mask, width)
    if len(groups) == input_ids.shape[0]:
        return None
    logps = input_ids.new_zeros(input_ids.shape[0], logits_to_keep, dtype=torch.float32)
    entropy = torch.zeros_like(logps) if compute_entropy else None
    rows_out, lp_out, ent_out = [], [], []
    for rows in groups:
        real = attention_mask[rows[0], :width].bool()
        prompt = input_ids[rows[0], :width][real].unsqueeze(0)
        cache = DynamicCache()
        head = model(input_ids=prompt, cache=cache, use_cache=True, logits_to_keep=1).logits  # [1, 1, V]
        cache.batch_repeat_interleave(len(rows))
        done = input_ids[rows, width:]
        done_mask = attention_mask[rows, width:]
        n = prompt.shape[1]
        position = torch.arange(n, n + logits_to_keep, device=input_ids.device).expand(len(rows), -1)
        mask = torch.cat([done_mask.new_ones(len(rows), n), done_mask], dim=1)
        tail = model(input_ids=done, attention_mask=mask, position_ids=position, cache=cache, use_cache=True).logits
        logits = torch.cat([head.expand(len(rows), 1, -1), tail[:, :-1]], dim=1) / temperature
        lp_out.append(selective_log_softmax(logits, done).masked_fill(done_mask == 0, 0.0))
        if compute_entropy:
            ent_out.append(entropy_from_logits(logits).masked_fill(done_mask == 0, 0.0))
        rows_out += rows
    order = torch.tensor(rows_out, device=input_ids.device)
    logps = logps.index_copy(0, order, torch.cat(lp_out).float())
    if compute_entropy:
        entropy = entropy.index_copy(0, order, torch.cat(ent_out).float())
    return logps, entropy


def trainer_class():
    """TRL's ``GRPOTrainer`` with ``shared_prompt_logps`` for text-only batches (anything else: TRL's own)."""
    from trl import GRPOTrainer

    class SharedPromptGRPOTrainer(GRPOTrainer):
        def _get_per_token_logps_and_entropies(
            self, model, input_ids, attention_mask, logits_to_keep, batch_size=None, compute_entropy=False,
            compute_aux_loss=False, **extra,
        ):  # fmt: skip
            if not compute_aux_loss and all(v is None for v in extra.values()):
                with self.accelerator.autocast():
                    out = shared_prompt_logps(
                        model, input_ids, attention_mask, logits_to_keep, self.temperature, compute_entropy
                    )
                if out is not None:
                    return out[0], out[1], None
            return super()._get_per_token_logps_and_entropies(
                model, input_ids, attention_mask, logits_to_keep, batch_size, compute_entropy, compute_aux_loss, **extra
            )

    return SharedPromptGRPOTrainer
