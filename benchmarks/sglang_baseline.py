"""SGLang 0.5.23's own paths for the three kernels, as the benchmark's baseline.

- Markov block: per position ``functional.linear(W1[prev], W2)`` then ``MarkovSampleStep`` (Triton),
  keeping the step logits as SGLang does.
- Verification: ``dspark_verify.accept_draft_tokens`` on its sampling path
  (``SoftmaxTemp`` + ``AcceptSampling``), greedy rows mixed in through ``SelectMixedAccept``.
- Scheduling: ``dspark_planner.compute_verify_token_budget`` then ``ScheduleVerifyLensTopk``.

Nothing of dspark_sgl is hooked in here (the plugin is not loaded). :func:`load` returns
the baseline, or the reason it cannot be imported on this machine.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types
from pathlib import Path

import torch
from torch.nn import functional

_STUBS = Path(__file__).resolve().parent.parent / "tests" / "stubs"
_MODULES = {
    "markov_sample": "sglang.kernels.ops.speculative.dspark.markov_sample",
    "dspark_schedule": "sglang.kernels.ops.speculative.dspark.dspark_schedule",
    "dspark_draft": "sglang.srt.speculative.dspark_components.dspark_draft",
    "dspark_verify": "sglang.srt.speculative.dspark_components.dspark_verify",
    "dspark_planner": "sglang.srt.speculative.dspark_components.dspark_planner",
    "dspark_sps": "sglang.srt.speculative.dspark_components.dspark_sps",
    "sampling_batch_info": "sglang.srt.sampling.sampling_batch_info",
}


class SglangBaseline:
    """Callables that run SGLang's path on prepared inputs (see the module docstring)."""

    def __init__(self, modules: types.SimpleNamespace) -> None:
        self.m = modules

    def markov_block(self, base, anchor, w1, w2, temperature, offset, logits_out) -> torch.Tensor:
        """base [R, g, V] bf16, w1/w2 [V, r] bf16, offset int64 [1]: tokens [R, g]."""
        step_cls = self.m.markov_sample.MarkovSampleStep
        prev, tokens = anchor, []
        for k in range(base.shape[1]):
            bias = functional.linear(w1[prev], w2)
            prev = step_cls.execute(
                base_logits=base[:, k],
                bias=bias,
                temperatures=temperature,
                key=1,
                offset=offset,
                step=k,
                step_dtype=torch.bfloat16,
                logits_out=logits_out[:, k],
            )
            tokens.append(prev)
        return torch.stack(tokens, dim=1)

    def accept(self, target, draft_logits, draft_tokens, anchor, temperature) -> tuple[torch.Tensor, ...]:
        """target [R, g+1, V], draft_logits [R, g, V] (SGLang keeps them in bf16)."""
        rows, g_plus_1, vocab = target.shape
        greedy = temperature == 0
        block = self.m.dspark_draft.DraftBlockResult(
            draft_tokens=draft_tokens,
            corrected_logits=draft_logits,
            greedy_mask=greedy,
            temperatures=temperature,
            greedy_draft=False,
        )
        top_ks = torch.where(greedy, 1, vocab).to(torch.int32)
        info = self.m.sampling_batch_info.SamplingBatchInfo(
            temperatures=torch.where(greedy, 1.0, temperature).view(-1, 1),
            top_ps=torch.ones(rows, device=target.device),
            top_ks=top_ks,
            min_ps=torch.zeros(rows, device=target.device),
            is_all_greedy=False,
            is_any_greedy=True,
            need_top_p_sampling=False,
            need_top_k_sampling=False,
            need_min_p_sampling=False,
            vocab_size=vocab,
        )
        return self.m.dspark_verify.accept_draft_tokens(
            candidates=torch.cat([anchor[:, None], draft_tokens], dim=1),
            target_logits=target.reshape(rows * g_plus_1, vocab),
            draft_block=block,
            sampling_info=info,
            draft_input=types.SimpleNamespace(max_top_k=vocab, uniform_top_k_value=vocab),
            gamma=g_plus_1 - 1,
            verify_num_draft_tokens=g_plus_1,
        )

    def schedule(self, confidence, stale_survival, points: list[tuple[int, float]]) -> torch.Tensor:
        """Budget from stale survivals, then SGLang's top-K layout: lengths [R] int32."""
        planner = self.m.dspark_planner
        table = self.m.dspark_sps.SpsCostTable(
            sample_batch_tokens=[b for b, _ in points],
            sample_steps_per_sec=[s for _, s in points],
            max_batch_tokens=points[-1][0],
        )
        cfg = planner.DSparkScheduleConfig(gamma=confidence.shape[1])
        decision = planner.compute_verify_token_budget(
            history_survival_probs=stale_survival, sps_table=table, cfg=cfg
        )
        return self.m.dspark_schedule.ScheduleVerifyLensTopk.execute(
            confidence=confidence, budget=decision.budget, cfg=cfg
        )


def load() -> SglangBaseline | str:
    """The baseline, or why SGLang cannot be imported here."""
    if importlib.util.find_spec("sglang") is None:
        return "sglang is not installed (pip install --no-deps the sglang 0.5.23 wheel)"
    added = importlib.util.find_spec("torchvision") is None and _STUBS.is_dir()
    if added:
        sys.path.insert(0, str(_STUBS))
    try:
        modules = {name: importlib.import_module(path) for name, path in _MODULES.items()}
    except Exception as exc:  # any import-time failure means: no baseline on this machine
        return f"sglang is installed but not importable: {exc!r}"
    finally:
        if added:
            sys.path.remove(str(_STUBS))
    return SglangBaseline(types.SimpleNamespace(**modules))
