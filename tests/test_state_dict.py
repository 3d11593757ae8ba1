"""load_state_dict(strict=False): missing and unexpected keys as PyTorch reports them."""
import numpy
import pytest

from gpunet import nn

from .helpers import assert_close, tiny_model


def _model():
    return nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))


def _partial_state(model):
    state = model.state_dict()
    del state["2.bias"], state["1.running_var"]
    state["3.weight"] = numpy.ones((2, 2), "float32")
    state["0.weight"] = numpy.full((4, 3), 7.0, "float32")
    return state


@pytest.mark.torch
def test_strict_false_loads_what_matches_and_reports_the_rest_as_torch():
    torch = pytest.importorskip("torch")
    model, source = _model(), _model()
    state = _partial_state(source)
    result = model.load_state_dict(state, strict=False)
    assert result.missing_keys == ["1.running_var", "2.bias"]
    assert result.unexpected_keys == ["3.weight"]
    assert (model[0].weight.data == 7.0).all()
    twin = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4),
                               torch.nn.Linear(4, 2))
    theirs = twin.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()},
                                  strict=False)
    assert sorted(theirs.missing_keys) == result.missing_keys
    assert sorted(theirs.unexpected_keys) == result.unexpected_keys
    missing, unexpected = result  # a named tuple, as torch's _IncompatibleKeys
    assert (missing, unexpected) == (result.missing_keys, result.unexpected_keys)


def test_strict_true_still_changes_nothing_on_a_mismatch():
    model = _model()
    before = model.state_dict()
    with pytest.raises(ValueError, match=r"missing keys \['1.running_var', '2.bias'\]; "
                                         r"unexpected keys \['3.weight'\]"):
        model.load_state_dict(_partial_state(_model()))
    after = model.state_dict()
    assert all((before[k] == after[k]).all() for k in before)
    assert model.load_state_dict(_model().state_dict()) == ([], [])


def test_strict_false_still_refuses_a_wrong_shape_and_writes_nothing():
    model = _model()
    state = _partial_state(_model())
    state["0.bias"] = numpy.zeros(5, "float32")
    with pytest.raises(ValueError, match=r"0.bias: expected shape \(4,\), got \(5,\)"):
        model.load_state_dict(state, strict=False)
    assert not (model[0].weight.data == 7.0).any()


def test_load_state_dict_converts_and_checks_everything_before_writing(rng):
    torch = pytest.importorskip("torch")
    model = tiny_model()
    before = {k: v.copy() for k, v in model.state_dict().items()}
    state = {k: numpy.full_like(v, 7.0) for k, v in before.items()}
    last = sorted(state)[-1]

    class Unconvertible:
        def __array__(self, *args, **kwargs):
            raise RuntimeError("this value cannot become an array")

    state[last] = Unconvertible()
    with pytest.raises(ValueError, match=f"{last}: cannot convert"):
        model.load_state_dict(state)
    for key, value in model.state_dict().items():
        assert numpy.array_equal(value, before[key]), f"{key} was changed"
    # PyTorch tensors that require grad load (detached)
    tensors = {k: torch.tensor(v + 1.0, requires_grad=True) for k, v in before.items()}
    model.load_state_dict(tensors)
    assert_close(model.state_dict()["1.weight"], before["1.weight"] + 1, 0, 0)


def test_a_pytorch_state_dict_without_num_batches_tracked_loads():
    model = nn.Sequential(nn.BatchNorm1d(3))
    state = {k: v for k, v in model.state_dict().items() if "num_batches_tracked" not in k}
    model.load_state_dict(state)
    with pytest.raises(ValueError, match="missing keys"):
        model.load_state_dict({})
