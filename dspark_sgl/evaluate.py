"""``python -m dspark_sgl eval`` and ``calibrate``: the paper's acceptance protocol.

eval (SPEC section 6): for each dataset (a ``*.jsonl`` with ``{"turns": [str, ...]}``, the
first turn only), chat template with no system prompt and thinking off, fixed block
(scheduler off), temperature 1.0 by default. Per dataset it reports tau (tokens per round
including the bonus), the position-wise conditional acceptance (acceptance at k among
rounds whose drafts 1..k-1 were all accepted), the verify rate (verified / drafted),
tokens/s, and for a draft with a confidence head the ECE of the prefix products and the
AUROC of each position's confidence against its conditional label. The macro average is
the plain mean over datasets. It writes a JSON report and, one line per round, an
acceptance trace in the format :class:`dspark_sgl.simulate.AcceptanceTrace` reads (plus
``confidence_logits`` and ``verified``, which ``calibrate`` uses).

calibrate (SPEC section 4): Sequential Temperature Scaling on those rounds, written as
SGLang's STS JSON (``--speculative-dspark-confidence-sts-path``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import torch

from dspark_sgl import _io, calibration
from dspark_sgl.engine import RoundRecord

__all__ = ["DEFAULT_PROMPTS", "PAPER_ORDER", "dataset_metrics", "load_prompts", "main_calibrate", "main_eval"]

PAPER_ORDER = (
    "gsm8k", "math500", "aime25", "aime24", "mbpp", "humaneval", "livecodebench", "lbpp",
    "mt-bench", "alpaca", "arena-hard-v2", "swe-bench",
)  # fmt: skip
DEFAULT_PROMPTS = os.environ.get("DSPARK_SGL_EVAL_PROMPTS", "../shared/data/eval_prompts")


def load_prompts(
    paths: Sequence[str | os.PathLike], datasets: Sequence[str] | None = None
) -> dict[str, list[str]]:
    """{dataset: first turns} from jsonl files or directories of them (dataset = file stem)."""
    files: list[Path] = []
    for path in map(Path, paths):
        if path.is_dir():
            files.extend(sorted(path.glob("*.jsonl")))
        elif path.is_file():
            files.append(path)
        else:
            raise FileNotFoundError(f"prompt path {path} does not exist")
    if datasets:
        missing = [d for d in datasets if d not in {f.stem for f in files}]
        if missing:
            raise ValueError(f"datasets {missing} not found among {sorted(f.stem for f in files)}")
        files = [f for f in files if f.stem in datasets]
    found: dict[str, list[str]] = {}
    for file in files:
        turns = []
        for number, record in _io.iter_jsonl(file):
            first = record.get("turns", [None])[0] if isinstance(record, dict) else None
            if not isinstance(first, str):
                raise ValueError(f"{file}:{number}: expected {{'turns': [str, ...]}}")
            turns.append(first)
        found[file.stem] = turns
    rank = {name: i for i, name in enumerate(PAPER_ORDER)}
    return dict(sorted(found.items(), key=lambda kv: (rank.get(kv[0], len(rank)), kv[0])))


def dataset_metrics(
    rounds: Sequence[RoundRecord], gamma: int, temperatures: torch.Tensor | None, seconds: float, tokens: int
) -> dict:
    """Acceptance metrics of one dataset's rounds (see the module docstring)."""
    accepted = torch.tensor([r.accepted for r in rounds], dtype=torch.int64)
    verified = torch.tensor([r.verified for r in rounds], dtype=torch.int64)
    cond = []
    for k in range(gamma):
        reached = accepted >= k
        cond.append(float((accepted[reached] > k).double().mean()) if bool(reached.any()) else math.nan)
    metrics = {
        "rounds": len(rounds),
        "tokens": tokens,
        "tau": float((accepted + 1).double().mean()),
        "conditional_acceptance": cond,
        "verify_rate": float(verified.double().mean() / gamma),
        "tokens_per_second": tokens / seconds if seconds > 0 else 0.0,
        "seconds": seconds,
    }
    if rounds and rounds[0].confidence_logits:
        z = torch.tensor([r.confidence_logits for r in rounds], dtype=torch.float64)
        temps = torch.ones(gamma) if temperatures is None else temperatures.cpu()
        report = calibration.sts_report(z, accepted, temps, verified_len=verified)
        metrics["ece"] = report["ece_after"]
        metrics["auroc"] = report["auroc_after"]
    return metrics


