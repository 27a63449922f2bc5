"""``python -m dspark_sgl train``: data, the loss against the inference path, the loop, resume."""

from __future__ import annotations

import itertools
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers")
pytest.importorskip("safetensors")

from tiny_models import tiny_draft, tiny_target, tiny_tokenizer, write_pair

from dspark_sgl import train
from dspark_sgl.checkpoint import load_draft
from dspark_sgl.models.draft import ContextCache

CONVS = [
    [
        {"role": "user", "content": "Write a poem about the sea"},
        {"role": "assistant", "content": "def add(a, b):"},
    ],
    [
        {"role": "user", "content": "How many eggs?"},
        {"role": "assistant", "content": "16 - 3 - 4 = 9"},
        {"role": "user", "content": "And muffins?"},
        {"role": "assistant", "content": "print(add(2, 3))"},
    ],
]


@pytest.fixture(scope="module")
def tokenizer():
    return tiny_tokenizer()


def test_encode_conversation_marks_exactly_the_assistant_turns(tokenizer):
    for conv in CONVS:
        ex = train.encode_conversation(tokenizer, conv, max_len=1000)
        full = tokenizer.apply_chat_template(conv, tokenize=False)
        assert tokenizer.decode(ex.ids) == full
        trained_text = tokenizer.decode(ex.ids[ex.trained])
        expected = "".join(f"{t['content']}<|im_end|>\n" for t in conv if t["role"] == "assistant")
        assert trained_text == expected
    short = train.encode_conversation(tokenizer, CONVS[1], max_len=7)
    assert short.ids.numel() == 7 and short.trained.numel() == 7


def test_read_conversations_rejects_bad_records(tmp_path):
    good = tmp_path / "good.jsonl"
    good.write_text("".join(json.dumps({"conversations": c}) + "\n" for c in CONVS))
    assert train.read_conversations(good) == CONVS
    cases = {
        '{"turns": ["hi"]}': "expected",
        '{"conversations": [{"role": "user"}]}': "string 'content'",
        '{"conversations": [{"role": "robot", "content": "x"}]}': "unknown role",
    }
    for line, message in cases.items():
        bad = tmp_path / "bad.jsonl"
        bad.write_text(line + "\n")
        with pytest.raises(ValueError, match=message):
            train.read_conversations(bad)
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(ValueError, match="no conversations"):
        train.read_conversations(empty)


@pytest.mark.parametrize("head", ["vanilla", "gated", "rnn"])
def test_teacher_forced_heads_equal_the_inference_heads(head):
    target = tiny_target(64)
    draft = tiny_draft(target, markov_rank=8, markov_head_type=head)
    gen = torch.Generator().manual_seed(3)
    prev = torch.randint(0, 64, (5, draft.gamma), generator=gen)
    hidden = torch.randn(5, draft.gamma, draft.config.hidden_size, generator=gen)
    bias = draft.markov_head(prev, hidden)
    sampler, conf = draft.samplers()
    state = sampler.initial_state(5)
    for k in range(draft.gamma):
        step, state = sampler.step(prev[:, k], hidden[:, k], state)
        torch.testing.assert_close(bias[:, k], step, rtol=1e-5, atol=1e-5)
    z = draft.confidence_head(hidden, draft.markov_head.markov_w1(prev))
    for k in range(draft.gamma):
        torch.testing.assert_close(z[:, k], conf.logit(hidden[:, k], sampler.prev_embedding(prev[:, k])))


def _batch(tokenizer):
    examples = [train.encode_conversation(tokenizer, c, 64) for c in CONVS]
    return train.Batch.collate(examples, tokenizer.pad_token_id)


