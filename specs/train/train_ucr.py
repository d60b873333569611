"""Train 1D CNN baselines on a bundled UCR dataset and export them: dataset -> state_dict, .npz, ONNX.

Reproducible training of the time-series classifiers whose Lipschitz bounds lipdsl certifies
(``specs/weights/trained/README.md`` lists the results). Run it with a PyTorch + aeon + onnx environment
(not lipdsl's own venv, which has no torch)::

    python specs/train/train_ucr.py                     # every model below, GunPoint, seed 0
    python specs/train/train_ucr.py --models fcn_8_16_8 tcn_plain16 --out /tmp/trained

Dataset: GunPoint from the UCR archive (Ratanamahatana & Keogh), as bundled with ``aeon``
(``aeon.datasets.load_gunpoint``: 50 train / 150 test series of length 150, 2 classes, z-normalised; no
download). Training: Adam (lr 1e-3), cross-entropy, batch 10, a fixed number of epochs per model, seed 0,
one CPU thread, deterministic algorithms; the model of the last epoch is kept (no selection on the test set).

Architectures (all end in global average pooling over time and one ``nn.Linear``):

- ``FCN(c1, c2, c3)`` (Wang, Yan & Oates 2017): three ``Conv1d`` with kernels 8, 5, 3 and ``padding='same'``,
  each followed by ``BatchNorm1d`` and ReLU.
- ``ResNet1D(16, 32, 32)`` (Wang et al. 2017, narrowed): three residual blocks; each block is conv k8 -> BN ->
  ReLU -> conv k5 -> BN -> ReLU -> conv k3 -> BN, 'same' padding, plus a shortcut (1x1 conv + BN where the
  channel count changes, the identity otherwise), summed, then ReLU.
- ``TCN(16, dilations 1, 2, 4)`` (Bai, Kolter & Koltun 2018, their ``TemporalBlock``): per block two
  weight-normalised causal convs (``Conv1d(padding=(k-1)d)`` + ``Chomp1d``), ReLU and dropout after each,
  a 1x1 conv shortcut where channels change, ``relu(out + res)``.
- ``StridedResNet1D(8, 8, 16)`` (ResNet-18-style downsampling, as in Hannun et al. 2019 / Ribeiro et al.
  2020, narrowed): a stem conv k7 + BN + ReLU, then two blocks conv k3 stride 2 -> BN -> ReLU -> conv k3 ->
  BN, the shortcut a 2-wide max pool (same channels) or a 1x1 stride-2 conv + BN, summed, then ReLU.
- ``PlainTCN(16)``: the same causal weight-normalised convs (1 -> 16, then 5 x 16 -> 16; dilations 1, 2, 4,
  1, 2, 4), each followed by ReLU, no residual connections.

Exports per model NAME (in ``--out``): ``NAME.pt`` (the ``state_dict``), ``NAME.npz`` (every float tensor of
the state_dict under its PyTorch key, float64; for weight-normalised convs also the effective ``...weight``
``g * v / ||v||`` in float64, which the state_dict does not hold), ``NAME.torchscript.onnx``
(``dynamo=False``, ``training=TrainingMode.PRESERVE`` and no constant folding: batch norm kept as
``BatchNormalization`` nodes), ``NAME.dynamo.onnx`` (the dynamo exporter, ``optimize=False``), and
``NAME.json`` (accuracies, seed, epochs, the environment's versions, and the digests of the data, the initial
weights and the written ``NAME.npz``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn.utils.parametrizations import weight_norm

DATASET = "GunPoint"
SEED = 0


# --------------------------------------------------------------------------------------------- models
class FCN(nn.Module):
    """Fully convolutional network of Wang, Yan & Oates (2017) with channels (c1, c2, c3)."""

    def __init__(self, channels=(32, 64, 32), n_classes=2, c_in=1):
        super().__init__()
        c1, c2, c3 = channels
        self.conv1 = nn.Conv1d(c_in, c1, 8, padding="same")
        self.bn1 = nn.BatchNorm1d(c1)
        self.conv2 = nn.Conv1d(c1, c2, 5, padding="same")
        self.bn2 = nn.BatchNorm1d(c2)
        self.conv3 = nn.Conv1d(c2, c3, 3, padding="same")
        self.bn3 = nn.BatchNorm1d(c3)
        self.fc = nn.Linear(c3, n_classes)

    def forward(self, x):
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.bn2(self.conv2(x)))
        x = torch.relu(self.bn3(self.conv3(x)))
        return self.fc(x.mean(dim=2))


class ResBlock(nn.Module):
    """conv k8 -> BN -> ReLU -> conv k5 -> BN -> ReLU -> conv k3 -> BN, plus shortcut, then ReLU."""

    def __init__(self, c_in, c_out):
        super().__init__()
        self.conv1 = nn.Conv1d(c_in, c_out, 8, padding="same")
        self.bn1 = nn.BatchNorm1d(c_out)
        self.conv2 = nn.Conv1d(c_out, c_out, 5, padding="same")
        self.bn2 = nn.BatchNorm1d(c_out)
        self.conv3 = nn.Conv1d(c_out, c_out, 3, padding="same")
        self.bn3 = nn.BatchNorm1d(c_out)
        if c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv1d(c_in, c_out, 1), nn.BatchNorm1d(c_out))
        else:
            self.shortcut = nn.Identity()

    def forward(self, x):
        y = torch.relu(self.bn1(self.conv1(x)))
        y = torch.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        return torch.relu(y + self.shortcut(x))


class ResNet1D(nn.Module):
    """ResNet baseline of Wang et al. (2017) with three blocks of the given widths."""

    def __init__(self, channels=(16, 32, 32), n_classes=2, c_in=1):
        super().__init__()
        widths = (c_in,) + tuple(channels)
        self.block1 = ResBlock(widths[0], widths[1])
        self.block2 = ResBlock(widths[1], widths[2])
        self.block3 = ResBlock(widths[2], widths[3])
        self.fc = nn.Linear(widths[3], n_classes)

    def forward(self, x):
        x = self.block3(self.block2(self.block1(x)))
        return self.fc(x.mean(dim=2))


class DownBlock(nn.Module):
    """A downsampling block (ResNet-18 style, 1D): conv k3 stride 2 -> BN -> ReLU -> conv k3 -> BN, plus a
    shortcut that halves the length too (a 2-wide max pool where the channels stay, else a 1x1 stride-2
    conv + BN), summed, then ReLU."""

    def __init__(self, c_in, c_out):
        super().__init__()
        self.conv1 = nn.Conv1d(c_in, c_out, 3, stride=2, padding=1, bias=False)
        self.bn1 = nn.BatchNorm1d(c_out)
        self.conv2 = nn.Conv1d(c_out, c_out, 3, padding="same", bias=False)
        self.bn2 = nn.BatchNorm1d(c_out)
        if c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv1d(c_in, c_out, 1, stride=2, bias=False),
                                          nn.BatchNorm1d(c_out))
        else:
            self.shortcut = nn.MaxPool1d(2, ceil_mode=False)

    def forward(self, x):
        y = torch.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return torch.relu(y + self.shortcut(x))


class StridedResNet1D(nn.Module):
    """A stem conv (k7, BN, ReLU) and two DownBlocks (150 -> 75 -> 38 samples), then GAP + linear."""

    def __init__(self, channels=(8, 8, 16), n_classes=2, c_in=1):
        super().__init__()
        c0, c1, c2 = channels
        self.stem = nn.Conv1d(c_in, c0, 7, padding="same", bias=False)
        self.bn = nn.BatchNorm1d(c0)
        self.down1 = DownBlock(c0, c1)
        self.down2 = DownBlock(c1, c2)
        self.fc = nn.Linear(c2, n_classes)

    def forward(self, x):
        x = torch.relu(self.bn(self.stem(x)))
        return self.fc(self.down2(self.down1(x)).mean(dim=2))


class Chomp1d(nn.Module):
    """Drop the last ``chomp`` samples (Bai et al.'s causal padding: pad both sides, cut the right)."""

    def __init__(self, chomp):
        super().__init__()
        self.chomp = chomp

    def forward(self, x):
        return x[:, :, : -self.chomp].contiguous()


class TemporalBlock(nn.Module):
    """Bai et al.'s TemporalBlock: two weight-normalised causal dilated convs, residual, ReLU."""

    def __init__(self, c_in, c_out, kernel, dilation, dropout=0.2):
        super().__init__()
        pad = (kernel - 1) * dilation
        self.conv1 = weight_norm(nn.Conv1d(c_in, c_out, kernel, padding=pad, dilation=dilation))
        self.chomp1 = Chomp1d(pad)
        self.relu1 = nn.ReLU()
        self.dropout1 = nn.Dropout(dropout)
        self.conv2 = weight_norm(nn.Conv1d(c_out, c_out, kernel, padding=pad, dilation=dilation))
        self.chomp2 = Chomp1d(pad)
        self.relu2 = nn.ReLU()
        self.dropout2 = nn.Dropout(dropout)
        self.net = nn.Sequential(self.conv1, self.chomp1, self.relu1, self.dropout1,
                                 self.conv2, self.chomp2, self.relu2, self.dropout2)
        self.downsample = nn.Conv1d(c_in, c_out, 1) if c_in != c_out else None
        self.relu = nn.ReLU()

    def forward(self, x):
        out = self.net(x)
        res = x if self.downsample is None else self.downsample(x)
        return self.relu(out + res)


class TCN(nn.Module):
    """Residual TCN (Bai et al. 2018): TemporalBlocks with dilations 1, 2, 4, ..., then GAP + linear."""

    def __init__(self, channels=16, dilations=(1, 2, 4), kernel=3, n_classes=2, c_in=1, dropout=0.2):
        super().__init__()
        layers = []
        for i, d in enumerate(dilations):
            layers.append(TemporalBlock(c_in if i == 0 else channels, channels, kernel, d, dropout))
        self.network = nn.Sequential(*layers)
        self.fc = nn.Linear(channels, n_classes)

    def forward(self, x):
        return self.fc(self.network(x).mean(dim=2))


class PlainTCN(nn.Module):
    """Non-residual TCN: weight-normalised causal dilated convs (padding + Chomp1d), ReLU, GAP + linear."""

    def __init__(self, channels=16, dilations=(1, 2, 4, 1, 2, 4), kernel=3, n_classes=2, c_in=1):
        super().__init__()
        layers = []
        for i, d in enumerate(dilations):
            pad = (kernel - 1) * d
            conv = nn.Conv1d(c_in if i == 0 else channels, channels, kernel, padding=pad, dilation=d)
            layers += [weight_norm(conv), Chomp1d(pad), nn.ReLU()]
        self.network = nn.Sequential(*layers)
        self.fc = nn.Linear(channels, n_classes)

    def forward(self, x):
        return self.fc(self.network(x).mean(dim=2))


# name -> (constructor, epochs)
MODELS = {
    "fcn_8_16_8": (lambda: FCN((8, 16, 8)), 300),
    "fcn_32_64_32": (lambda: FCN((32, 64, 32)), 300),
    "fcn_64_128_64": (lambda: FCN((64, 128, 64)), 100),
    "fcn_128_256_128": (lambda: FCN((128, 256, 128)), 40),
    "resnet1d_16_32_32": (lambda: ResNet1D((16, 32, 32)), 300),
    "tcn_res16": (lambda: TCN(16, (1, 2, 4)), 800),
    "tcn_plain16": (lambda: PlainTCN(16, (1, 2, 4, 1, 2, 4)), 300),
    "resnet1d_strided_8_8_16": (lambda: StridedResNet1D((8, 8, 16)), 300),
}


# ------------------------------------------------------------------------------------------- training
def load_data():
    """GunPoint train/test from aeon's bundled copy: X (n, 1, 150) float32, y int64 labels 0..k-1."""
    from aeon.datasets import load_gunpoint

    Xtr, ytr = load_gunpoint(split="train")
    Xte, yte = load_gunpoint(split="test")
    classes = sorted(set(ytr) | set(yte))
    to_int = {c: i for i, c in enumerate(classes)}
    ytr = np.array([to_int[c] for c in ytr], dtype=np.int64)
    yte = np.array([to_int[c] for c in yte], dtype=np.int64)
    return (torch.tensor(Xtr, dtype=torch.float32), torch.tensor(ytr),
            torch.tensor(Xte, dtype=torch.float32), torch.tensor(yte), len(classes))


def accuracy(model, X, y):
    model.eval()
    with torch.no_grad():
        return float((model(X).argmax(dim=1) == y).float().mean())


def digest(arrays: dict) -> str:
    """SHA-256 (the first 16 hex digits) of named arrays: each numeric one's key and float64 values, in key
    order. The same digest means the same data or weights, whatever the environment; for a weight file,
    ``digest(numpy.load(path))`` is what the record's ``npz_sha256`` holds."""
    h = hashlib.sha256()
    for key in sorted(arrays):
        value = np.asarray(arrays[key].detach() if torch.is_tensor(arrays[key]) else arrays[key])
        if np.issubdtype(value.dtype, np.number):
            h.update(key.encode() + np.ascontiguousarray(value, dtype=np.float64).tobytes())
    return h.hexdigest()[:16]


def environment() -> dict:
    """The versions a run's bits depend on (torch's kernels and RNG, numpy's and aeon's data loading)."""
    import aeon

    return {"python": platform.python_version(), "torch": torch.__version__, "numpy": np.__version__,
            "aeon": aeon.__version__, "machine": platform.machine(), "system": platform.system()}


def train(name, data, batch=10, lr=1e-3):
    """Train MODELS[name] with seed SEED; return the model in eval mode and its record (with the digests of
    the data, the initial and the final weights: where two runs part, section by section)."""
    Xtr, ytr, Xte, yte, n_classes = data
    torch.manual_seed(SEED)
    make, epochs = MODELS[name]
    model = make()
    init = digest(model.state_dict())
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    lossf = nn.CrossEntropyLoss()
    gen = torch.Generator().manual_seed(SEED)
    start = time.perf_counter()
    for _ in range(epochs):
        model.train()
        perm = torch.randperm(len(Xtr), generator=gen)
        for i in range(0, len(Xtr), batch):
            idx = perm[i:i + batch]
            opt.zero_grad()
            loss = lossf(model(Xtr[idx]), ytr[idx])
            loss.backward()
            opt.step()
    seconds = time.perf_counter() - start
    model.eval()
    record = {"model": name, "dataset": DATASET, "seed": SEED, "epochs": epochs, "batch": batch, "lr": lr,
              "train_accuracy": accuracy(model, Xtr, ytr), "test_accuracy": accuracy(model, Xte, yte),
              "train_seconds": round(seconds, 1), "torch": torch.__version__,
              "parameters": sum(p.numel() for p in model.parameters()),
              "data_sha256": digest(dict(zip(("Xtr", "ytr", "Xte", "yte"), data[:4]))),
              "init_sha256": init, "environment": environment()}
    return model, record


# -------------------------------------------------------------------------------------------- exports
def effective_weights(model):
    """The weight of every weight-normalised conv, ``g * v / ||v||`` in float64, by state key.

    torch's ``weight_norm(dim=0)``: ``||v||`` is the norm over all axes but the first (per output channel).
    Computed in float64 from the float32 ``g`` (``original0``) and ``v`` (``original1``), so that it equals
    what lipdsl's ONNX import gets by evaluating the exported weight-norm subgraph in float64.
    """
    out = {}
    for mname, mod in model.named_modules():
        if hasattr(mod, "parametrizations") and "weight" in mod.parametrizations:
            g = mod.parametrizations.weight.original0.detach().double()
            v = mod.parametrizations.weight.original1.detach().double()
            out[f"{mname}.weight"] = g * v / v.norm(dim=tuple(range(1, v.dim())), keepdim=True)
    return out


def export(model, name, out, length=150):
    """Write NAME.pt, NAME.npz, NAME.torchscript.onnx and NAME.dynamo.onnx; return notes on the exports."""
    out.mkdir(parents=True, exist_ok=True)
    state = model.state_dict()
    torch.save(state, out / f"{name}.pt")
    arrays = {k: v.detach().double().numpy() for k, v in state.items() if v.is_floating_point()}
    for k, v in effective_weights(model).items():
        arrays[k] = v.double().numpy()
    np.savez(out / f"{name}.npz", **arrays)
    x = torch.zeros(1, 1, length)
    notes = {}
    try:
        torch.onnx.export(model, (x,), str(out / f"{name}.torchscript.onnx"), dynamo=False,
                          training=torch.onnx.TrainingMode.PRESERVE, do_constant_folding=False,
                          input_names=["x"], output_names=["logits"])
        notes["torchscript"] = "ok"
    except Exception as exc:  # noqa: BLE001 -- recorded: which exporter fails on which model is a result
        notes["torchscript"] = f"failed: {type(exc).__name__}: {exc}"[:300]
    try:
        prog = torch.onnx.export(model, (x,), dynamo=True, optimize=False,
                                 input_names=["x"], output_names=["logits"])
        prog.save(str(out / f"{name}.dynamo.onnx"))
        notes["dynamo"] = "ok"
    except Exception as exc:  # noqa: BLE001
        notes["dynamo"] = f"failed: {type(exc).__name__}: {exc}"[:300]
    return notes


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="*", default=list(MODELS), choices=list(MODELS))
    ap.add_argument("--out", type=Path,
                    default=Path(__file__).resolve().parent.parent / "weights" / "trained")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    data = load_data()
    for name in args.models:
        model, record = train(name, data)
        record["exports"] = export(model, name, args.out)
        with np.load(args.out / f"{name}.npz", allow_pickle=False) as saved:
            record["npz_sha256"] = digest(dict(saved))
        (args.out / f"{name}.json").write_text(json.dumps(record, indent=1) + "\n")
        print(json.dumps(record), flush=True)


if __name__ == "__main__":
    main()
