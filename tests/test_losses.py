import math

import pytest
import segmentation_models_pytorch as smp
import torch

from histo_wsss.losses import ClassificationLoss


def _sigmoid(z: float) -> float:
    return 1.0 / (1.0 + math.exp(-z))


def _hand_terms(logits, targets, alpha=0.7, beta=0.3, gamma=1.33):
    """BCE and Focal Tversky from the formulas, in plain floats."""
    p = [_sigmoid(z) for z in logits]
    bce = sum(
        -(t * math.log(q) + (1 - t) * math.log(1 - q)) for q, t in zip(p, targets, strict=True)
    ) / len(p)
    tp = sum(q * t for q, t in zip(p, targets, strict=True))
    fp = sum(q * (1 - t) for q, t in zip(p, targets, strict=True))
    fn = sum((1 - q) * t for q, t in zip(p, targets, strict=True))
    ti = tp / (tp + alpha * fp + beta * fn)
    return bce, (1 - ti) ** gamma


def _col(values) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32).reshape(-1, 1)


def test_hand_computed_example():
    logits, targets = [2.0, -1.0, 0.5], [1, 0, 1]
    # p = (0.880797, 0.268941, 0.622459); TP = 1.503256, FP = 0.268941, FN = 0.496744
    # TI = 1.503256 / (1.503256 + 0.7 * 0.268941 + 0.3 * 0.496744) = 0.816748
    bce, ftl = _hand_terms(logits, targets)
    assert bce == pytest.approx(0.3047556, abs=1e-6)
    assert ftl == pytest.approx(0.183252**1.33, abs=1e-5)
    terms = ClassificationLoss().terms(_col(logits), _col(targets))
    assert terms["bce"].item() == pytest.approx(bce, abs=1e-5)
    assert terms["tversky"].item() == pytest.approx(ftl, abs=1e-5)
    assert terms["total"].item() == pytest.approx(bce + ftl, abs=1e-5)


@pytest.mark.parametrize(
    ("logits", "targets", "alpha", "beta", "gamma", "wb", "wt"),
    [
        ([2.0, -1.0, 0.5], [1, 0, 1], 0.7, 0.3, 1.33, 0.5, 2.0),
        # alpha and beta swapped: alpha must weight the false positives
        ([2.0, -1.0, 0.5], [1, 0, 1], 0.3, 0.7, 1.33, 1.0, 1.0),
        ([0.3, 1.7, -2.2, -0.4, 0.9], [0, 1, 0, 1, 1], 0.7, 0.3, 1.0, 1.0, 1.0),
        ([0.3, 1.7, -2.2, -0.4, 0.9], [0, 1, 0, 1, 1], 0.5, 0.5, 0.75, 1.0, 3.0),
    ],
)
def test_matches_formulas(logits, targets, alpha, beta, gamma, wb, wt):
    bce, ftl = _hand_terms(logits, targets, alpha, beta, gamma)
    loss = ClassificationLoss(alpha, beta, gamma, bce_weight=wb, tversky_weight=wt)
    assert loss(_col(logits), _col(targets)).item() == pytest.approx(wb * bce + wt * ftl, abs=1e-5)


def test_value_equals_smp_focal_tversky():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(16, 1, generator=gen) * 2
    targets = (torch.rand(16, 1, generator=gen) > 0.6).float()
    ref = smp.losses.TverskyLoss("binary", alpha=0.7, beta=0.3, gamma=1.33, from_logits=True)
    got = ClassificationLoss().terms(logits, targets)["tversky"]
    assert got.item() == pytest.approx(ref(logits, targets).item(), abs=1e-6)


@pytest.mark.parametrize("gamma", [0.75, 1.0, 1.33])
def test_batch_without_positives_has_finite_gradient(gamma):
    logits = torch.tensor([[2.0], [-1.0], [0.1]], requires_grad=True)
    targets = torch.zeros(3, 1)
    terms = ClassificationLoss(gamma=gamma).terms(logits, targets)
    assert terms["tversky"].item() == 0.0
    bce = sum(math.log1p(math.exp(z)) for z in (2.0, -1.0, 0.1)) / 3  # -log(1 - p)
    assert terms["total"].item() == pytest.approx(bce, abs=1e-5)
    terms["total"].backward()
    assert torch.isfinite(logits.grad).all()
    expected = torch.sigmoid(logits.detach()) / 3  # d mean BCE / dz = (p - t) / B
    assert torch.allclose(logits.grad, expected, atol=1e-6)


def test_gradient_matches_finite_differences():
    logits = torch.tensor([[2.0], [-1.0], [0.5], [0.2]], dtype=torch.float64, requires_grad=True)
    targets = torch.tensor([[1.0], [0.0], [1.0], [0.0]], dtype=torch.float64)
    loss = ClassificationLoss().double()
    assert torch.autograd.gradcheck(lambda z: loss(z, targets), (logits,))


def test_pos_weight_scales_positive_bce_terms():
    logits, targets = [2.0, -1.0, 0.5], [1, 0, 1]
    p = [_sigmoid(z) for z in logits]
    bce = (-3 * math.log(p[0]) - math.log(1 - p[1]) - 3 * math.log(p[2])) / 3
    terms = ClassificationLoss(pos_weight=3.0).terms(_col(logits), _col(targets))
    assert terms["bce"].item() == pytest.approx(bce, abs=1e-5)


@pytest.mark.parametrize(
    ("logit_shape", "target_shape"),
    [((3,), (3,)), ((3, 2), (3, 3)), ((3, 1), (3,)), ((3, 0), (3, 0))],
)
def test_rejects_bad_shapes(logit_shape, target_shape):
    with pytest.raises(ValueError):
        ClassificationLoss()(torch.zeros(logit_shape), torch.zeros(target_shape))


def test_k_classes_take_the_mean_of_their_focal_tversky_terms_and_one_bce():
    """Multi-label: BCE over every logit; the Focal Tversky term of each class as the binary
    loss gives it on that class's column alone (0 for a class without positives), averaged."""
    torch.manual_seed(0)
    logits = torch.randn(6, 3, requires_grad=True)
    targets = torch.tensor(
        [[1, 0, 0], [1, 1, 0], [0, 1, 0], [0, 0, 0], [1, 0, 0], [0, 1, 0]], dtype=torch.float32
    )
    loss = ClassificationLoss(alpha=0.7, beta=0.3, gamma=1.33)
    terms = loss.terms(logits, targets)
    per_class = [loss.terms(logits[:, k : k + 1], targets[:, k : k + 1]) for k in range(3)]
    assert per_class[2]["tversky"].item() == 0  # no positive of class 3 in the batch
    assert terms["tversky"].item() == pytest.approx(
        sum(t["tversky"].item() for t in per_class) / 3, rel=1e-6
    )
    bce = torch.nn.functional.binary_cross_entropy_with_logits(logits, targets)
    assert terms["bce"].item() == pytest.approx(bce.item(), rel=1e-6)
    terms["total"].backward()
    assert torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0
