"""Command-line entry: ``python -m dspark_sgl <command>`` (``dspark-sgl`` when installed)."""

from __future__ import annotations

import sys

COMMANDS = {
    "demo": "speculative decoding on the embedded pair against the target alone (--synthetic: a toy pair)",
    "simulate": "continuous-batching serving simulation: the throughput/interactivity frontier",
    "eval": "acceptance of a draft against its target over prompt datasets (the paper's protocol)",
    "calibrate": "fit the confidence head's STS temperatures and write SGLang's STS JSON",
    "train": "train a DSpark or DFlash draft against a frozen target (DeepSpec recipe, target online)",
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        print("usage: python -m dspark_sgl <command> [options]\n\ncommands:")
        for name, text in COMMANDS.items():
            print(f"  {name:<10} {text}")
        if argv and argv[0] not in ("-h", "--help"):
            print(f"\nunknown command {argv[0]!r}", file=sys.stderr)
            return 2
        return 0
    if argv[0] == "demo":
        from dspark_sgl import demo

        return demo.main(argv[1:])
    if argv[0] == "simulate":
        from dspark_sgl import simulate

        return simulate.main(argv[1:])
    if argv[0] == "eval":
        from dspark_sgl import evaluate

        return evaluate.main_eval(argv[1:])
    if argv[0] == "calibrate":
        from dspark_sgl import evaluate

        return evaluate.main_calibrate(argv[1:])
    if argv[0] == "train":
        from dspark_sgl import train

        return train.main(argv[1:])
    return 2


if __name__ == "__main__":
    sys.exit(main())
