"""kernels/optim.cu through the optimizers against their xp math, on the same
parameters and gradients.

Each optimizer and variant (Adam and AdamW with and without weight decay; SGD plain,
with momentum, dampening and Nesterov; the notes' momentum; RMSProp) runs several
steps (so that Adam's bias corrections 1 - beta^t change) on parameters of awkward
sizes, a decayed weight beside a bias that is not, once through the kernels and once
through the xp path, and every parameter and state array must agree: float64 to
1e-15 of the array's scale, float32 to a few ulp. Not bitwise in general: a GPU
contracts ``a b + c d`` into an FMA (one rounding fewer) and the kernels divide by a
reciprocal and an FMA correction, no IEEE division (bench/sass_check.py refuses its
out-of-line slow path); in the emulator, where g++ does not contract, the two paths
came out bitwise equal on these cases. The kernel path runs twice and must repeat
itself bit for bit.

Without a GPU the kernels run in tests/cuda_emulator on NumPy parameters (the
optimizers' dispatch told that kernels apply); under the CuPy test double (``gpu``)
on CuPy ones, the reference with kernels switched off (``GPUNET_KERNELS=0``'s switch).
"""
import numpy
import pytest

from gpunet import backend, config
from gpunet.cuda import optim as optim_kernels
from gpunet.cuda import runtime
from gpunet.nn.module import Parameter
from gpunet.optim import SGD, Adam, AdamW, Momentum, RMSProp

from . import cuda_emulator
from .helpers import assert_close, double_launch_recorder

needs_compiler = pytest.mark.skipif(cuda_emulator.compiler() is None,
                                    reason="g++ is needed to emulate the kernels on the CPU")

VARIANTS = {
    "adam": lambda ps: Adam(ps, lr=1e-2),
    "adam l2": lambda ps: Adam(ps, lr=1e-2, betas=(0.8, 0.95), weight_decay=0.1),
    "adamw": lambda ps: AdamW(ps, lr=1e-2, weight_decay=0.0),
    "adamw decay": lambda ps: AdamW(ps, lr=1e-2, weight_decay=0.3, eps=1e-6),
    "sgd": lambda ps: SGD(ps, lr=0.1),
    "sgd l2": lambda ps: SGD(ps, lr=0.1, weight_decay=0.05),
    "sgd momentum": lambda ps: SGD(ps, lr=0.1, momentum=0.9),
    "sgd dampening": lambda ps: SGD(ps, lr=0.1, momentum=0.9, dampening=0.9, weight_decay=0.01),
    "sgd nesterov": lambda ps: SGD(ps, lr=0.1, momentum=0.8, nesterov=True, weight_decay=0.02),
    "momentum": lambda ps: Momentum(ps, lr=0.1, beta=0.9),
    "momentum l2": lambda ps: Momentum(ps, lr=0.1, beta=0.7, weight_decay=0.1),
    "rmsprop": lambda ps: RMSProp(ps, lr=1e-2, beta=0.9),
    "rmsprop l2": lambda ps: RMSProp(ps, lr=1e-2, beta=0.99, eps=1e-6, weight_decay=0.1),
}
KERNEL = {"adam": "adam_step", "adamw": "adam_step", "sgd": "sgd_step",
          "momentum": "momentum_step", "rmsprop": "rmsprop_step"}
SIZES = [(1,), (7,), (1001,), (3, 5, 7)]  # one element, odd sizes, 1000 + odd, a weight
STEPS = 4
ULPS = 4


class Runner:
    """Where the kernels run: ``emulator`` (NumPy parameters, the optimizers told
    kernels apply, launches in tests/cuda_emulator) or ``cuda`` (CuPy: a GPU or the
    test double). ``run(kernels)`` runs a closure with the kernel path on or off."""

    def __init__(self, kind, monkeypatch, settings):
        self.kind, self.monkeypatch = kind, monkeypatch
        settings(poison=True)
        if kind == "emulator":
            monkeypatch.setattr(runtime, "launch", cuda_emulator.emulated_launch)
            self.xp = numpy
        else:
            reason = backend.cuda_unavailable_reason()
            if reason is not None:
                pytest.skip(f"no usable GPU: {reason}")
            self.xp = backend.Device("cuda").xp

    def run(self, kernels: bool, fn):
        with self.monkeypatch.context() as patch, config.override(kernels=kernels):
            if self.kind == "emulator":  # NumPy arrays: told the kernels apply
                patch.setattr(runtime, "uses_kernels", lambda xp: kernels)
            before = len(self._launches() or ())
            result = fn()
        if self._launches() is not None:  # the path asked for is the path taken
            assert (len(self._launches()) > before) == kernels
        return result

    def _launches(self):
        """The launches recorded so far: the emulator's, the CuPy test double's; None on
        a GPU."""
        if self.kind == "emulator":
            return cuda_emulator.launches
        if getattr(self.xp, "IS_TEST_DOUBLE", False):
            from cupy import _raw
            return _raw.launches
        return None