def _macro(per_dataset: dict[str, dict]) -> dict:
    keys = ("tau", "verify_rate", "tokens_per_second")
    macro = {k: sum(m[k] for m in per_dataset.values()) / len(per_dataset) for k in keys}
    for key in ("conditional_acceptance", "ece", "auroc"):
        columns = [m[key] for m in per_dataset.values() if key in m]
        if columns:
            macro[key] = [_nanmean(list(col)) for col in zip(*columns, strict=True)]
    return macro


def _nanmean(values: list[float]) -> float:
    kept = [v for v in values if not math.isnan(v)]
    return sum(kept) / len(kept) if kept else math.nan


def format_report(report: dict) -> str:
    """The eval table: one row per dataset plus the macro average."""
    gamma = report["gamma"]
    head = ["dataset", "prompts", "rounds", "tau", "tok/s", *[f"acc@{k + 1}" for k in range(gamma)]]
    has_conf = "ece" in report["macro"]
    if has_conf:
        head += ["ECE", "AUROC"]
    lines = [" | ".join(head), " | ".join("---" for _ in head)]

    def row(name: str, m: dict, prompts: str) -> str:
        cells = [name, prompts, str(m.get("rounds", "")), f"{m['tau']:.2f}", f"{m['tokens_per_second']:.1f}"]
        cells += [f"{a:.2f}" if not math.isnan(a) else "-" for a in m["conditional_acceptance"]]
        if has_conf:
            cells += [f"{_nanmean(m['ece']):.3f}", f"{_nanmean(m['auroc']):.3f}"]
        return " | ".join(cells)

    for name, m in report["datasets"].items():
        lines.append(row(name, m, str(m["prompts"])))
    lines.append(row("macro avg", report["macro"], ""))
    return "\n".join("| " + line + " |" for line in lines)


DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_device_dtype(device: str, dtype: str) -> tuple[torch.device, torch.dtype]:
    """``--device`` (``auto``: CUDA when present) and ``--dtype`` (``auto``: bf16 on CUDA,
    float32 on CPU, else a key of :data:`DTYPES`) as torch objects."""
    dev = torch.device(
        "cuda" if device == "auto" and torch.cuda.is_available() else ("cpu" if device == "auto" else device)
    )
    if dtype == "auto":
        return dev, torch.bfloat16 if dev.type == "cuda" else torch.float32
    if dtype not in DTYPES:
        raise ValueError(f"--dtype must be auto or one of {sorted(DTYPES)}")
    return dev, DTYPES[dtype]