def test_training_forward_equals_the_inference_backbone(tokenizer):
    """The batched training path (shared context, per-anchor masks) gives each anchor the
    hidden states and logits of :meth:`DSparkDraft.backbone` on a ContextCache holding the
    target features of positions < p."""
    vocab = len(tokenizer) + 1
    target = tiny_target(vocab, embed_scale=10.0)
    draft = tiny_draft(target, markov_rank=8)
    batch = _batch(tokenizer)
    tap_ids = list(draft.config.target_layer_ids)
    with torch.no_grad():
        taps, target_logits = train._target_features(target, batch, tap_ids)
    seq, pos, valid = train.sample_anchors(batch, draft.gamma, 6, torch.Generator().manual_seed(0))
    assert seq.numel() > 4 and bool(valid[:, 0].all())
    loss, stats = train.training_loss(draft, taps, target_logits, batch, seq, pos, valid, train.LossWeights())
    assert torch.isfinite(loss) and set(stats) >= {"ce", "l1", "bce", "acc1", "loss"}
    with torch.no_grad():
        hidden = train.anchor_hidden(draft, taps, batch.ids, seq, pos)
    for i in range(seq.numel()):
        s, p = int(seq[i]), int(pos[i])
        cache = ContextCache(draft, 1, torch.device("cpu"), torch.float32)
        cache.append(taps[s, :p], torch.arange(p), torch.zeros(p, dtype=torch.int64))
        with torch.no_grad():
            ref = draft.backbone(batch.ids[s, p : p + 1], torch.tensor([p]), cache)
        torch.testing.assert_close(hidden[i : i + 1], ref, rtol=1e-5, atol=1e-5)


def test_loss_terms_match_their_definitions(tokenizer):
    vocab = len(tokenizer) + 1
    target = tiny_target(vocab, embed_scale=10.0)
    draft = tiny_draft(target, markov_rank=8)
    batch = _batch(tokenizer)
    with torch.no_grad():
        taps, target_logits = train._target_features(target, batch, list(draft.config.target_layer_ids))
    seq, pos, valid = train.sample_anchors(batch, draft.gamma, 4, torch.Generator().manual_seed(1))
    logits_seen = {}
    original = draft.markov_head.forward

    def spy(prev, hidden):
        bias = original(prev, hidden)
        logits_seen["logits"] = draft.base_logits(hidden) + bias
        logits_seen["prev"] = prev
        return bias

    draft.markov_head.forward = spy
    weights = train.LossWeights(0.1, 0.9, 1.0)
    with torch.no_grad():
        _, stats = train.training_loss(draft, taps, target_logits, batch, seq, pos, valid, weights)
    logits = logits_seen["logits"]
    w = train.position_weights(draft.gamma)[None] * valid
    n = batch.ids.shape[1]
    ce_sum = l1_sum = 0.0
    for i in range(seq.numel()):
        for k in range(draft.gamma):
            if not valid[i, k]:
                continue
            s, p = int(seq[i]), int(pos[i])
            label = batch.ids[s, p + k + 1]
            assert int(logits_seen["prev"][i, k]) == int(batch.ids[s, p + k])
            ce_sum += float(w[i, k]) * float(-torch.log_softmax(logits[i, k], -1)[label])
            p_t = torch.softmax(target_logits[s, min(p + k, n - 1)], -1)
            tv = 0.5 * float((torch.softmax(logits[i, k], -1) - p_t).abs().sum())
            l1_sum += float(w[i, k]) * 2 * tv
    denom = float(w.sum())
    assert stats["ce"] == pytest.approx(ce_sum / denom, rel=1e-4)
    assert stats["l1"] == pytest.approx(l1_sum / denom, rel=1e-4)
    assert stats["loss"] == pytest.approx(0.1 * stats["ce"] + 0.9 * stats["l1"] + stats["bce"], rel=1e-5)


def test_schedule_and_position_weights():
    w = train.position_weights(7)
    torch.testing.assert_close(w, torch.exp(-torch.arange(7.0) / 4))
    total = 100
    factors = [train.lr_factor(s, total) for s in range(total)]
    assert factors[0] == pytest.approx(0.25) and factors[3] == pytest.approx(1.0)
    assert all(a >= b for a, b in itertools.pairwise(factors[3:]))
    assert factors[-1] < 1e-3


