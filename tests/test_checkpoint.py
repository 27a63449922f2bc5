"""Draft checkpoints: bit-exact round trips in every layout, and a clear error for every
kind of bad checkpoint."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file
from tiny_models import draft_config_dict, tiny_draft, tiny_target

from dspark_sgl.checkpoint import load_draft, read_tensors, save_draft
from dspark_sgl.engine import SpeculativeEngine
from dspark_sgl.models import DraftConfig, DSparkDraft

VOCAB = 96


@pytest.fixture(scope="module")
def target():
    return tiny_target(VOCAB)


def _assert_same_weights(a: DSparkDraft, b: DSparkDraft, skip=()) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert set(sa) - set(skip) == set(sb) - set(skip)
    for name in set(sa) - set(skip):
        assert sa[name].dtype == sb[name].dtype, name
        assert torch.equal(sa[name], sb[name]), name


@pytest.mark.parametrize("head", ["vanilla", "gated", "rnn"])
def test_deepspec_round_trip_is_bit_exact(tmp_path, target, head):
    draft = tiny_draft(target, markov_head_type=head)
    draft.markov_head.to(torch.bfloat16)  # mixed dtypes survive the round trip
    save_draft(draft, tmp_path / "a")
    names = set(load_file(str(tmp_path / "a" / "model.safetensors")))
    assert "markov_head.markov_w1.weight" in names and "confidence_head.proj.weight" in names
    assert not any(n.startswith("model.") for n in names)
    loaded = load_draft(tmp_path / "a", target_config=target.config)
    assert loaded.checkpoint_format == "deepspec" and loaded.has_vocab_weights
    _assert_same_weights(draft, loaded)
    save_draft(loaded, tmp_path / "b")
    assert (tmp_path / "a" / "model.safetensors").read_bytes() == (
        tmp_path / "b" / "model.safetensors"
    ).read_bytes()
    assert json.loads((tmp_path / "a" / "config.json").read_text()) == json.loads(
        (tmp_path / "b" / "config.json").read_text()
    )


def test_sglang_prefix_nested_config_and_shards_load(tmp_path, target):
    flat = draft_config_dict(VOCAB)
    nested = {k: v for k, v in flat.items() if k not in ("block_size", "target_layer_ids", "mask_token_id")}
    nested["dflash_config"] = {"block_size": 4, "target_layer_ids": [0, 2]}
    nested["dspark_config"] = {"mask_token_id": VOCAB - 1}
    draft = DSparkDraft(DraftConfig.from_dict(nested))
    save_draft(draft, tmp_path / "sgl", fmt="sglang")
    tensors = load_file(str(tmp_path / "sgl" / "model.safetensors"))
    assert all(n.startswith("model.") for n in tensors)
    loaded = load_draft(tmp_path / "sgl")
    assert loaded.checkpoint_format == "sglang" and loaded.config.block_size == 4
    _assert_same_weights(draft, loaded)
    # Shards listed by an index file.
    shard_dir = tmp_path / "sharded"
    shard_dir.mkdir()
    names = sorted(tensors)
    halves = {"model-00001-of-00002.safetensors": names[::2], "model-00002-of-00002.safetensors": names[1::2]}
    for file, keys in halves.items():
        save_file({k: tensors[k] for k in keys}, str(shard_dir / file))
    weight_map = {k: f for f, keys in halves.items() for k in keys}
    (shard_dir / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    (shard_dir / "config.json").write_text(json.dumps(nested))
    _assert_same_weights(draft, load_draft(shard_dir))


def test_text_config_nesting_is_read():
    flat = draft_config_dict(VOCAB)
    text_keys = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                 "num_key_value_heads", "head_dim")  # fmt: skip
    raw = {k: v for k, v in flat.items() if k not in text_keys}
    raw["text_config"] = {k: flat[k] for k in text_keys}
    config = DraftConfig.from_dict(raw)
    assert (config.vocab_size, config.hidden_size, config.num_hidden_layers) == (VOCAB, 32, 2)


def _v4_raw() -> dict:
    return {
        "architectures": ["DeepseekV4ForCausalLM"],
        "model_type": "deepseek_v4",
        "vocab_size": VOCAB,
        "hidden_size": 32,
        "num_hidden_layers": 43,
        "num_attention_heads": 4,
        "head_dim": 16,
        "moe_intermediate_size": 16,
        "n_shared_experts": 1,
        "rms_norm_eps": 1e-6,
        "dspark_block_size": 5,
        "dspark_markov_rank": 8,
        "dspark_noise_token_id": VOCAB - 1,
        "dspark_target_layer_ids": [1, 2, 3],
        "dspark_n_routed_experts": 4,
        "dspark_num_experts_per_tok": 2,
        "enable_confidence_head": True,
    }


def test_deepseek_v4_bundled_names_round_trip(tmp_path):
    config = DraftConfig.from_dict(_v4_raw())
    assert (config.arch, config.block_size, config.num_hidden_layers, config.sliding_window) == (
        "deepseek_v4",
        5,
        3,
        128,
    )
    draft = DSparkDraft(config)
    save_draft(draft, tmp_path / "v4", fmt="deepseek_v4")
    tensors = load_file(str(tmp_path / "v4" / "model.safetensors"))
    assert all(n.startswith("mtp.") for n in tensors)
    for name in ("mtp.2.markov_head.embed.weight", "mtp.2.markov_head.head.weight", "mtp.0.main_proj.weight",
                 "mtp.0.attn.wkv.weight", "mtp.1.ffn.experts.3.w2.weight", "mtp.0.ffn.gate.bias",
                 "mtp.2.confidence_head.proj.weight", "mtp.2.norm.weight"):  # fmt: skip
        assert name in tensors, name
    assert "mtp.2.confidence_head.proj.bias" not in tensors  # V4's confidence head has no bias
    # The target's own weights sit beside the draft in a bundled checkpoint: skipped.
    tensors["layers.0.attn.wq.weight"] = torch.randn(4, 4)
    tensors["mtp.0.embed.weight"] = torch.randn(VOCAB, 32)
    save_file(tensors, str(tmp_path / "v4" / "model.safetensors"))
    loaded = load_draft(tmp_path / "v4")
    assert loaded.checkpoint_format == "deepseek_v4" and not loaded.has_vocab_weights
    _assert_same_weights(draft, loaded, skip=("embed_tokens.weight", "lm_head.weight"))
    # mHC tensors in a checkpoint whose config has no hc_mult: strictly refused, named.
    tensors["mtp.1.hc_attn_fn"] = torch.randn(4, 4)
    save_file(tensors, str(tmp_path / "v4" / "model.safetensors"))
    with pytest.raises(ValueError, match=r"unexpected key\(s\).*layers\.1\.hc_attn\.fn"):
        load_draft(tmp_path / "v4")


def test_checkpoint_without_vocab_weights_needs_the_target(tmp_path, target):
    draft = tiny_draft(target)
    save_draft(draft, tmp_path / "d", include_vocab=False)
    loaded = load_draft(tmp_path / "d", target_config=target.config)
    assert not loaded.vocab_attached
    with pytest.raises(ValueError, match="attach_target_vocab"):
        loaded.embed(torch.tensor([1]))
    engine = SpeculativeEngine(target, loaded)  # shares the target's embedding and head
    reference = SpeculativeEngine(target, draft).generate(
        [[1, 2, 3]], max_new_tokens=8, temperature=1.0, seed=3
    )
    assert engine.generate([[1, 2, 3]], max_new_tokens=8, temperature=1.0, seed=3).tokens == reference.tokens


def _write(tmp_path, tensors: dict, raw: dict):
    tmp_path.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(tmp_path / "model.safetensors"))
    (tmp_path / "config.json").write_text(json.dumps(raw))
    return tmp_path


@pytest.fixture()
def saved(tmp_path, target):
    draft = tiny_draft(target)
    save_draft(draft, tmp_path / "good")
    return read_tensors(tmp_path / "good"), json.loads((tmp_path / "good" / "config.json").read_text())


def test_bad_checkpoints_raise_errors_that_name_the_key(tmp_path, saved, target):
    tensors, raw = saved
    cases = []
    missing = dict(tensors)
    del missing["layers.1.self_attn.k_proj.weight"]
    cases.append((missing, raw, r"missing 1 key\(s\): layers\.1\.self_attn\.k_proj\.weight \[16, 32\]"))
    extra = {**tensors, "layers.0.mlp.extra.weight": torch.zeros(3, 3)}
    cases.append((extra, raw, r"unexpected key\(s\).*layers\.0\.mlp\.extra\.weight \[3, 3\]"))
    shaped = {**tensors, "fc.weight": torch.zeros(32, 96)}
    cases.append((shaped, raw, r"'fc\.weight' has shape \[32, 96\], the config needs \[32, 64\]"))
    nan = {**tensors, "norm.weight": tensors["norm.weight"].clone()}
    nan["norm.weight"][3] = float("nan")
    cases.append((nan, raw, r"'norm\.weight' \[32\] contains NaN or Inf"))
    inf = {**tensors, "markov_head.markov_w2.weight": tensors["markov_head.markov_w2.weight"].clone()}
    inf["markov_head.markov_w2.weight"][0, 0] = float("inf")
    cases.append((inf, raw, r"markov_w2\.weight.*NaN or Inf"))
    integer = {**tensors, "hidden_norm.weight": torch.ones(32, dtype=torch.int32)}
    cases.append((integer, raw, r"'hidden_norm\.weight' has dtype torch\.int32"))
    prefixed = {**tensors, "model.norm.weight": tensors["norm.weight"].clone()}
    cases.append((prefixed, raw, r"both 'norm\.weight' and 'model\.norm\.weight'"))
    cases.append((tensors, {**raw, "mask_token_id": VOCAB}, r"mask_token_id 96 is outside the embedding"))
    cases.append((tensors, {**raw, "markov_head_type": "lstm"}, r"markov_head_type 'lstm'"))
    cases.append((tensors, {**raw, "target_layer_ids": []}, r"target_layer_ids must be a non-empty list"))
    cases.append(
        (tensors, {**raw, "rope_scaling": {"rope_type": "yarn"}}, r"rope_type 'yarn' is not supported")
    )
    cases.append(
        (tensors, {**raw, "markov_head_type": "gated"}, r"missing 2 key\(s\): markov_head\.gate_proj")
    )
    for i, (t, r, pattern) in enumerate(cases):
        with pytest.raises(ValueError, match=pattern):
            load_draft(_write(tmp_path / f"case{i}", t, r))


def test_draft_that_does_not_fit_the_target_is_refused(tmp_path, saved):
    tensors, raw = saved
    path = _write(tmp_path / "d", tensors, raw)
    with pytest.raises(ValueError, match="vocab_size 96 differs from the target's 64"):
        load_draft(path, target_config=tiny_target(64).config)
    wide = tiny_target(VOCAB)
    wide.config.hidden_size = 48
    with pytest.raises(ValueError, match="hidden_size 32 differs from the target's 48"):
        load_draft(path, target_config=wide.config)
    shallow = tiny_target(VOCAB, layers=2)
    with pytest.raises(ValueError, match=r"target_layer_ids \[2\] are past the target's 2 layers"):
        load_draft(path, target_config=shallow.config)


def test_missing_files_raise(tmp_path, saved):
    _tensors, raw = saved
    with pytest.raises(FileNotFoundError, match=r"config\.json"):
        load_draft(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps(raw))
    with pytest.raises(FileNotFoundError, match="safetensors"):
        load_draft(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_draft(tmp_path)
