"""Benchmark for preftune.ranking part 2 (issue 18): each method against the loss or procedure it replaces,
on small synthetic data with a known truth (nothing is downloaded).

    .venv/bin/python benchmarks/ranking/part2.py --quick            # 3 seeds, a third of the steps (~5 min)
    .venv/bin/python benchmarks/ranking/part2.py --method saf      # one method, 5 seeds
    .venv/bin/python benchmarks/ranking/part2.py --plots           # also docs/figures/ranking2-*.png

Methods: groco (P68), unpg (P50), dhkd (P17), p2c (P49), denoise (P71, PLD), saf (P62), ibcl (P75). Every row is
mean +- std over seeds (the same seeds and data for a method and its baselines); ``s/step`` is wall time per
optimisation step (IBCL: seconds for the whole knowledge base / all per-preference models).
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "src"))

from preftune.ranking import denoise, dual_head_kd, groco, ibcl, p2c, saf, unpg  # noqa: E402

torch.set_num_threads(1)


def mlp(*dims):
    layers = []
    for a, b in zip(dims[:-1], dims[1:]):
        layers += [nn.Linear(a, b), nn.ReLU()]
    return nn.Sequential(*layers[:-1])


def gen(seed):
    return torch.Generator().manual_seed(seed)


def auc(pos, neg):
    """Mann-Whitney AUC of scores of positive vs negative pairs."""
    allv = torch.cat([pos, neg])
    ranks = torch.empty_like(allv)
    ranks[allv.argsort()] = torch.arange(1, len(allv) + 1, dtype=allv.dtype)
    return float((ranks[: len(pos)].sum() - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg)))


# ----------------------------------------------------------------------------- P68 GroCo
def class_data(g, classes, per_class, dim, spread=1.0, noise=1.0, mix=None):
    centres = torch.randn(classes, 8, generator=g) * spread
    mix = mix if mix is not None else torch.randn(8, dim, generator=g)
    y = torch.arange(classes).repeat_interleave(per_class)
    z = centres[y] + 0.5 * torch.randn(len(y), 8, generator=g)
    x = torch.tanh(z @ mix) + noise * 0.1 * torch.randn(len(y), dim, generator=g)
    return x, y, mix


def episode(g, x, y, Q, P, N):
    """Q queries, each with P same-class and N other-class candidates: (query idx, cand idx [Q, P+N], labels)."""
    qs, cs, ls = [], [], []
    for _ in range(Q):
        i = int(torch.randint(len(y), (1,), generator=g))
        same = torch.nonzero((y == y[i]) & (torch.arange(len(y)) != i)).squeeze(1)
        diff = torch.nonzero(y != y[i]).squeeze(1)
        p = same[torch.randperm(len(same), generator=g)[:P]]
        n = diff[torch.randperm(len(diff), generator=g)[:N]]
        qs.append(i)
        cs.append(torch.cat([p, n]))
        ls.append(torch.cat([torch.ones(P), torch.zeros(N)]))
    return torch.tensor(qs), torch.stack(cs), torch.stack(ls)


def bench_groco(seed, steps):
    g = gen(seed)
    xa, ya, _ = class_data(g, 12, 40, 16)
    held = torch.arange(len(ya)) % 4 == 0  # a quarter of each class is held out for the test episodes
    x, y, xt, yt = xa[~held], ya[~held], xa[held], ya[held]
    P, N, k = 3, 20, 10
    losses = {
        "groco": lambda s, l: groco.groco_loss(s, l, steepness=5.0, topk_neg=k),
        "softmax CE": lambda s, l: -(F.log_softmax(s / 0.1, -1) * l).sum(-1).div(l.sum(-1)).mean(),
        "pairwise logistic": lambda s, l: F.softplus((s.unsqueeze(1) - s.unsqueeze(2)) / 0.1)[
            (l.unsqueeze(2) > 0) & (l.unsqueeze(1) == 0)].mean(),
    }
    out = {}
    for name, fn in losses.items():
        torch.manual_seed(seed)
        enc = mlp(16, 32, 16)
        opt = torch.optim.Adam(enc.parameters(), lr=3e-3)
        ge = gen(seed + 1)
        t0 = time.perf_counter()
        for _ in range(steps):
            q, c, lab = episode(ge, x, y, 16, P, N)
            z = F.normalize(enc(x), dim=-1)
            s = (z[q].unsqueeze(1) * z[c]).sum(-1)
            loss = fn(s, lab)
            opt.zero_grad()
            loss.backward()
            opt.step()
        sec = (time.perf_counter() - t0) / steps
        with torch.no_grad():
            q, c, lab = episode(gen(seed + 7), xt, yt, 200, P, 20)
            z = F.normalize(enc(xt), dim=-1)
            s = (z[q].unsqueeze(1) * z[c]).sum(-1)
            top = s.topk(P, -1).indices
            prec = float(lab.gather(1, top).mean())
        out[name] = (prec, sec)
    return "groco", "precision@3 (held-out samples)", out


# ----------------------------------------------------------------------------- P50 UNPG
def bench_unpg(seed, steps):
    g = gen(seed)
    x, y, mix = class_data(g, 40, 12, 16, spread=1.0)
    xt, yt, _ = class_data(gen(seed + 1000), 20, 10, 16, spread=1.0, mix=mix)
    out = {}
    for name, use in (("unpg (cosface)", True), ("cosface", False)):
        torch.manual_seed(seed)
        enc = mlp(16, 64, 16)
        head = unpg.UNPGHead(16, 40, scale=16.0, margin=0.2, kind="cosface", unpg=use)
        opt = torch.optim.Adam(list(enc.parameters()) + list(head.parameters()), lr=3e-3)
        ge = gen(seed + 1)
        t0 = time.perf_counter()
        for _ in range(steps):
            idx = torch.randint(len(y), (64,), generator=ge)
            loss = head(enc(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        sec = (time.perf_counter() - t0) / steps
        with torch.no_grad():
            z = F.normalize(enc(xt), dim=-1)
            sim = z @ z.T
            iu = torch.triu_indices(len(yt), len(yt), 1)
            same = (yt[iu[0]] == yt[iu[1]])
            sv = sim[iu[0], iu[1]]
            out[name] = (auc(sv[same], sv[~same]), sec)
    return "unpg", "verification AUC (unseen classes)", out


# ----------------------------------------------------------------------------- P17 dual-head KD
def teacher_task(seed):
    g = gen(seed)
    truth = mlp(20, 64, 10)
    with torch.no_grad():
        for p in truth.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * (1.5 / math.sqrt(p.shape[-1])))
    x = torch.randn(3000, 20, generator=g)
    with torch.no_grad():
        y = truth(x).argmax(-1)
    return x, y


def bench_dhkd(seed, steps):
    x, y = teacher_task(seed)
    xtr, ytr, xte, yte = x[:2000], y[:2000], x[2000:], y[2000:]
    torch.manual_seed(seed)
    teacher = mlp(20, 128, 128, 10)
    opt = torch.optim.Adam(teacher.parameters(), lr=2e-3)
    ge = gen(seed + 1)
    for _ in range(2 * steps):
        idx = torch.randint(2000, (128,), generator=ge)
        loss = F.cross_entropy(teacher(xtr[idx]), ytr[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        t_logits = teacher(xtr)
        t_acc = float((teacher(xte).argmax(-1) == yte).float().mean())
    small = 300  # the student sees few labelled samples; the teacher's logits carry the rest
    variants = {
        "DHKD (CE | BinaryKL-Norm)": ("dual", dual_head_kd.DualHeadKDLoss(alpha=1.0, beta=0.0)),
        "DHKD + KL on main": ("dual", dual_head_kd.DualHeadKDLoss(alpha=1.0, beta=1.0)),
        "KD (1 head: CE + KL)": ("single", lambda m, a, t, yy: F.cross_entropy(m, yy) + dual_head_kd.kd_kl(m, t, 4.0)),
        "CE + BinaryKL (1 head)": ("single", lambda m, a, t, yy: F.cross_entropy(m, yy)
                                   + dual_head_kd.binary_kl(m, t, 2.0)),
    }
    out = {}
    for name, (kind, fn) in variants.items():
        torch.manual_seed(seed + 2)
        body = nn.Sequential(mlp(20, 32, 32), nn.ReLU())
        heads = dual_head_kd.DualHead(32, 10)
        opt = torch.optim.Adam(list(body.parameters()) + list(heads.parameters()), lr=2e-3)
        ge = gen(seed + 3)
        t0 = time.perf_counter()
        for _ in range(steps):
            idx = torch.randint(small, (64,), generator=ge)
            main, aux = heads(body(xtr[idx]))
            loss = fn(main, aux, t_logits[idx], ytr[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        sec = (time.perf_counter() - t0) / steps
        with torch.no_grad():
            out[name] = (float((heads(body(xte))[0].argmax(-1) == yte).float().mean()), sec)
    out["(teacher)"] = (t_acc, float("nan"))
    return "dhkd", "student test accuracy", out


# ----------------------------------------------------------------------------- P49 P2C
def bench_p2c(seed, steps):
    g = gen(seed)
    W = torch.randn(10, 3, generator=g)
    x = torch.randn(2200, 10, generator=g)
    true_logits = 2.0 * torch.tanh(x) @ W
    y = torch.distributions.Categorical(logits=true_logits).sample()
    xtr, ytr_clean, xte, yte = x[:200], y[:200], x[200:], true_logits[200:].argmax(-1)
    noisy = torch.rand(200, generator=g) < 0.3
    ytr = torch.where(noisy, torch.randint(3, (200,), generator=g), ytr_clean)
    ptrue = true_logits[:200].softmax(-1)
    out = {}
    for name in ("p2c", "CE"):
        torch.manual_seed(seed)
        body = nn.Sequential(mlp(10, 32, 32), nn.ReLU())
        cls = nn.Linear(32, 3)
        params = list(body.parameters()) + list(cls.parameters())
        heads = p2c.PreferenceHeads(32, 3, heads=3)
        if name == "p2c":
            params += list(heads.parameters())
        opt = torch.optim.Adam(params, lr=2e-3, weight_decay=1e-4)
        ge = gen(seed + 1)
        t0 = time.perf_counter()
        for _ in range(steps):
            i1 = torch.randint(200, (32,), generator=ge)
            if name == "CE":
                loss = F.cross_entropy(cls(body(xtr[i1])), ytr[i1])
            else:
                # pair each x1 with a random x2 of the same (observed) label; the preference says which of the
                # two is more typical of that label under the true model (P49's "extractive" annotator proxy)
                i2 = torch.stack([torch.nonzero(ytr == ytr[i]).squeeze(1)[
                    torch.randint(int((ytr == ytr[i]).sum()), (1,), generator=ge)][0] for i in i1])
                lab = ytr[i1]
                d = ptrue[i1, lab] - ptrue[i2, lab]
                pref = torch.where(d.abs() < 0.05, 2, (d > 0).long())
                h1, h2 = body(xtr[i1]), body(xtr[i2])
                loss, _ = p2c.p2c_loss(cls(h1), cls(h2), lab, heads(h1, lab), heads(h2, lab), pref,
                                       lambda_pref=1.0, lambda_cons=1.0, lambda_div=0.1)
            opt.zero_grad()
            loss.backward()
            opt.step()
        sec = (time.perf_counter() - t0) / steps
        with torch.no_grad():
            out[name] = (float((cls(body(xte)).argmax(-1) == yte).float().mean()), sec)
    return "p2c", "test accuracy (30% label noise, 200 labels)", out


# ----------------------------------------------------------------------------- P71 PLD
PLD_TAU = 0.5  # chosen on seed 0 only among 0.1 / 0.5 (no tuning per seed)


def bench_pld(seed, steps):
    g = gen(seed)
    U, I, d = 150, 300, 8
    pu, qi = torch.randn(U, d, generator=g), torch.randn(I, d, generator=g)
    truth = pu @ qi.T
    train, test = [], []
    for u in range(U):
        liked = torch.multinomial(torch.softmax(truth[u] / 1.0, -1), 20, generator=g).tolist()
        clean_train, test_items = liked[:14], liked[14:]
        others = [i for i in range(I) if i not in liked]
        noise = [others[j] for j in torch.randperm(len(others), generator=g)[:6].tolist()]  # 30% noisy clicks
        train.append(clean_train + noise)
        test.append(test_items)
    out = {}
    for name, k, tau in (("pld (k=5)", 5, PLD_TAU), ("BPR", 1, 1.0)):
        torch.manual_seed(seed)
        P = nn.Embedding(U, 16)
        Q = nn.Embedding(I, 16)
        nn.init.normal_(P.weight, std=0.1)
        nn.init.normal_(Q.weight, std=0.1)
        opt = torch.optim.Adam(list(P.parameters()) + list(Q.parameters()), lr=1e-2)
        warm = denoise.PLDSampler(train, I, k=1, generator=gen(seed + 1))
        sampler = denoise.PLDSampler(train, I, k=k, temperature=tau, generator=gen(seed + 1))
        t0 = time.perf_counter()
        for step in range(steps):
            # P71's recipe: plain BPR for a warm-up (begin_adv), then resampling on each user's losses
            s = sampler if step >= steps // 5 else warm
            users, cand, neg = s.sample(256)
            with torch.no_grad():
                cl = denoise.bpr_loss((P(users)[:, None] * Q(cand)).sum(-1), (P(users) * Q(neg)).sum(-1)[:, None])
            pos = s.select(cand, cl)
            pu_ = P(users)
            loss = denoise.bpr_loss((pu_ * Q(pos)).sum(-1), (pu_ * Q(neg)).sum(-1)).mean() \
                + 1e-4 * (pu_.pow(2).sum() + Q(pos).pow(2).sum() + Q(neg).pow(2).sum()) / len(users)
            opt.zero_grad()
            loss.backward()
            opt.step()
        sec = (time.perf_counter() - t0) / steps
        with torch.no_grad():
            scores = P.weight @ Q.weight.T
            for u in range(U):
                scores[u, train[u]] = -float("inf")
            top = scores.topk(10, -1).indices
            rec, ndcg = [], []
            for u in range(U):
                hits = [1.0 if i in test[u] else 0.0 for i in top[u].tolist()]
                rec.append(sum(hits) / len(test[u]))
                dcg = sum(h / math.log2(r + 2) for r, h in enumerate(hits))
                ndcg.append(dcg / sum(1 / math.log2(r + 2) for r in range(min(10, len(test[u])))))
        out[name] = (statistics.mean(ndcg), sec, statistics.mean(rec))
    return "denoise", "NDCG@10 (recall@10 in extra) on clean held-out items, 30% noise", out


# ----------------------------------------------------------------------------- P62 SAF
def spiral(g, n, classes=3, noise=0.3):
    y = torch.randint(classes, (n,), generator=g)
    r = torch.rand(n, generator=g) * 3 + 0.3
    th = r * 1.6 + y * (2 * math.pi / classes)
    x = torch.stack([r * torch.cos(th), r * torch.sin(th)], -1) + noise * torch.randn(n, 2, generator=g)
    return x, y


def sharpness(model, x, y, rho, g, draws=8):
    """Mean train-loss increase under random weight perturbations of norm rho (a cheap sharpness proxy)."""
    with torch.no_grad():
        base = float(F.cross_entropy(model(x), y))
        params = list(model.parameters())
        inc = []
        for _ in range(draws):
            d = [torch.randn(p.shape, generator=g) for p in params]
            norm = math.sqrt(sum(float((v ** 2).sum()) for v in d))
            for p, v in zip(params, d):
                p.add_(rho * v / norm)
            inc.append(float(F.cross_entropy(model(x), y)) - base)
            for p, v in zip(params, d):
                p.sub_(rho * v / norm)
    return statistics.mean(inc)


def bench_saf(seed, steps):
    g = gen(seed)
    x, y_clean = spiral(g, 400)
    y = torch.where(torch.rand(400, generator=g) < 0.2, torch.randint(3, (400,), generator=g), y_clean)
    xt, yt = spiral(gen(seed + 1000), 2000)
    batch, per_epoch = 50, 8
    epochs = max(steps // per_epoch, 12)
    out = {}
    for name in ("SAF", "SGD", "SAM"):
        torch.manual_seed(seed)
        model = mlp(2, 64, 64, 3)
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        tra = saf.SAF(400, 3, lam=0.3, temperature=5.0, lag=3, start_epoch=5)
        fwd = bwd = 0
        ge = gen(seed + 1)
        t0 = time.perf_counter()
        for epoch in range(epochs):
            perm = torch.randperm(400, generator=ge)
            for b in range(per_epoch):
                idx = perm[b * batch:(b + 1) * batch]
                logits = model(x[idx])
                fwd += 1
                loss = F.cross_entropy(logits, y[idx])
                if name == "SAF":
                    loss = loss + tra(logits, idx, epoch)
                opt.zero_grad()
                loss.backward()
                bwd += 1
                if name == "SAM":  # Foret et al. 2021: gradient at w + rho g/||g||, applied at w
                    rho = 0.05
                    with torch.no_grad():
                        gn = torch.sqrt(sum((p.grad ** 2).sum() for p in model.parameters()))
                        eps = [rho * p.grad / (gn + 1e-12) for p in model.parameters()]
                        for p, e in zip(model.parameters(), eps):
                            p.add_(e)
                    opt.zero_grad()
                    F.cross_entropy(model(x[idx]), y[idx]).backward()
                    fwd += 1
                    bwd += 1
                    with torch.no_grad():
                        for p, e in zip(model.parameters(), eps):
                            p.sub_(e)
                opt.step()
        n = epochs * per_epoch
        sec = (time.perf_counter() - t0) / n
        with torch.no_grad():
            acc = float((model(xt).argmax(-1) == yt).float().mean())
        sharp = sharpness(model, x, y, 1.0, gen(seed + 5))
        out[name] = (acc, sec, sharp, f"fwd/bwd per step {fwd / n:.0f}/{bwd / n:.0f}")
    return "saf", "test accuracy (20% label noise); extra: sharpness (loss rise at |dw| = 1), passes/step", out


# ----------------------------------------------------------------------------- P75 IBCL
def bench_ibcl(seed, steps, n_prefs=10):
    g = gen(seed)
    dim, n = 6, 400
    base = torch.randn(dim, generator=g)
    dirs = [F.normalize(base + 1.2 * torch.randn(dim, generator=g), dim=0) for _ in range(3)]
    tasks = []
    for a in dirs:
        xx = torch.randn(2 * n, dim, generator=g)
        yy = (xx @ a + 0.2 * torch.randn(2 * n, generator=g) > 0).float()
        tasks.append((xx[:n], yy[:n], xx[n:], yy[n:]))
    model = nn.Linear(dim, 1)
    nll = lambda o, t: F.binary_cross_entropy_with_logits(o.squeeze(-1), t)  # noqa: E731

    def accs(params):
        with torch.no_grad():
            return [float(((torch.func.functional_call(model, params, (xt,)).squeeze(-1) > 0).float() == yt)
                          .float().mean()) for _, _, xt, yt in tasks]

    t0 = time.perf_counter()
    kb = ibcl.KnowledgeBase(threshold=1e-3)
    priors = [ibcl.gaussian_prior(model, s) for s in (1.0, 1.5, 2.0)]
    for i, (xtr, ytr, _, _) in enumerate(tasks):
        posts = [ibcl.fit_posterior(model, xtr, ytr, nll, pr, steps=steps, lr=0.05, generator=gen(seed + 10 * i + j))
                 for j, pr in enumerate(priors)]
        kb.add_task(posts)
        priors = kb.priors()
    ibcl_sec = time.perf_counter() - t0
    prefs = torch.distributions.Dirichlet(torch.ones(3)).sample((n_prefs,)).tolist()
    q_ibcl, q_base = [], []
    t0 = time.perf_counter()
    for w in prefs:
        q_ibcl.append(sum(wk * a for wk, a in zip(w, accs(kb.zero_shot(w)))))
    zs_sec = time.perf_counter() - t0
    t0 = time.perf_counter()
    for j, w in enumerate(prefs):  # baseline: one model trained per preference on the weighted task losses
        torch.manual_seed(seed + j)
        m = nn.Linear(dim, 1)
        opt = torch.optim.Adam(m.parameters(), lr=0.05)
        ge = gen(seed + 100 + j)
        for _ in range(steps):
            loss = 0.0
            for wk, (xtr, ytr, _, _) in zip(w, tasks):
                idx = torch.randint(n, (128,), generator=ge)
                loss = loss + wk * nll(m(xtr[idx]), ytr[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        q_base.append(sum(wk * a for wk, a in zip(w, accs(dict(m.named_parameters())))))
    base_sec = time.perf_counter() - t0
    out = {  # extra: seconds each further preference costs (IBCL: a convex combination; baseline: a training run)
        "ibcl zero-shot (9 VI fits)": (statistics.mean(q_ibcl), ibcl_sec + zs_sec, zs_sec / n_prefs,
                                       f"{len(kb.extremes)} stored extremes"),
        f"1 model / preference ({n_prefs} fits)": (statistics.mean(q_base), base_sec, base_sec / n_prefs),
    }
    metric = (f"preference-weighted accuracy over {n_prefs} trade-offs "
              "(s = total seconds; extra: s per further preference)")
    return "ibcl", metric, out, (prefs, q_ibcl, q_base)


BENCHES = {"groco": bench_groco, "unpg": bench_unpg, "dhkd": bench_dhkd, "p2c": bench_p2c, "denoise": bench_pld,
           "saf": bench_saf, "ibcl": bench_ibcl}
STEPS = {"groco": 300, "unpg": 400, "dhkd": 400, "p2c": 400, "denoise": 400, "saf": 480, "ibcl": 200}


def fmt(vals):
    vals = [v for v in vals if not (isinstance(v, float) and math.isnan(v))]
    if not vals:
        return "-"
    sd = statistics.stdev(vals) if len(vals) > 1 else 0.0
    return f"{statistics.mean(vals):.3f} ± {sd:.3f}"


def paired(first, vs):
    """Row 1 minus this row, per seed: mean ± std and how many seeds row 1 wins."""
    d = [a[0] - b[0] for a, b in zip(first, vs)]
    sd = statistics.stdev(d) if len(d) > 1 else 0.0
    return f"{statistics.mean(d):+.3f} ± {sd:.3f} ({sum(x > 0 for x in d)}/{len(d)})"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="3 seeds and a third of the steps")
    ap.add_argument("--method", choices=sorted(BENCHES), action="append")
    ap.add_argument("--seeds", type=int, default=None)
    ap.add_argument("--plots", action="store_true", help="write docs/figures/ranking2-*.png")
    ap.add_argument("--json", type=Path, default=None, help="also write the raw numbers here")
    args = ap.parse_args(argv)
    seeds = list(range(args.seeds or (3 if args.quick else 5)))
    raw, extra_ibcl = {}, []
    for name in args.method or list(BENCHES):
        steps = STEPS[name] // (3 if args.quick else 1)
        t0 = time.perf_counter()
        rows: dict[str, list] = {}
        metric = ""
        for s in seeds:
            res = BENCHES[name](s, steps)
            _, metric, out = res[:3]
            if name == "ibcl":
                extra_ibcl.append(res[3])
            for variant, vals in out.items():
                rows.setdefault(variant, []).append(vals)
        raw[name] = {"metric": metric, "steps": steps, "seeds": seeds,
                     "rows": {k: [list(v) for v in vs] for k, vs in rows.items()}}
        print(f"\n== {name}: {metric}  ({steps} steps, seeds {seeds}, {time.perf_counter() - t0:.0f} s)")
        print(f"{'variant':34s} {'metric (mean ± std)':>20s} {'paired diff to row 1':>26s} {'s/step':>15s}  extra")
        first = next(iter(rows.values()))
        for r, (variant, vs) in enumerate(rows.items()):
            extras = []
            for j in range(2, max(len(v) for v in vs)):
                col = [v[j] for v in vs]
                extras.append(fmt(col) if isinstance(col[0], float) else str(col[0]))
            diff = "" if r == 0 or variant.startswith("(") else paired(first, vs)
            print(f"{variant:34s} {fmt([v[0] for v in vs]):>20s} {diff:>26s} {fmt([v[1] for v in vs]):>15s}  "
                  f"{'; '.join(extras)}")
        sys.stdout.flush()
    if args.json:
        args.json.write_text(json.dumps(raw, indent=1))
    if args.plots:
        plot(raw, extra_ibcl)


def plot(raw, extra_ibcl):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figs = ROOT / "docs" / "figures"
    figs.mkdir(parents=True, exist_ok=True)
    # per-seed paired differences (method minus each baseline, same data and seed): more telling than bars
    pairs = []
    for name, r in raw.items():
        rows = {k: v for k, v in r["rows"].items() if not k.startswith("(")}
        keys = list(rows)
        for b in keys[1:]:
            pairs.append((f"{name}: {keys[0][:22]} - {b[:22]}", [x[0] - y[0] for x, y in zip(rows[keys[0]], rows[b])]))
    fig, ax = plt.subplots(figsize=(8.5, 0.42 * len(pairs) + 1.2))
    for i, (label, d) in enumerate(reversed(pairs)):
        ax.scatter(d, [i] * len(d), s=14, color="C0", alpha=0.7)
        ax.plot([statistics.mean(d)] * 2, [i - 0.3, i + 0.3], color="C3", lw=2)
    ax.axvline(0, color="k", lw=0.8)
    ax.set_yticks(range(len(pairs)))
    ax.set_yticklabels([p[0] for p in reversed(pairs)], fontsize=7)
    ax.set_xlabel("method - baseline in its own metric (dots: seeds, red: mean); > 0: method better", fontsize=8)
    fig.tight_layout()
    fig.savefig(figs / "ranking2-summary.png", dpi=110)
    plt.close(fig)
    if extra_ibcl:
        fig, ax = plt.subplots(figsize=(4, 3.6))
        for prefs, qi, qb in extra_ibcl:
            ax.scatter(qb, qi, s=12, color="C0")
        lims = [min(min(e[2] + e[1]) for e in extra_ibcl) - 0.01, max(max(e[2] + e[1]) for e in extra_ibcl) + 0.01]
        ax.plot(lims, lims, "k--", lw=0.8)
        ax.set_xlabel("1 model trained per preference")
        ax.set_ylabel("IBCL zero-shot (no training)")
        ax.set_title("preference-weighted accuracy, one dot per trade-off", fontsize=8)
        fig.tight_layout()
        fig.savefig(figs / "ranking2-ibcl.png", dpi=110)
        plt.close(fig)


if __name__ == "__main__":
    main()
