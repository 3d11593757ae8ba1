"""Batch norm (train vs eval, running statistics) and LRN against naive references."""
import copy
import functools
import operator
import threading
import types

import numpy
import pytest
from hypothesis import given
from hypothesis import strategies as st

from gpunet import nn, ops
from gpunet.backend import to_numpy

from .helpers import assert_close, batch_norm_ref, lrn_ref, numeric_vjp


@pytest.mark.parametrize("shape", [(4, 3), (2, 3, 5), (2, 3, 4, 5), (1, 2, 3, 3), (5, 1, 1, 1)])
def test_batch_norm_train_matches_reference(xp, shape, rng):
    x = rng.standard_normal(shape) * 3 + 2
    gamma, beta = rng.standard_normal(shape[1]), rng.standard_normal(shape[1])
    run_mean, run_var = xp.zeros(shape[1]), xp.ones(shape[1])
    y, ctx = ops.batch_norm_forward(xp.asarray(x), xp.asarray(gamma), xp.asarray(beta),
                                    run_mean, run_var, training=True, eps=1e-5)
    assert_close(y, batch_norm_ref(x, gamma, beta, 1e-5), 1e-10, 1e-10, "y")
    dy = rng.standard_normal(shape)
    dx, dgamma, dbeta = ctx.backward(xp.asarray(dy))
    ref_dx = numeric_vjp(lambda z: batch_norm_ref(z, gamma, beta, 1e-5), x, dy)
    assert_close(dx, ref_dx, 1e-6, 1e-7, "dx")
    ref_dgamma = numeric_vjp(lambda g: batch_norm_ref(x, g, beta, 1e-5), gamma, dy)
    assert_close(dgamma, ref_dgamma, 1e-6, 1e-7, "dgamma")
    axes = (0,) + tuple(range(2, len(shape)))
    assert_close(dbeta, dy.sum(axis=axes), 1e-12, 1e-12, "dbeta")


def test_running_statistics_follow_pytorch(xp, rng):
    """running = (1 - m) running + m batch, with the unbiased variance."""
    bn = nn.BatchNorm2d(3, momentum=0.2)
    batches = [rng.standard_normal((4, 3, 2, 2)) * (i + 1) + i for i in range(3)]
    mean, var = numpy.zeros(3), numpy.ones(3)
    for b in batches:
        bn(xp.asarray(b.astype("float32")))
        m = b.size // 3
        mean = 0.8 * mean + 0.2 * b.mean(axis=(0, 2, 3))
        var = 0.8 * var + 0.2 * b.var(axis=(0, 2, 3)) * m / (m - 1)
    assert_close(bn.running_mean, mean, 1e-5, 1e-6, "running_mean")
    assert_close(bn.running_var, var, 1e-5, 1e-6, "running_var")
    assert int(bn.num_batches_tracked) == 3


def test_eval_uses_running_statistics(xp, rng):
    bn = nn.BatchNorm1d(2)
    bn.weight.data[...] = xp.asarray([2.0, 0.5])
    bn.bias.data[...] = xp.asarray([1.0, -1.0])
    bn.running_mean[...] = xp.asarray([1.0, -2.0])
    bn.running_var[...] = xp.asarray([4.0, 0.25])
    bn.eval()
    x = rng.standard_normal((1, 2)).astype("float32")  # a batch of one is fine in eval
    expected = (x - [1.0, -2.0]) / numpy.sqrt(numpy.array([4.0, 0.25]) + 1e-5) * [2, 0.5] + [1, -1]
    assert_close(bn(xp.asarray(x)), expected, 1e-6, 1e-6)
    before = to_numpy(bn.running_mean).copy()
    dx = bn.backward(xp.ones((1, 2), dtype="float32"))
    assert_close(dx, numpy.array([[2, 0.5]]) / numpy.sqrt([4.0 + 1e-5, 0.25 + 1e-5]), 1e-6, 1e-6)
    assert_close(bn.running_mean, before, 0, 0, "eval must not update running stats")


