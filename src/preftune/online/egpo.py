"""EGPO (P47, Zhou, Fazel & Du 2025, "Extragradient Preference Optimization: Beyond Last-Iterate Convergence for
Nash Learning from Human Feedback", arXiv 2503.08942): extragradient steps on the online IPO loss.

The game. A general (possibly intransitive) preference ``P(y > y' | x)`` defines a two-player constant-sum game;
its KL-regularised version (strength ``tau``, towards ``pi_ref``) has a unique Nash policy. Mirror descent on it,
``pi_{t+1} ∝ pi_t^(1 - eta tau) pi_ref^(eta tau) exp(eta P(y > pi_t))`` (INPO's and Nash-MD's step), converges
only for the regularised game and, for small ``tau``, slowly; in the unregularised limit it cycles around a mixed
equilibrium (rock-paper-scissors). EGPO takes the **extragradient** (mirror-prox) step instead:

    pi_{t+1/2} ∝ pi_t^(1 - eta tau) pi_ref^(eta tau) exp(eta P(y > pi_t))          (half step)
    pi_{t+1}   ∝ pi_t^(1 - eta tau) pi_ref^(eta tau) exp(eta P(y > pi_{t+1/2}))    (full step, from pi_t)

-- both from ``pi_t``; the full step only swaps the opponent for the half-step policy. This has last-iterate
linear convergence to the regularised Nash policy (the paper's main theorem; the update is Cen et al. 2021's
policy extragradient).

The online IPO loss (the paper's implementation without nested optimisation). For ``y, y' ~ mu`` (a sampling
distribution) and opponents ``y'' ~ pi_s`` (stop-gradient),

    L(theta; pi_s) = E[(log pi_theta(y)/pi_theta(y') - log pi_ref(y)/pi_ref(y')
                        - (P(y > y'') - P(y' > y'')) / tau)^2]                        (:func:`online_ipo_loss`)

For a softmax policy over a finite set with ``mu`` uniform, one gradient step on it at ``theta = theta_t`` with
learning rate ``lr`` is exactly the mirror step above with ``eta tau = 4 lr / |Y|`` (the log-partition terms
cancel in the differences): the pairs' squared error is ``(d_y - d_y')^2`` with ``d_y = theta_y - log pi_ref(y) -
P(y > pi_s)/tau``, whose gradient is ``(4/|Y|) (d_y - mean d)``. So EGPO is, per update,

1. save ``theta_t`` and the optimizer state;
2. half step: sample opponents from ``pi_t``, take an optimizer step on ``L(.; pi_t)`` -> ``theta_{t+1/2}``;
3. sample opponents (and pairs) from ``pi_{t+1/2}``;
4. restore ``theta_t`` and the optimizer state, take an optimizer step on ``L(.; pi_{t+1/2})`` with its gradient
   *at theta_t* -> ``theta_{t+1}`` (:func:`extragradient_step`).

Authors' code: zhourunlong/EGPO @ f295bf3750627374c7ddb5d4459390321de2836e (the camera-ready release).
``simulations/loss_funcs.py`` ``online_ipo_1`` (the exact loss above over all pairs, ``prefs = P @ policy()``,
their ``beta`` = ``tau``) and ``extragradient`` / ``extragradient_sample`` (half step, re-evaluate the
opponents at the half-step policy, undo the half step, step with the gradient of the loss at ``theta_t``);
``lms/trainers/extragradient_trainer.py`` ``ExtragradientTrainer.training_step`` (even trainer steps back up
the trainable parameters and the optimizer state and step; odd steps generate with the half-step model, then
restore both and step) and ``_compute_losses`` (``(logps_y - logps_y' - ref_y + ref_y' - (P(y > y'') - P(y' >
y''))/beta)^2``), ``_compute_prefs``; ``lms/train_nlhf.py`` (``beta = 0.1``; ``y, y'`` from the current policy at
temperature 2, top-k 10; one ``y''`` per prompt from the current policy at temperature 1).

What preftune does, and where it differs from the code (where the LM trainer departs from the update above,
the update is followed; each difference is named):

* ``tau`` is the objective's hyperparameter (``--tau``, default 0.1 as the authors' ``beta``); the paper's
  ``eta`` is not a separate option: it is the learning rate (exactly ``4 lr / (|Y| tau)`` for SGD on a tabular
  softmax, the test's setting; with AdamW only in spirit).
* ``y, y'``: ``--egpo-pairs policy`` (default, as the authors' LM runs) samples them from the policy the step is
  sampled at (``pi_t`` for the half step, ``pi_{t+1/2}`` for the full step) at ``--temperature/--top-p/--top-k``;
  ``ref`` samples them from ``pi_ref``. ``--egpo-half-step false`` drops the half step: plain online IPO (the
  authors' ``estimate_extra_grad=False``), an ablation. Opponents ``y''`` (``--num-generations`` per prompt,
  default 1 as the authors') are always drawn from that policy at temperature 1: they *are* the opponent policy.
* The loss uses summed sequence log-probs (the paper's ``log pi(y|x)``); the authors' LM trainer divides by the
  length (``normalize_logprobs=True``) and can score response prefixes (``prefix_chunk_num``): not done here.
* The half step and the full step use the same prompts (the paper's update is per state); the authors' trainer
  feeds them consecutive batches.
* ``pi_ref`` is the starting model, kept frozen (a separate copy, also under LoRA).
* The paper's equation numbers are not cited: only its abstract and first page could be read from here; the
  equations above are the update and the loss as the authors' code computes them, and the derivation that
  links them is checked in ``tests/test_egpo.py`` (one SGD step = the mirror step; the extragradient step =
  the hand-written two-step recursion on rock-paper-scissors).
* Measured on the rock-paper-scissors judge in ``docs/selfplay.md`` (``benchmarks/selfplay_rps.py``).

Why not the trainer loop: its ``train_step`` takes one optimizer step per batch from the current parameters.
EGPO needs two gradient evaluations per update, fresh samples from the half-step policy between them, and a
restore of the parameters *and* the optimizer state before the second: a step the loop's seams (batch source,
forward, objective) cannot express without a flag deep in the loop. :func:`train_egpo` is a small loop of its
own built from the same parts (``load_policy``, ``build_optimizer``, ``sequence_logps``, the run directory's
``config.yaml``/``metrics.jsonl``/lock, ``save_final``). Resume: refused with a one-line error (no exact resume
of the extragradient state); ``--save-every N`` writes ``snapshots/step-N/`` (Hugging Face directories) for
inspection, ``final/`` holds the last policy.

>>> import torch
>>> online_ipo_loss(torch.tensor([0.5]), torch.tensor([0.1]), torch.tensor([0.2]), tau=0.5).tolist()
[0.0]
"""
from __future__ import annotations