@pytest.fixture(params=[pytest.param("emulator", marks=needs_compiler),
                        pytest.param("cuda", marks=pytest.mark.gpu)])
def runner(request, monkeypatch, gpunet_settings):
    return Runner(request.param, monkeypatch, gpunet_settings)


def _train(runner, make, dtype, kernels, seed=7):
    """Parameters (a decayed weight of each of SIZES and an undecayed bias of 5) after
    STEPS steps of ``make``'s optimizer from seeded values and gradients, and its state,
    as NumPy arrays."""
    rng = numpy.random.default_rng(seed)
    xp = runner.xp
    params = [Parameter(xp.asarray(rng.standard_normal(shape).astype(dtype)), decay=True)
              for shape in SIZES] + [Parameter(xp.asarray(rng.standard_normal(5).astype(dtype)))]
    optimizer = make(params)

    def steps():
        for _ in range(STEPS):
            for p in params:
                p.grad[...] = xp.asarray(rng.standard_normal(p.shape).astype(dtype))
            optimizer.step()
    runner.run(kernels, steps)
    return [backend.to_numpy(p.data) for p in params], optimizer.state_dict()["state"]


def _assert_agree(got, ref, dtype, what):
    eps = numpy.finfo(dtype).eps
    rtol = 1e-15 if dtype == "float64" else ULPS * eps
    scale = float(numpy.abs(ref).max()) or 1.0
    assert_close(got, ref, rtol, rtol * scale, what)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("name", list(VARIANTS))
def test_optimizer_kernels_match_the_xp_math(runner, name, dtype):
    make = VARIANTS[name]
    weights, state = _train(runner, make, dtype, kernels=True)
    again_weights, again_state = _train(runner, make, dtype, kernels=True)
    ref_weights, ref_state = _train(runner, make, dtype, kernels=False)
    for i, (w, again, ref) in enumerate(zip(weights, again_weights, ref_weights)):
        assert numpy.array_equal(w, again), f"{name}: parameter {i} not bitwise reproducible"
        _assert_agree(w, ref, dtype, f"{name} {dtype}: parameter {i}")
    assert [sorted(s) for s in state] == [sorted(s) for s in ref_state]  # the same layout
    for i, (s, again, ref) in enumerate(zip(state, again_state, ref_state)):
        for key in ref:
            assert numpy.array_equal(s[key], again[key]), f"{name}: state[{i}][{key!r}]"
            _assert_agree(s[key], ref[key], dtype, f"{name} {dtype}: state[{i}][{key!r}]")


@pytest.mark.parametrize("name", ["adam", "adamw decay", "rmsprop"])
def test_a_gradient_whose_square_overflows_steps_as_the_xp_math(runner, name):
    """float32 gradients near 3e19 are finite but their squares are inf: the xp path
    divides by inf (a step of 0 where the first moment is finite), and the kernels'
    Newton square root and reciprocal must not turn that into NaN."""
    xp = runner.xp
    grads = numpy.array([3e19, -3e19, 1.0, 0.0, 2e19], numpy.float32)
    results = []
    for kernels in (True, False):
        param = Parameter(xp.asarray(numpy.linspace(-1, 1, 5).astype(numpy.float32)),
                          decay=True)
        optimizer = VARIANTS[name]([param])

        def step(param=param, optimizer=optimizer):
            param.grad[...] = xp.asarray(grads)
            optimizer.step()
        with numpy.errstate(over="ignore"):  # the xp path's g * g: the overflow on purpose
            runner.run(kernels, step)
        results.append(backend.to_numpy(param.data))
    got, ref = results
    assert numpy.isfinite(ref).all(), ref  # what the maths gives: no NaN
    assert numpy.array_equal(numpy.isnan(got), numpy.isnan(ref)), (got, ref)
    _assert_agree(got, ref, "float32", name)


