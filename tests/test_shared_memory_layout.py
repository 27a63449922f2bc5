"""The bank claims of markov_block's mma.sync tile (csrc/include/dspark_sgl/markov_tile.cuh), checked
on the host: every ldmatrix phase of ``warp_bias_mma`` reads 8 rows of 16 bytes from 8 distinct
16-byte bank groups (shared memory has 32 banks of 4 bytes: 8 groups of 16 bytes), for A (the E
rows) and for B (the skewed W2 rows), at every rank the kernel takes; and the linear W2 rows the
skew replaced would not. The formulas are the header's (checked below), replayed here."""

from __future__ import annotations

from pathlib import Path

import pytest

HEADER = Path(__file__).resolve().parent.parent / "csrc" / "include" / "dspark_sgl" / "markov_tile.cuh"
WARP_COLUMNS = 128  # kMmaWarpColumns
N_TILES = WARP_COLUMNS // 8  # kMmaTiles
BANK_GROUPS = 8  # 128 bytes of banks, 16 bytes a group
ELEMENT = 2  # bytes of a 16-bit weight


def ld_of(rank: int) -> int:
    return (rank + 15) // 16 * 16 + 8


def w2_row(c: int, ld: int, skewed: bool = True) -> int:
    return c * ld + (16 * (c >> 5) if skewed else 0)


def test_the_replayed_formulas_are_the_headers():
    text = HEADER.read_text()
    assert "ld(k_padded + 8)" in text and "k_padded((r + 15) / 16 * 16)" in text
    assert "int w2_row(int c) const { return c * ld + 16 * (c >> 5); }" in text
    assert "a_at = shared_address(e + (p + 8 * (m & 1)) * layout.ld + 8 * (m >> 1));" in text
    assert (
        "b_first = w2s + layout.w2_row(col0 + 32 * (p >> 1) + 2 * (m >> 1) + (p & 1)) + 8 * (m & 1);" in text
    )
    assert "b_at[jj] = shared_address(b_first + jj * 4 * layout.ld);" in text
    assert f"constexpr int kMmaWarpColumns = {WARP_COLUMNS};" in text


def _b_row_bytes(p: int, m: int, jj: int, k0: int, col0: int, ld: int, skewed: bool = True) -> int:
    """Byte offset of the row lane (p, m) gives ldmatrix for B's pair jj at k step k0."""
    first = w2_row(col0 + 32 * (p >> 1) + 2 * (m >> 1) + (p & 1), ld, skewed) + 8 * (m & 1)
    return ELEMENT * (first + jj * 4 * ld + 16 * k0)


def _distinct_groups(addresses: list[int]) -> bool:
    assert all(a % 16 == 0 for a in addresses)  # ldmatrix rows are 16-byte aligned
    return len({(a // 16) % BANK_GROUPS for a in addresses}) == len(addresses)


RANKS = (8, 16, 64, 128, 200, 256, 512)


@pytest.mark.parametrize("rank", RANKS)
def test_every_ldmatrix_phase_of_b_reads_eight_distinct_bank_groups(rank):
    ld = ld_of(rank)
    for col0 in (0, WARP_COLUMNS):  # the two warp segments of a 256-wide tile
        for jj in range(N_TILES // 2):
            for k0 in range(ld_of(rank) // 16):
                for m in range(4):
                    rows = [_b_row_bytes(p, m, jj, k0, col0, ld) for p in range(8)]
                    assert _distinct_groups(rows), (rank, col0, jj, k0, m)


@pytest.mark.parametrize("rank", RANKS)
def test_the_pair_step_of_4_ld_stays_inside_a_skew_block(rank):
    """b_at[jj] = b_first + 4 jj ld assumes columns c and c + 4 jj share c >> 5."""
    ld = ld_of(rank)
    for col0 in (0, WARP_COLUMNS):
        for p in range(8):
            for m in range(4):
                c = col0 + 32 * (p >> 1) + 2 * (m >> 1) + (p & 1)
                for jj in range(N_TILES // 2):
                    assert w2_row(c + 4 * jj, ld) == w2_row(c, ld) + 4 * jj * ld


@pytest.mark.parametrize("rank", RANKS)
def test_every_ldmatrix_phase_of_a_reads_eight_distinct_bank_groups(rank):
    ld = ld_of(rank)
    for k0 in range(ld // 16):
        for m in range(4):
            rows = [ELEMENT * ((p + 8 * (m & 1)) * ld + 8 * (m >> 1) + 16 * k0) for p in range(8)]
            assert _distinct_groups(rows), (rank, k0, m)


def test_linear_w2_rows_would_conflict():
    """What the skew is for: without it the rows 32 columns apart share bank groups."""
    ld = ld_of(256)
    rows = [_b_row_bytes(p, 0, 0, 0, 0, ld, skewed=False) for p in range(8)]
    assert not _distinct_groups(rows)
    assert len({(a // 16) % BANK_GROUPS for a in rows}) == 2  # 4-way conflicts