import copy
import math
import random
import shutil
import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch
from torch import Tensor

from ..errors import ConfigError
from ..objectives.base import Objective, ObjectiveOutput, PairStats, hp, register

# ----------------------------------------------------------------------------- the loss


def online_ipo_loss(policy_logratio: Tensor, ref_logratio: Tensor, pref_gap: Tensor, tau: float) -> Tensor:
    """P47's online IPO loss per pair: ``(log pi(y)/pi(y') - log pi_ref(y)/pi_ref(y') - (P(y > y'') - P(y' >
    y''))/tau)^2``; ``pref_gap`` is ``P(y > y'') - P(y' > y'')`` (averaged over the opponents ``y''``)."""
    return (policy_logratio - ref_logratio - pref_gap / tau) ** 2


@register
@dataclass
class EGPO(Objective):
    __doc__ = ("EGPO's online IPO loss (P47): ``(log pi(y)/pi(y') - log pi_ref(y)/pi_ref(y') - (P(y > y'') - "
               "P(y' > y''))/tau)^2`` on a pair ``y, y'`` (chosen/rejected: the order is immaterial) whose "
               "preference gap against opponents ``y''`` of the policy is the ``margin`` column; ``preftune online "
               "--algo egpo`` takes extragradient steps on it (``preftune.online.egpo``).")
    name = "egpo"
    paper = "P47 (Zhou et al. 2025, EGPO) online IPO loss; zhourunlong/EGPO extragradient_trainer.py _compute_losses"
    kind = "pair"
    tau: float = hp(0.1, "KL regularisation towards pi_ref (the paper's tau; the authors' beta = 0.1)", low=0.0,
                    low_open=True)

    def __call__(self, stats: PairStats) -> ObjectiveOutput:  # type: ignore[override]
        self.check_stats(stats)
        if stats.margin is None or not stats.has_reference:
            raise ValueError("egpo needs pi_ref's log-probs and the preference gap P(y > y'') - P(y' > y'') in the "
                             "'margin' column (train_egpo fills both)")
        pol = stats.policy_chosen_logps - stats.policy_rejected_logps
        ref = stats.reference_chosen_logps - stats.reference_rejected_logps  # type: ignore[operator]
        gap = stats.margin.to(pol.dtype)
        return ObjectiveOutput(online_ipo_loss(pol, ref, gap, self.tau),
                               {"logratio": (pol - ref).detach().mean(), "pref_gap": gap.abs().mean()})


