"""models/build.py: the target stage resumes from its checkpoint and reproduces the
uninterrupted run (tiny config, a few steps; nothing timed)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers")
pytest.importorskip("tokenizers")
pytest.importorskip("safetensors")

BUILD = Path(__file__).resolve().parent.parent / "models" / "build.py"
TINY = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "num_key_value_heads": 1,
    "head_dim": 16,
    "max_position_embeddings": 128,
    "rope_theta": 10000.0,
    "tie_word_embeddings": True,
}


@pytest.fixture()
def build(monkeypatch):
    spec = importlib.util.spec_from_file_location("models_build", BUILD)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setattr(module, "TARGET_CONFIG", TINY)
    monkeypatch.setattr(module, "log", lambda msg: None)
    return module


def _work(build, root: Path) -> tuple[Path, Path]:
    work, target = root / "work", root / "target"
    work.mkdir(parents=True)
    texts = [f"def f{i}(x):\n    return x * {i} + {i % 7}\n" for i in range(200)]
    (work / "corpus.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    build.step_tokenizer(work, target)
    return work, target


def _weights(target: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(target / "model.safetensors"))


def test_target_stage_resumes_to_the_uninterrupted_weights(build, tmp_path, monkeypatch):
    work, target = _work(build, tmp_path / "whole")
    build.step_target(work, target, steps=6, batch=2, seq=16, save_every=2)
    whole = _weights(target)
    assert not list((work / "target-train").glob("checkpoint.*"))  # removed once the stage is done

    work, target = _work(build, tmp_path / "split")
    clip = torch.nn.utils.clip_grad_norm_
    calls = {"n": 0}

    def interrupt_at_step_five(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt
        return clip(*args, **kwargs)

    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", interrupt_at_step_five)
    with pytest.raises(KeyboardInterrupt):
        build.step_target(work, target, steps=6, batch=2, seq=16, save_every=2)
    assert torch.load(work / "target-train" / "checkpoint.pt", weights_only=False)["step"] == 4
    assert not (target / "model.safetensors").exists()
    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", clip)
    build.step_target(work, target, steps=6, batch=2, seq=16, save_every=2)
    resumed = _weights(target)
    assert resumed.keys() == whole.keys()
    assert all(torch.equal(resumed[k], whole[k]) for k in whole)


def test_target_stage_refuses_another_run_and_replans_a_shorter_one(build, tmp_path, monkeypatch):
    work, target = _work(build, tmp_path)
    clip = torch.nn.utils.clip_grad_norm_
    calls = {"n": 0}

    def interrupt_at_step_four(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt
        return clip(*args, **kwargs)

    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", interrupt_at_step_four)
    with pytest.raises(KeyboardInterrupt):
        build.step_target(work, target, steps=6, batch=2, seq=16, save_every=2)
    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", clip)
    assert torch.load(work / "target-train" / "checkpoint.pt", weights_only=False)["step"] == 2
    with pytest.raises(ValueError, match="from another run"):  # already past the new end
        build.step_target(work, target, steps=2, batch=2, seq=16, save_every=2)
    other = build.TARGET_CONFIG | {"num_hidden_layers": build.TARGET_CONFIG["num_hidden_layers"] + 1}
    with monkeypatch.context() as patch, pytest.raises(ValueError, match="from another run"):
        patch.setattr(build, "TARGET_CONFIG", other)
        build.step_target(work, target, steps=6, batch=2, seq=16, save_every=2)
    build.step_target(work, target, steps=3, batch=2, seq=16, save_every=2)  # a shorter plan resumes
    assert (target / "model.safetensors").is_file()
    assert not (work / "target-train" / "checkpoint.pt").exists()


def test_draft_configs_have_one_layer_type_per_layer(build, tmp_path):
    cfg = {"model_type": "qwen3", "num_hidden_layers": 1, "layer_types": ["full_attention"] * 4}
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(Exception, match="layer_types"):  # transformers' own validation error
        build.check_config(tmp_path)
    cfg["layer_types"] = ["full_attention"]
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    build.check_config(tmp_path)
