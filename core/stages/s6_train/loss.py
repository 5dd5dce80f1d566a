"""The CR-FIQA loss (fdbtrs/CR-FIQA `losses.CR_FIQA_LOSS` and `train_cr_fiqa.py`).

Identity head: ArcFace. Weight W (embedding x classes) ~ N(0, 0.01); embeddings and W's
columns L2-normalised; cos = clamp(e . w, -1, 1); the logit of the true class is
s * cos(acos(cos) + m), every other logit s * cos.
Certainty ratio, without gradient, from the same cosines: ccs = the cosine to the sample's
own class centre; nnccs = the largest cosine to any other class centre (the code sets the
own class to -1e-12 before the max, so nnccs is never below -1e-12); target = ccs / nnccs.
Loss = CE(logits, label) + 10 * SmoothL1(beta 0.5)(target, qs).

`cr_offset` (0 by default, the published code) is added to nnccs before the division: with
few identities nnccs can be close to 0 or negative and the ratio then loses its meaning;
an offset of 1 keeps the denominator in [0, 2].
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

OWN_CLASS_FILL = -1e-12   # what the code writes over the own class before taking nnccs


class MarginHead(nn.Module):
    """The ArcFace margin head of CR-FIQA; its one parameter is named `kernel`, as in
    CR-FIQA's header.pth."""

    def __init__(self, in_features: int, classes: int, scale: float = 64.0, margin: float = 0.5,
                 generator: torch.Generator | None = None):
        super().__init__()
        self.scale, self.margin = scale, margin
        self.kernel = nn.Parameter(torch.empty(in_features, classes))
        with torch.no_grad():
            self.kernel.normal_(0.0, 0.01, generator=generator)

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor):
        """-> (logits [N, C], ccs [N], nnccs [N]); ccs and nnccs carry no gradient."""
        embeddings = embeddings / torch.norm(embeddings, 2, 1, True)
        kernel = self.kernel / torch.norm(self.kernel, 2, 0, True)
        cos = torch.mm(embeddings, kernel).clamp(-1, 1)
        rows = torch.arange(cos.shape[0], device=cos.device)
        with torch.no_grad():
            ccs = cos[rows, labels].detach().clone()
            others = cos.detach().clone()
            others[rows, labels] = OWN_CLASS_FILL
            nnccs = others.max(dim=1).values
        margin = torch.zeros_like(cos)
        margin[rows, labels] = self.margin
        logits = torch.cos(torch.acos(cos) + margin) * self.scale
        return logits, ccs, nnccs


def certainty_ratio(ccs: torch.Tensor, nnccs: torch.Tensor, offset: float = 0.0) -> torch.Tensor:
    return ccs / (nnccs + offset)


def loss_sums(logits, labels, quality, target, beta: float):
    """(sum of the cross-entropies [scalar], sum of the SmoothL1 terms over the samples whose
    target is not NaN [scalar], how many those are): a step divides them by the global batch
    and the global number of targets, so that any split over processes and micro-batches
    gives the gradient of the means over the whole batch."""
    ce = F.cross_entropy(logits.float(), labels, reduction="sum")
    quality = quality.float().reshape(-1)
    known = ~torch.isnan(target)
    if known.any():
        smooth = F.smooth_l1_loss(quality[known], target[known].to(quality.dtype), beta=beta, reduction="sum")
    else:
        smooth = quality.sum() * 0.0   # keeps the head in the graph (DDP expects every parameter used)
    return ce, smooth, int(known.sum())