# ----------------------------------------------------------------------------- the extragradient step


def extragradient_step(params: Sequence[torch.nn.Parameter], optimizer: Any, sample: Callable[[], Any],
                       loss_fn: Callable[[Any], Tensor], *, max_grad_norm: float | None = None,
                       half_step: bool = True) -> dict[str, float]:
    """One EGPO update (P47): save ``theta_t`` and the optimizer state; ``sample()`` at ``theta_t`` (opponents from
    ``pi_t``) and step on ``loss_fn`` of it (half step); ``sample()`` again at ``theta_{t+1/2}``; restore
    ``theta_t`` and the optimizer state and step on ``loss_fn`` of the second sample, its gradient taken at
    ``theta_t``. ``half_step=False`` is plain online mirror descent (one sample at ``theta_t``, one step)."""
    from ..train.optim import grad_norm

    params = list(params)
    if not half_step:
        loss = loss_fn(sample())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        gn = grad_norm(params, max_grad_norm)
        optimizer.step()
        return {"loss": float(loss.detach()), "grad_norm": gn}
    saved = [p.detach().clone() for p in params]
    # state_dict() shares the state tensors that step() updates in place: copy them
    saved_opt = copy.deepcopy(optimizer.state_dict())
    half_loss = loss_fn(sample())
    optimizer.zero_grad(set_to_none=True)
    half_loss.backward()
    half_gn = grad_norm(params, max_grad_norm)
    optimizer.step()                                   # theta_{t+1/2}
    batch = sample()                                   # opponents (and pairs) from pi_{t+1/2}
    with torch.no_grad():
        for p, s in zip(params, saved):
            p.copy_(s)                                 # back to theta_t ...
    optimizer.load_state_dict(saved_opt)               # ... and to the optimizer state at t
    loss = loss_fn(batch)                              # L(theta; pi_{t+1/2}) at theta_t
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    gn = grad_norm(params, max_grad_norm)
    optimizer.step()                                   # theta_{t+1}
    return {"loss": float(loss.detach()), "loss/half": float(half_loss.detach()), "grad_norm": gn,
            "grad_norm/half": half_gn}


# ----------------------------------------------------------------------------- judging y, y' against y''


