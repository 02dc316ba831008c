"""DSSL (method.md section 5) against slow loop references on tiny random tensors."""

import math
from collections import deque

import torch
import torch.nn.functional as F
from torchvision.ops import roi_align

from vmad_pipeline.configs import DsslConfig
from vmad_pipeline.losses.pbsd import normal_log_prob, patch_bce_loss, pbsd_loss
from vmad_pipeline.models.dssl import (
    Dssl,
    MemoryQueue,
    box_abnormal,
    roi_features,
    sample_boxes,
)

B, N, D, M, TAU = 3, 4, 5, 9, 0.5
SIZE, D_SAM, D_LLM, D_CLIP = 32, 6, 8, 7


def unit(*shape: int) -> torch.Tensor:
    return F.normalize(torch.randn(*shape, dtype=torch.float64), dim=-1)


def slow_log_prob(q, bank, bank_class, bank_state, query_class, tau):
    out_n, out_a, valid = torch.zeros(q.shape[:2]), torch.zeros(q.shape[:2]), []
    for b in range(q.shape[0]):
        c = int(query_class[b])
        ks = [k for k in range(bank.shape[0]) if c >= 0 and int(bank_class[k]) == c]
        states = {int(bank_state[k]) for k in ks}
        valid.append(states == {0, 1})
        if not valid[-1]:
            continue
        for i in range(q.shape[1]):
            e = {k: math.exp(float(q[b, i] @ bank[k]) / tau) for k in ks}
            total = sum(e.values())
            out_n[b, i] = math.log(sum(v for k, v in e.items() if bank_state[k] == 0) / total)
            out_a[b, i] = math.log(sum(v for k, v in e.items() if bank_state[k] == 1) / total)
    return out_n, out_a, torch.tensor(valid)


def test_normal_log_prob_matches_loop():
    torch.manual_seed(0)
    q, bank = unit(B + 1, N, D), unit(M, D)
    # class 0: both states; class 1: normal only (invalid); class 2 absent; last query unknown.
    bank_class = torch.tensor([0, 0, 0, 1, 1, 0, 2, 2, 0])
    bank_state = torch.tensor([0, 1, 0, 0, 0, 1, 1, 1, 0])
    query_class = torch.tensor([0, 1, 2, -1])
    got = normal_log_prob(q, bank, bank_class, bank_state, query_class, TAU)
    want = slow_log_prob(q, bank, bank_class, bank_state, query_class, TAU)
    assert got[2].tolist() == [True, False, False, False] == want[2].tolist()
    torch.testing.assert_close(got[0].float(), want[0])
    torch.testing.assert_close(got[1].float(), want[1])
    assert torch.isfinite(got[0]).all() and (got[0][1:] == 0).all()
    torch.testing.assert_close((got[0].exp() + got[1].exp())[0], torch.ones(N, dtype=q.dtype))


def test_normal_log_prob_invalid_rows_have_finite_gradients():
    q = unit(2, N, D).requires_grad_()
    bank = unit(4, D).requires_grad_()
    log_n, log_a, valid = normal_log_prob(
        q, bank, torch.tensor([0, 0, 1, 1]), torch.tensor([0, 0, 0, 1]), torch.tensor([0, 1]), TAU
    )
    assert valid.tolist() == [False, True]
    (log_n.sum() + log_a.sum()).backward()
    assert torch.isfinite(q.grad).all() and torch.isfinite(bank.grad).all()
    assert (q.grad[0] == 0).all() and q.grad[1].abs().sum() > 0


