"""SFT rows longer than max_length are dropped before training (right-truncation would cut the completion)."""

from persona_pipeline.train_sft import drop_overlong


def row(prompt: str, completion: str) -> dict:
    return {
        "prompt": [{"role": "user", "content": prompt}],
        "completion": [{"role": "assistant", "content": completion}],
    }


def test_drop_overlong_counts_tokens_not_mapping_keys(tiny_backend):
    """transformers 5's apply_chat_template returns a BatchEncoding, whose len() is 2 (its keys): the
    length check once read that and kept every row, however long."""
    short, long_ = row("hi", "hello there"), row("tell me " * 200, "ok")
    kept, dropped = drop_overlong([short, long_], tiny_backend.tok, max_length=64)
    assert kept == [short] and dropped == 1
    kept, dropped = drop_overlong([short, long_], tiny_backend.tok, max_length=4096)
    assert kept == [short, long_] and dropped == 0
