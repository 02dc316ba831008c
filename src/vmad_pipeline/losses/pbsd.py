"""DSSL box distributions and losses (method.md section 5; VMAD Deng et al. Eq. 12-18).

``normal_log_prob`` turns box-to-bank similarities into a two-way {normal, abnormal}
distribution per box; ``pbsd_loss`` distils the visual (teacher) distribution into the LLM
side (student), the patch-similarity distillation idea of PBSD ("[40]" in the VMAD paper);
``patch_bce_loss`` is the auxiliary box-label loss that trains the visual projection head.
Pure functions, no state.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def normal_log_prob(
    queries: torch.Tensor,
    bank: torch.Tensor,
    bank_class: torch.Tensor,
    bank_state: torch.Tensor,
    query_class: torch.Tensor,
    tau: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Log p(normal | box) and log p(abnormal | box) against the bank entries of the box's class.

    p(normal | i) = sum_{k: class_k = c, state_k = 0} exp(q_i.b_k / tau)
                    / sum_{k: class_k = c} exp(q_i.b_k / tau)       (VMAD Eq. 12 / 17)

    queries: B x n x D (L2-normalised); bank: M x D (L2-normalised); bank_class, bank_state: M
    (long; state 0 = normal image, 1 = abnormal image); query_class: B (long, -1 = unknown).
    Returns log_p_normal, log_p_abnormal (B x n) and valid (B, bool): the class is known and has
    at least one normal and one abnormal bank entry. Both log-probs are 0 where not valid.
    """
    logits = queries @ bank.transpose(0, 1) / tau  # (B, n, M)
    same = (bank_class[None, :] == query_class[:, None]) & (query_class[:, None] >= 0)  # (B, M)
    normal = same & (bank_state[None, :] == 0)  # (B, M)
    abnormal = same & (bank_state[None, :] == 1)  # (B, M)
    valid = normal.any(1) & abnormal.any(1)  # (B,)
    if bank.shape[0] == 0:
        zeros = queries.sum(-1) * 0  # (B, n), keeps the graph
        return zeros, zeros, valid
    # Invalid rows read the whole bank so no logsumexp is over an empty set (no NaN gradients).
    loose = ~valid[:, None]  # (B, 1)

    def lse(mask: torch.Tensor) -> torch.Tensor:
        return logits.masked_fill(~(mask | loose)[:, None, :], float("-inf")).logsumexp(-1)

    lse_all = lse(same)  # (B, n)
    keep = valid[:, None]  # (B, 1)
    log_p_normal = torch.where(keep, lse(normal) - lse_all, 0.0)  # (B, n)
    log_p_abnormal = torch.where(keep, lse(abnormal) - lse_all, 0.0)  # (B, n)
    return log_p_normal, log_p_abnormal, valid


def _masked_box_mean(per_box: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Mean of per_box (B x n) over the boxes of valid images (B); 0 with a graph if none."""
    keep = valid[:, None].expand_as(per_box)  # (B, n)
    total = torch.where(keep, per_box, 0.0).sum()
    return total / keep.sum().clamp(min=1)


def pbsd_loss(
    log_pv_normal: torch.Tensor,
    log_pv_abnormal: torch.Tensor,
    log_pt_normal: torch.Tensor,
    log_pt_abnormal: torch.Tensor,
    valid: torch.Tensor,
) -> torch.Tensor:
    """KL(p_v.detach() || p_t) over {normal, abnormal} per box, mean over boxes of valid images.

    All log-probs B x n; valid B (bool). The visual side is the teacher: no gradient reaches it.
    """
    log_pv = torch.stack([log_pv_normal, log_pv_abnormal], -1).detach()  # (B, n, 2)
    log_pt = torch.stack([log_pt_normal, log_pt_abnormal], -1)  # (B, n, 2)
    kl = (log_pv.exp() * (log_pv - log_pt)).sum(-1)  # (B, n)
    return _masked_box_mean(kl, valid)


def patch_bce_loss(
    log_p_normal: torch.Tensor,
    log_p_abnormal: torch.Tensor,
    box_abnormal: torch.Tensor,
    valid: torch.Tensor,
) -> torch.Tensor:
    """BCE of the box label with logit log p(abnormal) - log p(normal); mean over valid images' boxes.

    log-probs B x n; box_abnormal B x n (bool target); valid B (bool).
    """
    logit = log_p_abnormal - log_p_normal  # (B, n)
    bce = F.binary_cross_entropy_with_logits(
        logit, box_abnormal.to(logit.dtype), reduction="none"
    )  # (B, n)
    return _masked_box_mean(bce, valid)
