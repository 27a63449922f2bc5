"""Tiny random models built by the tests (nothing is downloaded).

* :func:`tiny_target`: a random ``Qwen3ForCausalLM`` (4 layers, H = 32).
* :func:`draft_config_dict`: a DeepSpec-style draft ``config.json`` for such a target.
* :func:`tiny_draft`: a random DSpark/DFlash draft carrying copies of the target's
  embedding and output head, as DeepSpec checkpoints do.
* :func:`bigram_draft`: a draft whose Markov bias reproduces the target's logits given the
  previous token alone, so greedy rounds accept often (the accept path gets exercised).
* :func:`tiny_tokenizer` / :func:`write_pair`: a byte-level BPE tokenizer with a chat
  template, and a target + draft pair saved to disk for the command-line tools.
"""

from __future__ import annotations

from pathlib import Path

import torch

from dspark_sgl.models import DraftConfig, DSparkDraft

HIDDEN = 32
TARGET_LAYERS = 4

_CORPUS = [
    "Janet has 16 eggs. She eats three and bakes muffins with four. How many are left?",
    "def add(a, b):\n    return a + b\n\nprint(add(2, 3))",
    "Write a short poem about the sea and the wind, in four lines.",
    "The quick brown fox jumps over the lazy dog. 0123456789 + - * / = ( ) [ ] { }",
    "Please reason step by step, and put your final answer within \\boxed{}.",
]
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def tiny_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_CORPUS * 4, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    fast.chat_template = CHAT_TEMPLATE
    return fast


def tiny_target(
    vocab: int, *, seed: int = 0, std: float = 0.02, embed_scale: float = 1.0, layers: int = TARGET_LAYERS
):
    """A random Qwen3 target. ``embed_scale`` > 1 makes the current token dominate the
    residual stream, so the next token depends mostly (not only) on it."""
    from transformers import Qwen3Config, Qwen3ForCausalLM

    config = Qwen3Config(
        vocab_size=vocab,
        hidden_size=HIDDEN,
        intermediate_size=64,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        max_position_embeddings=4096,
        tie_word_embeddings=False,
        initializer_range=std,
        eos_token_id=None,
        bos_token_id=None,
        pad_token_id=None,
    )
    return _random_model(Qwen3ForCausalLM, config, seed, embed_scale)


def tiny_gemma4_target(vocab: int, *, seed: int = 0, embed_scale: float = 1.0, window: int = 4):
    """A random Gemma4 text target: three sliding-window layers (window 4) and one global
    layer with k_eq_v, final logit softcap 30."""
    from transformers import Gemma4ForCausalLM, Gemma4TextConfig

    config = Gemma4TextConfig(
        vocab_size=vocab,
        hidden_size=HIDDEN,
        intermediate_size=64,
        num_hidden_layers=TARGET_LAYERS,
        num_attention_heads=4,
        num_key_value_heads=2,
        num_global_key_value_heads=2,
        head_dim=8,
        global_head_dim=8,
        sliding_window=window,
        layer_types=["sliding_attention"] * (TARGET_LAYERS - 1) + ["full_attention"],
        hidden_size_per_layer_input=0,
        attention_k_eq_v=True,
        final_logit_softcapping=30.0,
        eos_token_id=None,
        bos_token_id=None,
        pad_token_id=None,
    )
    return _random_model(Gemma4ForCausalLM, config, seed, embed_scale)


def _random_model(model_class, config, seed: int, embed_scale: float):
    """Seeded random init, SDPA attention, embeddings scaled by ``embed_scale``, eval mode."""
    torch.manual_seed(seed)
    model = model_class(config)
    model.config._attn_implementation = "sdpa"
    with torch.no_grad():
        model.model.embed_tokens.weight.mul_(embed_scale)
    return model.eval()


GEMMA4_DRAFT = {
    "architectures": ["Gemma4DSparkModel"],
    "model_type": "gemma4_text",
    "rope_parameters": {
        "full_attention": {"rope_type": "proportional", "partial_rotary_factor": 0.25, "rope_theta": 1e6}
    },
    "final_logit_softcapping": 30.0,
    "attention_k_eq_v": True,
}


def draft_config_dict(vocab: int, **overrides) -> dict:
    raw = {
        "architectures": ["Qwen3DSparkModel"],
        "model_type": "qwen3",
        "vocab_size": vocab,
        "hidden_size": HIDDEN,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": 8,
        "rms_norm_eps": 1e-6,
        "rope_theta": 1_000_000.0,
        "tie_word_embeddings": False,
        "block_size": 4,
        "target_layer_ids": [0, 2],
        "mask_token_id": vocab - 1,
        "markov_rank": 8,
        "markov_head_type": "vanilla",
        "enable_confidence_head": True,
        "confidence_head_with_markov": True,
        "torch_dtype": "float32",
    }
    raw.update(overrides)
    return raw


def tiny_draft(target, *, seed: int = 1, std: float = 0.1, **overrides) -> DSparkDraft:
    """A random draft for ``target`` with copies of its embedding and lm_head."""
    vocab = target.config.vocab_size
    draft = DSparkDraft(DraftConfig.from_dict(draft_config_dict(vocab, **overrides)))
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, p in draft.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1 + 0.1 * torch.randn_like(p))
            elif name not in ("embed_tokens.weight", "lm_head.weight"):
                p.copy_(std * torch.randn_like(p))
        draft.embed_tokens.weight.copy_(target.model.embed_tokens.weight)
        draft.lm_head.weight.copy_(target.lm_head.weight)
    return draft.eval()


@torch.no_grad()
def bigram_draft(target, *, scale: float = 4.0, seed: int = 1, **overrides) -> DSparkDraft:
    """A vanilla DSpark draft of rank V whose bias is ``scale`` x the target's logits for
    the one-token sequence [prev]: W1 = I, W2 = scale * T^T."""
    vocab = target.config.vocab_size
    draft = tiny_draft(target, seed=seed, markov_rank=vocab, **overrides)
    single = target(input_ids=torch.arange(vocab)[:, None]).logits[:, 0].float()  # [V(prev), V]
    draft.markov_head.markov_w1.weight.copy_(torch.eye(vocab))
    draft.markov_head.markov_w2.weight.copy_(scale * single.T)
    draft.invalidate_samplers()
    return draft


def write_pair(root: Path, **draft_overrides) -> tuple[Path, Path]:
    """Save a tokenizer + target (``save_pretrained``) and a DeepSpec-format draft."""
    from dspark_sgl.checkpoint import save_draft

    tokenizer = tiny_tokenizer()
    vocab = len(tokenizer) + 1  # one extra row for the draft's mask token
    target = tiny_target(vocab, embed_scale=10.0)
    target_dir, draft_dir = root / "target", root / "draft"
    target.save_pretrained(target_dir)
    tokenizer.save_pretrained(target_dir)
    draft = bigram_draft(target, scale=2.0, **draft_overrides)
    save_draft(draft, draft_dir)
    return target_dir, draft_dir
