"""Chunked log-probs equal full logits (values and gradients), for any chunk size."""
from __future__ import annotations

import random

import pytest
import torch
import torch.nn.functional as F

from preftune.data.collate import collate_pairs
from preftune.data.prefix_shared import collate_pairs_prefix_shared
from preftune.data.types import TokenizedPair
from preftune.models.logprobs import chunked_target_logps, label_positions, sequence_logps
from preftune.models.tiny import build_model

V = 101


@pytest.fixture(scope="module")
def model():
    return build_model(V, hidden_size=32, num_layers=2, num_heads=4, seed=2)


def _batch(seed=0, n=4):
    rng = random.Random(seed)
    ids = lambda lo, hi: [rng.randrange(3, V) for _ in range(rng.randint(lo, hi))]  # noqa: E731
    return collate_pairs([TokenizedPair(ids(1, 8), ids(1, 9), ids(1, 9)) for _ in range(n)], 0)


def _run(model, batch, **kw):
    model.zero_grad()
    lp = sequence_logps(model, batch, per_token=True, **kw)
    w = torch.linspace(-1.0, 2.0, lp.sums.shape[0])
    (lp.sums * w).sum().backward()
    return lp, [p.grad.clone() for p in model.parameters()]


@pytest.fixture(params=["kept", "recomputed"])
def head_backward(request, monkeypatch):
    """Both backward paths of the chunked head: the softmax kept from the forward (small label x vocabulary counts),
    and the logits recomputed chunk by chunk (large ones)."""
    import preftune.models.logprobs as LP

    if request.param == "recomputed":
        monkeypatch.setattr(LP, "KEEP_SOFTMAX_ELEMENTS", 0)
    return request.param


@pytest.mark.parametrize("chunk", [1, 3, 7, 64, 4096])
def test_chunked_equals_full(model, chunk, head_backward):
    batch = _batch()
    full, gfull = _run(model, batch, full_logits=True)
    got, g = _run(model, batch, chunk_size=chunk)
    torch.testing.assert_close(got.sums, full.sums, rtol=1e-6, atol=1e-5)
    torch.testing.assert_close(got.token_logps, full.token_logps, rtol=1e-6, atol=1e-6)
    for a, b in zip(g, gfull):  # fp32 sums in another order: 1e-6 relative to the gradient's scale
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6 * max(1.0, b.abs().max().item()))


def test_no_grad_path(model):
    batch = _batch(1)
    with torch.no_grad():
        a = sequence_logps(model, batch, chunk_size=5)
        b = sequence_logps(model, batch, full_logits=True)
    torch.testing.assert_close(a.sums, b.sums, rtol=1e-6, atol=1e-5)


@pytest.mark.parametrize("cap", [None, 3.0])
@pytest.mark.parametrize("bias", [False, True])
def test_linear_head_function(cap, bias, head_backward):
    torch.manual_seed(0)
    head = torch.nn.Linear(16, 50, bias=bias)
    h = torch.randn(23, 16, requires_grad=True)
    y = torch.randint(0, 50, (23,))
    g = torch.randn(23)

    def ref_fn(h):
        z = head(h)
        if cap:
            z = torch.tanh(z / cap) * cap
        return F.log_softmax(z, -1).gather(-1, y[:, None]).squeeze(-1)

    out = chunked_target_logps(head, h, y, 4, softcap=cap)
    grads = torch.autograd.grad((out * g).sum(), [h, *head.parameters()])
    ref = ref_fn(h)
    rgrads = torch.autograd.grad((ref * g).sum(), [h, *head.parameters()])
    torch.testing.assert_close(out, ref, rtol=1e-6, atol=1e-6)
    for a, b in zip(grads, rgrads):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_kept_softmax_survives_a_second_backward():
    """The kept softmax is read, not overwritten, in backward: a retained graph gives the same gradient twice."""
    import preftune.models.logprobs as LP

    torch.manual_seed(0)
    head = torch.nn.Linear(8, 20)
    h = torch.randn(6, 8, requires_grad=True)
    y = torch.randint(0, 20, (6,))
    assert 6 * 20 <= LP.KEEP_SOFTMAX_ELEMENTS
    out = chunked_target_logps(head, h, y, 4).sum()
    g1 = torch.autograd.grad(out, h, retain_graph=True)[0]
    g2 = torch.autograd.grad(out, h)[0]
    torch.testing.assert_close(g1, g2, rtol=0, atol=0)
    ref = torch.autograd.grad(F.log_softmax(head(h), -1).gather(-1, y[:, None]).sum(), h)[0]
    torch.testing.assert_close(g1, ref, rtol=1e-5, atol=1e-6)


def test_generic_head_callable_checkpointed():
    torch.manual_seed(0)
    lin = torch.nn.Linear(8, 30)
    h = torch.randn(10, 8, requires_grad=True)
    y = torch.randint(0, 30, (10,))
    a = chunked_target_logps(lambda x: lin(x).float(), h, y, 3)
    b = chunked_target_logps(lin, h, y, 3)
    torch.testing.assert_close(a, b)
    ga = torch.autograd.grad(a.sum(), h)[0]
    gb = torch.autograd.grad(b.sum(), h)[0]
    torch.testing.assert_close(ga, gb)


def test_labels_are_response_tokens_only():
    b = collate_pairs([TokenizedPair([5, 6], [7], [8, 9])], 0)
    r, t = label_positions(b)
    assert list(zip(r.tolist(), t.tolist())) == [(0, 2), (1, 2), (1, 3)]
    ps = collate_pairs_prefix_shared([TokenizedPair([5, 6], [7], [8, 9])], 0)
    r, t = label_positions(ps)
    assert list(zip(r.tolist(), t.tolist())) == [(0, 2), (0, 3), (0, 4)]


def test_empty_batch_of_labels(model):
    b = collate_pairs([TokenizedPair([], [5], [6])], 0)  # first tokens have no context
    lp = sequence_logps(model, b)
    assert lp.sums.tolist() == [0.0, 0.0]