def test_train_output_is_normalised_per_channel(rng):
    x = (rng.standard_normal((16, 4, 5, 5)) * [[[[1]], [[10]], [[0.1]], [[3]]]] + 7)
    y = nn.BatchNorm2d(4)(x.astype("float32"))
    assert_close(y.mean(axis=(0, 2, 3)), numpy.zeros(4), 0, 1e-5, "mean")
    assert_close(y.std(axis=(0, 2, 3)), numpy.ones(4), 1e-3, 1e-3, "std")


def test_float32_batch_norm_large_mean_small_std(xp, rng):
    """Two-pass variance: mean 1e4 and std 1e-2 do not cancel to NaN or 0, and x is
    centred as ``(x - pivot) - offset``, never by a float32 mean near 1e4 (rounded
    by 5e-4, a twentieth of the std). With the default eps (1e-5, a tenth of var =
    1e-4) the output std is sqrt(1e-4 / 1.1e-4), as in float64 and PyTorch; with a
    negligible eps it is 1."""
    x = (1e4 + 1e-2 * rng.standard_normal((64, 2, 4, 4))).astype("float32")
    y = to_numpy(nn.BatchNorm2d(2)(xp.asarray(x)))
    assert numpy.isfinite(y).all()
    ref = batch_norm_ref(x.astype("float64"), numpy.ones(2), numpy.zeros(2), 1e-5)
    assert_close(y, ref, 1e-3, 1e-3, "float32 vs float64")
    y = to_numpy(nn.BatchNorm2d(2, eps=1e-12)(xp.asarray(x)))
    assert_close(y.std(axis=(0, 2, 3)), numpy.ones(2), 1e-2, 1e-2, "std")


class _ThreadRanks:
    """A distributed world of ``size`` ranks as threads of this process (what
    batch norm asks of ``gpunet.distributed.World``: ``size``, ``sum``, ``all_reduce``
    in place), each rank's sums added in rank order."""

    def __init__(self, size):
        self.size, self._barrier, self._slots = size, threading.Barrier(size), [None] * size

    def rank(self, rank):
        world = copy.copy(self)
        world.rank = rank
        return world

    def _gather(self, values):
        self._slots[self.rank] = values
        self._barrier.wait()
        everyone = list(self._slots)
        self._barrier.wait()
        return everyone

    def sum(self, values):
        return [float(sum(column)) for column in zip(*self._gather(list(values)))]

    def all_reduce(self, arrays):
        everyone = self._gather([a.copy() for a in arrays])
        for i, a in enumerate(arrays):
            a[...] = functools.reduce(operator.add, (theirs[i] for theirs in everyone))


def test_synchronised_batch_norm_keeps_the_pivot_shift(rng):
    """Two ranks' halves of a float32 batch of mean 1e4 and std 1e-2, normalised by
    their shared statistics, give one process's output and input gradient: the
    synchronised sums are of offsets from a shared pivot too (a plain float32 sum of
    values near 1e4 loses the mean to a tenth of the std)."""
    x = (1e4 + 1e-2 * rng.standard_normal((64, 2, 4, 4))).astype("float32")
    dy = rng.standard_normal(x.shape).astype("float32")
    gamma, beta = numpy.ones(2, "float32"), numpy.zeros(2, "float32")
    ref = batch_norm_ref(x.astype("float64"), numpy.ones(2), numpy.zeros(2), 1e-5)
    one, one_ctx = ops.batch_norm_forward(x, gamma, beta, numpy.zeros(2), numpy.ones(2),
                                          training=True)
    one_dx = one_ctx.backward(dy)[0]
    world, results = _ThreadRanks(2), [None, None]

    def rank(r):
        rows = slice(32 * r, 32 * (r + 1))
        y, ctx = ops.batch_norm_forward(x[rows], gamma, beta, numpy.zeros(2), numpy.ones(2),
                                        training=True, world=world.rank(r))
        results[r] = y, ctx.backward(dy[rows])[0]

    threads = [threading.Thread(target=rank, args=(r,)) for r in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    y, dx = (numpy.concatenate(parts) for parts in zip(*results))
    assert_close(y, ref, 1e-3, 1e-3, "synchronised y vs float64")
    assert_close(y, one, 1e-3, 1e-3, "synchronised y vs one process")
    assert_close(dx, one_dx, 1e-2, 1e-3 * float(numpy.abs(one_dx).max()), "dx vs one process")


def _bn_model():
    """Batch norms at three depths: a child, inside a block's nested Sequential, and
    a 1-d one inside a ModuleList."""
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4),
                         nn.BasicBlock(4, 6, stride=2), nn.Flatten(),
                         nn.ModuleList([nn.Linear(6 * 2 * 2, 5), nn.BatchNorm1d(5)]))