def test_pbsd_loss_matches_loop_and_only_student_gets_gradient():
    torch.manual_seed(1)
    pv = torch.rand(B, N).clamp(0.05, 0.95)
    pt = torch.rand(B, N).clamp(0.05, 0.95)
    lv_n, lv_a = pv.log().requires_grad_(), (1 - pv).log().requires_grad_()
    lt_n, lt_a = pt.log().requires_grad_(), (1 - pt).log().requires_grad_()
    valid = torch.tensor([True, False, True])
    loss = pbsd_loss(lv_n, lv_a, lt_n, lt_a, valid)
    kls = [
        a * math.log(a / c) + (1 - a) * math.log((1 - a) / (1 - c))
        for b in range(B)
        if valid[b]
        for a, c in zip(pv[b].tolist(), pt[b].tolist(), strict=True)
    ]
    assert math.isclose(loss.item(), sum(kls) / len(kls), rel_tol=1e-5)
    loss.backward()
    assert lv_n.grad is None and lv_a.grad is None
    assert lt_n.grad.abs().sum() > 0 and (lt_n.grad[1] == 0).all()


def test_losses_are_zero_with_a_graph_when_nothing_is_valid():
    x = torch.randn(B, N, requires_grad=True)
    none = torch.zeros(B, dtype=torch.bool)
    for loss in (pbsd_loss(x, x, x, x, none), patch_bce_loss(x, x, x > 0, none)):
        assert loss.item() == 0 and loss.requires_grad
        loss.backward()


def test_patch_bce_loss_matches_loop():
    torch.manual_seed(2)
    log_n, log_a = torch.randn(B, N), torch.randn(B, N)
    labels, valid = torch.rand(B, N) > 0.5, torch.tensor([True, True, False])
    terms = []
    for b in range(B):
        for i in range(N):
            if valid[b]:
                p = 1 / (1 + math.exp(-(log_a[b, i] - log_n[b, i]).item()))
                terms.append(-math.log(p) if labels[b, i] else -math.log(1 - p))
    loss = patch_bce_loss(log_n, log_a, labels, valid)
    assert math.isclose(loss.item(), sum(terms) / len(terms), rel_tol=1e-5)


def slow_box_abnormal(masks, boxes, fraction):
    out = torch.zeros(boxes.shape[:2], dtype=torch.bool)
    _, h, w = masks.shape
    for b in range(boxes.shape[0]):
        for i in range(boxes.shape[1]):
            x1, y1, x2, y2 = boxes[b, i].tolist()
            pixels = [
                (y, x)
                for y in range(max(0, math.floor(y1)), min(h, math.ceil(y2)))
                for x in range(max(0, math.floor(x1)), min(w, math.ceil(x2)))
            ]
            pos = sum(float(masks[b, y, x]) for y, x in pixels)
            out[b, i] = bool(pixels) and pos / len(pixels) > fraction
    return out


def test_box_abnormal_hand_made_mask():
    masks = torch.zeros(1, 8, 8)
    masks[0, 2:4, 2:4] = 1  # a 2 x 2 defect
    boxes = torch.tensor(
        [
            [
                [2.0, 2.0, 4.0, 4.0],  # exactly the defect: 4 / 4
                [0.0, 0.0, 8.0, 8.0],  # whole image: 4 / 64 < 0.1
                [1.5, 1.5, 4.0, 4.0],  # pixels 1..3 each way: 4 / 9
                [4.0, 4.0, 8.0, 8.0],  # clear of the defect
                [0.0, 0.0, 4.0, 3.0],  # pixels x 0..3, y 0..2: 2 / 12 > 0.1
                [3.0, 3.0, 3.0, 3.0],  # empty box
            ]
        ]
    )
    got = box_abnormal(masks, boxes, 0.1)
    assert got.tolist() == [[True, False, True, False, True, False]]
    assert got.tolist() == slow_box_abnormal(masks, boxes, 0.1).tolist()


def test_box_abnormal_random_matches_loop():
    g = torch.Generator().manual_seed(3)
    masks = (torch.rand(B, 16, 16, generator=g) > 0.7).float()
    boxes = sample_boxes(B, 10, 16, 0.1, 0.6, generator=g)
    for fraction in (0.0, 0.3):
        assert box_abnormal(masks, boxes, fraction).equal(slow_box_abnormal(masks, boxes, fraction))


