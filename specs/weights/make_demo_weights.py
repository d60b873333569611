"""Regenerate the synthetic demo weights used by specs/tcn_any_length.lip, specs/features.lip, specs/gap.lip.

Deterministic (numpy seed 0), PyTorch layout: conv (c_out, c_in, k), dense (out, in). Run from this directory:
    python make_demo_weights.py
"""
import numpy as np

rng = np.random.default_rng(0)


def w(*shape, scale=None):
    fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else shape[0]
    return rng.normal(0.0, scale or 1.0 / np.sqrt(fan_in), size=shape)


np.savez("tcn_demo.npz", **{
    "tcn.0.weight": w(4, 2, 3), "tcn.0.bias": w(4, scale=0.1),
    "tcn.1.weight": w(4, 4, 3), "tcn.1.bias": w(4, scale=0.1),
    "tcn.2.weight": w(1, 4, 1), "tcn.2.bias": w(1, scale=0.1),
})
np.savez("features_demo.npz", **{
    "conv_a.weight": w(4, 2, 5), "conv_a.bias": w(4, scale=0.1),
    "conv_b.weight": w(4, 4, 3),
    "conv_c.weight": w(3, 4, 3), "conv_c.bias": w(3, scale=0.1),
    "head.weight": w(3, 3 * 6),
})
np.save("features_head_bias.npy", w(3, scale=0.1))
np.savez("gap_demo.npz", **{
    "body.conv1.weight": w(8, 3, 7), "body.conv1.bias": w(8, scale=0.1),
    "body.conv2.weight": w(8, 8, 3), "body.conv2.bias": w(8, scale=0.1),
    "head.fc1.weight": w(4, 8), "head.fc1.bias": w(4, scale=0.1),
    "head.fc2.weight": w(2, 4), "head.fc2.bias": w(2, scale=0.1),
})
np.savez("avgpool_overlap_demo.npz", **{
    "c1.weight": w(4, 2, 3), "c1.bias": w(4, scale=0.1),
    "c2.weight": w(4, 4, 3), "c2.bias": w(4, scale=0.1),
    "head.weight": w(3, 4 * 6), "head.bias": w(3, scale=0.1),
})
np.savez("linear_merge_demo.npz", **{
    "c1.weight": w(8, 2, 5), "c1.bias": w(8, scale=0.1),
    "c2.weight": w(8, 8, 3), "c2.bias": w(8, scale=0.1),
    "c3.weight": w(4, 8, 3), "c3.bias": w(4, scale=0.1),
    "c4.weight": w(4, 4, 3), "c4.bias": w(4, scale=0.1),
    "f1.weight": w(16, 4 * 30), "f1.bias": w(16, scale=0.1),
    "f2.weight": w(3, 16), "f2.bias": w(3, scale=0.1),
})
