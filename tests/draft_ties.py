"""Comparing drafted tokens with the reference's up to the grouped sampler's near-ties.

The kernel sums a group's exponentials in float32 with ``ex2.approx``; the reference
(:func:`dspark_sgl.markov.draft_sample`) in float64. Their tokens may differ only where the
reference itself is within rounding of another choice: two group keys within
``KEY_TIE * max(1, |K|)``, or the within-group threshold within ``SUM_TIE`` of the group's
sum from a running-sum boundary. Rows are compared up to their first differing position
(after it, the previous tokens differ and so does everything else).
"""

from __future__ import annotations

import torch

from dspark_sgl import markov, rng

KEY_TIE = 1e-4
SUM_TIE = 1e-5


def is_draft_near_tie(
    logits: torch.Tensor,
    temperature: float,
    a: int,
    b: int,
    *,
    seed: int,
    offset: int,
    row: int,
    position: int,
    vocab_start: int = 0,
) -> bool:
    """Whether local columns a and b of one row's logits [V] are both within rounding of the
    reference's draw (greedy rows: equal logits)."""
    if not temperature > 0:
        # Equal logits are no tie (the first index wins, on every path); logits within one
        # 16-bit step of each other are (the kernel's may round to the other side).
        la, lb = float(logits[a]), float(logits[b])
        return la != lb and abs(la - lb) <= 2.0**-7 * max(1.0, abs(la), abs(lb))
    keys, mass, u_cut = _row_groups(logits, temperature, seed, offset, row, position, vocab_start)
    front = vocab_start % markov.DRAFT_GROUP  # draft_groups' group g starts at local 16 g - front
    ga, gb = (a + front) // markov.DRAFT_GROUP, (b + front) // markov.DRAFT_GROUP
    if ga != gb:
        ka, kb = float(keys[ga]), float(keys[gb])
        return abs(ka - kb) <= KEY_TIE * max(1.0, abs(ka), abs(kb))
    group_mass = mass[ga]
    total = float(group_mass.sum())
    cut = float(u_cut[ga]) * total
    lo, hi = sorted(((a + front) % markov.DRAFT_GROUP, (b + front) % markov.DRAFT_GROUP))
    running = group_mass.cumsum(0)
    return any(abs(float(running[i]) - cut) <= SUM_TIE * total for i in range(lo, hi))


def _row_groups(
    logits: torch.Tensor, temperature: float, seed: int, offset: int, row: int, position: int, start: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """draft_groups of one row as batch row ``row`` (the noise is keyed by the row index)."""
    rows = row + 1
    batch = logits[None].expand(rows, -1)
    keys, mass, u_cut, _ = markov.draft_groups(
        batch,
        torch.full((rows,), temperature),
        seed=seed,
        offset=offset,
        stream=rng.Stream.DRAFT,
        position=torch.full((rows,), position),
        vocab_start=start,
    )
    return keys[row], mass[row], u_cut[row]


def step_logits(block: markov.DraftBlock, k: int) -> torch.Tensor:
    """[R, V] float32 logits of position k: the kept logits, else recomputed from the stats."""
    if block.logits is not None:
        return block.logits[:, k].float()
    positions = torch.full((block.tokens.shape[0],), k, dtype=torch.int64, device=block.tokens.device)
    return block.stats.row_logits(block.tokens, positions).float()


def assert_draft_tokens_match(
    ours: markov.DraftBlock,
    ref: markov.DraftBlock,
    temperature: torch.Tensor,
    *,
    seed: int,
    offset: int,
    first_position: int = 0,
    vocab_start: int = 0,
    max_differing: float = 0.01,
) -> int:
    """Tokens [R, g] equal row by row up to a first difference that is a near-tie of the
    reference's draw (from ``ref``'s logits); at most ``max_differing`` of the rows (and at
    least one allowed) may differ. Returns the number of rows that differ."""
    assert ours.tokens.shape == ref.tokens.shape
    mine, theirs = ours.tokens.cpu(), ref.tokens.cpu()
    rows = mine.shape[0]
    differing = 0
    for r in range(rows):
        diff = (mine[r] != theirs[r]).nonzero()
        if diff.numel() == 0:
            continue
        k = int(diff[0])
        logits = step_logits(ref, k)[r].cpu()
        a, b = int(mine[r, k]) - vocab_start, int(theirs[r, k]) - vocab_start
        assert is_draft_near_tie(
            logits,
            float(temperature[r]),
            a,
            b,
            seed=seed,
            offset=offset,
            row=r,
            position=first_position + k,
            vocab_start=vocab_start,
        ), f"row {r} position {k}: token {mine[r, k]} vs the reference's {theirs[r, k]} is no near-tie"
        differing += 1
    assert differing <= max(1, int(max_differing * rows)), f"{differing} of {rows} rows differ (near-ties)"
    return differing