def test_sample_boxes_inside_in_range_and_reproducible():
    boxes = sample_boxes(B, 50, SIZE, 0.25, 0.5, generator=torch.Generator().manual_seed(4))
    side = boxes[..., 2:] - boxes[..., :2]
    assert boxes.shape == (B, 50, 4)
    assert (boxes >= 0).all() and (boxes <= SIZE).all()
    assert (side >= 0.25 * SIZE - 1e-4).all() and (side <= 0.5 * SIZE + 1e-4).all()
    again = sample_boxes(B, 50, SIZE, 0.25, 0.5, generator=torch.Generator().manual_seed(4))
    assert boxes.equal(again)


def test_roi_features_constant_map_and_per_box_loop():
    const = torch.full((1, 3, 4, 4), 2.5)
    whole = torch.tensor([[[0.0, 0.0, SIZE, SIZE]]])
    torch.testing.assert_close(roi_features(const, whole, SIZE, 2), torch.full((1, 1, 3), 2.5))

    torch.manual_seed(5)
    fmap = torch.randn(B, 3, 4, 4)
    boxes = sample_boxes(B, N, SIZE, 0.1, 0.9)
    want = torch.zeros(B, N, 3)
    for b in range(B):
        for i in range(N):
            cell = roi_align(fmap[b : b + 1], [boxes[b, i : i + 1]], 3, 4 / SIZE, 2, True)
            want[b, i] = cell[0].mean((1, 2))
    torch.testing.assert_close(roi_features(fmap, boxes, SIZE, 3), want)


def test_memory_queue_matches_deque_with_wraparound_and_state_dict():
    torch.manual_seed(6)
    n_classes, k = 3, 4
    queue = MemoryQueue(n_classes=n_classes, size=k, dim=D)
    ref = {(c, s): deque(maxlen=k) for c in range(n_classes) for s in range(2)}
    for _ in range(5):  # 5 x 6 items over 6 (class, state) slots + skipped -1: wraps around
        feats = torch.randn(6, D)
        cls = torch.randint(-1, n_classes, (6,))
        st = torch.randint(0, 2, (6,))
        queue.enqueue(feats, cls, st)
        for f, c, s in zip(feats, cls.tolist(), st.tolist(), strict=True):
            if c >= 0:
                ref[(c, s)].append(f)

    def check(q: MemoryQueue) -> None:
        assert q.count.tolist() == [[len(ref[(c, s)]) for s in range(2)] for c in range(n_classes)]
        feats, cls, st = q.bank()
        assert len(feats) == sum(len(v) for v in ref.values())
        for (c, s), items in ref.items():
            rows = feats[(cls == c) & (st == s)]
            want = torch.stack(list(items)) if items else torch.zeros(0, D)
            key = lambda t: t[:, 0].argsort()  # noqa: E731
            torch.testing.assert_close(rows[key(rows)], want[key(want)])

    assert any(len(v) == k for v in ref.values())
    check(queue)
    fresh = MemoryQueue(n_classes=n_classes, size=k, dim=D)
    fresh.load_state_dict(queue.state_dict())
    check(fresh)
    assert queue.ptr.any() and fresh.ptr.equal(queue.ptr) and fresh.count.equal(queue.count)
    feats = torch.randn(2 * n_classes, D)  # the restored pointers continue the same rings
    cls, st = torch.arange(n_classes).repeat_interleave(2), torch.tensor([0, 1] * n_classes)
    for q in (queue, fresh):
        q.enqueue(feats, cls, st)
    for f, c, s in zip(feats, cls.tolist(), st.tolist(), strict=True):
        ref[(c, s)].append(f)
    check(fresh)
    assert fresh.feats.equal(queue.feats)


