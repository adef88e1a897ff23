"""Shared fixtures: a tiny offline model + tokenizer and a small learnable preference set."""
from __future__ import annotations

import random

import pytest
import torch

torch.set_num_threads(max(1, min(2, torch.get_num_threads())))


def arithmetic_rows(n: int, seed: int = 0) -> list[dict]:
    """Pairs where the chosen answer is the correct sum and the rejected one is off by 1-3."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        a, b = rng.randint(0, 9), rng.randint(0, 9)
        wrong = a + b + rng.choice([-3, -2, -1, 1, 2, 3])
        rows.append({"prompt": f"{a}+{b}=", "chosen": f"{a + b}", "rejected": f"{max(wrong, 0) if wrong != a + b else a + b + 1}"})
    return rows


@pytest.fixture(scope="module")
def one_torch_thread():
    """One intra-op thread for a module of tiny models (faster than two on a loaded machine: no contention);
    the previous setting is restored after. Use with ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory):
    """A saved tiny Llama + BPE tokenizer directory (random weights)."""
    from preftune.models.tiny import make_tiny

    texts = [f"{r['prompt']}{r['chosen']}" for r in arithmetic_rows(400, seed=1)] + ["hello world"] * 5
    out = tmp_path_factory.mktemp("tiny") / "model"
    make_tiny(out, texts, vocab_size=128, hidden_size=32, num_layers=2, num_heads=4, seed=0)
    return out


@pytest.fixture
def pair_rows():
    return arithmetic_rows(32, seed=2)


def _parity_task_classes():
    from preftune.arena.tasks import Task

    class EvenTask(Task):
        """Answer 'e' if the prompt's number is even, else 'o'. Reward 1 for right, 0 otherwise."""

        name = "even"
        max_new_tokens = 3
        top = 99  # prompts 'n 0:' .. 'n 99:'

        def sample_prompts(self, n, rng):
            return [f"n {rng.randint(0, self.top)}:" for _ in range(n)]

        def reward(self, prompt, response):
            return float(response == ("e" if int(prompt[2:-1]) % 2 == 0 else "o"))

        def demonstrations(self, n, rng):
            return [(p, rng.choice("eo")) for p in self.sample_prompts(n, rng)]

    class SevenTask(EvenTask):
        """Only seven possible prompts: answer 'e' if the number is even, else 'o'."""

        name = "seven"
        top = 6

    return EvenTask, SevenTask


# Tiny arena tasks the arena tests share (fast to learn: a one-letter answer).
EvenTask, SevenTask = _parity_task_classes()
