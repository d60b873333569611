"""Plot a comparison: compare.Comparison -> PNG (matplotlib, the optional ``plot`` extra)."""
from __future__ import annotations

from .compare import Comparison
from .errors import LipdslError


def plot_comparison(c: Comparison, path: str) -> None:
    """Bounds (bars, with the empirical lower bound as a dashed line) and times (log scale) per method.

    Raises
    ------
    LipdslError
        matplotlib is not installed (``pip install 'lipdsl[plot]'``).
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise LipdslError("plotting needs matplotlib, which is not installed",
                          hint="pip install 'lipdsl[plot]'") from exc
    done = [r for r in c.results if r.ok]
    names = [r.method for r in done]
    fig, (ax_b, ax_t) = plt.subplots(1, 2, figsize=(10, 4))
    ax_b.bar(names, [r.bound for r in done], color="tab:blue")
    if c.lower is not None:
        ax_b.axhline(c.lower, color="k", ls="--", lw=1, label=f"empirical lower bound {c.lower:.4g}")
        ax_b.legend(loc="lower right")
    ax_b.set_ylabel("Lipschitz upper bound")
    ax_b.set_title(c.network.name + (f" (N = {c.length})" if c.length else ""))
    ax_t.bar(names, [max(r.seconds, 1e-4) for r in done], color="tab:orange")
    ax_t.set_yscale("log")
    ax_t.set_ylabel("time [s]")
    missing = [f"{r.method}: {r.status}" for r in c.results if not r.ok]
    if missing:
        ax_t.set_title("; ".join(missing), fontsize=8)
    for ax in (ax_b, ax_t):
        ax.tick_params(axis="x", rotation=30)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