@pytest.mark.parametrize("name", ["adam l2", "sgd nesterov", "rmsprop l2"])
def test_the_kernels_step_and_the_xp_math_continue_each_other(runner, name):
    """``state_dict`` from the kernel path loads into an optimizer on the xp path (and
    back): the state's layout is the same, so either continues the other's run."""
    rng = numpy.random.default_rng(3)
    xp, make = runner.xp, VARIANTS[name]
    start = [rng.standard_normal(s).astype("float64") for s in SIZES]
    grads = [[rng.standard_normal(s).astype("float64") for s in SIZES] for _ in range(4)]

    def run(kernel_steps):
        params = [Parameter(xp.asarray(w.copy()), decay=True) for w in start]
        optimizer = make(params)
        for t, kernels in enumerate(kernel_steps):
            if t == 2:  # through a checkpoint, into a fresh optimizer
                saved = optimizer.state_dict()
                optimizer = make(params)
                optimizer.load_state_dict(saved)
            for p, g in zip(params, grads[t]):
                p.grad[...] = xp.asarray(g)
            runner.run(kernels, optimizer.step)
        return [backend.to_numpy(p.data) for p in params]
    for mixed, ref in zip(run([True, True, False, False]), run([False] * 4)):
        _assert_agree(mixed, ref, "float64", name)
    for mixed, ref in zip(run([False, False, True, True]), run([False] * 4)):
        _assert_agree(mixed, ref, "float64", name)


@needs_compiler
def test_a_strided_parameter_takes_the_xp_path(monkeypatch):
    """A kernel ignores strides and an update in place cannot go through a copy: a
    parameter viewing every other element of an array is updated by the xp math."""
    monkeypatch.setattr(runtime, "launch", cuda_emulator.emulated_launch)
    monkeypatch.setattr(runtime, "uses_kernels", lambda xp: True)
    base = numpy.arange(1.0, 21.0)
    strided = Parameter(base[::2], decay=False)
    plain = Parameter(base[::2].copy(), decay=False)
    assert not optim_kernels.accelerates(strided.data, strided.grad)
    assert optim_kernels.accelerates(plain.data, plain.grad)
    optimizer = Adam([strided, plain], lr=0.5)
    for p in (strided, plain):
        p.grad[...] = 1.0
    before = len(cuda_emulator.launches)
    optimizer.step()
    assert [k for k, *_ in cuda_emulator.launches[before:]] == ["adam_step"]  # plain only
    numpy.testing.assert_allclose(strided.data, plain.data, rtol=1e-15)
    assert numpy.array_equal(base[1::2], numpy.arange(2.0, 21.0, 2))  # untouched between


def test_launchers_refuse_bad_arrays_with_one_line():
    w = numpy.zeros(6, numpy.float32)
    cases = [
        (lambda: optim_kernels.adam_step(w, w.astype("float64"), w.copy(), w.copy(), 1, 0.1,
                                         0.9, 0.99, 1e-8), r"adam_step: g must be a numpy "
                                                           r"float32 array of shape \(6,\)"),
        (lambda: optim_kernels.adam_step(w, w, numpy.zeros(5, "float32"), w.copy(), 1, 0.1, 0.9,
                                         0.99, 1e-8), r"adam_step: m must be .* shape \(6,\), "
                                                      r"got ndarray float32 \(5,\)"),
        (lambda: optim_kernels.adam_step(w, w, w.copy(), w.copy(), 0, 0.1, 0.9, 0.99, 1e-8),
         r"adam_step: t must be >= 1 .*got 0"),
        (lambda: optim_kernels.adam_step(w, w, w.copy(), w.copy(), 1, 0.1, 0.9, 0.99, 1e-8,
                                         l2=0.1, decoupled_decay=0.1), r"not both"),
        (lambda: optim_kernels.momentum_step(w, w, numpy.zeros(12, "float32")[::2], 0.1, 0.9),
         r"momentum_step: velocity must be C-contiguous"),
        (lambda: optim_kernels.rmsprop_step(w.astype("float16"), w, w, 0.1, 0.9, 1e-8),
         r"rmsprop_step: w must be float32 or float64, got float16"),
        (lambda: optim_kernels.sgd_step(w, w, None, 0.1, 0.0, 0.0, True),
         r"sgd_step: nesterov needs momentum > 0"),
    ]
    for call, message in cases:
        with pytest.raises((ValueError, TypeError), match=message) as info:
            call()
        assert "\n" not in str(info.value)


