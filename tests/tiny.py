"""Tiny random-weight causal LMs built from a config, with a byte-level BPE tokenizer trained in milliseconds.

No downloads: everything here is made from code. Two flavours: with a ChatML chat template (like SmolLM2) and
without one (the plain template path).
"""
from __future__ import annotations

from pathlib import Path

CHATML = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

CORPUS = [
    "What is 12 + 30? 12 + 30 = 42.",
    "Reverse the word planet. The reversed word is tenalp.",
    "The capital of France is Paris. The capital of Japan is Tokyo.",
    "Convert 3 km to meters. 3 km = 3000 m.",
    "Sort the numbers 5, 2, 9: 2, 5, 9.",
    "### Instruction: ### Response: ### System:",
    "Human: Assistant: user assistant system",
    "abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ 0123456789 .,;:!?'\"()[]{}<>-_=+*/\\|@#$%^&~`",
]


def build_tokenizer(chat_template: bool = True, corpus: list[str] | None = None, vocab_size: int = 384, **special):
    """A byte-level BPE tokenizer of ``vocab_size`` trained on ``corpus`` (default: the small built-in one);
    ``special``: further special tokens (``unk_token=...``)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    core.train_from_iterator(CORPUS * 4 if corpus is None else corpus, trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core,
        bos_token="<|im_start|>" if chat_template else "<|endoftext|>",
        eos_token="<|im_end|>" if chat_template else "<|endoftext|>",
        pad_token="<|endoftext|>",
        **special,
    )
    if chat_template:
        tokenizer.chat_template = CHATML
    return tokenizer


def build_model(folder: Path, chat_template: bool = True, seed: int = 0, hidden: int = 32, layers: int = 2) -> Path:
    """Save a tiny Llama with random weights and its tokenizer to ``folder``; returns the folder."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = build_tokenizer(chat_template)
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=hidden * 2,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
    )
    model = LlamaForCausalLM(config)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder
