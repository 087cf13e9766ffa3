"""DISTLoss and KDLoss against deliberately plain float64 formulas."""
import contextlib
import math

import pytest
import torch

from mmdist.losses import DISTLoss, KDLoss, dist_terms
from mmdist.losses.blocks import force_block_policy
from mmdist.losses.dist import DEFAULT_FLOORS, force_path
from mmdist.losses.dist_spec import dist_spec_loss


# ---------------------------------------------------------------- reference
def loop_dist(s,
              t,
              beta=1.,
              gamma=1.,
              tau=1.,
              act='softmax',
              w=None,
              floor=0.,
              eps=1e-8):
    """DIST on a (rows x classes) matrix in float64, row by row and column
    by column: the check of the specification (mmdist.losses.dist_spec)
    that is not the specification itself."""
    s, t = s.double(), t.double()
    if act == 'softmax':
        ys, yt = torch.softmax(s / tau, 1), torch.softmax(t / tau, 1)
    else:
        ys, yt = torch.sigmoid(s / tau), torch.sigmoid(t / tau)
    rows, cols = ys.shape
    w_rows = torch.ones(rows, dtype=torch.float64) if w is None else w.double()

    def rho(u, v, wt):
        u = u - (wt * u).sum() / wt.sum()
        v = v - (wt * v).sum() / wt.sum()
        norm_u = (wt * u**2).sum().sqrt()
        norm_v = (wt * v**2).sum().sqrt()
        held = max(norm_u, max(floor * norm_v, eps))
        return (wt * u * v).sum() / (held * max(norm_v, eps))

    ones = torch.ones(cols, dtype=torch.float64)
    inter = sum(w_rows[i] * (1 - rho(ys[i], yt[i], ones))
                for i in range(rows)) / w_rows.sum()
    intra = sum(1 - rho(ys[:, j], yt[:, j], w_rows)
                for j in range(cols)) / cols
    return tau**2 * (beta * inter + gamma * intra)


def plain_kd(s, t, tau=1., act='softmax'):
    s, t = s.double() / tau, t.double() / tau
    if act == 'softmax':
        ps, pt = torch.softmax(s, 1), torch.softmax(t, 1)
        per_row = (pt * (pt.log() - ps.log())).sum(1)
    else:
        ps, pt = torch.sigmoid(s), torch.sigmoid(t)
        per_row = (pt * (pt.log() - ps.log()) + (1 - pt) *
                   ((1 - pt).log() - (1 - ps).log())).sum(1)
    return tau**2 * per_row.mean()


