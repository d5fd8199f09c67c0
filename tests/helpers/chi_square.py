"""Pearson chi-square p-values for the statistical tests (torch only, no scipy)."""

from __future__ import annotations

import torch


def chi_square_p(observed: torch.Tensor, expected: torch.Tensor) -> float:
    """p-value of Pearson's chi-square for counts against expected counts (cells with expectation
    below 5 are pooled into one)."""
    keep = expected >= 5
    obs = torch.cat([observed[keep], observed[~keep].sum().view(1)]).double()
    exp = torch.cat([expected[keep], expected[~keep].sum().view(1)]).double()
    if exp[-1] == 0:
        obs, exp = obs[:-1], exp[:-1]
    stat = ((obs - exp) ** 2 / exp).sum()
    df = obs.numel() - 1
    return float(torch.special.gammaincc(torch.tensor(df / 2, dtype=torch.float64), stat / 2))


def two_sample_p(a: torch.Tensor, b: torch.Tensor, cells: int) -> float:
    """p-value that integer samples `a` and `b` (values < `cells`) come from one distribution
    (chi-square test of homogeneity on their 2 x cells table, empty cells dropped)."""
    ca, cb = torch.bincount(a, minlength=cells).double(), torch.bincount(b, minlength=cells).double()
    keep = (ca + cb) > 0
    table = torch.stack([ca[keep], cb[keep]])
    expected = table.sum(1, keepdim=True) * table.sum(0, keepdim=True) / table.sum()
    stat = ((table - expected) ** 2 / expected).sum()
    df = keep.sum() - 1
    return float(torch.special.gammaincc(df.double() / 2, stat / 2))
