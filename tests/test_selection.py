import pytest
import torch

from lens_bias import build_pairs, load_model
from lens_bias.attribution.patching import attribute
from lens_bias.errors import MaskError
from lens_bias.hooks.ablation import ablate
from lens_bias.selection.topk import select, select_iterative


@pytest.fixture(scope="module")
def tiny():
    return load_model("tiny-random", device="cpu", dtype=torch.float64)


@pytest.fixture(scope="module")
def pairs():
    return build_pairs(["finance", "hiring"]).sample(3, seed=0)


def test_one_step_is_the_plain_selection(tiny, pairs):
    m, rounds = select_iterative(tiny, pairs, 9, steps=1, progress=False)
    plain = select(attribute(tiny, pairs, components=("neurons",), progress=False), 9, bridge=tiny)
    assert torch.equal(m.neurons, plain.neurons) and len(rounds) == 1


def test_later_rounds_rescore_under_the_ablation(tiny, pairs):
    m, rounds = select_iterative(tiny, pairs, 10, steps=3, progress=False)
    assert m.counts() == {"neurons": 10, "heads": 0} and len(rounds) == 3
    # round 2 scores = attribution with round 1's units ablated
    first = select(rounds[0], 3, bridge=tiny)
    with ablate(tiny, first, "zero"):
        again = attribute(tiny, pairs, components=("neurons",), progress=False)
    assert torch.allclose(rounds[1].neurons, again.neurons)
    assert not torch.allclose(rounds[1].neurons, rounds[0].neurons)
    # units already pruned have no effect left to remove
    assert rounds[1].neurons[~first.neurons].abs().max() == 0
    assert set(first.pruned("neurons")) <= set(m.pruned("neurons"))
    assert rounds[1].settings["metric_before"] != rounds[0].settings["metric_before"]


def test_heads_and_bad_input(tiny, pairs):
    m, _ = select_iterative(tiny, pairs, 3, kind="heads", steps=2, progress=False)
    assert m.counts() == {"neurons": 0, "heads": 3}
    with pytest.raises(MaskError, match="steps"):
        select_iterative(tiny, pairs, 3, steps=0, progress=False)
    with pytest.raises((MaskError, TypeError), match="kind"):  # a TypeError where beartype checks `Kind`
        select_iterative(tiny, pairs, 3, kind="both", progress=False)


def test_budget_value_object(tiny):
    from lens_bias.selection.topk import Budget, budget_count, parse_budget

    b = Budget.parse("0.5%")
    assert (b.unit, b.value) == parse_budget("0.5%") == ("fraction", 0.005)
    assert Budget.parse(b) is b and b == Budget("fraction", 0.005) and str(b) == "0.5%"
    assert str(Budget("params", 0.0013)) == "0.13%params" and str(Budget("count", 7.0)) == "7"
    for given in ("2%", 7, "0.5%params", 0.1):
        assert Budget.parse(given).count(tiny, "heads" if given == 7 else "neurons") == \
            budget_count(tiny, "heads" if given == 7 else "neurons", given)
    with pytest.raises(MaskError, match="invalid budget"):
        Budget.parse("half")
    with pytest.raises(AttributeError):
        b.value = 1.0  # frozen
