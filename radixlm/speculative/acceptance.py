"""Which draft tokens the target model accepts, and the token it adds after them.

Rows: request i owns `len(drafts[i]) + 1` consecutive logits rows; row j of request i is the
target's distribution for the position after the last token plus `drafts[i][:j]`. Every row is
processed exactly as the plain sampler would process it had the drafts before it been
generated (penalties over the output so far plus those drafts, logit bias, the min-new-tokens
ban, temperature, top-k / top-p / min-p), giving the target distribution p of that row.

Acceptance is rejection sampling against a point-mass draft (NGRAM and greedy draft models
propose one token, not a distribution): draft d is accepted with probability p(d); at the first
rejection the token is drawn from p with d removed and renormalised, and after all drafts are
accepted from p itself. Each emitted token is then distributed exactly as p. A greedy row's p is
one-hot at its argmax, so greedy acceptance is exact: d is kept iff it is the argmax.
"""

from __future__ import annotations

from typing import Any

import torch

from radixlm.sampling.sampler import apply_penalties_and_bias, filter_probs
from radixlm.sampling.sampling_batch import SamplingBatch
from radixlm.sampling.seeding import derive_step_seed


def accept_drafts(
    logits: torch.Tensor,
    reqs: list[Any],
    drafts: list[list[int]],
    vocab_size: int,
    eos_ids: set[int],
) -> list[list[int]]:
    """For each request, the tokens to append: its accepted drafts then one target token
    (between 1 and `len(drafts[i]) + 1` tokens). `logits` [R, V] are the verify rows (already
    masked by any grammar), R = sum(len(d) + 1)."""
    draft_col = _draft_column(drafts, logits.device)
    if all(_plain_greedy(r) for r in reqs):
        target = logits.argmax(dim=-1)
        accepted = target == draft_col
    else:
        target, accepted = _sampled_rows(logits, reqs, drafts, draft_col, vocab_size, eos_ids)
    return _walk(drafts, accepted.tolist(), target.tolist())


def _sampled_rows(
    logits: torch.Tensor,
    reqs: list[Any],
    drafts: list[list[int]],
    draft_col: torch.Tensor,
    vocab_size: int,
    eos_ids: set[int],
) -> tuple[torch.Tensor, torch.Tensor]:
    """(residual draw, accepted) per row, through the plain sampler's stages."""
    params, outputs, seeds = [], [], []
    for req, chain in zip(reqs, drafts):
        base = len(req.output_ids)
        for j in range(len(chain) + 1):
            params.append(req.params)
            outputs.append(req.output_ids + chain[:j])
            seeds.append(None if req.seed is None else derive_step_seed(req.seed, base + j))
    sb = SamplingBatch.build(params, outputs, vocab_size, eos_ids, logits.device, seeds)
    scores = apply_penalties_and_bias(logits.clone(), sb)
    probs = target_probs(scores, sb)
    u_accept, u_draw = _uniforms(sb, logits.device)
    return accept_rows(probs, draft_col, u_accept, u_draw)


def target_probs(scores: torch.Tensor, sb: SamplingBatch) -> torch.Tensor:
    """Unnormalised target distribution per row: one-hot argmax for greedy rows, else the
    temperature softmax with top-k / top-p / min-p applied (as `radixlm.sampling.sampler.sample`)."""
    greedy = torch.zeros_like(scores, dtype=torch.float32).scatter_(1, scores.argmax(dim=-1, keepdim=True), 1.0)
    if sb.all_greedy:
        return greedy
    probs = torch.softmax(scores.float() / sb.temperatures, dim=-1)
    if sb.needs_truncation:
        probs = filter_probs(probs, sb)
    return torch.where(sb.greedy_mask.unsqueeze(-1), greedy, probs)


def accept_rows(
    probs: torch.Tensor, draft_col: torch.Tensor, u_accept: torch.Tensor, u_draw: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(residual draw [R], accepted [R]) for unnormalised `probs` [R, V] and each row's draft
    (`draft_col`, -1 for a row without one). A row accepts its draft d iff u < p(d) / sum(p); the
    residual draw is from p with d zeroed (p itself for a row without a draft)."""
    total = probs.sum(dim=-1)
    has = draft_col >= 0
    safe = draft_col.clamp(min=0).unsqueeze(-1)
    p_draft = probs.gather(1, safe).squeeze(-1)
    accepted = has & (u_accept * total < p_draft)
    residual = probs.scatter(1, safe, torch.where(has.unsqueeze(-1), 0.0, p_draft.unsqueeze(-1)))
    cdf = residual.cumsum(dim=-1)
    point = (u_draw * cdf[:, -1]).unsqueeze(-1)
    ids = torch.searchsorted(cdf, point, right=True).squeeze(-1).clamp_(max=probs.shape[-1] - 1)
    picked = residual.gather(1, ids.unsqueeze(-1)).squeeze(-1)
    return torch.where(picked > 0, ids, probs.argmax(dim=-1)), accepted


def _uniforms(sb: SamplingBatch, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Two U[0, 1) per row (acceptance test, residual draw); seeded rows from their own generator."""
    u = torch.rand(sb.batch_size, 2, device=device)
    for row, gen in enumerate(sb.generators):
        if gen is not None:
            u[row] = torch.rand(2, generator=gen, device=device)
    return u[:, 0], u[:, 1]


def _draft_column(drafts: list[list[int]], device: torch.device) -> torch.Tensor:
    """Row r's draft token (the token after row r's position), -1 on each request's last row."""
    flat: list[int] = []
    for chain in drafts:
        flat += chain
        flat.append(-1)
    return torch.tensor(flat, dtype=torch.int64, device=device)


def _walk(drafts: list[list[int]], accepted: list[bool], target: list[int]) -> list[list[int]]:
    """Per request: drafts while accepted, then the target token of the first rejected row
    (or of the last row when every draft was accepted)."""
    out, row = [], 0
    for chain in drafts:
        tokens = []
        for d in chain:
            if not accepted[row]:
                break
            tokens.append(d)
            row += 1
        tokens.append(target[row])
        row += len(chain) - len(tokens) + 2
        out.append(tokens)
    return out


def _plain_greedy(req: Any) -> bool:
    """Greedy with nothing that changes the logits (min-new-tokens already met)."""
    return req.plain_greedy and len(req.output_ids) >= req.params.min_new_tokens
