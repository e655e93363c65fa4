"""The PyTorch QAT recipe on minquant's small_cnn: the reference the minquant recipe is held to.

Takes the packaged float ``small_cnn``, makes its ``torch.nn`` twin
(``minquant.torch_bridge.to_torch``), fuses Conv-BN-ReLU (``fuse_modules_qat``), puts
``torch.ao.quantization.FakeQuantize`` on weights (per-channel symmetric, moving-average
min/max observer) and activations (unsigned affine per-tensor, moving-average min/max), and
fine-tunes with Adam on the same 4,000 training images, in minquant's data order (a seeded
NumPy permutation per epoch); accuracy is the fake-quant model's on the same 1,000 test
images. BatchNorm statistics stay live (torch's default) unless a variant freezes them. Each
variant changes one ingredient of the recipe, so its effect can be read off next to the
matching minquant run (``benchmarks/qat_table.py --study``).

    OPENBLAS_NUM_THREADS=1 python benchmarks/qat_torch_reference.py   # ~3 min on 2 cores
"""

import argparse
import time

import numpy as np
import torch
import torch.ao.quantization as tq

from minquant.data import load_mnist
from minquant.models import load_pretrained
from minquant.torch_bridge import to_torch

SEED, BATCH = 0, 64


def _qconfig(w_bits: int, a_bits: int, narrow: bool, averaging: float) -> tq.QConfig:
    w_min, w_max = -(2 ** (w_bits - 1)) + int(narrow), 2 ** (w_bits - 1) - 1
    weight = tq.FakeQuantize.with_args(
        observer=tq.MovingAveragePerChannelMinMaxObserver,
        averaging_constant=averaging,
        quant_min=w_min,
        quant_max=w_max,
        dtype=torch.qint8,
        qscheme=torch.per_channel_symmetric,
    )
    act = tq.FakeQuantize.with_args(
        observer=tq.MovingAverageMinMaxObserver,
        quant_min=0,
        quant_max=2**a_bits - 1,
        dtype=torch.quint8,
        qscheme=torch.per_tensor_affine,
    )
    return tq.QConfig(activation=act, weight=weight)


def qat_model(w_bits: int, a_bits: int, narrow: bool, averaging: float) -> torch.nn.Module:
    """The fused, prepared torch QAT twin of the packaged small_cnn."""
    body = to_torch(load_pretrained("small_cnn")).train()
    model = torch.nn.Sequential(tq.QuantStub(), *body, tq.DeQuantStub()).train()
    # indices shifted by the QuantStub: conv 1, bn 2, relu 3; conv 5, bn 6, relu 7
    model = tq.fuse_modules_qat(model, [["1", "2", "3"], ["5", "6", "7"]])
    model.qconfig = _qconfig(w_bits, a_bits, narrow, averaging)
    return tq.prepare_qat(model)


def run(
    w_bits: int = 2,
    a_bits: int = 4,
    narrow: bool = False,
    averaging: float = 0.01,
    epochs: int = 3,
    lr: float = 5e-4,
    freeze_bn_epoch: int | None = None,
    seed: int = SEED,
) -> dict:
    torch.manual_seed(seed)
    X_train, y_train = load_mnist("train")
    X_test, y_test = load_mnist("test")
    model = qat_model(w_bits, a_bits, narrow, averaging)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    rng = np.random.default_rng(seed)
    Xt, yt = torch.from_numpy(X_train), torch.from_numpy(y_train)
    start = time.perf_counter()
    for epoch in range(epochs):
        if freeze_bn_epoch is not None and epoch >= freeze_bn_epoch:
            model.apply(torch.ao.nn.intrinsic.qat.freeze_bn_stats)
        model.train()
        order = torch.from_numpy(rng.permutation(len(X_train)))
        for i in range(0, len(order), BATCH):
            idx = order[i : i + BATCH]
            loss = torch.nn.functional.cross_entropy(model(Xt[idx]), yt[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    seconds = time.perf_counter() - start
    model.eval()
    with torch.no_grad():
        pred = model(torch.from_numpy(X_test)).argmax(dim=1).numpy()
    return {"accuracy": float(np.mean(pred == y_test)), "seconds": seconds}


VARIANTS = {
    # name: keyword arguments of run()
    "torch W2A4 [-2,1], 3 ep, lr 5e-4": {},
    "torch W2A4 [-2,1], 3 ep, lr 5e-4, seed 1": {"seed": 1},
    "torch W2A4 [-2,1], 3 ep, lr 5e-4, seed 2": {"seed": 2},
    "torch W2A4 narrow [-1,1], 3 ep, lr 5e-4": {"narrow": True},
    "torch W2A4 narrow [-1,1], 2 ep, lr 1e-4": {"narrow": True, "epochs": 2, "lr": 1e-4},
    "torch W2A4 [-2,1], 2 ep, lr 1e-4": {"epochs": 2, "lr": 1e-4},
    "torch W2A4 [-2,1], avg 1.0, 3 ep, lr 5e-4": {"averaging": 1.0},
    "torch W2A4 [-2,1], BN frozen after ep 1": {"freeze_bn_epoch": 1},
    "torch W4A4 [-8,7], 3 ep, lr 5e-4": {"w_bits": 4},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", help="run only the variants whose name contains this")
    args = parser.parse_args()
    torch.set_num_threads(1)
    X_test, y_test = load_mnist("test")
    with torch.no_grad():
        float_model = to_torch(load_pretrained("small_cnn")).eval()
        float_pred = float_model(torch.from_numpy(X_test)).argmax(dim=1).numpy()
    print(f"float32 twin: {np.mean(float_pred == y_test):.1%}")
    print(f"torch {torch.__version__}")
    for name, kwargs in VARIANTS.items():
        if args.only and args.only not in name:
            continue
        r = run(**kwargs)
        print(f"{name:<45} {r['accuracy']:.1%}   ({r['seconds']:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
