"""Score only the labelled positions in TRL's fused LM head on a CPU.

TRL's trainers compute the loss through a fused head (``trl.trainer.utils.add_fused_lm_head``)
that scores only labelled positions where Triton runs (CUDA, XPU) and *every* position
elsewhere, so compiled backends (Neuron) see one tile shape per batch. A CPU compiles
nothing, and here a persona line is ~20 of a ~450-token SFT row and 8 of a ~320-token GRPO
row: scoring the whole row is the vocabulary projection, softmax and entropy of ~95 %
wasted positions, forward and backward. Same losses; an SFT step 1.5× faster on this
machine (``bench/fused_head.py``).
"""

from __future__ import annotations


def score_labelled_positions_only() -> bool:
    """Make TRL's fused head compact on CPUs too (idempotent); False when this TRL has no such switch."""
    try:
        import trl.trainer.utils as tu
    except ImportError:
        return False
    original = getattr(tu, "_use_triton", None)
    if original is None:
        return False
    if getattr(original, "compact_on_cpu", False):
        return True

    def compact(device) -> bool:
        return device.type == "cpu" or original(device)

    compact.compact_on_cpu = True
    compact.original = original
    tu._use_triton = compact
    return True