def preference_gaps(prefer: Any, reward: Any, prompts: list[str], y: list[str], y2: list[str], opp: list[str], k: int,
                    *, step: int, on_bad: str = "error") -> list[float | None]:
    """``mean_j P(y_i > y''_ij) - mean_j P(y'_i > y''_ij)`` for each prompt ``i`` (``opp[i * k + j]`` its k
    opponents); a preference function judges each of the 2k pairs, a reward gives ``sigmoid(r_a - r_b)``
    (Bradley-Terry). Opponents left unjudged (None) are left out of both means; None when none is left."""
    from .selfplay import judge_pairs

    B = len(prompts)
    if prefer is not None:
        a = [t for i in range(B) for t in (y[i], y2[i]) for _ in range(k)]
        b = [opp[i * k + j] for i in range(B) for _ in range(2) for j in range(k)]
        ps = [prompts[i] for i in range(B) for _ in range(2 * k)]
        probs = judge_pairs(prefer, ps, a, b, step=step, on_bad=on_bad)
        pw = [probs[i * 2 * k:i * 2 * k + k] for i in range(B)]
        pl = [probs[i * 2 * k + k:(i + 1) * 2 * k] for i in range(B)]
    else:
        texts = [t for i in range(B) for t in (y[i], y2[i], *opp[i * k:(i + 1) * k])]
        total, _ = reward.parts([prompts[i] for i in range(B) for _ in range(k + 2)], texts, {}, step=step,
                                on_bad=on_bad, skipped={})
        r = [total[i * (k + 2):(i + 1) * (k + 2)] for i in range(B)]

        def bt(a: float | None, b: float | None) -> float | None:
            return None if a is None or b is None else 1.0 / (1.0 + math.exp(b - a))

        pw = [[bt(r[i][0], r[i][2 + j]) for j in range(k)] for i in range(B)]
        pl = [[bt(r[i][1], r[i][2 + j]) for j in range(k)] for i in range(B)]
    out: list[float | None] = []
    for w, l in zip(pw, pl):
        both = [(a, b) for a, b in zip(w, l) if a is not None and b is not None]
        out.append(sum(a - b for a, b in both) / len(both) if both else None)
    return out


# ----------------------------------------------------------------------------- the runner