def load_target(path: str, device: str = "auto", dtype: str = "auto"):
    """(tokenizer, target) from a local HF directory: SDPA attention (eager attention for
    architectures without SDPA, e.g. transformers' DeepSeek-V4), eval mode, frozen, on the
    resolved device and dtype (see :func:`resolve_device_dtype`)."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    dev, dt = resolve_device_dtype(device, dtype)
    tokenizer = AutoTokenizer.from_pretrained(path)
    model_cls = AutoModelForCausalLM._model_mapping[type(AutoConfig.from_pretrained(path))]
    attention = "sdpa" if getattr(model_cls, "_supports_sdpa", False) else "eager"
    target = AutoModelForCausalLM.from_pretrained(path, dtype=dt, attn_implementation=attention)
    return tokenizer, target.to(dev).eval().requires_grad_(False)


def load_pair(
    target_path: str, draft_path: str, device: str = "auto", dtype: str = "auto", sts: str | None = None
):
    """(tokenizer, target, draft) from local directories; the draft is checked against the target."""
    from dspark_sgl.checkpoint import load_draft

    tokenizer, target = load_target(target_path, device, dtype)
    draft = load_draft(draft_path, target_config=target.config, device=target.device, dtype=target.dtype)
    if sts:
        draft.set_sts_temperatures(calibration.StsCalibration.load(sts).tensor())
    return tokenizer, target, draft


def encode_prompt(tokenizer, text: str, chat_template: bool) -> list[int]:
    if chat_template and getattr(tokenizer, "chat_template", None):
        ids = tokenizer.apply_chat_template(
            [{"role": "user", "content": text}],
            add_generation_prompt=True,
            enable_thinking=False,
            tokenize=True,
        )
        if isinstance(ids, dict) or hasattr(ids, "input_ids"):
            ids = ids["input_ids"]
        return list(ids)
    return tokenizer(text)["input_ids"]


def stop_tokens(tokenizer, target) -> list[int]:
    """The target's generation-config EOS ids plus the tokenizer's EOS."""
    ids = getattr(getattr(target, "generation_config", None), "eos_token_id", None)
    ids = [ids] if isinstance(ids, int) else list(ids or [])
    if tokenizer.eos_token_id is not None:
        ids.append(tokenizer.eos_token_id)
    return sorted(set(ids))


def run_eval(args: argparse.Namespace) -> tuple[dict, list[dict]]:
    from tqdm.auto import tqdm

    from dspark_sgl.engine import SpeculativeEngine

    tokenizer, target, draft = load_pair(args.target, args.draft, args.device, args.dtype, args.sts)
    draft.set_markov_w2_int8(getattr(args, "markov_w2", "native") == "int8")
    prompts = load_prompts(
        args.prompts or [DEFAULT_PROMPTS], args.datasets.split(",") if args.datasets else None
    )
    prompts = {name: texts[args.skip_prompts :][: args.num_prompts] for name, texts in prompts.items()}
    for name, texts in prompts.items():
        if not texts:
            raise ValueError(f"dataset {name}: no prompts left after --skip-prompts {args.skip_prompts}")
    engine = SpeculativeEngine(target, draft)
    stops = stop_tokens(tokenizer, target)
    gamma = draft.gamma
    per_dataset: dict[str, dict] = {}
    trace: list[dict] = []
    bar = tqdm(
        total=sum(map(len, prompts.values())),
        unit="prompt",
        disable=not args.progress,
    )
    for name, texts in prompts.items():
        encoded = [
            encode_prompt(tokenizer, t, not args.no_chat_template)[-args.max_prompt_tokens :] for t in texts
        ]
        rounds: list[RoundRecord] = []
        seconds, tokens = 0.0, 0
        for start in range(0, len(encoded), args.batch_size):
            batch = encoded[start : start + args.batch_size]
            result = engine.generate(
                batch,
                max_new_tokens=args.max_new_tokens,
                temperature=args.temperature,
                stop_token_ids=stops,
                seed=args.seed + start,
                progress=False,
            )
            rounds.extend(result.rounds)
            seconds += result.seconds
            tokens += result.num_tokens
            bar.update(len(batch))
        metrics = dataset_metrics(rounds, gamma, draft.sts_temperatures, seconds, tokens)
        metrics["prompts"] = len(texts)
        per_dataset[name] = metrics
        for r in rounds:
            line = {"dataset": name, "accepted": r.accepted, "verified": r.verified}
            if r.confidence:
                line["confidence"] = r.confidence
                line["confidence_logits"] = r.confidence_logits
            else:
                line["gamma"] = r.gamma
            trace.append(line)
    bar.close()
    report = {
        "target": str(args.target),
        "draft": str(args.draft),
        "draft_type": "dspark" if draft.config.is_dspark else "dflash",
        "gamma": gamma,
        "temperature": args.temperature,
        "markov_w2": getattr(args, "markov_w2", "native"),
        "max_new_tokens": args.max_new_tokens,
        "device": str(engine.device),
        "datasets": per_dataset,
        "macro": _macro(per_dataset),
    }
    return report, trace


def _eval_parser(prog: str, *, pair_required: bool = True) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[1])
    p.add_argument("--target", required=pair_required, help="target model directory (HF format)")
    p.add_argument("--draft", required=pair_required, help="draft directory (config.json + *.safetensors)")
    p.add_argument("--prompts", nargs="*", help=f"jsonl files or directories (default {DEFAULT_PROMPTS})")
    p.add_argument("--datasets", help="comma-separated dataset names (file stems) to run")
    p.add_argument("--num-prompts", type=int, default=8, help="prompts per dataset (default 8)")
    p.add_argument("--skip-prompts", type=int, default=0, help="start at each dataset's N-th prompt")
    p.add_argument("--max-new-tokens", type=int, default=2048)
    p.add_argument("--max-prompt-tokens", type=int, default=4096, help="keep the last N prompt tokens")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument(
        "--dtype", default="auto", help="auto (bf16 on GPU, fp32 on CPU), float32, bfloat16, float16"
    )
    p.add_argument("--sts", help="STS JSON to apply to the confidence head")
    p.add_argument(
        "--markov-w2",
        choices=("native", "int8"),
        default="native",
        help="draft with W2 as loaded (native) or quantized to int8 with per-row scales (vanilla head)",
    )
    p.add_argument("--no-chat-template", action="store_true", help="encode the raw prompt text")
    p.add_argument("--no-progress", dest="progress", action="store_false")
    return p


def main_eval(argv: list[str] | None = None) -> int:
    p = _eval_parser("python -m dspark_sgl eval")
    p.add_argument("--out", default="eval_report.json", help="JSON report path")
    p.add_argument("--trace", default="eval_rounds.jsonl", help="per-round acceptance trace (jsonl)")
    args = p.parse_args(argv)
    report, trace = run_eval(args)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    with open(args.trace, "w", encoding="utf-8") as f:
        for line in trace:
            f.write(json.dumps(line) + "\n")
    print(format_report(report))
    print(f"\nreport: {args.out}   trace: {args.trace} ({len(trace)} rounds)")
    return 0


def read_trace(path: str | os.PathLike) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[str]]:
    """(confidence_logits [N, g] float64, accepted [N], verified [N], datasets) of an eval trace."""
    z, acc, ver, names = [], [], [], []
    for number, record in _io.iter_jsonl(path):
        if "confidence_logits" not in record:
            raise ValueError(
                f"{path}:{number}: no confidence_logits (was the draft run with a confidence head?)"
            )
        z.append(record["confidence_logits"])
        acc.append(int(record["accepted"]))
        ver.append(int(record.get("verified", len(record["confidence_logits"]))))
        if record["dataset"] not in names:
            names.append(record["dataset"])
    if not z:
        raise ValueError(f"{path}: no rounds")
    return torch.tensor(z, dtype=torch.float64), torch.tensor(acc), torch.tensor(ver), names


def main_calibrate(argv: list[str] | None = None) -> int:
    p = _eval_parser("python -m dspark_sgl calibrate", pair_required=False)
    p.add_argument("--from-trace", help="fit on an eval trace instead of running the pair")
    p.add_argument("--out", default="sts.json", help="STS JSON path (SGLang's format)")
    p.add_argument("--bins", type=int, default=20)
    args = p.parse_args(argv)
    if args.from_trace:
        z, acc, ver, names = read_trace(args.from_trace)
    else:
        if not (args.target and args.draft):
            p.error("give --target and --draft, or --from-trace")
        args.sts = None  # fit on raw confidences
        _, trace = run_eval(args)
        trace = [t for t in trace if "confidence_logits" in t]
        if not trace:
            print("the draft has no confidence head: nothing to calibrate", file=sys.stderr)
            return 2
        z = torch.tensor([t["confidence_logits"] for t in trace], dtype=torch.float64)
        acc = torch.tensor([t["accepted"] for t in trace])
        ver = torch.tensor([t["verified"] for t in trace])
        names = list(dict.fromkeys(t["dataset"] for t in trace))
    temps = calibration.fit_sts(z, acc, verified_len=ver, bins=args.bins)
    report = calibration.sts_report(z, acc, temps, verified_len=ver, bins=args.bins)
    sts = calibration.StsCalibration(
        temperatures=temps.tolist(),
        dataset=",".join(names),
        num_samples=int(z.shape[0]),
        ece_before=report["ece_before"],
        ece_after=report["ece_after"],
    )
    sts.save(args.out)
    print("| position | T_k | ECE before | ECE after | AUROC |")
    print("| --- | --- | --- | --- | --- |")
    for k, t in enumerate(sts.temperatures):
        print(
            f"| {k + 1} | {t:.3f} | {report['ece_before'][k]:.4f} | {report['ece_after'][k]:.4f} "
            f"| {report['auroc_after'][k]:.3f} |"
        )
    print(f"\n{z.shape[0]} rounds from {', '.join(names)}; STS written to {args.out}")
    return 0