def test_anchors_have_trained_first_labels_and_cut_at_gaps(tokenizer):
    batch = _batch(tokenizer)
    seq, pos, valid = train.sample_anchors(batch, 7, 100, torch.Generator().manual_seed(0))
    for s, p, v in zip(seq.tolist(), pos.tolist(), valid, strict=True):
        assert bool(batch.trained[s, p + 1])
        expect = []
        ok = True
        for k in range(1, 8):
            ok = ok and p + k < batch.ids.shape[1] and bool(batch.trained[s, p + k])
            expect.append(ok)
        assert v.tolist() == expect
    assert int(pos.numel()) == int(batch.trained[:, 1:].sum())  # every candidate drawn once


def test_draft_config_from_target_is_loadable():
    target = tiny_target(64)
    raw = train.draft_config_from_target(
        target.config, num_layers=2, block_size=5, target_layer_ids=None, mask_token_id=63, markov_rank=16
    )
    assert raw["target_layer_ids"] == [0, 1, 2] and raw["architectures"] == ["Qwen3DSparkModel"]
    dflash = train.draft_config_from_target(
        target.config, num_layers=1, block_size=5, target_layer_ids=[1], mask_token_id=63, markov_rank=0
    )
    assert dflash["architectures"] == ["Qwen3DFlashModel"] and not dflash["enable_confidence_head"]


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "dspark_sgl", "train", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=300,
    )


@pytest.fixture(scope="module")
def pair_and_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("train")
    target_dir, _ = write_pair(root)
    data = root / "data.jsonl"
    data.write_text("".join(json.dumps({"conversations": c}) + "\n" for c in CONVS * 3))
    return root, target_dir, data


COMMON = ["--num-layers", "1", "--markov-rank", "8", "--block-size", "4", "--batch-size", "2"]
COMMON += ["--anchors-per-sequence", "4", "--max-length", "64", "--log-every", "1", "--no-progress"]


