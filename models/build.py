"""Regenerate the embedded model pair from scratch, offline.

    python models/build.py            # every step that has no output yet (resumes a started one)
    python models/build.py --force    # redo everything
    nice -n 19 python models/build.py --out models/work/pair   # build beside the shipped pair

Steps (each writes under ``--out``, default ``models/``, and is skipped when its output
exists; the long ones checkpoint into ``--work`` and resume from there when rerun, so a
build can run across sessions in the background):

1. ``corpus``: the Python standard library's own sources (``sysconfig`` stdlib path, tests
   and GUI packages left out) plus, as chat conversations, every documented stdlib function
   as "docstring -> source", plus the training split of ``shared/data/eval_prompts`` as
   plain text. The first :data:`HELD_OUT` prompts of every dataset are never trained on:
   ``eval`` runs on them.
2. ``tokenizer``: a byte-level BPE tokenizer (4096 tokens) trained on that corpus, with
   Qwen-style chat specials and a ``<|mask|>`` token for the drafts; saved as
   ``target/tokenizer.json`` so ``transformers`` and SGLang load it.
3. ``target``: a ``Qwen3ForCausalLM`` of :data:`TARGET_CONFIG` (12 layers, deep enough
   that its forward pass dominates a speculative round on a CPU) trained from scratch on
   the corpus (next-token cross-entropy, packed 256-token windows), saved in bf16 with
   ``save_pretrained``. Checkpointed every ``--save-every`` steps to
   ``<work>/target-train/checkpoint.pt`` (weights, optimiser, schedule, data generator):
   a rerun continues from the last one and reproduces the uninterrupted run.
4. ``answers``: user prompts (stdlib docstrings and training-split eval prompts) in
   ``{"conversations": [...]}`` jsonl, answered by the trained target itself, half of
   them greedily and half at T = 1 (``<work>/answers-t0.jsonl``, ``answers-t1.jsonl``,
   merged into ``regenerated.jsonl``), so the drafts learn the target's own greedy and
   sampled distributions.
5. ``drafts``: ``python -m dspark_sgl train`` against the frozen target on those answers,
   a DSpark draft (1 layer, vanilla Markov head, rank 64, confidence head) and a DFlash
   draft (1 layer, rank 0) at the same time, one torch thread each (logs in
   ``<work>/train-<name>.log``); ``train --resume`` continues an interrupted one.
6. ``eval``: ``python -m dspark_sgl eval`` of both drafts on the held-out prompts and
   ``calibrate`` of the DSpark draft (STS JSON beside it); reports under ``models/eval/``.

The result depends on the Python version whose standard library is the corpus (3.11 here)
and on the torch build; every step is seeded. Run time on an idle 2-core CPU: about
2 h 10 min for the shipped pair (target 77 min, answers 12, drafts 24, eval 6-12; see
models/README.md). No GPU was available to time it there.
"""

from __future__ import annotations

import argparse
import ast
import json
import math
import os
import random
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
PROMPTS = REPO.parent / "shared" / "data" / "eval_prompts"
HELD_OUT = 24
VOCAB = 4096
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|mask|>"]
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
_SKIP_DIRS = {"test", "tests", "idle_test", "idlelib", "tkinter", "turtledemo", "ensurepip", "lib2to3"}
_SKIP_DIRS |= {"site-packages", "__pycache__"}

TARGET_CONFIG = {
    "hidden_size": 192,
    "intermediate_size": 576,
    "num_hidden_layers": 12,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 48,
    "max_position_embeddings": 2048,
    "rope_theta": 10000.0,
    "tie_word_embeddings": True,
}


