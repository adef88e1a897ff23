"""Training in rounds (iterative DPO, SPPO, INPO): each round samples from the round's starting policy pi_t, turns
the samples into a fixed dataset (``round-t/<data file>``, token ids kept), and trains an offline run in
``round-t/`` with pi_t as the reference; the next round starts from ``round-t/final``. ``rounds.json`` summarises
the rounds and the last policy is copied to ``final/``.

A finished round (its ``final/`` exists) is skipped under ``--resume``, and an interrupted one resumes from its
checkpoint; an output directory that holds an earlier run's rounds is refused unless ``--resume`` or
``--overwrite`` (which removes them) is given.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, Callable, Sequence

from ..errors import ConfigError

# (round t, the policy pi_t) -> (rows to write, the round's summary)
MakeRows = Callable[[int, Any], "tuple[list[dict[str, Any]], dict[str, Any]]"]
# rows -> tokenized items of the objective's data kind
MakeItems = Callable[[list[dict[str, Any]]], list[Any]]


def run_rounds(cfg: Any, rounds: int, *, name: str, kind: str, data_file: str, make_rows: MakeRows,
               make_items: MakeItems, model: Any = None, tokenizer: Any, callbacks: Sequence[Any] = ()) -> Any:
    """Run ``rounds`` rounds; returns the last round's :class:`~preftune.train.loop.RunResult` with every round's
    history (each record tagged with its ``round``)."""
    from ..io import atomic_path, write_text
    from ..kinds import get_kind
    from ..models.loading import load_model
    from ..train.loop import train
    from ..train.setup import pick_device
    from ..train.sources import OfflineSource

    out = Path(cfg.output)
    if not cfg.save_final:
        raise ConfigError(f"{name} starts each round from the previous round's final/: do not turn off save_final")
    earlier = sorted(out.glob("round-*")) if out.is_dir() else []
    if earlier and not cfg.resume:
        if not cfg.overwrite:
            raise ConfigError(f"{out} holds the rounds of an earlier run ({', '.join(p.name for p in earlier)}); pass "
                              "--resume to continue it or --overwrite to start over")
        for p in [*earlier, out / "final", out / "rounds.json"]:
            shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
        print(f"preftune: --overwrite: removed the earlier run's {len(earlier)} round(s) from {out}")
    out.mkdir(parents=True, exist_ok=True)
    device = pick_device(cfg.device)
    history: list[dict[str, Any]] = []
    summary: list[dict[str, Any]] = []
    result = None
    policy_path: str | None = cfg.model or None
    policy = model
    dk = get_kind(kind)
    for t in range(1, rounds + 1):
        rdir = out / f"round-{t}"
        if (rdir / "final").is_dir():  # finished earlier: resume goes on with the next round
            policy_path, policy = str(rdir / "final"), None
            summary.append(read_round(rdir))
            continue
        if policy is None:
            if policy_path is None:
                raise ConfigError(f"{name} needs --model (or a model in memory)")
            policy = load_model(policy_path, device=device)
        data_path = rdir / data_file
        if not data_path.exists():
            rows, info = make_rows(t, policy)
            rdir.mkdir(parents=True, exist_ok=True)
            write_text(data_path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
            write_text(rdir / "round.json", json.dumps({"round": t, "algo": name, **info}))
            print(f"preftune: {name} round {t}: " + ", ".join(
                f"{a} {b:.4g}" if isinstance(b, float) else f"{a} {b}" for a, b in info.items()))
        rows = [json.loads(x) for x in data_path.read_text(encoding="utf-8").splitlines()]
        layout = cfg.layout if cfg.layout in ("auto", *dk.collators) else "auto"
        source = OfflineSource(make_items(rows), dk, dk.collator(layout, tokenizer.pad_token_id, device),
                               batch_size=cfg.batch_size, seed=cfg.seed + t, group_by_length=cfg.group_by_length,
                               name=str(data_path))
        # the trainer's reference is the round's starting model: pi_t
        rcfg = cfg.replace(data="", output=str(rdir), model=policy_path or cfg.model, ref_model=None,
                           resume=bool(cfg.resume) and (rdir / "checkpoints").is_dir())
        result = train(rcfg, model=policy if policy_path is None else None, tokenizer=tokenizer,
                       callbacks=callbacks, source=source)
        history += [{**r, "round": t} for r in result.history]
        policy_path, policy = str(rdir / "final"), None
        summary.append(read_round(rdir))
    write_text(out / "rounds.json", json.dumps(summary, indent=2))
    if policy_path and Path(policy_path) != out / "final":
        with atomic_path(out / "final", is_dir=True) as tmp:
            shutil.copytree(policy_path, tmp, dirs_exist_ok=True)
    if result is not None:
        result.history = history
    return result


def pair_items(rows: list[dict[str, Any]]) -> list[Any]:
    """A round's pair rows as tokenized pairs, token for token as sampled (decoding and re-encoding text need not
    give the same ids)."""
    from ..data.types import TokenizedPair

    return [TokenizedPair(r["prompt_ids"], r["chosen_ids"], r["rejected_ids"], row=i + 1) for i, r in enumerate(rows)]


def read_round(rdir: Path) -> dict[str, Any]:
    try:
        return json.loads((rdir / "round.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return {"round": rdir.name}


__all__ = ["pair_items", "read_round", "run_rounds"]