def dense_rows(x, num_classes):
    """(N, A*C, H, W) -> one row per (image, anchor, position), by loops."""
    n, k, h, w = x.shape
    rows = []
    for i in range(n):
        for a in range(k // num_classes):
            for y in range(h):
                for z in range(w):
                    rows.append(x[i, a * num_classes:(a + 1) * num_classes, y,
                                  z])
    return torch.stack(rows)


def close(a, b, tol=1e-5):
    return abs(float(a) - float(b)) <= tol * max(1.0, abs(float(b)))


# ---------------------------------------------------------------- DISTLoss
def spec(s, t, w=None, activation='softmax', floor=None, **kwargs):
    """The specification with DISTLoss's arguments and default floor."""
    floor = DEFAULT_FLOORS[activation] if floor is None else floor
    return dist_spec_loss(s, t, w, activation, floor=floor, **kwargs)


def grads(s, t, w=None, **kwargs):
    """(mmdist gradient, float64 gradient of the specification)."""
    s = s.detach().requires_grad_()
    DISTLoss(**kwargs)(s, t, weight=w).backward()
    s64 = s.detach().double().requires_grad_()
    spec(s64, t, w, **kwargs).backward()
    return s.grad, s64.grad


def rel_err(a, b):
    return float((a.double() - b).norm() / b.norm())


PATHS = ('fused', 'cpu', 'gpu')


@contextlib.contextmanager
def on_path(name):
    """DISTLoss's one-pass path (``'fused'``), or its streamed path under
    the ``'cpu'`` or ``'gpu'`` block policy (see mmdist.losses.blocks)."""
    if name == 'fused':
        with force_path('fused'):
            yield
        return
    with force_path('streamed'), force_block_policy(name):
        yield


@pytest.fixture(params=PATHS)
def policy(request):
    """Run a test on each path of DISTLoss."""
    with on_path(request.param):
        yield request.param


def test_dist_2d_softmax_matches_formula():
    torch.manual_seed(0)
    s, t = torch.randn(16, 10), torch.randn(16, 10) * 3
    assert close(DISTLoss()(s, t), loop_dist(s, t))


def test_dist_classification_tau4_beta_gamma2():
    torch.manual_seed(1)
    s, t = torch.randn(32, 100), torch.randn(32, 100) * 2
    loss = DISTLoss(beta=2, gamma=2, tau=4)(s, t)
    assert close(loss, loop_dist(s, t, beta=2, gamma=2, tau=4))


def test_dist_segmentation_4d_equals_pixel_matrix():
    torch.manual_seed(2)
    s, t = torch.randn(2, 19, 6, 7), torch.randn(2, 19, 6, 7)
    matrix_s = s.permute(0, 2, 3, 1).reshape(-1, 19)
    matrix_t = t.permute(0, 2, 3, 1).reshape(-1, 19)
    loss = DISTLoss()(s, t)
    assert close(loss, DISTLoss()(matrix_s, matrix_t))
    assert close(loss, loop_dist(matrix_s, matrix_t))


def test_dist_sigmoid_matches_formula():
    torch.manual_seed(3)
    s, t = torch.randn(20, 8), torch.randn(20, 8)
    loss = DISTLoss(activation='sigmoid')(s, t)
    assert close(loss, loop_dist(s, t, act='sigmoid'))


def test_dist_dense_num_classes_layout():
    torch.manual_seed(4)
    anchors, classes = 3, 5
    s = torch.randn(2, anchors * classes, 4, 3)
    t = torch.randn(2, anchors * classes, 4, 3)
    loss = DISTLoss(activation='sigmoid', num_classes=classes)(s, t)
    ref = loop_dist(
        dense_rows(s, classes), dense_rows(t, classes), act='sigmoid')
    assert close(loss, ref)
    # The authors' layout: all A*C channels of a position form one row.
    loss_k = DISTLoss(activation='sigmoid')(s, t)
    ref_k = loop_dist(
        dense_rows(s, anchors * classes),
        dense_rows(t, anchors * classes),
        act='sigmoid')
    assert close(loss_k, ref_k)
    assert not close(loss, loss_k)


def test_dist_weight_drops_rows_in_both_terms():
    torch.manual_seed(5)
    s, t = torch.randn(12, 6), torch.randn(12, 6)
    w = torch.tensor([1., 0.] * 6)
    loss = DISTLoss()(s, t, weight=w)
    assert close(loss, loop_dist(s[w > 0], t[w > 0]))
    # Fractional weights follow the weighted formula.
    wf = torch.rand(12)
    assert close(DISTLoss()(s, t, weight=wf), loop_dist(s, t, w=wf))


def test_dist_weight_per_pixel_for_dense_anchors():
    torch.manual_seed(6)
    s, t = torch.randn(2, 2 * 4, 3, 3), torch.randn(2, 2 * 4, 3, 3)
    pixel_w = (torch.rand(2, 3, 3) > 0.4).float()
    loss = DISTLoss(num_classes=4)(s, t, weight=pixel_w)
    row_w = pixel_w.unsqueeze(1).expand(2, 2, 3, 3).reshape(-1)
    ref = loop_dist(dense_rows(s, 4), dense_rows(t, 4), w=row_w)
    assert close(loss, ref)


def test_dist_parts_sum_to_loss():
    torch.manual_seed(7)
    s, t = torch.randn(8, 5), torch.randn(8, 5)
    loss, parts = DISTLoss(beta=2, gamma=3, tau=2)(s, t, return_parts=True)
    inter, intra = dist_terms(s, t, tau=2)
    assert close(parts['inter'], 4 * 2 * inter)
    assert close(parts['intra'], 4 * 3 * intra)
    assert close(loss, parts['inter'] + parts['intra'])


@pytest.mark.parametrize('act', ['softmax', 'sigmoid'])
def test_dist_gradcheck(act):
    torch.manual_seed(8)
    s = torch.randn(6, 4, 3, dtype=torch.float64, requires_grad=True)
    t = torch.randn(6, 4, 3, dtype=torch.float64)
    w = torch.rand(6, 3, dtype=torch.float64)
    fn = DISTLoss(beta=1.5, gamma=0.5, tau=2, activation=act)
    assert torch.autograd.gradcheck(lambda x: fn(x, t), (s, ))
    assert torch.autograd.gradcheck(lambda x: fn(x, t, weight=w), (s, ))


def test_dist_gradient_matches_plain_autograd():
    torch.manual_seed(9)
    s = torch.randn(10, 7, requires_grad=True)
    t = torch.randn(10, 7)
    DISTLoss(tau=2)(s, t).backward()
    s64 = s.detach().double().requires_grad_()
    loop_dist(s64, t, tau=2).backward()
    assert torch.allclose(s.grad.double(), s64.grad, rtol=1e-4, atol=1e-7)


def test_dist_teacher_gets_no_gradient():
    s = torch.randn(4, 3, requires_grad=True)
    t = torch.randn(4, 3, requires_grad=True)
    DISTLoss()(s, t).backward()
    assert s.grad is not None and t.grad is None


def test_dist_half_inputs_computed_in_float32():
    torch.manual_seed(10)
    s = torch.randn(16, 10).half().requires_grad_()
    t = torch.randn(16, 10).half()
    loss = DISTLoss()(s, t)
    assert loss.dtype == torch.float32
    assert close(loss, loop_dist(s.float(), t.float()), tol=1e-4)
    loss.backward()
    assert s.grad.dtype == torch.float16 and torch.isfinite(s.grad).all()


@pytest.mark.parametrize('act', ['softmax', 'sigmoid'])
def test_dist_zero_variance_is_finite(act):
    # A constant student, and a batch of one (every column has one value).
    for s, t in [(torch.zeros(5, 4), torch.randn(5, 4)),
                 (torch.randn(1, 4), torch.randn(1, 4)),
                 (torch.ones(3, 4), torch.ones(3, 4))]:
        s = s.clone().requires_grad_()
        loss = DISTLoss(activation=act)(s, t)
        loss.backward()
        assert torch.isfinite(loss) and torch.isfinite(s.grad).all()


@pytest.mark.parametrize('act', ['softmax', 'sigmoid'])
def test_dist_batch_of_one_intra_passes_no_gradient(act, policy):
    # Every column has one value: the intra-class term is constant (1).
    torch.manual_seed(15)
    s, t = torch.randn(1, 80), torch.randn(1, 80)
    got, ref = grads(s, t, activation=act, beta=0.)
    assert torch.equal(ref, torch.zeros_like(ref))
    assert torch.equal(got, torch.zeros_like(got))
    got, ref = grads(s, t, activation=act, tau=2.)  # inter only
    assert rel_err(got, ref) < 1e-5


@pytest.mark.parametrize('act', ['softmax', 'sigmoid'])
def test_dist_single_weighted_row_intra_passes_no_gradient(act, policy):
    # 3000 rows span several blocks of the CPU policy; the one weighted row
    # sits in the last one.
    torch.manual_seed(16)
    s, t = torch.randn(3000, 80), torch.randn(3000, 80) * 2
    w = torch.zeros(3000)
    w[2990] = 1.
    got, ref = grads(s, t, w, activation=act, beta=0.)
    assert torch.equal(ref, torch.zeros_like(ref))
    assert torch.equal(got, torch.zeros_like(got))
    got, ref = grads(s, t, w, activation=act)
    assert rel_err(got, ref) < 1e-5
    assert torch.equal(got[:2990], torch.zeros(2990, 80))
    # A fractional weight: its weighted mean is the value up to rounding.
    w[2990] = 0.3
    got, _ = grads(s, t, w, activation=act, beta=0.)
    assert torch.equal(got, torch.zeros_like(got))


@pytest.mark.parametrize('act', ['softmax', 'sigmoid'])
def test_dist_small_column_spread_matches_autograd(act, policy):
    # Columns with a real spread of about 1e-3 in the activations.
    torch.manual_seed(17)
    spread = 1e-2 if act == 'softmax' else 4e-3
    s = torch.randn(1, 10) + spread * torch.randn(64, 10)
    t = torch.randn(1, 10) + spread * torch.randn(64, 10)
    y = torch.softmax(s, 1) if act == 'softmax' else torch.sigmoid(s)
    assert 3e-4 < float(y.std(0).mean()) < 3e-3
    got, ref = grads(s, t, activation=act)
    assert rel_err(got, ref) < 1e-4
    w = torch.rand(64)
    got, ref = grads(s, t, w, activation=act, tau=2.)
    assert rel_err(got, ref) < 1e-4


@pytest.mark.parametrize('dtype, tol', [(torch.float16, 2e-3),
                                        (torch.bfloat16, 1e-2)])
@pytest.mark.parametrize('act', ['softmax', 'sigmoid'])
def test_dist_low_precision_matches_upcast_autograd(dtype, tol, act, policy):
    torch.manual_seed(18)
    s = torch.randn(16, 10).to(dtype).requires_grad_()
    t = torch.randn(16, 10).to(dtype)
    loss = DISTLoss(activation=act, beta=2., gamma=2.)(s, t)
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    s64 = s.detach().double().requires_grad_()
    ref = spec(s64, t, activation=act, beta=2., gamma=2.)
    assert close(loss, ref, tol=1e-5)
    loss.backward()
    ref.backward()
    assert s.grad.dtype == dtype and torch.isfinite(s.grad).all()
    assert rel_err(s.grad, s64.grad) < tol  # the gradient's own rounding
    # A batch of one in half precision: intra passes exactly nothing.
    one = torch.randn(1, 80).to(dtype).requires_grad_()
    DISTLoss(
        activation=act, beta=0.)(one, torch.randn(1, 80).to(dtype)).backward()
    assert torch.equal(one.grad, torch.zeros_like(one.grad))


def test_dist_all_rows_dropped_is_zero():
    s = torch.randn(4, 3, requires_grad=True)
    loss = DISTLoss()(s, torch.randn(4, 3), weight=torch.zeros(4))
    loss.backward()
    assert float(loss) == 0 and torch.equal(s.grad, torch.zeros(4, 3))


def test_dist_shape_mismatch_names_both_shapes():
    with pytest.raises(ValueError, match=r'\(4, 3\).*\(4, 5\)'):
        DISTLoss()(torch.randn(4, 3), torch.randn(4, 5))
    with pytest.raises(ValueError, match='num_classes=7'):
        DISTLoss(num_classes=7)(torch.randn(2, 9, 2, 2),
                                torch.randn(2, 9, 2, 2))
    with pytest.raises(ValueError, match='weight'):
        DISTLoss()(torch.randn(4, 3), torch.randn(4, 3), torch.ones(5))
    with pytest.raises(ValueError, match='activation'):
        DISTLoss(activation='relu')


def test_dist_identical_predictions_give_zero():
    torch.manual_seed(11)
    t = torch.randn(9, 6)
    assert float(DISTLoss()(t, t)) == pytest.approx(0, abs=1e-6)
    assert float(DISTLoss(activation='sigmoid')(t, t)) == pytest.approx(
        0, abs=1e-6)
    # Softmax ignores a per-row shift of the logits, so DIST does too.
    assert float(DISTLoss()(t + 3.0, t)) == pytest.approx(0, abs=1e-6)


@pytest.mark.parametrize('loss, name, value',
                         [(DISTLoss, 'beta', -1.), (DISTLoss, 'gamma', -0.5),
                          (DISTLoss, 'loss_weight', -2.),
                          (DISTLoss, 'beta', math.nan), (DISTLoss, 'tau', 0.),
                          (DISTLoss, 'tau', -1.), (DISTLoss, 'tau', math.nan),
                          (DISTLoss, 'tau', math.inf), (DISTLoss, 'eps', 0.),
                          (DISTLoss, 'eps', -1e-8),
                          (DISTLoss, 'eps', math.nan),
                          (DISTLoss, 'eps', math.inf), (KDLoss, 'tau', 0.),
                          (KDLoss, 'tau', -1.), (KDLoss, 'tau', math.nan),
                          (KDLoss, 'tau', math.inf),
                          (KDLoss, 'loss_weight', -1.),
                          (KDLoss, 'loss_weight', math.nan)])
def test_invalid_hyper_parameters_rejected_at_construction(loss, name, value):
    with pytest.raises(
            ValueError, match=rf'{loss.__name__} {name} .*got {value!r}'):
        loss(**{name: value})


# ---------------------------------------------------------------- KDLoss
@pytest.mark.parametrize('act', ['softmax', 'sigmoid'])
@pytest.mark.parametrize('tau', [1.0, 4.0])
def test_kd_matches_formula(act, tau):
    torch.manual_seed(12)
    s, t = torch.randn(10, 6), torch.randn(10, 6)
    loss = KDLoss(tau=tau, activation=act)(s, t)
    assert close(loss, plain_kd(s, t, tau, act))


def test_kd_same_input_handling_as_dist():
    torch.manual_seed(13)
    s, t = torch.randn(2, 3 * 4, 2, 2), torch.randn(2, 3 * 4, 2, 2)
    loss = KDLoss(activation='sigmoid', num_classes=4)(s, t)
    ref = plain_kd(dense_rows(s, 4), dense_rows(t, 4), act='sigmoid')
    assert close(loss, ref)
    w = torch.tensor([1., 0., 1., 1.])
    s2, t2 = torch.randn(4, 5), torch.randn(4, 5)
    assert close(KDLoss()(s2, t2, weight=w), plain_kd(s2[w > 0], t2[w > 0]))
    with pytest.raises(ValueError, match=r'\(4, 5\).*\(4, 6\)'):
        KDLoss()(s2, torch.randn(4, 6))


def test_kd_gradcheck_and_half():
    s = torch.randn(5, 4, dtype=torch.float64, requires_grad=True)
    t = torch.randn(5, 4, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda x: KDLoss(tau=2)(x, t), (s, ))
    sh = torch.randn(5, 4).half().requires_grad_()
    loss = KDLoss()(sh, torch.randn(5, 4).half())
    loss.backward()
    assert loss.dtype == torch.float32 and torch.isfinite(sh.grad).all()


def test_dist_second_backward_with_retained_graph_matches():
    torch.manual_seed(14)
    s = torch.randn(7, 5, requires_grad=True)
    t = torch.randn(7, 5)
    loss = DISTLoss(activation='sigmoid')(s, t)
    first, = torch.autograd.grad(loss, s, retain_graph=True)
    first = first.clone()
    second, = torch.autograd.grad(loss, s)
    assert torch.allclose(first, second, atol=1e-7)


# ------------------------------------------------------- the specification
@pytest.mark.parametrize('act', ['softmax', 'sigmoid'])
@pytest.mark.parametrize('weighted', [False, True])
@pytest.mark.parametrize('floor', [0., 0.3])
def test_specification_equals_the_loop(act, weighted, floor):
    # floor 0.3 holds some student rows and columns (spread 0.5x the
    # teacher's logits) at it.
    gen = torch.Generator().manual_seed(19)
    s = 0.5 * torch.randn(12, 7, generator=gen)
    s[:3] *= 1e-3
    t = 2 * torch.randn(12, 7, generator=gen)
    w = torch.rand(12, generator=gen) if weighted else None
    kwargs = dict(beta=1.5, gamma=0.5, tau=2.)
    got = dist_spec_loss(s.double(), t.double(), w, act, floor=floor, **kwargs)
    ref = loop_dist(s, t, act=act, w=w, floor=floor, **kwargs)
    assert close(got, ref, tol=1e-12)


@pytest.mark.parametrize('act', ['softmax', 'sigmoid'])
@pytest.mark.parametrize('weighted', [False, True])
@pytest.mark.parametrize('floor', [0., None])
def test_every_path_equals_the_specification(act, weighted, floor, policy):
    # Dense anchor-major logits: 3 anchors x 5 classes, per-pixel weights
    # with zeros; with the floor 18 rows near constant, held at it (the
    # paper's form, floor 0, has no float32 value there).
    gen = torch.Generator().manual_seed(20)
    s = torch.randn(2, 15, 4, 6, generator=gen)
    if floor is None:
        s[0, :, 0] *= 1e-4
    t = 2 * torch.randn(2, 15, 4, 6, generator=gen)
    w = (torch.rand(2, 4, 6, generator=gen) > 0.3).float() * torch.rand(
        2, 4, 6, generator=gen) if weighted else None
    kwargs = dict(activation=act, num_classes=5, floor=floor, beta=2., tau=2.)
    student = s.clone().requires_grad_()
    loss = DISTLoss(**kwargs)(student, t, weight=w)
    loss.backward()
    s64 = s.double().requires_grad_()
    ref = spec(s64, t.double(), w, **kwargs)
    ref.backward()
    assert close(loss, ref)
    assert rel_err(student.grad, s64.grad) < 1e-3
    # float64 inputs stay float64 on every path: the specification's value.
    loss64 = DISTLoss(**kwargs)(s.double(), t.double(), weight=w)
    assert close(loss64, ref, tol=1e-10)


@pytest.mark.parametrize('scale', [20., 60.])
def test_saturated_softmax_rows_keep_their_gradient(scale, policy):
    # Near one-hot rows (an unbounded head, logits of std 60): their true
    # gradient is tiny, and a per-row constant left to the softmax backward
    # to remove cancels into noise of up to 1e-3 of it on the one-pass path.
    gen = torch.Generator().manual_seed(0)
    s = scale * torch.randn(4, 5, generator=gen)
    t = scale * torch.randn(4, 5, generator=gen)
    got, ref = grads(s, t.double())
    assert float((got.double() - ref).abs().max() / ref.abs().max()) < 1e-5


def test_dist_inside_autocast_computes_in_float32(policy):
    # An AMP forward calls the loss under autocast; the loss's own ops must
    # not drop to half precision (linalg.vecdot would on a CPU).
    torch.manual_seed(21)
    s, t = torch.randn(8, 50), 3 * torch.randn(8, 50)
    results = []
    for enabled in (False, True):
        student = s.clone().requires_grad_()
        with torch.autocast('cpu', dtype=torch.bfloat16, enabled=enabled):
            loss = DISTLoss(tau=4.)(student, t)
        loss.backward()
        results.append((loss.detach(), student.grad))
    (loss, grad), (amp_loss, amp_grad) = results
    assert amp_loss.dtype == torch.float32 and close(amp_loss, loss, 1e-6)
    assert rel_err(amp_grad, grad.double()) < 1e-6
