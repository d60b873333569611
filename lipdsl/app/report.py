"""Report results: api.Result or sweep rows -> rich text or JSON-ready dicts (with cli, the only printer)."""

from __future__ import annotations

import math

import numpy as np

from lipdsl.pipeline import Result
from lipdsl.model.lowered import System
from lipdsl.rigorous import format_down, format_up
from lipdsl.solvers.solution import converged


def _system_rows(result: Result) -> list[dict]:
    """Per system: spec layers, LMI size, multiplier summary (at the solver's point)."""
    rows = []
    x = result.solution.x
    values = {}
    if x is not None:  # the solver's point in the LMIs' original form (Y -> X, M -> Lambda: one place)
        from lipdsl.certify.reductions import Inverse, NotInvertible, solver_values

        _, values = solver_values(result.sdp, x)
        try:
            values = Inverse.of(result.sdp).invert(values)
        except NotInvertible:  # (a Y that is not positive definite: shown as solved)
            pass
    for link in result.sdp.links:
        sys: System = link.system
        entry = {
            "system": sys.name,
            "layers": list(sys.layers),
            "kind": sys.kind,
            "lmi_size": link.lmi.size,
            "states": sys.ss.nx,
            "slope": list(sys.slope) if sys.slope else None,
            "scale": sys.scale,
            "note": sys.note,
        }
        if x is not None and link.lam is not None:
            lam = values[link.lam.name]
            entry["lambda"] = {"min": float(lam.min()), "max": float(lam.max()), "count": int(lam.size)}
        if x is not None and link.w_out.kind == "var":
            X = values[link.w_out.variable.name]
            ev = np.linalg.eigvalsh(X)
            entry["X_out"] = {
                "structure": link.w_out.variable.structure,
                "eig_min": float(ev[0]),
                "eig_max": float(ev[-1]),
            }
        else:
            entry["X_out"] = {"structure": "constant"}
        rows.append(entry)
    return rows


def to_json(result: Result) -> dict:
    """The whole result as one JSON-ready dict (``lipschitz`` is null unless certified)."""
    cert, sol, net = result.certificate, result.solution, result.network
    return {
        "network": net.name,
        "source": net.source_path,
        "method": "dissipative",
        "lipschitz": cert.lipschitz if cert.verified else None,
        "certified": cert.verified,
        "lipschitz_solver": cert.lipschitz_solver,
        "rho_solver": cert.rho_solver,
        "rho_certified": cert.rho,
        "factor": cert.factor,
        "inflation": cert.inflation,
        "claimed_status": sol.claimed_status,
        "solver": sol.solver,
        "iterations": sol.iterations,
        "relative_gap": sol.relative_gap,
        "residual": sol.residual,
        "solver_notes": list(sol.notes),  # (e.g. a stalled structured solve solved again with 'chol')
        "reason": cert.reason or None,
        "any_length": net.any_length,
        "valid_for": result.validity,
        "input": str(net.input_shape),
        "output": str(net.output_shape),
        "norm": "l2 on the flattened input and output",
        "seconds": result.seconds,
        "lmis": [
            {
                "name": c.name,
                "size": c.size,
                "min_eig_solver": None if math.isnan(c.min_eig_solver) else c.min_eig_solver,
                "min_eig_certified": c.min_eig_certified,
                "ok": bool(c.ok),
            }
            for c in cert.checks
        ],
        # what the solver saw (the LMIs above are the certified, direct forms: an inverse head or frequency
        # LMIs are solved smaller than they are checked)
        "sdp": {"variables": result.sdp.n, "lmi_sizes": [lmi.size for lmi in result.sdp.lmis]},
        "systems": _system_rows(result),
        **result.frequency_report(),
        "form": result.form or None,
        "notes": list(result.sdp.notes)
        + [s.note for s in result.lowered.steps if getattr(s, "note", "") and not isinstance(s, System)],
    }


def baseline_to_json(net, method: str, r) -> dict:
    """``lipdsl solve --method <baseline> --json``: a ``compare.MethodResult`` as a JSON-ready dict."""
    return {
        "network": net.name,
        "source": net.source_path,
        "method": method,
        "lipschitz": r.bound,
        "status": r.status,
        "note": r.note,
        "length": r.length,
        "lmi_rows": r.lmi_rows,
        "seconds": r.seconds,
    }


