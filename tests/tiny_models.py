"""Tiny seeded models built from configs (never downloaded)."""

from __future__ import annotations

import torch


def tiny_llama(**overrides):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = dict(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
               num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
               tie_word_embeddings=False)
    cfg.update(overrides)
    return LlamaForCausalLM(LlamaConfig(**cfg)).eval()


def tiny_decoder(kind: str, **overrides):
    import transformers

    torch.manual_seed(0)
    config_cls = {"llama": transformers.LlamaConfig, "mistral": transformers.MistralConfig,
                  "qwen2": transformers.Qwen2Config, "qwen3": transformers.Qwen3Config}[kind]
    model_cls = {"llama": transformers.LlamaForCausalLM, "mistral": transformers.MistralForCausalLM,
                 "qwen2": transformers.Qwen2ForCausalLM, "qwen3": transformers.Qwen3ForCausalLM}[kind]
    cfg = dict(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
               num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)
    if kind == "qwen3":
        cfg["head_dim"] = 16
    cfg.update(overrides)
    return model_cls(config_cls(**cfg)).eval()


def tiny_hf_vit(**overrides):
    from transformers import ViTConfig, ViTForImageClassification

    torch.manual_seed(0)
    cfg = dict(image_size=32, patch_size=8, num_channels=3, hidden_size=64, num_hidden_layers=2,
               num_attention_heads=4, intermediate_size=128, num_labels=10)
    cfg.update(overrides)
    return ViTForImageClassification(ViTConfig(**cfg)).eval()


def token_batch(n=8, seqlen=32, vocab=128, seed=0):
    return torch.randint(0, vocab, (n, seqlen), generator=torch.Generator().manual_seed(seed))


WORDS = ("the quick brown fox jumps over a lazy dog while seven wizards quietly hex "
         "jovial frogs near old stone bridges and rivers in autumn light").split()


def tiny_text(n_words=4000, seed=0):
    """Word salad from a fixed vocabulary (test input only, never used for quality numbers)."""
    gen = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, len(WORDS), (n_words,), generator=gen)
    return " ".join(WORDS[i] for i in idx.tolist())


def tiny_tokenizer():
    """A word-level fast tokenizer trained in memory on :data:`WORDS`."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator([" ".join(WORDS)], trainers.WordLevelTrainer(special_tokens=["[UNK]"]))
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]")


def save_tiny_llama(directory, **overrides):
    """A tiny Llama + tokenizer saved as a local transformers directory (for CLI tests)."""
    model = tiny_llama(**overrides)
    model.save_pretrained(directory)
    tiny_tokenizer().save_pretrained(directory)
    return directory
