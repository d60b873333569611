"""Plot results: compare.Comparison or sweep rows -> PNG (matplotlib, the optional ``plot`` extra)."""
from __future__ import annotations

from lipdsl.methods import Comparison
from lipdsl.errors import LipdslError
from lipdsl.rigorous import format_down


def _pyplot():
    """``matplotlib.pyplot`` on the file-only Agg backend, or the install hint."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise LipdslError("plotting needs matplotlib, which is not installed",
                          hint="pip install 'lipdsl[plot]'") from exc
    return plt


def plot_comparison(c: Comparison, path: str) -> None:
    """Bounds (bars, with the empirical lower bound as a dashed line) and times (log scale) per method.

    Raises
    ------
    LipdslError
        matplotlib is not installed (``pip install 'lipdsl[plot]'``).
    """
    plt = _pyplot()
    done = [r for r in c.results if r.ok]
    names = [r.method for r in done]
    fig, (ax_b, ax_t) = plt.subplots(1, 2, figsize=(10, 4))
    ax_b.bar(names, [r.bound for r in done], color="tab:blue")
    if c.lower is not None:
        ax_b.axhline(c.lower, color="k", ls="--", lw=1,
                     label=f"empirical lower bound {format_down(c.lower, 4)}")
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


def plot_sweep(rows, path: str, title: str | None = None) -> None:
    """The bound per checkpoint (input order), and the empirical lower bound where the rows have one.

    Raises
    ------
    LipdslError
        matplotlib is not installed (``pip install 'lipdsl[plot]'``).
    """
    plt = _pyplot()
    rows = list(rows)
    x = list(range(len(rows)))
    fig, ax = plt.subplots(figsize=(max(6.0, 0.18 * len(rows) + 2), 4))
    have = [(i, r["lipschitz"]) for i, r in zip(x, rows) if r.get("lipschitz") is not None]
    if have:
        ax.plot([i for i, _ in have], [b for _, b in have], "o-", color="tab:blue", ms=4,
                label="certified upper bound")
    low = [(i, r["lower_bound"]) for i, r in zip(x, rows) if r.get("lower_bound") is not None]
    if low:
        ax.plot([i for i, _ in low], [b for _, b in low], "v--", color="k", ms=4, lw=1,
                label="empirical lower bound")
    missing = [i for i, r in zip(x, rows) if r.get("lipschitz") is None]
    if missing:
        ax.scatter(missing, [0.0] * len(missing), marker="x", color="tab:red", label="no bound")
    ax.set_xticks(x)
    ax.set_xticklabels([r["name"] for r in rows], rotation=90, fontsize=6 if len(rows) > 20 else 8)
    ax.set_ylabel("Lipschitz constant")
    ax.set_title(title or f"{len(rows)} checkpoints")
    ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