def test_convert_sync_batchnorm_replaces_nested_batch_norms_keeping_their_state(rng):
    model = _bn_model()
    model[1](model[0](rng.standard_normal((2, 3, 4, 4)).astype("float32")))  # running stats move
    model[2].eval()
    keys = list(model.state_dict())
    before = dict(model.named_modules())
    params = {name: p for name, p in model.named_parameters()}
    buffers = {name: b for name, b in model.named_buffers()}
    assert model.state_dict()["1.running_mean"].any()
    group = types.SimpleNamespace(size=2, all_reduce=None, sum=None)  # a group's shape
    converted = nn.convert_sync_batchnorm(model, process_group=group)
    assert converted is model
    after = dict(model.named_modules())
    assert after.keys() == before.keys()
    norms = [name for name, m in before.items() if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d))]
    assert norms == ["1", "2.bn1", "2.bn2", "2.downsample.1", "4.1"]
    for name, module in after.items():
        if name in norms:
            assert type(module) is nn.SyncBatchNorm and module.process_group is group
            assert module.num_features == before[name].num_features
            assert module.eps == before[name].eps and module.momentum == before[name].momentum
            assert module.training == before[name].training
        else:
            assert module is before[name]
    assert not after["2.bn1"].training and after["1"].training
    # the same Parameter objects (an optimizer made before still updates them) and arrays
    assert all(p is params[name] for name, p in model.named_parameters())
    assert all(b is buffers[name] for name, b in model.named_buffers())
    assert list(model.state_dict()) == keys
    root = nn.BatchNorm2d(3, momentum=None)
    synced = nn.SyncBatchNorm.convert_sync_batchnorm(root)
    assert type(synced) is nn.SyncBatchNorm and synced.weight is root.weight
    assert synced.momentum is None and synced.running_var is root.running_var


def _bn_pair(num_features, **sync_args):
    plain, synced = nn.BatchNorm2d(num_features), nn.SyncBatchNorm(num_features, **sync_args)
    synced.load_state_dict(plain.state_dict())
    return plain, synced


def _run(bn, x, dy):
    y = bn(x)
    dx = bn.backward(dy)
    return y, dx, bn.weight.grad.copy(), bn.bias.grad.copy(), bn.running_mean.copy(), \
        bn.running_var.copy()


class _OneProcess:
    size = 1

    def all_reduce(self, arrays):
        raise AssertionError("a group of one process has nothing to reduce")

    sum = all_reduce


@pytest.mark.parametrize("group", [None, _OneProcess()], ids=["no group", "group of one"])
def test_sync_batch_norm_in_one_process_is_batch_norm(xp, group, rng):
    x = xp.asarray(rng.standard_normal((4, 3, 5, 5)).astype("float32") * 2 + 1)
    dy = xp.asarray(rng.standard_normal(x.shape).astype("float32"))
    plain, synced = _bn_pair(3, process_group=group)
    for step in range(2):
        for got, want in zip(_run(synced, x, dy), _run(plain, x, dy)):
            assert numpy.array_equal(to_numpy(got), to_numpy(want)), f"step {step}"
    plain.eval()
    synced.eval()
    assert numpy.array_equal(to_numpy(synced(x)), to_numpy(plain(x)))