def train_egpo(cfg: Any, online: Any, prompts: list[Any], reward_or_preference: Any = None, *, model: Any = None,
               tokenizer: Any, callbacks: Sequence[Any] = ()) -> Any:
    """``preftune online --algo egpo``: ``cfg.max_steps`` EGPO updates (or ``cfg.epochs`` passes over the prompts,
    ``cfg.batch_size`` prompts per update), each two gradient evaluations (:func:`extragradient_step`). Returns a
    :class:`~preftune.train.loop.RunResult`; the output directory holds ``config.yaml``, ``run_info.json``,
    ``metrics.jsonl``, ``snapshots/step-N/`` (``--save-every``) and ``final/``."""
    from ..io import write_text
    from ..models.loading import load_model
    from ..objectives import build as build_objective
    from ..train.loop import RunResult, save_final, seed_everything
    from ..train.optim import build_optimizer
    from ..train.rundir import (append_metrics, clear_run, prepare_run_dir, remove_stale_temps, run_lock,
                                write_config)
    from ..train.setup import load_policy, pick_device, quiet_transformers
    from .selfplay import judge_sources

    if cfg.resume:
        raise ConfigError("egpo does not resume (the extragradient step keeps no resumable checkpoint); start over "
                          "with --overwrite, or continue from final/ as a new run's --model")
    if cfg.grad_accum != 1:
        raise ConfigError(f"egpo takes one batch per extragradient half step: grad_accum must be 1, got "
                          f"{cfg.grad_accum} (raise --batch-size instead)")
    if online.egpo_pairs not in ("policy", "ref"):
        raise ConfigError(f"egpo_pairs must be policy or ref, got {online.egpo_pairs}")
    if not prompts:
        raise ConfigError("egpo: no prompts")
    if callbacks:  # they hook into the trainer's loop, which this runner does not use
        print(f"preftune: egpo: {len(callbacks)} callback(s) given are not run (egpo has its own update loop)")
    prefer, reward = judge_sources(online, reward_or_preference, "egpo")
    objective = build_objective(cfg.loss, **cfg.loss_params)
    if objective.name != "egpo":
        raise ConfigError(f"--algo egpo trains the egpo objective (online IPO), not {objective.name}")
    k = online.k
    per_epoch = math.ceil(len(prompts) / cfg.batch_size)
    total = cfg.max_steps or max(1, math.ceil(cfg.epochs * per_epoch))

    out, _ = prepare_run_dir(cfg)
    with run_lock(out), quiet_transformers(not cfg.progress):
        if cfg.overwrite:
            gone = clear_run(out) + (["snapshots"] if (out / "snapshots").is_dir() else [])
            shutil.rmtree(out / "snapshots", ignore_errors=True)
            if gone:
                print(f"preftune: --overwrite: removed the previous run's {', '.join(gone)} from {out}")
        remove_stale_temps(out)
        seed_everything(cfg.seed)
        device = pick_device(cfg.device)
        policy = load_policy(cfg, model, device)
        # pi_ref: the starting policy, frozen and apart from the policy trained in place
        ref = load_model(cfg.model, dtype=cfg.dtype, device=device) if cfg.model else copy.deepcopy(policy)
        ref.eval().requires_grad_(False)
        params = [p for p in policy.parameters() if p.requires_grad]
        optimizer, scheduler = build_optimizer(params, cfg, total)
        write_config(out, cfg, extra={"online": {**online.to_dict(), "algo": "egpo"}}, info={
            "algo": "egpo", "objective": objective.name, "objective_config": objective.config(),
            "reference": "pi_ref: the starting model, frozen", "prompts": len(prompts), "opponents_per_prompt": k,
            "pairs_from": online.egpo_pairs, "half_step": online.egpo_half_step, "total_steps": total})
        ptexts = [p.text for p in prompts]
        order: list[int] = []
        history: list[dict[str, Any]] = []
        calls = [0]
        last: dict[str, float] = {}  # the last loss evaluation's metrics, for the step's record

        def sample_at(idx: list[int]) -> Callable[[], dict[str, Any]]:
            def sample() -> dict[str, Any]:
                calls[0] += 1
                return _sample(cfg, online, policy, ref, tokenizer, [prompts[i] for i in idx],
                               [ptexts[i] for i in idx], prefer, reward, k, seed=cfg.seed * 1_000_003 + calls[0],
                               step=len(history) + 1)
            return sample

        def loss_fn(batch: dict[str, Any]) -> Tensor:
            return _loss(policy, objective, batch, cfg, last)

        for step in range(1, total + 1):
            t0 = time.perf_counter()
            while len(order) < cfg.batch_size:  # next epoch's order, appended
                rng = random.Random(cfg.seed * 7919 + step + len(order))
                more = list(range(len(prompts)))
                rng.shuffle(more)
                order += more
            idx, order = order[:cfg.batch_size], order[cfg.batch_size:]
            policy.train()
            rec = extragradient_step(params, optimizer, sample_at(idx), loss_fn, max_grad_norm=cfg.max_grad_norm,
                                     half_step=online.egpo_half_step)
            scheduler.step()
            rec.update(step=step, lr=scheduler.get_last_lr()[0], epoch=(step * cfg.batch_size) / len(prompts),
                       seconds=time.perf_counter() - t0, **{f"egpo/{a}": b for a, b in last.items()})
            history.append(rec)
            if step % cfg.log_every == 0 or step == total:
                append_metrics(out / "metrics.jsonl", rec)
            if cfg.save_every and step % cfg.save_every == 0 and step < total:
                save_final(policy, tokenizer, out / "snapshots" / f"step-{step}")
                snaps = sorted((out / "snapshots").glob("step-*"), key=lambda p: int(p.name[5:]))
                for old in snaps[:-cfg.keep_checkpoints] if cfg.keep_checkpoints else []:
                    shutil.rmtree(old, ignore_errors=True)
            if cfg.progress:
                print(f"egpo step {step}/{total}: loss {rec['loss']:.4f}")
        final_dir = save_final(policy, tokenizer, out / "final") if cfg.save_final else None
        write_text(out / "egpo.json", '{"steps": %d, "complete": true}\n' % total)
    return RunResult(out, final_dir, history, [], policy, tokenizer, {}, 0, False, total)