def log(msg: str) -> None:
    print(f"[build {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def stdlib_files() -> list[Path]:
    root = Path(sysconfig.get_paths()["stdlib"])
    files = [
        f
        for f in sorted(root.rglob("*.py"))
        if not (set(f.relative_to(root).parts[:-1]) & _SKIP_DIRS) and f.stat().st_size < 400_000
    ]
    return files


def docstring_pairs(source: str) -> list[tuple[str, str]]:
    """(docstring, function source without the docstring) for documented functions."""
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return []
    pairs = []
    for node in ast.walk(tree):
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        doc = ast.get_docstring(node)
        code = ast.get_source_segment(source, node)
        if not doc or not code or len(doc) < 20 or len(code) > 3000:
            continue
        first = node.body[0]
        lines = code.splitlines()
        start = first.lineno - node.lineno
        end = first.end_lineno - node.lineno + 1
        code = "\n".join(lines[:start] + lines[end:]).strip()
        if len(code.splitlines()) >= 2:
            pairs.append((doc.strip(), code))
    return pairs


def prompt_split() -> tuple[list[str], list[str]]:
    """(training prompts, held-out prompts) of shared/data/eval_prompts (first turn)."""
    train, held = [], []
    for path in sorted(PROMPTS.glob("*.jsonl")):
        with path.open() as f:
            for i, line in enumerate(f):
                text = json.loads(line)["turns"][0]
                (held if i < HELD_OUT else train).append(text)
    return train, held


def chat(user: str, assistant: str) -> str:
    return f"<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n{assistant}<|im_end|>\n"


def step_corpus(out: Path) -> None:
    rng = random.Random(0)
    docs, pairs = [], []
    for f in stdlib_files():
        src = f.read_text(encoding="utf-8", errors="replace")
        docs.append(src)
        pairs.extend(docstring_pairs(src))
    train_prompts, _ = prompt_split()
    rng.shuffle(pairs)
    holdout = max(1, len(pairs) // 20)
    documents = docs + [chat(d, c) for d, c in pairs[holdout:]] + train_prompts
    rng.shuffle(documents)
    out.mkdir(parents=True, exist_ok=True)
    (out / "corpus.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in documents))
    convs = [{"conversations": [{"role": "user", "content": d}]} for d, _ in pairs[holdout:]]
    convs += [{"conversations": [{"role": "user", "content": p}]} for p in train_prompts]
    rng.shuffle(convs)
    (out / "conversations.jsonl").write_text("".join(json.dumps(c) + "\n" for c in convs))
    log(f"corpus: {len(docs)} stdlib files, {len(pairs)} docstring pairs, {len(train_prompts)} prompts")


def read_corpus(work: Path) -> list[str]:
    with (work / "corpus.jsonl").open() as f:
        return [json.loads(line)["text"] for line in f]


def step_tokenizer(work: Path, target_dir: Path) -> None:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB,
        special_tokens=SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(read_corpus(work), trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=["<|im_start|>", "<|mask|>"],
    )
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(target_dir)
    log(f"tokenizer: {len(fast)} tokens -> {target_dir}")


def token_stream(work: Path, tokenizer) -> torch.Tensor:
    eot = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    ids: list[int] = []
    for text in read_corpus(work):
        ids.extend(tokenizer(text, add_special_tokens=False)["input_ids"])
        ids.append(eot)
    return torch.tensor(ids, dtype=torch.int64)


def _save_atomically(state: dict, path: Path) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def step_target(
    work: Path, target_dir: Path, steps: int, batch: int, seq: int, save_every: int = 100
) -> None:
    from transformers import AutoTokenizer, Qwen3Config, Qwen3ForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(target_dir)
    stream = token_stream(work, tokenizer)
    log(f"target: {stream.numel()} corpus tokens; {steps} steps of {batch} x {seq}")
    torch.manual_seed(0)
    config = Qwen3Config(
        vocab_size=VOCAB,
        bos_token_id=None,
        eos_token_id=tokenizer.convert_tokens_to_ids("<|im_end|>"),
        pad_token_id=tokenizer.convert_tokens_to_ids("<|endoftext|>"),
        **TARGET_CONFIG,
    )
    model = Qwen3ForCausalLM(config)
    model.config._attn_implementation = "sdpa"
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, betas=(0.9, 0.95), weight_decay=0.1)
    warmup = max(1, steps // 25)

    def lr_at(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    gen = torch.Generator().manual_seed(0)
    ckpt = work / "target-train" / "checkpoint.pt"
    first = 0
    if ckpt.is_file():
        state = torch.load(ckpt, weights_only=False)
        if state["config"] != TARGET_CONFIG or state["step"] >= steps:
            raise ValueError(f"{ckpt} is from another run (config or step count); remove it or use --force")
        if state["steps"] != steps:
            log(f"target: re-planning the cosine schedule from {state['steps']} to {steps} steps")
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        gen.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        first = state["step"]
        log(f"target: resuming at step {first}/{steps} from {ckpt}")
    ckpt.parent.mkdir(parents=True, exist_ok=True)
    model.train()
    start = time.time()
    for step in range(first, steps):
        starts = torch.randint(0, stream.numel() - seq - 1, (batch,), generator=gen)
        x = torch.stack([stream[s : s + seq + 1] for s in starts.tolist()])
        loss = model(input_ids=x[:, :-1], labels=x[:, :-1].clone(), use_cache=False).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        if step % 50 == 0 or step == steps - 1:
            rate = (step + 1 - first) * batch * seq / (time.time() - start)
            log(f"target step {step}/{steps} loss {loss.item():.3f} ({rate:.0f} tok/s)")
        if (step + 1) % save_every == 0 and step + 1 < steps:
            state = {
                "model": model.state_dict(),
                "optimizer": opt.state_dict(),
                "scheduler": sched.state_dict(),
            }
            state |= {"generator": gen.get_state(), "torch_rng": torch.get_rng_state(), "step": step + 1}
            _save_atomically(state | {"steps": steps, "config": TARGET_CONFIG}, ckpt)
    model.eval()
    model.generation_config.do_sample = False
    model.generation_config.eos_token_id = config.eos_token_id
    model.generation_config.pad_token_id = config.pad_token_id
    model.to(torch.bfloat16).save_pretrained(target_dir)
    ckpt.unlink(missing_ok=True)  # the stage's output exists now; a --force rerun starts afresh
    log(f"target: saved to {target_dir} after {time.time() - start:.0f} s")


def run(cmd: list[str]) -> None:
    log("$ " + " ".join(cmd))
    subprocess.run(cmd, check=True, cwd=REPO)


DRAFT_ARGS = [
    "--num-layers", "1", "--block-size", "7", "--batch-size", "8", "--anchors-per-sequence", "32",
    "--max-length", "384", "--regenerate", "--max-conversations", "3000",
    "--regenerate-max-new-tokens", "192", "--regenerate-temperature", "1.0", "--save-every", "250",
    "--log-every", "50", "--no-progress", "--lr", "1e-3",
]  # fmt: skip
DRAFTS = {
    "dspark": ["--markov-rank", "64", "--markov-head-type", "vanilla"],
    "dflash": ["--markov-rank", "0"],
}
EVAL_DATASETS = "gsm8k,math500,aime25,mbpp,humaneval,livecodebench,mt-bench,arena-hard-v2"
EVAL_ARGS = ["--datasets", EVAL_DATASETS, "--max-new-tokens", "128", "--temperature", "1.0", "--no-progress"]


ANSWERS = 3000  # prompts answered by the target: even ones greedily, odd ones at T = 1
ANSWER_MAX_NEW_TOKENS = 192


def step_answers(work: Path, target_dir: Path) -> None:
    """The target's own answers: ``answers-t0.jsonl`` (greedy) and ``answers-t1.jsonl``
    (T = 1), each kept once written, then both in ``regenerated.jsonl`` (what ``train
    --regenerate --regenerated-data`` reads instead of regenerating)."""
    from dspark_sgl.evaluate import load_target
    from dspark_sgl.train import read_conversations, regenerate_answers

    tokenizer, target = load_target(str(target_dir), "auto", "float32")
    convs = read_conversations(work / "conversations.jsonl")[:ANSWERS]
    merged = []
    for temperature in (0, 1):
        path = work / f"answers-t{temperature}.jsonl"
        if not path.is_file():
            log(f"answers: the target answers {len(convs[temperature::2])} prompts at T = {temperature}")
            answers = regenerate_answers(
                target,
                tokenizer,
                convs[temperature::2],
                max_new_tokens=ANSWER_MAX_NEW_TOKENS,
                temperature=float(temperature),
                batch_size=32,
                seed=temperature,
                progress=False,
                max_prompt_tokens=383,
            )
            tmp = path.with_suffix(".tmp")
            tmp.write_text("".join(json.dumps({"conversations": c}) + "\n" for c in answers))
            os.replace(tmp, path)
        merged.extend(read_conversations(path))
    (work / "regenerated.jsonl").write_text("".join(json.dumps({"conversations": c}) + "\n" for c in merged))
    log(f"answers: {len(merged)} conversations in {work / 'regenerated.jsonl'}")


def draft_command(name: str, target_dir: Path, work: Path, steps: int) -> list[str]:
    """``python -m dspark_sgl train`` of one draft into ``<work>/train-<name>`` (``--resume``
    when a checkpoint is there)."""
    scratch = work / f"train-{name}"
    return [
        *(sys.executable, "-m", "dspark_sgl", "train", "--target", str(target_dir)),
        *("--data", str(work / "conversations.jsonl"), "--out", str(scratch)),
        *("--regenerated-data", str(work / "regenerated.jsonl"), "--steps", str(steps)),
        *(["--resume"] if any(scratch.glob("checkpoint-*")) else []),
        *DRAFT_ARGS,
        *DRAFTS[name],
    ]


def step_drafts(target_dir: Path, work: Path, steps: int, out_root: Path = HERE) -> None:
    """Both drafts at once, one torch thread each (on 2 cores twice the throughput of one
    after the other at two threads), then their ``config.json`` / ``model.safetensors``
    copied to ``<out>/<name>``."""
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    procs = {}
    for name in DRAFTS:
        cmd = draft_command(name, target_dir, work, steps)
        log("$ " + " ".join(cmd) + f"  > {work / f'train-{name}.log'}")
        with (work / f"train-{name}.log").open("a") as sink:
            procs[name] = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=sink, stderr=subprocess.STDOUT)
    failed = [name for name, proc in procs.items() if proc.wait() != 0]
    if failed:
        raise RuntimeError(f"draft training failed: {failed} (see {work}/train-<name>.log)")
    for name in DRAFTS:
        out, scratch = out_root / name, work / f"train-{name}"
        out.mkdir(exist_ok=True)
        for file in ("config.json", "model.safetensors"):
            (out / file).write_bytes((scratch / file).read_bytes())
        check_config(out)
        log(f"{name}: {out}")


def check_config(directory: Path) -> None:
    """The shipped config must pass transformers' strict config check, as SGLang loads it
    (e.g. one ``layer_types`` entry per layer); raises what transformers raises."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(directory)
    layer_types = getattr(config, "layer_types", None)
    if layer_types is not None and len(layer_types) != config.num_hidden_layers:
        raise ValueError(
            f"{directory}/config.json: {len(layer_types)} layer_types for {config.num_hidden_layers} layers"
        )


def step_eval(target_dir: Path, work: Path, out_root: Path = HERE) -> None:
    """Both drafts on held-out prompts 0..11 of each dataset, at T = 1 and greedily; STS
    fitted on prompts 12..23 and its ECE measured on 0..11."""
    ev = out_root / "eval"
    ev.mkdir(exist_ok=True)
    test = ["--num-prompts", "12"]
    fit = ["--skip-prompts", "12", "--num-prompts", "12"]
    base = [sys.executable, "-m", "dspark_sgl"]
    for name in DRAFTS:
        pair = ["--target", str(target_dir), "--draft", str(out_root / name)]
        out = ["--out", str(ev / f"{name}.json"), "--trace", str(work / f"{name}_rounds.jsonl")]
        run([*base, "eval", *pair, *EVAL_ARGS, *test, *out])
        trace = str(work / f"{name}_greedy_rounds.jsonl")
        greedy = ["--temperature", "0.0", "--out", str(ev / f"{name}_greedy.json"), "--trace", trace]
        run([*base, "eval", *pair, *EVAL_ARGS, *test, *greedy])
    pair = ["--target", str(target_dir), "--draft", str(out_root / "dspark")]
    run([*base, "calibrate", *pair, *EVAL_ARGS, *fit, "--out", str(out_root / "dspark" / "sts.json")])
    out = ["--out", str(ev / "dspark_sts.json"), "--trace", str(work / "dspark_sts_rounds.jsonl")]
    sts = str(out_root / "dspark" / "sts.json")
    run([*base, "eval", *pair, *EVAL_ARGS, *test, "--sts", sts, *out])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--force", action="store_true", help="redo every step")
    p.add_argument("--target-steps", type=int, default=2200)
    p.add_argument("--draft-steps", type=int, default=1200)
    p.add_argument("--save-every", type=int, default=100, help="target checkpoint interval (steps)")
    p.add_argument("--out", default=str(HERE), help="where the pair goes (default: models/, the shipped one)")
    p.add_argument("--work", default=str(HERE / "work"), help="scratch directory (not committed)")
    p.add_argument("--only", choices=("corpus", "tokenizer", "target", "answers", "drafts", "eval"))
    args = p.parse_args()
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    work, out = Path(args.work), Path(args.out)
    work.mkdir(parents=True, exist_ok=True)
    target_dir = out / "target"
    t0 = time.time()
    stages = [
        ("corpus", work / "corpus.jsonl", lambda: step_corpus(work)),
        ("tokenizer", target_dir / "tokenizer.json", lambda: step_tokenizer(work, target_dir)),
        (
            "target",
            target_dir / "model.safetensors",
            lambda: step_target(work, target_dir, args.target_steps, 16, 256, args.save_every),
        ),
        ("answers", work / "regenerated.jsonl", lambda: step_answers(work, target_dir)),
        (
            "drafts",
            out / "dflash" / "model.safetensors",
            lambda: step_drafts(target_dir, work, args.draft_steps, out),
        ),
        ("eval", out / "eval" / "dspark_sts.json", lambda: step_eval(target_dir, work, out)),
    ]
    for stage, output, action in stages:
        if args.only and stage != args.only:
            continue
        if output.exists() and not args.force:
            log(f"{stage}: {output} exists, skipped")
            continue
        started = time.time()
        action()
        log(f"{stage}: {time.time() - started:.0f} s")
    log(f"done in {time.time() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
