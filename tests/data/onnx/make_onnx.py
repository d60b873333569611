"""Write the small ONNX files of tests/importers/test_onnx_graph.py (run once, with torch + onnxscript;
CI has neither).

    python tests/data/onnx/make_onnx.py

Each model is a few layers with random weights (seed 0) and random batch-norm statistics, exported the
usual ways: ``NAME.ts.onnx`` by the TorchScript exporter (``dynamo=False``, batch norm kept:
``training=PRESERVE``, ``do_constant_folding=False``) and ``NAME.dynamo.onnx`` by the dynamo exporter
(``optimize=False``). The architectures come from ``specs/train/train_ucr.py`` (FCN, Chomp1d, weight norm).
"""

import sys
import warnings
from pathlib import Path

import torch
from torch import nn

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[2] / "specs" / "train"))
from train_ucr import FCN, PlainTCN, TCN  # noqa: E402


def randomize_bn(model):
    """Batch-norm statistics and affine parameters away from (0, 1), so that folding them matters."""
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=g))
            m.running_var.copy_(0.5 + torch.rand(n, generator=g))
            m.weight.data.copy_(1 + 0.5 * torch.randn(n, generator=g))
            m.bias.data.copy_(torch.randn(n, generator=g))
    return model


class BnBeforeDense(nn.Module):
    """conv -> relu -> GAP -> BatchNorm1d -> Linear: a batch norm folded into the dense layer after it."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv1d(1, 3, 3, padding=1)
        self.bn = nn.BatchNorm1d(3)
        self.fc = nn.Linear(3, 2)

    def forward(self, x):
        return self.fc(self.bn(torch.relu(self.conv(x)).mean(dim=2)))


class BnAfterDense(nn.Module):
    """flatten -> Linear -> BatchNorm1d -> ReLU -> Linear: folded into the dense layer before it."""

    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(2 * 6, 5)
        self.bn = nn.BatchNorm1d(5)
        self.fc2 = nn.Linear(5, 2)

    def forward(self, x):
        return self.fc2(torch.relu(self.bn(self.fc1(x.flatten(1)))))


class BnFirst(nn.Module):
    """BatchNorm1d on the input, then an unpadded conv: folded into the conv after it."""

    def __init__(self, padding=0):
        super().__init__()
        self.bn = nn.BatchNorm1d(2)
        self.conv = nn.Conv1d(2, 3, 3, padding=padding)

    def forward(self, x):
        return torch.tanh(self.conv(self.bn(x)))


class DropoutNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv1d(1, 2, 3)
        self.drop = nn.Dropout(0.3)

    def forward(self, x):
        return self.drop(torch.relu(self.conv(x)))


class OldWeightNorm(nn.Module):
    """torch.nn.utils.weight_norm (weight_g, weight_v), causal by padding + chomp."""

    def __init__(self):
        super().__init__()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self.conv = nn.utils.weight_norm(nn.Conv1d(1, 3, 3, padding=4, dilation=2))
        self.fc = nn.Linear(3, 2)

    def forward(self, x):
        return self.fc(torch.relu(self.conv(x)[:, :, :-4]).mean(dim=2))


def export(model, name, shape, dynamo=True, training=torch.onnx.TrainingMode.PRESERVE):
    x = torch.randn(1, *shape)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (x,), str(HERE / f"{name}.ts.onnx"), dynamo=False, training=training,
                          do_constant_folding=False, input_names=["x"], output_names=["y"])
        if dynamo:
            torch.onnx.export(model, (x,), dynamo=True, optimize=False, input_names=["x"],
                              output_names=["y"]).save(str(HERE / f"{name}.dynamo.onnx"))


def main():
    torch.manual_seed(0)
    export(randomize_bn(FCN((2, 3, 2))).eval(), "fcn", (1, 20))
    export(PlainTCN(3, (1, 2), kernel=3).eval(), "tcn", (1, 16))
    export(TCN(3, (1, 2), kernel=2).eval(), "tcn_residual", (1, 16), dynamo=False)
    export(randomize_bn(BnBeforeDense()).eval(), "bn_before_dense", (1, 10), dynamo=False)
    export(randomize_bn(BnAfterDense()).eval(), "bn_after_dense", (2, 6), dynamo=False)
    export(randomize_bn(BnFirst()).eval(), "bn_first", (2, 10), dynamo=False)
    export(randomize_bn(BnFirst(padding=1)).eval(), "bn_first_padded", (2, 10), dynamo=False)
    export(DropoutNet().train(), "dropout_training", (1, 10), dynamo=False,
           training=torch.onnx.TrainingMode.TRAINING)
    export(OldWeightNorm().eval(), "old_weight_norm", (1, 12), dynamo=False)


if __name__ == "__main__":
    main()
