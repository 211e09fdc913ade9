"""MPCL, SCL, class weights: against hand-computed values."""

import math

import pytest

torch = pytest.importorskip("torch")

from crab_rt.train.losses import class_weights, mpcl_loss, scl_loss, weighted_cross_entropy  # noqa: E402


def test_mpcl_single_positive_by_hand():
    # z1 = z3 = (1, 0), z2 = (0, 1); labels 0, 1, 0; tau = 0.5.
    # Anchor 1: candidates 2 (cos 0) and 3 (cos 1): q3 = e^2 / (1 + e^2); loss = log(1 + e^-2).
    # Anchor 3: the same. Anchor 2 has no positive and is left out of the mean.
    z = torch.tensor([[1.0, 0.0], [0.0, 1.0], [2.0, 0.0]])  # scale is removed by L2 normalisation
    labels = torch.tensor([0, 1, 0])
    expected = math.log(1 + math.exp(-2))
    assert mpcl_loss(z, labels, temperature=0.5).item() == pytest.approx(expected, rel=1e-6)


def test_mpcl_two_positives_by_hand():
    # Four unit vectors at angles 0, 90, 0, 180 degrees; labels 0, 1, 0, 0; tau = 1.
    z = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [-1.0, 0.0]])
    labels = torch.tensor([0, 1, 0, 0])
    e = math.exp
    # anchor 0: candidates 1 (0), 2 (1), 3 (-1); positives 2, 3 with c = 1/2 each.
    den0 = e(0) + e(1) + e(-1)
    l0 = -0.5 * (math.log(e(1) / den0) + math.log(e(-1) / den0))
    # anchor 2 is symmetric to anchor 0.
    # anchor 3: candidates 0 (-1), 1 (0), 2 (-1); positives 0, 2.
    den3 = e(-1) + e(0) + e(-1)
    l3 = -0.5 * (math.log(e(-1) / den3) * 2)
    expected = (l0 + l0 + l3) / 3  # anchor 1 has no positive
    assert mpcl_loss(z, labels, temperature=1.0).item() == pytest.approx(expected, rel=1e-6)


def test_mpcl_no_positive_zero_counts_lone_anchors_as_zero():
    # The batch above: 4 anchors, anchor 1 (the only label-1 sample) has no positive.
    z = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [-1.0, 0.0]])
    labels = torch.tensor([0, 1, 0, 0])
    e = math.exp
    den0 = e(0) + e(1) + e(-1)
    l0 = -0.5 * (math.log(e(1) / den0) + math.log(e(-1) / den0))
    l3 = -math.log(e(-1) / (e(-1) + e(0) + e(-1)))
    exclude = mpcl_loss(z, labels, temperature=1.0, no_positive="exclude")
    zero = mpcl_loss(z, labels, temperature=1.0, no_positive="zero")
    assert exclude.item() == pytest.approx((l0 + l0 + l3) / 3, rel=1e-6)
    assert zero.item() == pytest.approx((l0 + l0 + 0.0 + l3) / 4, rel=1e-6)
    assert zero.item() == pytest.approx(exclude.item() * 3 / 4, rel=1e-6)
    assert mpcl_loss(z, labels, temperature=1.0).item() == exclude.item()  # "exclude" is the default
    # Every anchor with a positive: the two agree.
    full = torch.tensor([0, 0, 1, 1])
    assert mpcl_loss(z, full, no_positive="zero").item() == pytest.approx(mpcl_loss(z, full).item(), rel=1e-6)
    # No anchor with a positive: zero either way, with a gradient.
    lone = torch.randn(3, 4, requires_grad=True)
    loss = mpcl_loss(lone, torch.tensor([0, 1, 2]), no_positive="zero")
    loss.backward()
    assert loss.item() == 0.0 and torch.count_nonzero(lone.grad) == 0
    # SCL passes the choice on.
    assert scl_loss(z, labels, no_positive="zero").item() == pytest.approx(
        scl_loss(z, labels).item() * 3 / 4, rel=1e-6)
    with pytest.raises(ValueError, match="no_positive must be one of exclude, zero, got 'drop'"):
        mpcl_loss(z, labels, no_positive="drop")


def test_mpcl_anchor_is_not_its_own_candidate():
    # Two identical samples of one class: q over the single other candidate is 1, loss 0.
    z = torch.tensor([[0.3, 0.4], [0.3, 0.4]])
    assert mpcl_loss(z, torch.tensor([2, 2])).item() == pytest.approx(0.0, abs=1e-7)


def test_mpcl_no_positive_is_zero_with_grad():
    z = torch.randn(4, 8, requires_grad=True)
    loss = mpcl_loss(z, torch.tensor([0, 1, 2, 3]))
    assert loss.item() == 0.0
    loss.backward()
    assert z.grad is not None and torch.count_nonzero(z.grad) == 0


def test_mpcl_single_sample_and_shape_errors():
    z = torch.randn(1, 8, requires_grad=True)
    assert mpcl_loss(z, torch.tensor([0])).item() == 0.0
    with pytest.raises(ValueError, match="entries for 3 embeddings"):
        mpcl_loss(torch.randn(3, 4), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match=r"\[N, D\]"):
        mpcl_loss(torch.randn(3), torch.tensor([0, 1, 2]))


def test_mpcl_gradient_pulls_positives_together():
    z = torch.tensor([[1.0, 0.2], [0.2, 1.0], [0.9, -0.3]], requires_grad=True)
    labels = torch.tensor([0, 1, 0])
    before = torch.nn.functional.cosine_similarity(z[0], z[2], dim=0).item()
    opt = torch.optim.SGD([z], lr=0.1)
    for _ in range(20):
        opt.zero_grad()
        mpcl_loss(z, labels).backward()
        opt.step()
    after = torch.nn.functional.cosine_similarity(z[0], z[2], dim=0).item()
    assert after > before


def test_scl_is_scaled_mpcl_at_its_temperature():
    z = torch.randn(6, 5)
    labels = torch.tensor([0, 0, 1, 1, 2, 0])
    expected = mpcl_loss(z, labels, temperature=0.07) * (0.07 / 0.07)
    assert scl_loss(z, labels).item() == pytest.approx(expected.item(), rel=1e-6)
    assert scl_loss(z, labels, temperature=0.1, base_temperature=0.07).item() == pytest.approx(
        mpcl_loss(z, labels, 0.1).item() * 0.1 / 0.07, rel=1e-6)


def test_class_weights_inverse_frequency():
    w = class_weights([0, 0, 0, 1, 2, 2], 3)
    assert w.tolist() == pytest.approx([6 / 3, 6 / 1, 6 / 2])
    with pytest.raises(ValueError, match=r"class id\(s\) \[1\] have no training samples"):
        class_weights([0, 2, 2], 3)


def test_weighted_cross_entropy_matches_definition():
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    labels = torch.tensor([0, 1, 1])
    w = torch.tensor([1.0, 3.0])
    nll = -torch.log_softmax(logits, 1)[torch.arange(3), labels]
    expected = (w[labels] * nll).sum() / w[labels].sum()
    assert weighted_cross_entropy(logits, labels, w).item() == pytest.approx(expected.item(), rel=1e-6)
    # A constant factor on all weights changes nothing (mean-reduced weighted CE).
    assert weighted_cross_entropy(logits, labels, w * 7).item() == pytest.approx(expected.item(), rel=1e-6)