def test_sync_batch_norm_reduces_over_its_process_group(rng):
    """Two ranks (threads) with their halves of a batch give one process's batch norm
    of the whole: output, input and parameter gradients (summed over the ranks, as
    the gradient average does with the loss's 1/2), running statistics on each."""
    x = rng.standard_normal((8, 3, 4, 4)) * 2 + 1
    dy = rng.standard_normal(x.shape)
    plain = nn.BatchNorm2d(3).to(dtype="float64")
    whole = _run(plain, x, dy)
    world, results = _ThreadRanks(2), [None, None]

    def rank(r):
        synced = nn.SyncBatchNorm(3, process_group=world.rank(r)).to(dtype="float64")
        rows = slice(4 * r, 4 * (r + 1))
        results[r] = _run(synced, x[rows], dy[rows])

    threads = [threading.Thread(target=rank, args=(r,)) for r in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert_close(numpy.concatenate([results[0][0], results[1][0]]), whole[0], 1e-12, 1e-12, "y")
    assert_close(numpy.concatenate([results[0][1], results[1][1]]), whole[1], 1e-10, 1e-12,
                 "dx")
    for i, what in [(2, "dweight"), (3, "dbias")]:
        assert_close(results[0][i] + results[1][i], whole[i], 1e-12, 1e-12, what)
    for r in range(2):
        for i, what in [(4, "running_mean"), (5, "running_var")]:
            assert_close(results[r][i], whole[i], 1e-12, 1e-12, f"rank {r} {what}")


class _TwoIdenticalProcesses:
    """A group of two processes holding the same rows: every sum is twice this one's."""

    size = 2

    def all_reduce(self, arrays):
        for a in arrays:
            a *= 2

    def sum(self, values):
        return [2.0 * v for v in values]


def test_sync_batch_norm_without_a_group_reduces_over_the_registered_one(monkeypatch, rng):
    """``process_group=None`` takes what gpunet.distributed.init registers: here a group
    of two processes with the same rows, so the statistics are of ``x`` twice over
    (the unbiased running variance counts ``2 m`` values)."""
    from gpunet import _process_group
    x = rng.standard_normal((4, 3, 2, 2)) * 2 + 1
    plain = nn.BatchNorm2d(3).to(dtype="float64")
    y_twice = plain(numpy.concatenate([x, x]))
    synced = nn.SyncBatchNorm(3).to(dtype="float64")
    monkeypatch.setattr(_process_group, "_default", _TwoIdenticalProcesses())
    assert_close(synced(x), y_twice[:4], 1e-12, 1e-12, "y")
    assert_close(synced.running_var, plain.running_var, 1e-12, 1e-12, "running_var")
    single = nn.BatchNorm2d(3).to(dtype="float64")
    single(x)
    assert not numpy.allclose(single.running_var, synced.running_var)  # m/(m-1) differs


def test_batch_of_one_in_training_is_an_error():
    with pytest.raises(ValueError, match="more than one value per channel"):
        nn.BatchNorm1d(3)(numpy.zeros((1, 3), "float32"))


def test_momentum_none_is_a_cumulative_average(rng):
    bn = nn.BatchNorm1d(2, momentum=None)
    batches = [rng.standard_normal((5, 2)).astype("float32") for _ in range(4)]
    for b in batches:
        bn(b)
    assert_close(bn.running_mean, numpy.mean([b.mean(0) for b in batches], axis=0), 1e-5, 1e-6)


@pytest.mark.torch
def test_batch_norm_matches_torch(rng):
    torch = pytest.importorskip("torch")
    ours, theirs = nn.BatchNorm2d(3).to(dtype="float64"), torch.nn.BatchNorm2d(3).double()
    for _ in range(3):
        x = rng.standard_normal((4, 3, 5, 5)) * 2 + 1
        assert_close(ours(x), theirs(torch.from_numpy(x)).detach().numpy(), 1e-12, 1e-12)
    assert_close(ours.running_var, theirs.running_var.numpy(), 1e-12, 1e-12)
    ours.eval()
    theirs.eval()
    x = rng.standard_normal((2, 3, 5, 5))
    assert_close(ours(x), theirs(torch.from_numpy(x)).detach().numpy(), 1e-12, 1e-12)


# -- local response normalisation ---------------------------------------------------
@pytest.mark.parametrize("size,channels", [(5, 7), (3, 3), (2, 5), (4, 6), (1, 2), (7, 3)])
def test_lrn_matches_reference(xp, size, channels, rng):
    x = rng.standard_normal((2, channels, 3, 2)) * 3
    alpha, beta, k = 0.3, 0.75, 2.0
    y, ctx = ops.lrn_forward(xp.asarray(x), size, alpha, beta, k)
    assert_close(y, lrn_ref(x, size, alpha, beta, k), 1e-12, 1e-12, "y")
    dy = rng.standard_normal(x.shape)
    ref_dx = numeric_vjp(lambda z: lrn_ref(z, size, alpha, beta, k), x, dy)
    assert_close(ctx.backward(xp.asarray(dy))[0], ref_dx, 1e-6, 1e-7, "dx")


@given(size=st.integers(1, 6), channels=st.integers(1, 8), seed=st.integers(0, 2**16))
def test_lrn_random_shapes(size, channels, seed):
    rng = numpy.random.default_rng(seed)
    x = rng.standard_normal((1, channels, 2, 2)) * 2
    y, _ = ops.lrn_forward(x, size, 0.5, 0.75, 1.0)
    assert_close(y, lrn_ref(x, size, 0.5, 0.75, 1.0), 1e-12, 1e-12)


@pytest.mark.torch
def test_lrn_matches_torch(rng):
    torch = pytest.importorskip("torch")
    x = rng.standard_normal((2, 8, 4, 4)) * 10
    for size in (2, 3, 5):
        ours = nn.LocalResponseNorm(size, 1e-2, 0.75, 2.0)(x)
        ref = torch.nn.functional.local_response_norm(torch.from_numpy(x), size, 1e-2, 0.75, 2.0)
        assert_close(ours, ref.numpy(), 1e-12, 1e-12, f"size {size}")


@given(n=st.integers(2, 5), c=st.integers(1, 4), rest=st.lists(st.integers(1, 4), max_size=2),
       training=st.booleans(), seed=st.integers(0, 2**16))
def test_batch_norm_random_shapes(n, c, rest, training, seed):
    rng = numpy.random.default_rng(seed)
    shape = (n, c, *rest)
    x = rng.standard_normal(shape) * 2 + 1
    gamma, beta = rng.standard_normal(c), rng.standard_normal(c)
    mean, var = rng.standard_normal(c), rng.random(c) + 0.5
    y, ctx = ops.batch_norm_forward(x, gamma, beta, mean.copy(), var.copy(),
                                    training=training)
    if training:
        ref = lambda z: batch_norm_ref(z, gamma, beta, 1e-5)  # noqa: E731
    else:
        def ref(z):
            b = (1, c) + (1,) * len(rest)
            return (z - mean.reshape(b)) / numpy.sqrt(var.reshape(b) + 1e-5) * \
                gamma.reshape(b) + beta.reshape(b)
    assert_close(y, ref(x), 1e-10, 1e-10, "y")
    dy = rng.standard_normal(shape)
    assert_close(ctx.backward(dy)[0], numeric_vjp(ref, x, dy), 1e-5, 1e-7, "dx")


def test_sync_batch_norm_refuses_what_is_not_a_process_group_where_it_is_given():
    """PyTorch's fourth argument is ``affine``: ported code must not pass it as the
    group (keyword-only), and a group without size/all_reduce/sum is refused at once,
    not at the first reduction of a distributed run."""
    with pytest.raises(TypeError):
        nn.SyncBatchNorm(3, 1e-5, 0.1, True)
    with pytest.raises(TypeError, match=r"^process_group: expected a process group .* got "
                                        r"True \(no size, all_reduce, sum\)$"):
        nn.SyncBatchNorm(3, process_group=True)
    with pytest.raises(TypeError, match=r"^process_group: .*got 'world'"):
        nn.convert_sync_batchnorm(nn.Sequential(nn.BatchNorm2d(3)), process_group="world")
