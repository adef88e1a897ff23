"""preftune.ranking, part 1: each method against the standard loss it replaces, on small synthetic tasks.

    .venv/bin/python benchmarks/ranking/part1.py --quick                 # all methods, 3 seeds, < 5 min on 2 cores
    .venv/bin/python benchmarks/ranking/part1.py                         # 5 seeds, longer training
    .venv/bin/python benchmarks/ranking/part1.py --quick --method ldr    # one method

Methods and tasks (everything generated from the seed, nothing downloaded):

* ranklist (P22) vs RankNet and ListNet: learning to rank with graded relevance 0-4, an MLP scorer; NDCG@10.
* pld (P45) vs CE + KL distillation (and plain CE): a wide MLP teacher trained on 6000 examples, a linear
  student trained on 400 of them with the teacher's logits; student test accuracy.
* mw (P43) vs InfoNCE: a dual-encoder retriever (two linear encoders) on latent-topic query/document pairs,
  in-batch negatives; global ROC AUC over all query-document pairs, MRR, and ECE of one Platt scaling fitted
  on a validation split (can one threshold serve every query?).
* ldr (P44: LDR-KL, ALDR-KL) vs CE: a 6-class Gaussian task with 40% uniform label noise; clean test accuracy.
* isogclr (P36) vs SimCLR (NT-Xent, tau = 0.1): contrastive pre-training on long-tailed synthetic data
  (class frequencies ~ 1/k^1.5); leave-one-out kNN accuracy inside a balanced test set, overall and on the
  5 rarest training classes;
  plus iSogCLR's learned temperature by class frequency.
* uniformity (P27): NT-Xent at tau in {0.05, 0.1, 0.2, 0.5, 1.0}; uniformity, tolerance, kNN accuracy.
* amcl (P41) vs one head: SimCLR backbone with 3 heads + AMCL vs one head + NT-Xent; kNN accuracy of the
  backbone features.

Prints a table (mean +- std over seeds, seconds per epoch) and writes docs/figures/ranking1-*.png.
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

from preftune.ranking.amcl import AMCLLoss
from preftune.ranking.infonce import info_nce, nt_xent
from preftune.ranking.isogclr import ISogCLRLoss
from preftune.ranking.ldr import ALDRKLLoss, ldr_kl_loss
from preftune.ranking.mann_whitney import expected_calibration_error, mw_loss, roc_auc
from preftune.ranking.pld import kd_loss, pld_loss
from preftune.ranking.ranklist import listnet_loss, ndcg_at_k, progressive_skip, ranklist_loss, ranknet_loss
from preftune.ranking.uniformity import tolerance, uniformity

ROOT = Path(__file__).resolve().parents[2]
FIG = ROOT / "docs" / "figures"


def mlp(d_in: int, d_hidden: int, d_out: int) -> nn.Module:
    return nn.Sequential(nn.Linear(d_in, d_hidden), nn.ReLU(), nn.Linear(d_hidden, d_out))


class Timer:
    def __init__(self):
        self.total, self.epochs = 0.0, 0

    def add(self, seconds: float, epochs: int):
        self.total, self.epochs = self.total + seconds, self.epochs + epochs

    @property
    def per_epoch(self) -> float:
        return self.total / max(self.epochs, 1)


# ============================================================================ P22 RankList

def ltr_data(g: torch.Generator, n_queries: int, n_docs: int = 20, d: int = 12):
    w1 = torch.randn(d, 16, generator=g)
    v = torch.randn(16, generator=g)
    x = torch.randn(n_queries, n_docs, d, generator=g)
    latent = torch.tanh(x @ w1) @ v + 0.5 * torch.randn(n_queries, n_docs, generator=g)
    # graded relevance 0..4 by within-query quantile, with few top grades (as in web search data)
    q = torch.tensor([0.5, 0.75, 0.9, 0.97])
    cut = torch.quantile(latent, q.to(latent.dtype), dim=1).T  # [Q, 4]
    rel = (latent[:, :, None] > cut[:, None, :]).sum(-1).float()
    return x, rel


def bench_ranklist(seeds, quick):
    epochs = 30 if quick else 80
    losses = {
        "ranklist (lse, skip curriculum)":
            lambda s, y, ep: ranklist_loss(s, y, max_skip=progressive_skip(ep, epochs, 20)),
        "ranklist (lse, full)": lambda s, y, ep: ranklist_loss(s, y),
        "ranknet": lambda s, y, ep: ranknet_loss(s, y),
        "listnet": lambda s, y, ep: listnet_loss(s, y),
    }
    res = {k: [] for k in losses}
    timers = {k: Timer() for k in losses}
    for seed in seeds:
        # one draw of the true scorer; the first 150 queries train, the other 200 test
        xall, yall = ltr_data(torch.Generator().manual_seed(seed), 350)
        xtr, ytr, xte, yte = xall[:150], yall[:150], xall[150:], yall[150:]
        for name, fn in losses.items():
            torch.manual_seed(seed)
            model = mlp(12, 32, 1)
            opt = torch.optim.Adam(model.parameters(), lr=3e-3)
            t0 = time.perf_counter()
            for ep in range(epochs):
                perm = torch.randperm(150)
                for i in range(0, 150, 25):
                    b = perm[i:i + 25]
                    loss = fn(model(xtr[b]).squeeze(-1), ytr[b], ep)
                    opt.zero_grad()
                    loss.backward()
                    opt.step()
            timers[name].add(time.perf_counter() - t0, epochs)
            with torch.no_grad():
                res[name].append(ndcg_at_k(model(xte).squeeze(-1), yte, 10).mean().item())
    return [dict(task="P22 LTR, graded relevance", loss=k, metric="NDCG@10", values=v,
                 s_per_epoch=timers[k].per_epoch) for k, v in res.items()]


# ============================================================================ P45 PLD

def gauss_classes(g, n, centers, noise):
    k = centers.shape[0]
    y = torch.randint(0, k, (n,), generator=g)
    x = centers[y] + noise * torch.randn(n, centers.shape[1], generator=g)
    return x, y


def bench_pld(seeds, quick):
    epochs = 40 if quick else 120
    res = {k: [] for k in ("pld (T=1)", "ce + kd (alpha=0.5, T=4)", "ce only")}
    timers = {k: Timer() for k in res}
    teacher_acc = []
    for seed in seeds:
        g = torch.Generator().manual_seed(seed)
        k, d = 10, 20
        centers = torch.randn(k, d, generator=g) * 1.0
        # a nonlinear task: the class is decided by the nearest of two centres per class
        centers2 = torch.randn(k, d, generator=g) * 1.0
        def sample(n):
            x1, y = gauss_classes(g, n, centers, 1.0)
            flip = torch.rand(n, generator=g) < 0.5
            x2 = centers2[y] + 1.0 * torch.randn(n, d, generator=g)
            return torch.where(flip[:, None], x2, x1), y
        xt, yt = sample(6000)
        xte, yte = sample(3000)
        torch.manual_seed(seed)
        teacher = mlp(d, 256, k)
        opt = torch.optim.Adam(teacher.parameters(), lr=2e-3)
        for _ in range(200 if quick else 600):
            b = torch.randint(0, 6000, (256,))
            loss = F.cross_entropy(teacher(xt[b]), yt[b])
            opt.zero_grad()
            loss.backward()
            opt.step()
        with torch.no_grad():
            teacher_acc.append((teacher(xte).argmax(1) == yte).float().mean().item())
            xs, ys = xt[:400], yt[:400]
            ts = teacher(xs)
        for name in res:
            torch.manual_seed(seed)
            student = mlp(d, 16, k)
            opt = torch.optim.Adam(student.parameters(), lr=3e-3, weight_decay=1e-4)
            t0 = time.perf_counter()
            for _ in range(epochs):
                perm = torch.randperm(400)
                for i in range(0, 400, 50):
                    b = perm[i:i + 50]
                    s = student(xs[b])
                    if name.startswith("pld"):
                        loss = pld_loss(s, ts[b], ys[b])
                    elif name.startswith("ce +"):
                        loss = kd_loss(s, ts[b], ys[b], alpha=0.5, temperature=4.0)
                    else:
                        loss = F.cross_entropy(s, ys[b])
                    opt.zero_grad()
                    loss.backward()
                    opt.step()
            timers[name].add(time.perf_counter() - t0, epochs)
            with torch.no_grad():
                res[name].append((student(xte).argmax(1) == yte).float().mean().item())
    rows = [dict(task="P45 distillation (student acc)", loss=k, metric="test acc", values=v,
                 s_per_epoch=timers[k].per_epoch) for k, v in res.items()]
    rows.append(dict(task="P45 distillation (student acc)", loss="(teacher)", metric="test acc", values=teacher_acc,
                     s_per_epoch=float("nan")))
    return rows


# ============================================================================ P43 MW loss

def retrieval_data(g, n, d_latent=8, d=24, A=None, B=None):
    c = torch.randn(n, d_latent, generator=g)
    q = c @ A + 2.0 * torch.randn(n, d, generator=g)
    doc = c @ B + 2.0 * torch.randn(n, d, generator=g)
    return q, doc


def platt_ece(s_val, y_val, s_test, y_test):
    """Fit one global logistic calibration ``sigmoid(a s + b)`` on validation scores; ECE on the test scores."""
    a = torch.ones((), requires_grad=True)
    b = torch.zeros((), requires_grad=True)
    opt = torch.optim.LBFGS([a, b], lr=0.5, max_iter=100)
    pos_w = (y_val == 0).sum() / (y_val > 0).sum().clamp(min=1)   # balance the few positives
    def closure():
        opt.zero_grad()
        l = F.binary_cross_entropy_with_logits(a * s_val + b, y_val, pos_weight=pos_w)
        l.backward()
        return l
    opt.step(closure)
    with torch.no_grad():
        p = torch.sigmoid(a * s_test + b)
        # ECE on a balanced evaluation: every positive and as many random negatives
        pos = y_test > 0
        neg_idx = torch.nonzero(~pos).squeeze(1)
        neg_idx = neg_idx[torch.randperm(len(neg_idx), generator=torch.Generator().manual_seed(0))[:int(pos.sum())]]
        sel = torch.cat([torch.nonzero(pos).squeeze(1), neg_idx])
        return expected_calibration_error(p[sel], y_test[sel]).item()


def bench_mw(seeds, quick):
    epochs = 10 if quick else 30
    losses = {"mw (global, T=0.1)": lambda s, y: mw_loss(s, y, temperature=0.1),
              "infonce (T=0.05)": lambda s, y: info_nce(s, y, temperature=0.05)}
    res = {k: {"AUC": [], "MRR": [], "ECE (Platt)": []} for k in losses}
    timers = {k: Timer() for k in losses}
    for seed in seeds:
        g = torch.Generator().manual_seed(seed)
        A, B = torch.randn(8, 24, generator=g), torch.randn(8, 24, generator=g)
        qtr, dtr = retrieval_data(g, 1280, A=A, B=B)
        qva, dva = retrieval_data(g, 300, A=A, B=B)
        qte, dte = retrieval_data(g, 300, A=A, B=B)
        for name, fn in losses.items():
            torch.manual_seed(seed)
            eq, ed = nn.Linear(24, 16), nn.Linear(24, 16)
            opt = torch.optim.Adam(list(eq.parameters()) + list(ed.parameters()), lr=3e-3)
            t0 = time.perf_counter()
            for _ in range(epochs):
                perm = torch.randperm(1280)
                for i in range(0, 1280, 64):
                    b = perm[i:i + 64]
                    s = F.normalize(eq(qtr[b]), dim=1) @ F.normalize(ed(dtr[b]), dim=1).T
                    loss = fn(s, torch.eye(len(b)))
                    opt.zero_grad()
                    loss.backward()
                    opt.step()
            timers[name].add(time.perf_counter() - t0, epochs)
            with torch.no_grad():
                sv = F.normalize(eq(qva), dim=1) @ F.normalize(ed(dva), dim=1).T
                st = F.normalize(eq(qte), dim=1) @ F.normalize(ed(dte), dim=1).T
                yv, yt = torch.eye(300), torch.eye(300)
                res[name]["AUC"].append(roc_auc(st, yt).item())
                rank = (st > st.diag()[:, None]).sum(1) + 1
                res[name]["MRR"].append((1.0 / rank.float()).mean().item())
            res[name]["ECE (Platt)"].append(platt_ece(sv.flatten(), yv.flatten(), st.flatten(), yt.flatten()))
    rows = []
    for k in losses:
        for metric, v in res[k].items():
            rows.append(dict(task="P43 dual-encoder retrieval", loss=k, metric=metric, values=v,
                             s_per_epoch=timers[k].per_epoch))
    return rows


# ============================================================================ P44 LDR

def bench_ldr(seeds, quick):
    epochs = 40 if quick else 150
    # lam = 10, margin 0.1, alpha 2: the settings of the authors' run scripts (experiment.py)
    names = ["ce", "ldr-kl (lam=10, c=0.1)", "aldr-kl (lam0=10, alpha=2, c=0.1)"]
    res = {k: [] for k in names}
    timers = {k: Timer() for k in names}
    n, k, d, noise = 600, 6, 10, 0.4
    for seed in seeds:
        g = torch.Generator().manual_seed(seed)
        centers = 1.6 * torch.randn(k, d, generator=g)
        xtr, ytr = gauss_classes(g, n, centers, 1.0)
        xte, yte = gauss_classes(g, 3000, centers, 1.0)
        flip = torch.rand(n, generator=g) < noise
        ynoisy = torch.where(flip, torch.randint(0, k, (n,), generator=g), ytr)
        for name in names:
            torch.manual_seed(seed)
            model = mlp(d, 256, k)
            opt = torch.optim.Adam(model.parameters(), lr=2e-3)
            aldr = ALDRKLLoss(n, lam0=10.0, alpha=2.0, margin=0.1)
            t0 = time.perf_counter()
            for _ in range(epochs):
                perm = torch.randperm(n)
                for i in range(0, n, 64):
                    b = perm[i:i + 64]
                    s = model(xtr[b])
                    if name == "ce":
                        loss = F.cross_entropy(s, ynoisy[b])
                    elif name.startswith("ldr"):
                        loss = ldr_kl_loss(s, ynoisy[b], lam=10.0, margin=0.1)
                    else:
                        loss = aldr(s, ynoisy[b], b)
                    opt.zero_grad()
                    loss.backward()
                    opt.step()
            timers[name].add(time.perf_counter() - t0, epochs)
            with torch.no_grad():
                res[name].append((model(xte).argmax(1) == yte).float().mean().item())
    return [dict(task=f"P44 {int(noise * 100)}% label noise", loss=k_, metric="clean test acc", values=v,
                 s_per_epoch=timers[k_].per_epoch) for k_, v in res.items()]


# ============================================================================ contrastive tasks (P36, P27, P41)

def contrastive_data(g, n_classes=20, d=32, imbalance=1.5, n_train=1536, n_test_per_class=60):
    """Classes = sub-clusters of super-classes; long-tailed train frequencies ~ 1/k^imbalance when imbalance > 0."""
    supers = 2.0 * torch.randn(5, d, generator=g)
    protos = supers[torch.arange(n_classes) % 5] + 0.5 * torch.randn(n_classes, d, generator=g)
    freq = 1.0 / (torch.arange(n_classes, dtype=torch.float) + 1) ** imbalance
    freq = freq / freq.sum()
    ytr = torch.multinomial(freq, n_train, replacement=True, generator=g)
    xtr = protos[ytr] + 1.2 * torch.randn(n_train, d, generator=g)
    yte = torch.arange(n_classes).repeat_interleave(n_test_per_class)
    xte = protos[yte] + 1.2 * torch.randn(len(yte), d, generator=g)
    return xtr, ytr, xte, yte, freq


def augment(x):
    return (x + 0.6 * torch.randn_like(x)) * (torch.rand_like(x) > 0.2)


def knn_acc(ftr, ytr, fte, yte, k=10):
    ftr, fte = F.normalize(ftr, dim=1), F.normalize(fte, dim=1)
    idx = (fte @ ftr.T).topk(k, dim=1).indices
    votes = F.one_hot(ytr[idx], int(ytr.max()) + 1).sum(1)
    return (votes.argmax(1) == yte).float()


def loo_knn_acc(f, y, k=10):
    """Leave-one-out kNN accuracy inside a balanced set: measures the feature geometry without the vote bias a
    long-tailed reference set puts against rare classes."""
    f = F.normalize(f, dim=1)
    sim = (f @ f.T).fill_diagonal_(float("-inf"))
    votes = F.one_hot(y[sim.topk(k, dim=1).indices], int(y.max()) + 1).sum(1)
    return (votes.argmax(1) == y).float()


class Encoder(nn.Module):
    def __init__(self, d=32, hidden=64, rep=32, proj=16, heads=1):
        super().__init__()
        self.backbone = nn.Sequential(nn.Linear(d, hidden), nn.ReLU(), nn.Linear(hidden, rep))
        self.heads = nn.ModuleList(mlp(rep, rep, proj) for _ in range(heads))

    def forward(self, x):
        h = self.backbone(x)
        return torch.stack([head(h) for head in self.heads], dim=1)  # [B, heads, proj]


def train_contrastive(xtr, epochs, loss_kind, seed, *, tau=0.1, batch=128, extra=None):
    torch.manual_seed(seed)
    heads = 3 if loss_kind == "amcl" else 1
    enc = Encoder(heads=heads)
    params = list(enc.parameters())
    n = len(xtr)
    crit = None
    if loss_kind == "isogclr":
        crit = ISogCLRLoss(n, **(extra or {}))
    elif loss_kind == "amcl":
        crit = AMCLLoss(16, heads, **(extra or {}))
        params += list(crit.parameters())
    opt = torch.optim.Adam(params, lr=2e-3)
    t0 = time.perf_counter()
    for _ in range(epochs):
        perm = torch.randperm(n)
        for i in range(0, n - batch + 1, batch):
            b = perm[i:i + batch]
            z1, z2 = enc(augment(xtr[b])), enc(augment(xtr[b]))
            if loss_kind == "simclr":
                loss = nt_xent(z1[:, 0], z2[:, 0], temperature=tau)
            elif loss_kind == "isogclr":
                loss = crit(z1[:, 0], z2[:, 0], b)
            else:
                loss = crit(z1, z2)
            opt.zero_grad()
            loss.backward()
            opt.step()
    return enc, crit, time.perf_counter() - t0


def bench_isogclr(seeds, quick):
    epochs = 15 if quick else 40
    res = {k: {"LOO kNN acc (balanced test)": [], "LOO kNN acc (5 rarest classes)": []}
           for k in ("isogclr (rho=0.3)", "simclr (tau=0.1)")}
    timers = {k: Timer() for k in res}
    tau_by_class = []
    for seed in seeds:
        g = torch.Generator().manual_seed(seed)
        xtr, ytr, xte, yte, freq = contrastive_data(g)
        for name in res:
            kind = "isogclr" if name.startswith("isogclr") else "simclr"
            extra = dict(tau_init=0.1, tau_min=0.05, tau_max=0.7, rho=0.3, eta=0.01) if kind == "isogclr" else None
            enc, crit, secs = train_contrastive(xtr, epochs, kind, seed, extra=extra)
            timers[name].add(secs, epochs)
            with torch.no_grad():
                ok = loo_knn_acc(enc.backbone(xte), yte)
            res[name]["LOO kNN acc (balanced test)"].append(ok.mean().item())
            res[name]["LOO kNN acc (5 rarest classes)"].append(ok[yte >= 15].mean().item())
            if kind == "isogclr":
                tau_by_class.append([crit.tau[ytr == c].mean().item() if (ytr == c).any() else float("nan")
                                     for c in range(20)])
    _plot_tau_by_class(tau_by_class, freq)
    rows = []
    for k in res:
        for metric, v in res[k].items():
            rows.append(dict(task="P36 long-tailed contrastive", loss=k, metric=metric, values=v,
                             s_per_epoch=timers[k].per_epoch))
    head = [statistics.mean(t[:5]) for t in tau_by_class]
    tail = [statistics.mean([x for x in t[15:] if x == x]) for t in tau_by_class]
    rows.append(dict(task="P36 long-tailed contrastive", loss="isogclr learned tau", metric="mean tau, 5 most frequent",
                     values=head, s_per_epoch=float("nan")))
    rows.append(dict(task="P36 long-tailed contrastive", loss="isogclr learned tau", metric="mean tau, 5 rarest",
                     values=tail, s_per_epoch=float("nan")))
    return rows


def bench_uniformity(seeds, quick):
    epochs = 15 if quick else 40
    taus = [0.05, 0.1, 0.2, 0.5, 1.0]
    res = {t: {"uniformity": [], "tolerance": [], "kNN acc": []} for t in taus}
    timers = {t: Timer() for t in taus}
    for seed in seeds[:2] if quick else seeds:
        g = torch.Generator().manual_seed(seed)
        xtr, ytr, xte, yte, _ = contrastive_data(g, imbalance=0.0)
        for t in taus:
            enc, _, secs = train_contrastive(xtr, epochs, "simclr", seed, tau=t)
            timers[t].add(secs, epochs)
            with torch.no_grad():
                z = enc(xte)[:, 0]
                res[t]["uniformity"].append(uniformity(z).item())
                res[t]["tolerance"].append(tolerance(z, yte).item())
                res[t]["kNN acc"].append(knn_acc(enc.backbone(xtr), ytr, enc.backbone(xte), yte).mean().item())
    _plot_sweep(res, taus)
    rows = []
    for t in taus:
        for metric, v in res[t].items():
            rows.append(dict(task="P27 temperature sweep (NT-Xent)", loss=f"tau={t}", metric=metric, values=v,
                             s_per_epoch=timers[t].per_epoch))
    return rows


def bench_amcl(seeds, quick):
    epochs = 15 if quick else 40
    variants = {"amcl, 3 heads (authors' defaults)": dict(beta=0.01, tau_min=1e-5, tau_max=2.0, topk=100),
                "amcl, 3 heads (tau in [0.05, 1])": dict(beta=0.01, tau_min=0.05, tau_max=1.0, topk=100),
                "one head, nt-xent (tau=0.1)": None}
    res = {k: [] for k in variants}
    timers = {k: Timer() for k in variants}
    for seed in seeds[:2] if quick else seeds:
        g = torch.Generator().manual_seed(seed)
        xtr, ytr, xte, yte, _ = contrastive_data(g, imbalance=0.0)
        for name, extra in variants.items():
            kind = "simclr" if extra is None else "amcl"
            enc, _, secs = train_contrastive(xtr, epochs, kind, seed, extra=extra)
            timers[name].add(secs, epochs)
            with torch.no_grad():
                res[name].append(knn_acc(enc.backbone(xtr), ytr, enc.backbone(xte), yte).mean().item())
    return [dict(task="P41 multi-head contrastive", loss=k, metric="kNN acc (backbone)", values=v,
                 s_per_epoch=timers[k].per_epoch) for k, v in res.items()]


# ============================================================================ figures and table

def _plt():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _plot_sweep(res, taus):
    plt = _plt()
    fig, axes = plt.subplots(1, 3, figsize=(11, 3.2))
    for ax, metric in zip(axes, ("uniformity", "tolerance", "kNN acc")):
        m = [statistics.mean(res[t][metric]) for t in taus]
        sd = [statistics.pstdev(res[t][metric]) for t in taus]
        ax.errorbar(taus, m, yerr=sd, marker="o")
        ax.set_xscale("log")
        ax.set_xlabel("temperature")
        ax.set_title(metric + (" (lower = more uniform)" if metric == "uniformity" else ""))
    fig.suptitle("P27: the uniformity-tolerance trade-off of NT-Xent's temperature (synthetic, test set)")
    fig.tight_layout()
    FIG.mkdir(parents=True, exist_ok=True)
    fig.savefig(FIG / "ranking1-temperature-sweep.png", dpi=110)
    plt.close(fig)


def _plot_tau_by_class(tau_by_class, freq):
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.5, 3.4))
    for i, t in enumerate(tau_by_class):
        ax.plot(freq.tolist(), t, "o", alpha=0.7, label=f"seed {i}")
    ax.set_xscale("log")
    ax.set_xlabel("class frequency in the training set")
    ax.set_ylabel("mean learned temperature")
    ax.set_title("P36 iSogCLR: learned temperature by class frequency")
    ax.legend(fontsize=7)
    fig.tight_layout()
    FIG.mkdir(parents=True, exist_ok=True)
    fig.savefig(FIG / "ranking1-isogclr-tau.png", dpi=110)
    plt.close(fig)


def fmt(values):
    if len(values) == 1:
        return f"{values[0]:.4f}"
    return f"{statistics.mean(values):.4f} ± {statistics.stdev(values):.4f}"


BENCHES = {"ranklist": bench_ranklist, "pld": bench_pld, "mw": bench_mw, "ldr": bench_ldr,
           "isogclr": bench_isogclr, "uniformity": bench_uniformity, "amcl": bench_amcl}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="3 seeds, shorter training (< 5 min on 2 cores)")
    ap.add_argument("--method", choices=sorted(BENCHES), action="append", help="run only these (repeatable)")
    ap.add_argument("--seeds", type=int, default=None, help="number of seeds (default 3 with --quick, else 5)")
    ap.add_argument("--json", type=Path, default=None, help="also write the rows here")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    seeds = list(range(args.seeds or (3 if args.quick else 5)))
    rows = []
    t_all = time.perf_counter()
    for name in args.method or list(BENCHES):
        t0 = time.perf_counter()
        rows += BENCHES[name](seeds, args.quick)
        print(f"[{name}: {time.perf_counter() - t0:.1f} s]", file=sys.stderr, flush=True)
    w = max(len(r["loss"]) for r in rows)
    wt = max(len(r["task"]) for r in rows)
    wm = max(len(r["metric"]) for r in rows)
    print(f"{'task':<{wt}}  {'loss':<{w}}  {'metric':<{wm}}  {'mean ± std over seeds':<22}  s/epoch")
    for r in rows:
        spe = "" if math.isnan(r["s_per_epoch"]) else f"{r['s_per_epoch']:.4f}"
        print(f"{r['task']:<{wt}}  {r['loss']:<{w}}  {r['metric']:<{wm}}  {fmt(r['values']):<22}  {spe}")
    print(f"seeds {seeds}; total {time.perf_counter() - t_all:.1f} s", flush=True)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
