"""GRPO log-probs with each group's prompt read once equal a full pass over every row: values and gradients."""

import torch

from persona_pipeline.grpo_shared_prompt import shared_prompt_logps


def _lora(tiny_model_dir):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"]))
    for name, p in model.named_parameters():
        if "lora_B" in name:  # B starts at zero; give the adapter something to differentiate
            torch.nn.init.normal_(p, std=0.05)
    return model


def _batch(pad: int):
    """Two groups of two: prompts of 5 and 3 tokens (left-padded), completions of 4 and 2 (right-padded)."""
    prompts = [[11, 12, 13, 14, 15], [21, 22, 23]]
    completions = [[31, 32, 33, 34], [41, 42, pad, pad], [51, 52, 53, pad], [61, 62, 63, 64]]
    ids, mask = [], []
    for g, comp in enumerate(completions):
        p = prompts[g // 2]
        ids.append([pad] * (5 - len(p)) + p + comp)
        mask.append([0] * (5 - len(p)) + [1] * len(p) + [0 if t == pad else 1 for t in comp])
    return torch.tensor(ids), torch.tensor(mask)


def _full(model, ids, mask, keep: int, temperature: float):
    """TRL's way: every row over its whole sequence, positions from the mask."""
    from trl.trainer.utils import selective_log_softmax

    position = (mask.cumsum(-1) - 1).clamp(min=0)
    logits = model(input_ids=ids, attention_mask=mask, position_ids=position).logits[:, -keep - 1 : -1] / temperature
    return selective_log_softmax(logits, ids[:, -keep:]).masked_fill(mask[:, -keep:] == 0, 0.0)


def test_shared_prompt_logps_and_grads_match_a_full_pass(tiny_model_dir):
    model = _lora(tiny_model_dir)
    ids, mask = _batch(pad=0)
    lora = [p for n, p in model.named_parameters() if "lora_" in n]

    full = _full(model, ids, mask, 4, 0.7)
    full.sum().backward()
    want = [p.grad.clone() for p in lora]
    model.zero_grad()

    shared, entropy = shared_prompt_logps(model, ids, mask, 4, temperature=0.7, compute_entropy=True)
    shared.sum().backward()
    assert torch.allclose(shared, full, atol=1e-5)
    assert all(torch.allclose(p.grad, g, atol=1e-5) for p, g in zip(lora, want))
    assert entropy.shape == shared.shape and (entropy[mask[:, -4:] == 0] == 0).all() and (entropy[0] > 0).all()


def test_rows_that_share_no_prompt_are_left_to_trl(tiny_model_dir):
    model = _lora(tiny_model_dir)
    ids, mask = _batch(pad=0)
    assert shared_prompt_logps(model, ids[1:3], mask[1:3], 4) is None
