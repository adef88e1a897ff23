"""preftune.ranking.get / available / describe and `preftune ranking list|bench`."""
import pytest
import torch

from preftune.errors import ConfigError
from preftune.ranking import available, describe, get, mw_loss


def test_every_method_is_reachable_by_name_with_its_paper_and_inputs():
    names = available()
    assert {"mw", "ranklist", "ldr_kl", "aldr_kl", "isogclr", "groco", "pld", "denoise", "saf", "ibcl"} <= set(names)
    for n in names:
        d = describe(n)
        assert d["paper"] and d["inputs"] and isinstance(d["hyperparameters"], dict)


def test_get_binds_hyperparameters_and_checks_them():
    s, y = torch.tensor([[2.0, -1.0, 0.5]]), torch.tensor([[1.0, 0.0, 1.0]])
    assert torch.allclose(get("mw", temperature=0.5)(s, y), mw_loss(s, y, temperature=0.5))
    assert get("mw") is mw_loss
    with pytest.raises(ConfigError, match="has no hyperparameter tau; valid: temperature"):
        get("mw", tau=1.0)
    with pytest.raises(ConfigError, match="needs num_samples"):
        get("aldr_kl")
    loss = get("aldr_kl", num_samples=8)
    assert isinstance(loss, torch.nn.Module)
    with pytest.raises(ConfigError, match="did you mean ranklist"):
        get("ranklst")


def test_the_list_command_and_a_bad_bench_method(capsys):
    from preftune.cli.main import main

    assert main(["ranking", "list", "mw"]) == 0
    out = capsys.readouterr().out
    assert "P43" in out and "temperature=1.0" in out
    assert main(["ranking", "bench", "--method", "nope"]) == 2
    assert "no benchmark for 'nope'" in capsys.readouterr().err