def print_text(result: Result, console, proof=None, verbose: bool = False) -> None:
    """Human-readable report on a rich Console: the bound and its status first (``proof``: a
    ``lipdsl.certify.verify.Verdict`` of ``--exact``); the per-LMI table of the certificate only when
    ``verbose``
    (``lipdsl solve -v``)."""
    from rich.table import Table

    cert, sol, net = result.certificate, result.solution, result.network
    if cert.verified:
        proved = "" if proof is None else f", proved: L <= {proof.bound_text} in exact arithmetic" + (
            "" if proof.realization_exact else " on rounded realizations, see the proof note")
        console.print(
            f"[bold]Lipschitz upper bound[/bold] of {net.name}: [bold green]{format_up(cert.lipschitz)}[/] "
            f"(certified{proved})", soft_wrap=proof is not None
        )
        for warning in result.warnings:
            console.print(f"  [bold yellow]warning:[/] {warning}")
        # (batch-norm scales covered in the proof; what it does not cover)
        for note in () if proof is None else (*proof.notes, *filter(None, [proof.realization_note])):
            console.print(f"  proof note: {note}", markup=False, highlight=False, soft_wrap=True)
        repaired = (
            "closed form, no SDP needed"
            if result.closed_form
            else (
                f"solver value {cert.lipschitz_solver:.10g}, repaired by {cert.inflation:.2e} relative"
                if cert.inflation is not None
                else f"solver value {cert.lipschitz_solver:.10g}"
            )
        )
        console.print(
            f"  {repaired}; l2 norm on the flattened input ({net.input_shape}) "
            f"and output ({net.output_shape})"
        )
    else:
        console.print(f"[bold red]no certified bound[/] for {net.name}: {cert.reason}")
    console.print(f"  valid for {result.validity}")
    stopped = "" if converged(sol.claimed_status) or sol.relative_gap is None else (
        f", stopped at relative gap {sol.relative_gap:.2g}"
        + ("" if sol.residual is None else f" and residual {sol.residual:.2g}"))
    console.print(f"  solver {sol.solver}: claimed '{sol.claimed_status}' after {sol.iterations} iterations"
                  f"{stopped}")
    for line in sol.notes:
        console.print(f"  solver: {line}", markup=False, highlight=False, soft_wrap=True)
    if result.sdp.storage and result.form:
        console.print(f"  form: {result.form}")
    console.print("  time: " + ", ".join(f"{k} {v:.3f} s" for k, v in result.seconds.items()))
    if not result.sdp.links or not verbose:  # a closed-form bound has no LMI to show
        if result.sdp.links:
            rows = ", ".join(str(c.size) for c in cert.checks if not c.name.startswith(("P[", "X")))
            console.print(f"  {len(result.sdp.links)} LMIs checked ({rows} rows); -v for the per-LMI table")
        for note in to_json(result)["notes"]:
            console.print(f"  note: {note}")
        return
    table = Table(title="LMIs (one per layer group)")
    for col in ("system", "layers", "LMI rows (solver -> cert.)", "states", "slope", "multipliers",
                "min eig (solver -> cert.)"):
        table.add_column(col)
    checks = {c.name: c for c in cert.checks}
    for row, link in zip(_system_rows(result), result.sdp.links):
        c = checks.get(link.lmi.name)
        mult = ""
        if "lambda" in row:
            lam = row["lambda"]
            mult = f"lambda x{lam['count']} in [{lam['min']:.3g}, {lam['max']:.3g}]"
        if row["X_out"]["structure"] != "constant":
            mult += ("; " if mult else "") + f"X {row['X_out']['structure']}"
        slope = "linear" if row["slope"] is None else f"[{row['slope'][0]:g}, {row['slope'][1]:g}]"
        eig = "" if c is None else f"{c.min_eig_solver:.1e} -> {c.min_eig_certified:.1e}"
        # (the solver may work on a smaller form: inverse variables, the frequency domain)
        rows = str(row["lmi_size"])
        if c is not None and c.size != row["lmi_size"]:
            rows += f" -> {c.size}"
        table.add_row(
            row["system"],
            ", ".join(row["layers"]),
            rows,
            str(row["states"]),
            slope,
            mult,
            eig,
        )
    console.print(table)
    for note in to_json(result)["notes"]:
        console.print(f"  note: {note}")


