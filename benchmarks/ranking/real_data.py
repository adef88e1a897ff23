"""Real-data benchmark for preftune.ranking's classification-type methods (issue 18, "Real data, real peers"):
data sets bundled inside scikit-learn (digits: 1797 8x8 images, 10 classes; wine; breast cancer -- nothing is
downloaded), each method against the loss it replaces.

    .venv/bin/python benchmarks/ranking/real_data.py --quick                     # 3 seeds, half the epochs (~30 s)
    .venv/bin/python benchmarks/ranking/real_data.py                             # 10 seeds (~3 min)
    .venv/bin/python benchmarks/ranking/real_data.py --task ldr --seeds 10

Needs scikit-learn (the ``[ranking-bench]`` extra). Tasks:

* ldr (P44): LDR-KL and ALDR-KL vs cross-entropy, 40% symmetric label noise on the training labels; clean test
  accuracy after the last epoch (no early stopping, no clean validation set).
* ldr-wine, ldr-breast-cancer: the same on scikit-learn's wine (178 examples, 3 classes) and breast cancer
  (569 examples, 2 classes) data, 2/3 of each for training.
* p2c (P49): P2C (auxiliary pairwise preferences, 3 heads) vs CE with 30% label noise on 300 training labels.
  The preferences come from an "annotator": a logistic regression fitted on 200 further, clean, examples
  (P49's cheap annotator, in place of GPT-3 or annotation records); within a pair of the same observed label,
  the example the annotator finds more typical of that label is preferred (tie if within 0.05). Control row:
  CE trained on the 300 noisy labels plus the annotator's 200 clean ones.
* pld (P45): Plackett-Luce distillation (T = 1 and T = 4) vs CE + KL distillation (alpha 0.5, T 4) and plain CE; teacher = an MLP
  64-256-256-10 trained on the whole training split, student = MLP 64-16-10 trained on 150 of those examples
  (few labels: where the teacher's knowledge can matter).

Every row is mean +- std over seeds (the same split, noise and initialisation for a method and its baselines);
``paired`` is row 1 (the method) minus this row, per seed, with how many seeds row 1 wins; ``s/epoch`` is wall time per
training epoch of that row.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "src"))

from preftune.ranking import p2c  # noqa: E402
from preftune.ranking.ldr import ALDRKLLoss, ldr_kl_loss  # noqa: E402
from preftune.ranking.pld import kd_loss, pld_loss  # noqa: E402

torch.set_num_threads(1)

EXTRA_HINT = ("scikit-learn is needed for benchmarks/ranking/real_data.py (its bundled digits data): "
              "pip install 'preftune[ranking-bench]' (or: pip install scikit-learn)")


def sklearn_datasets():
    try:
        from sklearn import datasets
    except ImportError:
        raise SystemExit(EXTRA_HINT) from None
    return datasets


def _logistic_regression():
    try:
        from sklearn.linear_model import LogisticRegression
    except ImportError:
        raise SystemExit(EXTRA_HINT) from None
    return LogisticRegression


def mlp(*dims):
    layers = []
    for a, b in zip(dims[:-1], dims[1:]):
        layers += [nn.Linear(a, b), nn.ReLU()]
    return nn.Sequential(*layers[:-1])


LOADERS = {"digits": "load_digits", "wine": "load_wine", "breast_cancer": "load_breast_cancer"}


def split(name, seed, train_frac=2 / 3):
    """A bundled scikit-learn data set, shuffled by ``seed``; features standardised with the training split's
    statistics. Returns ``x_train, y_train, x_test, y_test, classes``."""
    d = getattr(sklearn_datasets(), LOADERS[name])()
    x, y = torch.tensor(d.data, dtype=torch.float32), torch.tensor(d.target, dtype=torch.long)
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(1000 + seed))
    x, y = x[perm], y[perm]
    n_train = 1200 if name == "digits" else int(train_frac * len(y))
    mu, sd = x[:n_train].mean(0), x[:n_train].std(0).clamp(min=1e-3)  # some digit border pixels are always 0
    x = (x - mu) / sd
    return x[:n_train], y[:n_train], x[n_train:], y[n_train:], int(y.max()) + 1


def digits_split(seed):
    return split("digits", seed)[:4]


def symmetric_noise(y, rate, classes, g):
    """Replace each label with probability ``rate`` by a uniformly drawn *other* class."""
    flip = torch.rand(len(y), generator=g) < rate
    other = (y + torch.randint(1, classes, (len(y),), generator=g)) % classes
    return torch.where(flip, other, y)


def accuracy(model, x, y):
    with torch.no_grad():
        return float((model(x).argmax(1) == y).float().mean())


# ----------------------------------------------------------------------------- P44 LDR
def bench_ldr(seed, epochs, dataset="digits"):
    xtr, ytr, xte, yte, k = split(dataset, seed)
    n = len(ytr)
    ynoisy = symmetric_noise(ytr, 0.4, k, torch.Generator().manual_seed(seed))
    out = {}
    # lam 10, margin 0.1, alpha 2: the authors' run-script settings, as in benchmarks/ranking/part1.py (no tuning)
    for name in ("ldr-kl (lam=10, c=0.1)", "aldr-kl (lam0=10, alpha=2, c=0.1)", "CE"):
        torch.manual_seed(seed)
        model = mlp(xtr.shape[1], 128, k)
        opt = torch.optim.Adam(model.parameters(), lr=2e-3)
        aldr = ALDRKLLoss(n, lam0=10.0, alpha=2.0, margin=0.1)
        order = torch.Generator().manual_seed(seed + 1)
        t0 = time.perf_counter()
        for _ in range(epochs):
            perm = torch.randperm(n, generator=order)
            for i in range(0, n, 64):
                b = perm[i:i + 64]
                s = model(xtr[b])
                if name == "CE":
                    loss = F.cross_entropy(s, ynoisy[b])
                elif name.startswith("ldr"):
                    loss = ldr_kl_loss(s, ynoisy[b], lam=10.0, margin=0.1)
                else:
                    loss = aldr(s, ynoisy[b], b)
                opt.zero_grad()
                loss.backward()
                opt.step()
        out[name] = (accuracy(model, xte, yte), (time.perf_counter() - t0) / epochs)
    return f"P44 LDR {dataset}", "clean test accuracy, 40% symmetric label noise", out


# ----------------------------------------------------------------------------- P49 P2C
def bench_p2c(seed, epochs):
    xall, yall, xte, yte = digits_split(seed)
    k = 10
    xtr, ytr_clean = xall[:300], yall[:300]
    xann, yann = xall[300:500], yall[300:500]
    ytr = symmetric_noise(ytr_clean, 0.3, k, torch.Generator().manual_seed(seed))
    annotator = _logistic_regression()(C=0.1, max_iter=2000).fit(xann.numpy(), yann.numpy())
    p_ann = torch.tensor(annotator.predict_proba(xtr.numpy()), dtype=torch.float32)
    ann_acc = float((torch.tensor(annotator.predict(xte.numpy())) == yte).float().mean())
    same = [torch.nonzero(ytr == c).squeeze(1) for c in range(k)]
    out = {}
    for name in ("p2c (3 heads)", "CE", "CE (+ annotator's 200 clean labels)"):
        torch.manual_seed(seed)
        body = nn.Sequential(mlp(64, 64, 64), nn.ReLU())
        cls = nn.Linear(64, k)
        heads = p2c.PreferenceHeads(64, k, heads=3)
        params = list(body.parameters()) + list(cls.parameters())
        if name.startswith("p2c"):
            params += list(heads.parameters())
        opt = torch.optim.Adam(params, lr=2e-3, weight_decay=1e-4)
        xs, ys = (torch.cat([xtr, xann]), torch.cat([ytr, yann])) if "annotator" in name else (xtr, ytr)
        order = torch.Generator().manual_seed(seed + 1)
        t0 = time.perf_counter()
        for _ in range(epochs):
            perm = torch.randperm(len(ys), generator=order)
            for i in range(0, len(ys), 32):
                i1 = perm[i:i + 32]
                if not name.startswith("p2c"):
                    loss = F.cross_entropy(cls(body(xs[i1])), ys[i1])
                else:
                    lab = ytr[i1]
                    i2 = torch.stack([same[int(c)][torch.randint(len(same[int(c)]), (1,), generator=order)][0]
                                      for c in lab])
                    d = p_ann[i1, lab] - p_ann[i2, lab]
                    pref = torch.where(d.abs() < 0.05, 2, (d > 0).long())
                    h1, h2 = body(xtr[i1]), body(xtr[i2])
                    loss, _ = p2c.p2c_loss(cls(h1), cls(h2), lab, heads(h1, lab), heads(h2, lab), pref,
                                           lambda_pref=1.0, lambda_cons=1.0, lambda_div=0.1)
                opt.zero_grad()
                loss.backward()
                opt.step()
        out[name] = (accuracy(nn.Sequential(body, cls), xte, yte), (time.perf_counter() - t0) / epochs)
    out["(annotator: logistic regression, 200 clean)"] = (ann_acc, float("nan"))
    return "P49 P2C", "test accuracy, 300 labels with 30% noise", out


# ----------------------------------------------------------------------------- P45 PLD
def bench_pld(seed, epochs):
    xtr, ytr, xte, yte = digits_split(seed)
    k = 10
    torch.manual_seed(seed)
    teacher = mlp(64, 256, 256, k)
    opt = torch.optim.Adam(teacher.parameters(), lr=1e-3, weight_decay=1e-4)
    order = torch.Generator().manual_seed(seed + 1)
    for _ in range(30):
        perm = torch.randperm(len(ytr), generator=order)
        for i in range(0, len(ytr), 64):
            b = perm[i:i + 64]
            loss = F.cross_entropy(teacher(xtr[b]), ytr[b])
            opt.zero_grad()
            loss.backward()
            opt.step()
    t_acc = accuracy(teacher, xte, yte)
    xs, ys = xtr[:150], ytr[:150]
    with torch.no_grad():
        ts = teacher(xs)
    out = {}
    # T = 1 is the paper's plain form; T = 4 softens the confidence weights alpha as KD's temperature does (a
    # teacher that fits its training split puts alpha_1 ~ 1 on the label, which makes PLD ~ CE)
    for name in ("pld (T=1)", "pld (T=4)", "CE + KD (alpha=0.5, T=4)", "CE"):
        torch.manual_seed(seed)
        student = mlp(64, 16, k)
        opt = torch.optim.Adam(student.parameters(), lr=3e-3, weight_decay=1e-4)
        order = torch.Generator().manual_seed(seed + 2)
        t0 = time.perf_counter()
        for _ in range(epochs):
            perm = torch.randperm(len(ys), generator=order)
            for i in range(0, len(ys), 50):
                b = perm[i:i + 50]
                s = student(xs[b])
                if name.startswith("pld"):
                    loss = pld_loss(s, ts[b], ys[b], temperature=4.0 if "T=4" in name else 1.0)
                elif name.startswith("CE +"):
                    loss = kd_loss(s, ts[b], ys[b], alpha=0.5, temperature=4.0)
                else:
                    loss = F.cross_entropy(s, ys[b])
                opt.zero_grad()
                loss.backward()
                opt.step()
        out[name] = (accuracy(student, xte, yte), (time.perf_counter() - t0) / epochs)
    out["(teacher 64-256-256-10)"] = (t_acc, float("nan"))
    return "P45 PLD", "student test accuracy (student sees 150 labels)", out


BENCHES = {"ldr": bench_ldr, "ldr-wine": lambda s, e: bench_ldr(s, e, "wine"),
           "ldr-breast-cancer": lambda s, e: bench_ldr(s, e, "breast_cancer"), "p2c": bench_p2c, "pld": bench_pld}
EPOCHS = {"ldr": 60, "ldr-wine": 100, "ldr-breast-cancer": 60, "p2c": 60, "pld": 80}


def fmt(vals):
    vals = [v for v in vals if v == v]
    if not vals:
        return "-"
    sd = statistics.stdev(vals) if len(vals) > 1 else 0.0
    return f"{statistics.mean(vals):.3f} ± {sd:.3f}"


def paired(first, row):
    d = [a - b for a, b in zip(first, row)]
    sd = statistics.stdev(d) if len(d) > 1 else 0.0
    return f"{statistics.mean(d):+.3f} ± {sd:.3f} ({sum(x > 0 for x in d)}/{len(d)})"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="3 seeds and half the epochs (default: 10 seeds)")
    ap.add_argument("--task", choices=sorted(BENCHES), action="append")
    ap.add_argument("--seeds", type=int, default=None)
    ap.add_argument("--json", type=Path, default=None, help="also write the raw numbers here")
    args = ap.parse_args(argv)
    sklearn_datasets()  # fail before any work, with the extra's name
    seeds = list(range(args.seeds or (3 if args.quick else 10)))
    raw = {}
    print(f"{'method':24s} {'variant':44s} {'metric':>15s} {'paired: row 1 - this row':>26s} {'s/epoch':>8s}")
    for task in args.task or list(BENCHES):
        epochs = EPOCHS[task] // (2 if args.quick else 1)
        t0 = time.perf_counter()
        rows: dict[str, list] = {}
        for s in seeds:
            method, metric, out = BENCHES[task](s, epochs)
            for variant, vals in out.items():
                rows.setdefault(variant, []).append(vals)
        raw[task] = {"method": method, "metric": metric, "epochs": epochs, "seeds": seeds, "rows": rows}
        print(f"-- {method}: {metric}; {epochs} epochs, seeds {seeds} ({time.perf_counter() - t0:.0f} s)")
        first = [v[0] for v in next(iter(rows.values()))]
        for r, (variant, vs) in enumerate(rows.items()):
            diff = "" if r == 0 or variant.startswith("(") else paired(first, [v[0] for v in vs])
            sec = [v[1] for v in vs if v[1] == v[1]]
            print(f"{method:24s} {variant:44s} {fmt([v[0] for v in vs]):>15s} {diff:>26s} "
                  f"{(f'{statistics.mean(sec):.4f}' if sec else '-'):>8s}")
        sys.stdout.flush()
    if args.json:
        args.json.write_text(json.dumps(raw, indent=1))


if __name__ == "__main__":
    main()