def test_step_plan_is_one_capped_grid_stride_launch():
    assert optim_kernels.step_plan("adam_step", 0) == []
    (one,) = optim_kernels.step_plan("adam_step", 1)
    assert one == runtime.Launch("adam_step", (1, 1, 1), (runtime.BLOCK, 1, 1))
    (odd,) = optim_kernels.step_plan("sgd_step", 1001)
    assert odd.grid == (4, 1, 1)
    (big,) = optim_kernels.step_plan("rmsprop_step", 10**9)
    assert big.grid == (optim_kernels.MAX_BLOCKS, 1, 1)


@pytest.fixture
def recorded():
    """``(cupy, take)``: helpers.double_launch_recorder."""
    return double_launch_recorder()


@pytest.mark.gpu
@pytest.mark.parametrize("name", ["adam", "adamw decay", "sgd", "sgd momentum", "momentum",
                                  "rmsprop l2"])
def test_one_launch_per_parameter_per_step(recorded, monkeypatch, name):
    """Each step launches the variant's kernel once per parameter, as ``step_plan``
    says, in parameter order, after zero_grad's one launch; with kernels off
    (``GPUNET_KERNELS=0``) none."""
    xp, take = recorded
    rng = numpy.random.default_rng(5)
    params = [Parameter(xp.asarray(rng.standard_normal(s).astype("float32")))
              for s in [(6, 1, 5, 5), (6,), (120, 400), (1,), (7,)]]
    optimizer = VARIANTS[name](params)
    kernel = KERNEL[name.split()[0]]
    planned = [(lc.kernel, lc.grid, lc.block, lc.shared_mem)
               for p in params for lc in optim_kernels.step_plan(kernel, p.data.size)]
    assert len(planned) == len(params)
    (zero,) = [(lc.kernel, lc.grid, lc.block, lc.shared_mem)
               for lc in optim_kernels.zero_plan([p.data.size for p in params])]
    take()
    for _ in range(3):
        optimizer.zero_grad()
        for p in params:
            p.grad += xp.asarray(rng.standard_normal(p.shape).astype("float32"))
        optimizer.step()
        assert take() == [zero] + planned
    with config.override(kernels=False):
        optimizer.zero_grad()
        optimizer.step()
    assert take() == []


def test_zero_grad_is_one_launch_for_every_gradient(runner):
    """zero_grad zeroes every gradient, float32 and float64, in one launch per dtype
    (zero_plan), a strided one by xp; the device tables of addresses are built once and
    again only when a gradient is replaced (the new array zeroed, the old one not)."""
    xp = runner.xp
    shapes = [(6, 1, 5, 5), (1,), (7,), (1001,), (0,), (3, 5)]
    params = [Parameter(xp.ones(s, dtype)) for s in shapes for dtype in ("float32", "float64")]
    strided = Parameter(xp.ones(6))
    strided.grad = xp.zeros(12)[::2]  # a gradient the kernel cannot take
    optimizer = SGD(params + [strided], lr=0.1)

    def fill_and_zero():
        for p in optimizer.params:
            p.grad[...] = 2.0
        before = len(cuda_emulator.launches)
        runner.run(True, optimizer.zero_grad)
        for i, p in enumerate(optimizer.params):
            assert not backend.to_numpy(p.grad).any(), f"gradient {i} not zeroed"
        return cuda_emulator.launches[before:]
    launched = fill_and_zero()
    if runner.kind == "emulator":
        sizes = [int(numpy.prod(s)) for s in shapes if numpy.prod(s)]
        plan = optim_kernels.zero_plan(sizes)
        assert launched == [(lc.kernel, lc.grid, lc.block) for lc in plan + plan]
    tables = dict(optimizer._zero_tables)
    fill_and_zero()
    assert all(optimizer._zero_tables[k] is tables[k] for k in tables)  # reused
    old, params[0].grad = params[0].grad, xp.full(params[0].shape, 3.0, "float32")
    old[...] = 5.0
    fill_and_zero()
    assert optimizer._zero_tables["float32"] is not tables["float32"]
    assert (backend.to_numpy(old) == 5.0).all()