@torch.no_grad()
def _sample(cfg: Any, online: Any, policy: Any, ref: Any, tokenizer: Any, prompts: list[Any], ptexts: list[str],
            prefer: Any, reward: Any, k: int, *, seed: int, step: int) -> dict[str, Any]:
    """Pairs ``y, y'`` (from the policy as it is now, or pi_ref) and ``k`` opponents ``y''`` from the policy as it is
    now, judged; pi_ref's log-ratio of each pair. Prompts whose opponents were all left unjudged are dropped."""
    from ..data.collate import collate_pairs
    from ..data.types import TokenizedPair
    from ..models.generate import generate
    from ..models.logprobs import sequence_logps
    from ..models.scoring import eval_mode

    ids = [p.ids for p in prompts]
    gen = dict(max_new_tokens=online.max_new_tokens, batch_size=online.generation_batch_size, progress=False)
    with eval_mode(policy):
        if online.egpo_pairs == "policy" and (online.temperature, online.top_p, online.top_k) == (1.0, 1.0, 0):
            # pairs and opponents from the same distribution: one generate call, 2 + k samples per prompt
            both = generate(policy, tokenizer, ids, n=2 + k, seed=seed, **gen)
            pairs = [g for i in range(len(ids)) for g in both[i * (2 + k):i * (2 + k) + 2]]
            opps = [g for i in range(len(ids)) for g in both[i * (2 + k) + 2:(i + 1) * (2 + k)]]
        else:
            pairs = generate(policy if online.egpo_pairs == "policy" else ref, tokenizer, ids, n=2, seed=seed,
                             temperature=online.temperature, top_p=online.top_p, top_k=online.top_k, **gen)
            opps = generate(policy, tokenizer, ids, n=k, seed=seed + 500_009, temperature=1.0, top_p=1.0, top_k=0,
                            **gen)
    dec = tokenizer.batch_decode([g.response_ids for g in pairs + opps], skip_special_tokens=True)
    y, y2, opp = dec[0:2 * len(ids):2], dec[1:2 * len(ids):2], dec[2 * len(ids):]
    gaps = preference_gaps(prefer, reward, ptexts, y, y2, opp, k, step=step, on_bad=online.on_bad_reward)
    keep = [i for i, g in enumerate(gaps) if g is not None]
    if not keep:
        raise ConfigError(f"egpo step {step}: no pair was judged against its opponents; nothing to train on")
    items = [TokenizedPair(ids[i], pairs[2 * i].response_ids, pairs[2 * i + 1].response_ids, row=i + 1)
             for i in keep]
    batch = collate_pairs(items, tokenizer.pad_token_id).to(next(policy.parameters()).device)
    sums = sequence_logps(ref, batch, chunk_size=cfg.chunk_size).sums.float()
    n = len(items)
    return {"batch": batch, "ref_chosen": sums[:n], "ref_rejected": sums[n:],
            "gap": torch.tensor([gaps[i] for i in keep], dtype=torch.float32, device=sums.device)}


def _loss(policy: Any, objective: Objective, data: dict[str, Any], cfg: Any, metrics: dict[str, float]) -> Tensor:
    from ..models.logprobs import sequence_logps

    sums = sequence_logps(policy, data["batch"], chunk_size=cfg.chunk_size).sums
    n = data["gap"].shape[0]
    stats = PairStats(policy_chosen_logps=sums[:n], policy_rejected_logps=sums[n:],
                      reference_chosen_logps=data["ref_chosen"].to(sums.dtype),
                      reference_rejected_logps=data["ref_rejected"].to(sums.dtype), margin=data["gap"])
    out = objective(stats)
    metrics.clear()
    metrics.update(pairs=float(n), **{a: float(b) for a, b in out.metrics.items()})
    return out.loss.mean()


__all__ = ["EGPO", "extragradient_step", "online_ipo_loss", "preference_gaps", "train_egpo"]
