"""The training stage: LeNet-5 (batch norm) on Fashion-MNIST through the library's
own training step and ``fit``, beside its PyTorch twin on cuDNN. (gpunet is
imported inside the stage, as in every stage: bench/gpu_check.py imports the
stages before it chooses the CuPy the dry run uses.)"""
from __future__ import annotations

import copy
import sys
import time

import numpy

from .common import StageContext


def _torch_training(torch, initial, data, epochs, batch, device="cuda") -> dict:
    """PyTorch (+cuDNN on ``cuda``) training the twin of gpunet's ``initial`` model
    (the same parameters to start from) as ``fit`` trains it: Adam, shuffled
    batches."""
    from gpunet.benchmarks import torch_twin
    (x, y), (xt, yt) = data
    torch.manual_seed(0)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    model = torch_twin(initial, torch).to(device)
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    xs, ys = torch.from_numpy(x).to(device), torch.from_numpy(y.astype("int64")).to(device)
    loss_fn = torch.nn.CrossEntropyLoss()
    sync()
    start = time.perf_counter()
    for _ in range(epochs):
        order = torch.randperm(len(xs), device=device)
        for i in range(0, len(xs), batch):
            idx = order[i:i + batch]
            opt.zero_grad(set_to_none=True)
            loss_fn(model(xs[idx]), ys[idx]).backward()
            opt.step()
    sync()
    seconds = time.perf_counter() - start
    model.eval()
    with torch.no_grad():
        logits = torch.cat([model(torch.from_numpy(xt[i:i + 1000]).to(device))
                            for i in range(0, len(xt), 1000)])
    accuracy = float((logits.argmax(1).cpu().numpy() == yt).mean())
    return {"test_accuracy": round(accuracy, 4), "seconds": round(seconds, 2),
            "images_per_s": round(epochs * len(x) / seconds)}


def stage_training(ctx: StageContext) -> None:
    """LeNet-5 (batch norm) on Fashion-MNIST: test accuracy and images/s on the GPU
    beside the same model in PyTorch+cuDNN; the first 20 losses on CPU and GPU."""
    import gpunet
    from gpunet import losses, models, optim
    from gpunet.benchmarks import awkward, cuda_torch, import_torch
    from gpunet.data import DatasetError, load_fashion_mnist, transforms
    from gpunet.train import train_step
    if ctx.data_root is None:  # without a folder the loader would try a download
        ctx.emit(error="no --data-root: the training stage reads Fashion-MNIST from a folder")
        sys.exit(1)
    try:
        (x, y), (xt, yt) = load_fashion_mnist(ctx.data_root)
    except DatasetError as exc:
        ctx.emit(error=f"Fashion-MNIST not found: {exc}")
        sys.exit(1)
    epochs, batch = (1, 16) if ctx.dry else (2, 128)
    if ctx.dry:
        x, y, xt, yt = x[:384], y[:384], xt[:256], yt[:256]
    x, xt = transforms.to_float(x), transforms.to_float(xt)
    stats = transforms.Standardize().fit(x)
    x, xt = stats(x), stats(xt)
    ctx.emit(train_images=len(x), test_images=len(xt), epochs=epochs, batch_size=batch)

    gpunet.set_device("cpu")
    gpunet.manual_seed(0)
    initial = models.lenet5(batch_norm=True)  # on the CPU: each run starts from a copy
    steps = 20
    curves = {}
    for device in ("cpu", "cuda"):
        m = copy.deepcopy(initial).to(device)
        opt = optim.Adam(m.parameters(), 1e-3)
        loss = losses.SoftmaxCrossEntropy()
        curve = []
        for i in range(steps):
            xb = gpunet.to_device(x[i * batch % len(x):][:batch], device)
            yb = gpunet.to_device(y[i * batch % len(x):][:batch], device)
            curve.append(round(train_step(m, loss, opt, xb, yb)[0], 7))
        curves[device] = curve
    diff = float(numpy.max(numpy.abs(numpy.subtract(curves["cpu"], curves["cuda"]))))
    ctx.emit(first_losses=curves, max_loss_difference=diff)

    gpunet.set_device("cuda")
    gpunet.manual_seed(0)  # fit's shuffling
    model = copy.deepcopy(initial).to("cuda")
    opt = optim.Adam(model.parameters(), 1e-3)
    gpunet.backend.get_device().synchronize()
    start = time.perf_counter()
    gpunet.fit(model, losses.SoftmaxCrossEntropy(), opt, (x, y), epochs, batch, progress=False)
    gpunet.backend.get_device().synchronize()
    seconds = time.perf_counter() - start
    accuracy = gpunet.evaluate(model, (xt, yt))["accuracy"]
    ctx.emit(gpunet={"test_accuracy": round(accuracy, 4), "seconds": round(seconds, 2),
                     "images_per_s": round(epochs * len(x) / seconds)})
    data = ((x, y), (xt, yt))
    torch = cuda_torch()
    ctx.emit(torch_cudnn=_torch_training(torch, initial, data, epochs, batch)
             if torch is not None else "PyTorch with CUDA is not available")
    if ctx.dry and import_torch() is not None:  # the twin's run proved on PyTorch's CPU build
        ctx.emit(torch_cpu=_torch_training(import_torch(), initial, data, epochs, batch, "cpu"))
    if diff > awkward.LOSS_CURVE_TOLERANCE:
        sys.exit(1)