def make_dssl(classes=("a", "b")) -> Dssl:
    cfg = DsslConfig(boxes=N, box_min=0.2, box_max=0.5, queue_size=4, proj_dim=5, classes=classes)
    return Dssl(cfg=cfg, d_sam=D_SAM, d_llm=D_LLM, d_clip=D_CLIP)


def test_semantic_tokens_match_per_image_loop():
    torch.manual_seed(7)
    dssl = make_dssl()
    g, clip = unit(B, 5).float(), torch.randn(B, D_CLIP)
    state, words = torch.tensor([0, 1, 1]), torch.randn(2, D_LLM)
    got = dssl.semantic_tokens(g, clip, state, words)
    for b in range(B):
        shift = dssl.meta_net(clip[b])
        text = sum(dssl.ctx[k] + shift for k in range(dssl.cfg.n_ctx)) / dssl.cfg.n_ctx
        want = text + words[int(state[b])] + dssl.g_to_llm(g[b])
        torch.testing.assert_close(got[b], want / want.norm())


def dssl_inputs(masks_abnormal: list[bool], class_idx: list[int]) -> dict:
    b = len(class_idx)
    masks = torch.zeros(b, SIZE, SIZE)
    for i, abnormal in enumerate(masks_abnormal):
        if abnormal:
            masks[i, 4:20, 6:24] = 1
    return dict(
        sam_embedding=torch.randn(b, D_SAM, 4, 4, requires_grad=True),
        llm_visual=torch.randn(b, D_LLM, 4, 4, requires_grad=True),
        clip_global=torch.randn(b, D_CLIP),
        state_words=torch.randn(2, D_LLM),
        masks=masks,
        class_idx=torch.tensor(class_idx),
    )


def test_dssl_forward_backward_gradients_and_queues():
    torch.manual_seed(8)
    dssl = make_dssl()
    # Batch alone: class 0 has both states, class 1 only normal, last image unknown.
    inputs = dssl_inputs([False, True, False, True], [0, 0, 1, -1])
    out = dssl(**inputs, generator=torch.Generator().manual_seed(0))
    assert out.valid.tolist() == [True, True, False, False]
    assert out.p_v.shape == out.p_t.shape == out.box_abnormal.shape == (4, N)
    assert out.box_abnormal[0].sum() == 0 and torch.isfinite(out.pbsd + out.patch_bce).all()
    assert out.pbsd > 0 and out.patch_bce > 0
    (out.pbsd + out.patch_bce).backward()
    for name in ("head_t", "meta_net", "g_to_llm", "head_v"):
        grads = [p.grad for p in getattr(dssl, name).parameters()]
        assert all(g is not None and g.abs().sum() > 0 for g in grads), name
    assert dssl.ctx.grad.abs().sum() > 0 and inputs["llm_visual"].grad.abs().sum() > 0
    assert inputs["sam_embedding"].grad is None
    assert dssl.queue_v.count.tolist() == [[1, 1], [1, 0]] == dssl.queue_t.count.tolist()

    dssl.eval()
    dssl(**dssl_inputs([True], [1]))
    assert dssl.queue_v.count.sum() == 3 == dssl.queue_t.count.sum()


def test_dssl_second_call_is_valid_from_the_queues():
    torch.manual_seed(9)
    dssl = make_dssl()
    first = dssl(**dssl_inputs([False, True], [0, 1]))
    assert first.valid.tolist() == [False, False]
    assert first.pbsd.item() == 0 and first.patch_bce.item() == 0
    second = dssl(**dssl_inputs([True, False], [0, 1]))
    assert second.valid.tolist() == [True, True]
    assert second.pbsd > 0 and torch.isfinite(second.p_t).all()


def test_dssl_without_classes_is_never_valid():
    dssl = make_dssl(classes=())
    out = dssl(**dssl_inputs([False, True], [-1, 0]))
    assert out.valid.tolist() == [False, False] and out.pbsd.item() == 0
    assert dssl.queue_v.bank()[0].shape == (0, 5)
