"""A tiny randomly initialised Llama (2 layers, word-level tokenizer, chat template), written to a folder.

For fast unit tests and for harnesses that exercise code paths where the model's knowledge does
not matter (crash safety, concurrency). Built from a config: nothing is downloaded.
"""

from __future__ import annotations

from pathlib import Path

WORDS = "the a is in to of and what where when who did does maria moved lisbon city live dog name".split()
SPECIALS = ["<unk>", "<pad>", "<|im_start|>", "<|im_end|>", "system", "user", "assistant", "\n", ":"]


def write_tiny_llama(folder: str | Path, seed: int = 0) -> Path:
    """Save the model and tokenizer into ``folder`` (loadable with ``Backbone.load(BackboneConfig(model=folder))``)."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(SPECIALS + WORDS)}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core, unk_token="<unk>", pad_token="<pad>", eos_token="<|im_end|>", bos_token="<|im_start|>"
    )
    tokenizer.chat_template = (
        "{% for m in messages %}<|im_start|> {{ m['role'] }} : {{ m['content'] }} <|im_end|> {% endfor %}"
        "{% if add_generation_prompt %}<|im_start|> assistant : {% endif %}"
    )
    config = LlamaConfig(
        vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=512,
        eos_token_id=vocab["<|im_end|>"], pad_token_id=vocab["<pad>"], bos_token_id=vocab["<|im_start|>"],
    )
    torch.manual_seed(seed)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder
