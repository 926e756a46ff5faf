"""Losses of the image-level classifier (paper §2.2): BCE + Focal Tversky on K sigmoid logits.

For logits ``z_bk`` (shape ``(B, K)``: one per foreground class, K = 1 for a binary dataset),
probabilities ``p_bk = sigmoid(z_bk)`` and multi-label 0/1 targets ``t_bk`` (shape ``(B, K)``)::

    BCE = mean_bk [ -t_bk log p_bk - (1 - t_bk) log(1 - p_bk) ]       (torch BCEWithLogitsLoss)
    TP_k = sum_b p_bk t_bk,   FP_k = sum_b p_bk (1 - t_bk),   FN_k = sum_b (1 - p_bk) t_bk
    TI_k = TP_k / (TP_k + alpha FP_k + beta FN_k)
    FTL = mean_k (1 - TI_k) ** gamma                                  (0 for a class without
                                                                       positives in the batch)
    loss = bce_weight * BCE + tversky_weight * FTL

Per class, the Focal Tversky term is the binary one below; the mean over the K classes counts
every class, as smp's ``multilabel`` mode does (for K = 1 it is the binary term itself).

The Focal Tversky term is segmentation-models-pytorch's ``TverskyLoss(mode="binary", alpha,
beta, gamma, from_logits=True)``, whose semantics were checked against its source (smp 0.6.0):

* binary mode sums TP/FP/FN over the batch AND the spatial dims (``dims=(0, 2)``), so for
  ``(B, 1)`` image-level logits the Tversky index is ONE batch-level index over the B images,
  as written above (a per-image index of a single probability would be degenerate);
* ``alpha`` weights false positives and ``beta`` false negatives (Salehi et al. 2017). Abraham &
  Khan's Focal Tversky paper writes ``TI = TP / (TP + alpha FN + beta FP)``, i.e. the roles of
  alpha and beta swapped: the paper's "alpha 0.7, beta 0.3" is passed here as given;
* gamma is applied as ``(1 - TI) ** gamma`` (after the mean over the one class); Abraham & Khan
  define ``(1 - TI) ** (1 / gamma)``, so their recommended ``gamma = 4/3`` corresponds to
  ``gamma=0.75`` here. The paper's ``gamma = 1.33`` is passed as given;
* TP is computed as ``(sum p + sum t - sum |p - t|) / 2`` = ``sum min(p, t)``, equal to
  ``sum p t`` for hard 0/1 targets (not for soft/smoothed targets);
* a batch WITHOUT any positive target contributes 0 (no gradient) from the Tversky term.

smp's ``TverskyLoss`` is therefore used with ``gamma=1`` (giving ``1 - TI``, masked as above) and
the power is applied here, as ``(1 - TI) ** gamma`` where ``1 - TI > 0`` and 0 where it is 0. The
value is smp's; the gradient differs only where ``1 - TI = 0``: smp's ``0 ** gamma`` has an
infinite derivative for ``gamma < 1`` and gives NaN gradients on every batch without positives
(checked with smp 0.6.0), here it is 0.
"""

from __future__ import annotations

import segmentation_models_pytorch as smp
import torch
from torch import nn

__all__ = ["ClassificationLoss"]


class ClassificationLoss(nn.Module):
    """``bce_weight * BCEWithLogits + tversky_weight * FocalTversky`` on ``(B, K)`` logits.

    Defaults are the paper's (alpha 0.7, beta 0.3, gamma 1.33, both weights 1). ``pos_weight``
    is passed to ``BCEWithLogitsLoss`` (``None``: unweighted).
    """

    def __init__(
        self,
        alpha: float = 0.7,
        beta: float = 0.3,
        gamma: float = 1.33,
        bce_weight: float = 1.0,
        tversky_weight: float = 1.0,
        pos_weight: float | None = None,
    ) -> None:
        super().__init__()
        if gamma <= 0:
            raise ValueError(f"gamma must be > 0, got {gamma}")
        self.bce_weight = float(bce_weight)
        self.tversky_weight = float(tversky_weight)
        self.bce = nn.BCEWithLogitsLoss(
            pos_weight=None if pos_weight is None else torch.tensor([float(pos_weight)])
        )
        self.gamma = float(gamma)
        self.tversky_index_loss = smp.losses.TverskyLoss(  # 1 - TI (0 without positives)
            mode="binary", alpha=alpha, beta=beta, gamma=1.0, from_logits=True
        )

    @staticmethod
    def _check(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if logits.ndim != 2 or logits.shape[1] < 1:
            raise ValueError(f"logits must have shape (B, K), got {tuple(logits.shape)}")
        if targets.shape != logits.shape:
            raise ValueError(
                f"targets shape {tuple(targets.shape)} != logits shape {tuple(logits.shape)}"
            )
        return logits, targets.to(logits.dtype)

    def terms(self, logits: torch.Tensor, targets: torch.Tensor) -> dict[str, torch.Tensor]:
        """The unweighted ``"bce"`` and ``"tversky"`` terms and the weighted ``"total"``."""
        logits, targets = self._check(logits, targets)
        bce = self.bce(logits, targets)
        per_class = []
        for k in range(logits.shape[1]):
            one_minus_ti = self.tversky_index_loss(logits[:, k : k + 1], targets[:, k : k + 1])
            per_class.append(
                torch.where(
                    one_minus_ti > 0,
                    one_minus_ti.clamp_min(1e-12) ** self.gamma,
                    torch.zeros_like(one_minus_ti),
                )
            )
        tversky = torch.stack(per_class).mean()
        total = self.bce_weight * bce + self.tversky_weight * tversky
        return {"bce": bce, "tversky": tversky, "total": total}

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return self.terms(logits, targets)["total"]