def _shown_in_checks(note: str, checks) -> bool:
    """Whether ``note`` (``"LMI[name]: text"``, a batch-norm scale covered) is already in the detail of
    that LMI's check line, as ``verify`` writes it when the check passes."""
    lmi, sep, text = note.partition(": ")
    return bool(sep) and any(c.name.startswith(lmi) and text in c.detail for c in checks)


def print_verdict(verdict, console, errors) -> None:
    """``lipdsl verify``: the proved bound and each check on ``console``; a failure on ``errors``."""
    how = ("exact rational arithmetic" if verdict.mode == "exact"
           else "floating point with rounding bounds")
    if verdict.ok:
        console.print(f"[bold]verified[/bold]: Lipschitz constant of {verdict.network} <= "
                      f"[bold green]{verdict.bound_text}[/] ({how}; claimed {format_up(verdict.claimed)})",
                      soft_wrap=True)
        if verdict.valid_for:  # (as solve prints it; a global average pool's N from the certificate)
            source = " (min_length from the certificate's options)" if verdict.length_bound else ""
            console.print(f"  valid for {verdict.valid_for}{source}", markup=False, highlight=False,
                          soft_wrap=True)
    else:
        errors.print(f"error: the certificate of {verdict.network} does not verify ({how}): "
                     f"{verdict.reason}", markup=False, highlight=False, soft_wrap=True)
    for c in verdict.checks:
        mark = "ok  " if c.ok else "FAIL"
        real = "" if c.exact_realization else " [realization: lower.py's rounded products]"
        console.print(f"  {mark} {c.name}, {c.size} rows: {c.detail}{real}", markup=False, highlight=False,
                      soft_wrap=True)
    if verdict.rho_raise:
        console.print(f"  rho raised by {verdict.rho_raise:.3g} for strict feasibility in exact arithmetic",
                      soft_wrap=True)
    for note in verdict.notes:
        if not _shown_in_checks(note, verdict.checks):
            console.print(f"  note: {note}", markup=False, highlight=False, soft_wrap=True)
    if verdict.realization_note is not None:
        console.print(f"  note: {verdict.realization_note}", markup=False, highlight=False, soft_wrap=True)
    backend = f", {verdict.backend}" if verdict.mode == "exact" else ""
    console.print(f"  time {verdict.seconds:.3f} s{backend}")
def sweep_table(rows, *, lower: bool = False, title: str | None = None):
    """A ``lipdsl sweep``'s rows (dicts, input order) as a rich Table: bound, status, iterations, time."""
    from rich.table import Table

    table = Table(title=title)
    columns = ["item", "bound"] + (["lower"] if lower else []) + ["status", "iters", "time"]
    for col in columns:
        table.add_column(col, justify="left" if col in ("item", "status") else "right", no_wrap=True)
    for r in rows:
        bound = r.get("lipschitz")
        ok = bound is not None
        status = r["status"] if ok else f"[red]{r['status']}[/]"
        iters = r.get("iterations")
        cells = [r["name"], "-" if bound is None else format_up(bound)]  # (rounded up, as solve prints it)
        if lower:
            lb = r.get("lower_bound")
            cells.append("-" if lb is None else format_down(lb, 6))  # (a lower bound: rounded down)
        cells += [status, "" if iters is None else str(iters), f"{r.get('item_seconds', 0.0):.2f} s"]
        table.add_row(*cells)
    return table


def sweep_notes(rows) -> list[str]:
    """One message per item without a bound: ``name: error`` (the error as rendered, caret and hint); one per
    warning of a bound (``warnings``: a large frequency-grid repair, a bound above the H-infinity product)."""
    out = []
    for r in rows:
        if r.get("lipschitz") is None and r.get("error"):
            text = str(r["error"]).replace("\n", "\n    ")
            out.append(f"{r['name']} ({r['path']}): {text}")
        elif r.get("lipschitz") is not None:
            out.extend(f"{r['name']} ({r['path']}): warning: {w}" for w in r.get("warnings") or ())
    return out