def test_train_command_runs_checkpoints_and_resumes_exactly(pair_and_data):
    root, target_dir, data = pair_and_data
    base = ["--target", str(target_dir), "--data", str(data), *COMMON]
    straight = root / "straight"
    proc = _cli(
        *base,
        "--out",
        str(straight),
        "--steps",
        "4",
        "--save-every",
        "2",
        "--save-dtype",
        "float32",
        cwd=root,
    )
    assert proc.returncode == 0, proc.stderr
    assert (
        "step 4/4" in proc.stdout
        and " ce " in proc.stdout
        and " l1 " in proc.stdout
        and " bce " in proc.stdout
    )
    log = [json.loads(line) for line in (straight / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2, 3, 4] and all({"ce", "l1", "bce", "lr"} <= set(r) for r in log)
    assert sorted(p.name for p in straight.glob("checkpoint-*")) == ["checkpoint-000002", "checkpoint-000004"]

    from transformers import AutoConfig

    final = load_draft(straight, target_config=AutoConfig.from_pretrained(target_dir))
    assert final.config.markov_rank == 8 and not final.has_vocab_weights

    # Stop after 2 steps (the same 4-step schedule), then resume: identical weights.
    resumed = root / "resumed"
    proc = _cli(*base, "--out", str(resumed), "--steps", "4", "--save-every", "2", "--save-dtype", "float32",
                cwd=root)  # fmt: skip
    assert proc.returncode == 0
    shutil.rmtree(resumed / "checkpoint-000004")
    proc = _cli(*base, "--out", str(resumed), "--steps", "4", "--save-every", "2", "--save-dtype", "float32",
                "--resume", cwd=root)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "resuming from" in proc.stderr
    a = load_draft(straight / "checkpoint-000004").state_dict()
    b = load_draft(resumed / "checkpoint-000004").state_dict()
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_train_command_refuses_bad_runs(pair_and_data):
    root, target_dir, data = pair_and_data
    base = ["--target", str(target_dir), "--data", str(data), *COMMON, "--steps", "1"]
    proc = _cli(*base, "--out", str(root / "none"), "--resume", cwd=root)
    assert proc.returncode != 0 and "no checkpoint" in proc.stderr
    out = root / "twice"
    assert _cli(*base, "--out", str(out), cwd=root).returncode == 0
    proc = _cli(*base, "--out", str(out), cwd=root)
    assert proc.returncode != 0 and "already holds checkpoints" in proc.stderr
    proc = _cli(*base, "--out", str(root / "mask"), "--mask-token-id", "100000", cwd=root)
    assert proc.returncode != 0 and "outside the target's embedding" in proc.stderr
    users = root / "users.jsonl"
    users.write_text(json.dumps({"conversations": [{"role": "user", "content": "hello"}]}) + "\n")
    proc = _cli(
        "--target", str(target_dir), "--data", str(users), *COMMON, "--out", str(root / "u"), cwd=root
    )
    assert proc.returncode != 0 and "no conversation has an assistant token" in proc.stderr


def test_regenerate_uses_the_target_and_is_cached(pair_and_data):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    root, target_dir, data = pair_and_data
    tok = AutoTokenizer.from_pretrained(target_dir)
    target = AutoModelForCausalLM.from_pretrained(target_dir).eval()
    regen = train.regenerate_answers(
        target, tok, CONVS, max_new_tokens=6, temperature=0.0, batch_size=2, seed=0, progress=False
    )
    for conv, new in zip(CONVS, regen, strict=True):
        assert new[:-1] == conv[:1] and new[-1]["role"] == "assistant"
        ids = tok.apply_chat_template(conv[:1], add_generation_prompt=True, tokenize=False)
        prompt = tok(ids, add_special_tokens=False, return_tensors="pt")["input_ids"]
        ref = target.generate(prompt, max_new_tokens=6, do_sample=False, pad_token_id=tok.pad_token_id,
                              eos_token_id=tok.eos_token_id)[0, prompt.shape[1] :].tolist()  # fmt: skip
        if tok.eos_token_id in ref:
            ref = ref[: ref.index(tok.eos_token_id)]
        assert new[-1]["content"] == tok.decode(ref, skip_special_tokens=True)
    lengths = [len(train._render(tok, c[:1], True)) for c in CONVS]
    kept = train.regenerate_answers(
        target, tok, CONVS, max_new_tokens=2, temperature=0.0, batch_size=2, seed=0, progress=False,
        max_prompt_tokens=min(lengths),
    )  # fmt: skip
    assert lengths[0] != lengths[1] and len(kept) == 1 and kept[0][0] == CONVS[lengths.index(min(lengths))][0]
    with pytest.raises(ValueError, match="needs a user turn"):
        train.regenerate_answers(
            target, tok, [[{"role": "system", "content": "be brief"}]], max_new_tokens=2, temperature=0.0,
            batch_size=1, seed=0, progress=False,
        )  # fmt: skip
    cache = root / "regen.jsonl"
    args = ["--target", str(target_dir), "--data", str(data), *COMMON, "--steps", "1", "--regenerate"]
    args += ["--regenerate-max-new-tokens", "4", "--regenerated-data", str(cache)]
    assert _cli(*args, "--out", str(root / "r1"), cwd=root).returncode == 0 and cache.is_file()
    proc = _cli(*args, "--out", str(root / "r2"), cwd=root)
    assert proc.returncode == 0 and "reusing regenerated answers" in proc.stderr


def test_training_reduces_the_loss(tokenizer, tmp_path):
    """A few dozen steps on a tiny target lower the weighted loss clearly."""
    vocab = len(tokenizer) + 1
    target = tiny_target(vocab, embed_scale=10.0)
    draft = tiny_draft(target, markov_rank=8)
    train.init_draft(draft, 0.02, seed=0)
    batch = _batch(tokenizer)
    with torch.no_grad():
        taps, target_logits = train._target_features(target, batch, list(draft.config.target_layer_ids))
    seq, pos, valid = train.sample_anchors(batch, draft.gamma, 16, torch.Generator().manual_seed(0))
    params = [p for p in draft.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=3e-3)
    losses = []
    for _ in range(40):
        loss, _ = train.training_loss(draft, taps, target_logits, batch, seq, pos, valid, train.LossWeights())
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.7 * losses[0], losses[::8]
