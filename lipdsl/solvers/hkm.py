"""Solve an SDP of large, sparse low-rank LMIs by a primal-dual HKM interior-point method: Sdp -> Solution.

CVXOPT's Nesterov-Todd scaling costs an SVD and about sixteen dense scalings of every LMI block per iteration
(about 3 s for the 641-row LipSDP LMI of the ECG net). The HKM direction needs no SVD: per iteration two
Cholesky factorisations, one inverse, a few matrix products and four eigenvalue problems for the step
lengths. With ``F(x) = F0 + sum_k x_k F_k`` (all LMI blocks, plus ``x_i >= 0`` as 1 x 1 blocks) the pair is

    (P)  min  c'x         s.t.  S = F(x) >= 0,
    (D)  max  -<F0, Z>    s.t.  <F_k, Z> = c_k (all k),  Z >= 0,          c'x + <F0, Z> = <S, Z> >= 0.

From any ``S, Z > 0`` (residuals ``r_p = S - F(x)``, ``r_d = c - A(Z)``, ``A(Z)_k = <F_k, Z>``), the
Newton step for ``S Z = sigma mu I`` linearised as ``dZ S + Z dS = sigma mu I - Z S - corr`` is

    H dx = A(sigma mu S^-1 + Z r_p S^-1 - corr S^-1) - c,      H_kl = <F_k, Z F_l S^-1>,
    dS = A*(dx) - r_p,     dZ = sigma mu S^-1 - Z - sym((Z dS + corr) S^-1),

with Mehrotra's predictor (``sigma = 0, corr = 0``) and corrector (``sigma = (mu_aff / mu)^3``,
``corr = dZ_aff dS_aff``). Every ``F_k`` is a sum of rank-two terms ``c_r (u_r v_r' + v_r u_r')``
(``sdp.Factored``) with sparse ``u, v``, so

    H_kl = sum_{r in k, s in l} c_r c_s [ (u_r'Z u_s)(v_s'T v_r) + (u_r'Z v_s)(u_s'T v_r)
                                         + (v_r'Z u_s)(v_s'T u_r) + (v_r'Z v_s)(u_s'T u_r) ],   T = S^-1,

from the sparse Gram products ``U'ZU, U'ZV, V'ZV`` and the same with ``T`` (``O(m nnz(U) + R nnz(U))``).
Nothing from here is trusted: the caller certifies the returned point.
"""

from __future__ import annotations

import time

import numpy as np
import scipy.linalg
import scipy.sparse as sp
from scipy.linalg import lapack

from lipdsl import limits
from lipdsl.errors import SolveError
from lipdsl.solvers.cvxopt_kkt import dense_variables
from lipdsl.solvers.solution import Solution, iteration_hook, nonneg_indices, objective


def _sym(M: np.ndarray) -> np.ndarray:
    return (M + M.T) / 2


def _cholesky(M: np.ndarray) -> np.ndarray | None:
    """Lower Cholesky factor (LAPACK ``potrf``; the strict upper triangle is not referenced), or None."""
    L, info = lapack.dpotrf(M, lower=1, clean=0)
    return L if info == 0 else None


def _inverse(L: np.ndarray) -> np.ndarray:
    """``(L L')^-1`` from the lower Cholesky factor (``potri``), symmetric."""
    Li, info = lapack.dpotri(L, lower=1)
    if info != 0:
        raise np.linalg.LinAlgError("potri failed")
    return np.tril(Li) + np.tril(Li, -1).T


def _max_step(L: np.ndarray, D: np.ndarray) -> float:
    """Largest ``a`` with ``L L' + a D >= 0`` (``inf`` if every ``a >= 0`` is), ``L`` lower Cholesky:
    ``-1 / lambda_min(L^-1 D L^-T)``, the reduction by ``sygst`` and one eigenvalue by ``syevr``."""
    C, info = lapack.dsygst(D, L, itype=1, lower=1)
    if info != 0:
        raise np.linalg.LinAlgError("sygst failed")
    lam_min = float(scipy.linalg.eigvalsh(C, lower=True, subset_by_index=[0, 0], check_finite=False)[0])
    return np.inf if lam_min >= 0 else -1.0 / lam_min


class _Block:
    """One LMI block: ``F0``, the vectorised coefficients ``G`` and the factored terms for the Gram data."""

    def __init__(self, lmi, n: int):
        self.m = m = lmi.size
        self.F0 = _sym(np.asarray(lmi.F0, dtype=float))
        self.G = sp.csr_matrix(lmi.G)
        self.GT = self.G.T.tocsr()
        f = lmi.factored
        # A variable with many terms (rho on a wide input, a weight row cut into pieces by a chordal split)
        # is cheaper as one sparse F_k: its column of H is A(Z F_k S^-1) (the structured KKT's rule).
        self.dense = dense_variables(lmi, n)
        # H is formed on the variables with a term in this block (``vars``: a frequency LMI has about a
        # third of them), then added into the whole H: the other entries of this block's H are zero
        self.vars = np.unique(np.concatenate([f.col, self.dense])).astype(np.int64)
        local = np.full(n, -1, dtype=np.int64)
        local[self.vars] = np.arange(len(self.vars))
        self.GT_vars = self.GT[self.vars]
        self.dense_local = local[self.dense]
        self.factored_local = local[np.setdiff1d(self.vars, self.dense)]
        Gc = sp.csc_matrix(lmi.G)
        self.F_dense = [sp.csr_matrix(Gc[:, k].toarray().reshape(m, m, order="F")) for k in self.dense]
        keep = np.flatnonzero(~np.isin(f.col, self.dense))
        keep = keep[np.argsort(f.col[keep], kind="stable")]  # terms grouped by variable
        self.UT, self.VT = sp.csr_matrix(f.U.T)[keep], sp.csr_matrix(f.V.T)[keep]
        cols = f.col[keep]
        first = np.r_[True, cols[1:] != cols[:-1]] if len(cols) else np.zeros(0, dtype=bool)
        self.starts = np.flatnonzero(first)  # each variable's first term (np.add.reduceat)
        self.groups = local[cols[self.starts]]  # the local index of each group's variable
        self.coef = f.coef[keep]
        # (group, term) -> coef: sums a chunk's rows of the term matrix by variable
        self.agg = sp.csr_matrix((self.coef, (np.cumsum(first) - 1, np.arange(len(keep)))),
                                 shape=(len(self.starts), len(keep)))

    def adjoint(self, x: np.ndarray) -> np.ndarray:
        """``sum_k x_k F_k`` (dense, symmetric)."""
        return _sym((self.G @ x).reshape(self.m, self.m, order="F"))

    def apply(self, M: np.ndarray) -> np.ndarray:
        """``(<F_k, M>)_k`` (``= <F_k, sym(M)>``; with ``F_k`` symmetric either vec order gives it)."""
        return self.GT @ np.ascontiguousarray(M).reshape(-1)

    def gram(self, Z: np.ndarray, T: np.ndarray) -> np.ndarray:
        """This block's ``H`` on its variables ``vars`` (module docstring): the dense variables' columns
        ``A(Z F_k S^-1)``, the others' entries in row chunks of the ``R x R`` term matrix."""
        nv, R = len(self.vars), len(self.coef)
        H = np.zeros((nv, nv))
        for k, Fk in zip(self.dense_local, self.F_dense):
            col = self.GT_vars @ np.ascontiguousarray(Z @ np.asarray(Fk @ T)).reshape(-1)
            H[:, k] = col
            H[k, self.factored_local] = col[self.factored_local]
        if R == 0:
            return H
        # m x R: Z u_r, Z v_r, ... (C order: scipy's sparse @ dense would copy a transposed view per product)
        ZU, ZV = np.ascontiguousarray((self.UT @ Z).T), np.ascontiguousarray((self.VT @ Z).T)
        TU, TV = np.ascontiguousarray((self.UT @ T).T), np.ascontiguousarray((self.VT @ T).T)
        step = max(1, min(R, GRAM_CHUNK_ENTRIES // max(R, 1)))
        Hg = np.zeros((len(self.groups), len(self.groups)))
        for lo in range(0, R, step):
            hi = min(R, lo + step)
            u, v = self.UT[lo:hi], self.VT[lo:hi]
            # [r, s] = u_r'Z u_s etc. for r in the chunk
            ZUU, ZUV, ZVU, ZVV = u @ ZU, u @ ZV, v @ ZU, v @ ZV
            TUU, TUV, TVU, TVV = u @ TU, u @ TV, v @ TU, v @ TV
            W = ZUU * TVV + ZUV * TVU + ZVU * TUV + ZVV * TUU
            W *= self.coef
            # sum the columns by variable (terms are sorted by variable), then the rows
            Hg += self.agg[:, lo:hi] @ np.add.reduceat(W, self.starts, axis=1)
        H[np.ix_(self.groups, self.groups)] += Hg
        return H


#: Entries of the ``R x R`` term matrix formed at once in ``_Block.gram`` (about 16 such arrays live
#: together). Small on purpose: arrays of megabytes are mapped and unmapped by malloc at every product, and
#: the page faults cost more than the products (tcn_plain, 86 blocks of R ~ 600 terms: 5.5 s of system time
#: against 3.5 s of user time per 4 iterations at 1 << 22, 0.4 s at 1 << 15; the ECG LipSDP LMI, 641 rows:
#: user + system 108 -> 91 s, the same iterates).
GRAM_CHUNK_ENTRIES = 1 << 15


class _Newton:
    """The HKM Newton system at one iterate ``(x, S, Z)`` (LP part ``sl, zl``): factorisations, ``H`` and its
    Cholesky factor; ``direction`` solves it for a centring target and second-order correction."""

    def __init__(self, blocks, nn, c, S, sl, Z, zl, rp, rpl, norm_F):
        self.blocks, self.nn, self.c = blocks, nn, c
        self.S, self.sl, self.Z, self.zl = S, sl, Z, zl
        self.rp, self.rpl = rp, rpl  # S - F(x), sl - x[nn]
        self.LS, self.LZ = [_cholesky(Si) for Si in S], [_cholesky(Zi) for Zi in Z]
        if any(L is None for L in self.LS + self.LZ):
            raise np.linalg.LinAlgError("an iterate left the cone")
        self.T = [_inverse(L) for L in self.LS]
        self.tl = 1.0 / sl
        H = np.zeros((len(c), len(c)))
        for b, Zi, Ti in zip(blocks, Z, self.T):
            H[np.ix_(b.vars, b.vars)] += b.gram(Zi, Ti)
        H[nn, nn] += zl * self.tl  # (distinct indices)
        self.cho = scipy.linalg.cho_factor(_sym(H), lower=True, check_finite=True)
        # after a full primal step r_p is rounding only, and Z r_p S^-1 two products for nothing
        self.ZrpT = [Zi @ ri @ Ti if np.abs(ri).max() > 1e-13 * (1 + norm_F) else 0.0
                     for Zi, ri, Ti in zip(Z, self.rp, self.T)]

    def A(self, Ms, ml) -> np.ndarray:
        out = np.zeros(len(self.c))
        for b, M in zip(self.blocks, Ms):
            out += b.apply(M)
        out[self.nn] += ml
        return out

    def direction(self, sigma_mu: float, corr=None, corr_l=None):
        """``(dx, dS, dsl, dZ, dzl)`` for ``S Z -> sigma_mu I``, with the correction ``corr = dZ_a dS_a``."""
        corr = corr or [None] * len(self.blocks)
        corr_l = np.zeros_like(self.sl) if corr_l is None else corr_l
        T, tl, Z, zl = self.T, self.tl, self.Z, self.zl
        Ms = [sigma_mu * Ti + ZR - (C @ Ti if C is not None else 0.0)
              for Ti, ZR, C in zip(T, self.ZrpT, corr)]
        ml = sigma_mu * tl + zl * self.rpl * tl - corr_l * tl
        dx = scipy.linalg.cho_solve(self.cho, self.A(Ms, ml) - self.c, check_finite=False)
        dS = [b.adjoint(dx) - ri for b, ri in zip(self.blocks, self.rp)]
        dsl = dx[self.nn] - self.rpl
        dZ = []
        for Zi, Ti, dSi, C in zip(Z, T, dS, corr):
            K = Zi @ dSi if C is None else Zi @ dSi + C
            dZ.append(sigma_mu * Ti - Zi - _sym(K @ Ti))
        dzl = sigma_mu * tl - zl - (zl * dsl + corr_l) * tl
        return dx, dS, dsl, dZ, dzl

    def steps(self, dS, dsl, dZ, dzl) -> tuple[float, float]:
        """The largest primal and dual steps that keep ``S`` and ``Z`` positive semidefinite."""
        ap = min([_max_step(L, d) for L, d in zip(self.LS, dS)] + _lp_steps(self.sl, dsl))
        ad = min([_max_step(L, d) for L, d in zip(self.LZ, dZ)] + _lp_steps(self.zl, dzl))
        return ap, ad


def _inner(S, sl, Z, zl) -> float:
    return sum(float(np.sum(Si * Zi)) for Si, Zi in zip(S, Z)) + float(sl @ zl)


def solve_hkm(sdp, *, tol: float = 1e-8, max_iterations: int = 100, verbose: bool = False):
    """``min c'x`` subject to every LMI of ``sdp`` and ``x[nonneg] >= 0``, by the HKM method -> Solution.

    Stops when the relative gap ``<S, Z> / (1 + |c'x| + |<F0, Z>|)`` and the residuals ``|r_p| / (1 + |F0|)``,
    ``|r_d| / (1 + |c|)`` are below ``tol`` (status 'optimal'). Otherwise (``max_iterations``, no progress
    for 5 iterations, a failed factorisation, vanishing steps) it returns the iterate with the smallest
    ``max(gap, residuals)`` with status 'unknown'. ``verbose`` prints one line per iteration (also in
    ``Solution.log``). The objective is ``Sdp.solver_objective`` where the problem has one (the frequency
    form's trace term), else ``objective()``.
    """
    t0 = time.perf_counter()
    n = sdp.n
    c = objective(sdp)  # rho (+ the frequency form's trace term, Sdp.solver_objective) or LipSDP's
    blocks = [_Block(lmi, n) for lmi in sdp.lmis]
    nn = nonneg_indices(sdp)
    m_total = sum(b.m for b in blocks) + len(nn)
    # Starting point (as SDPT3's): S, Z multiples of I, large against the data.
    norm_F = max([1.0] + [float(np.linalg.norm(b.F0)) for b in blocks])
    col_norm = np.sqrt(sum(np.asarray(b.G.multiply(b.G).sum(axis=0)).ravel() for b in blocks))
    m_max = max(b.m for b in blocks)
    xi = max(10.0, np.sqrt(m_max), float(np.max((1 + np.abs(c)) / (1 + col_norm))))
    eta = max(10.0, np.sqrt(m_max), norm_F, float(col_norm.max()))
    x = np.zeros(n)
    S, sl = [eta * np.eye(b.m) for b in blocks], np.full(len(nn), eta)
    Z, zl = [xi * np.eye(b.m) for b in blocks], np.full(len(nn), xi)
    status = "unknown"
    best = (np.inf, x, np.inf, np.inf, 0)  # (merit, x, gap, residual, iteration)
    log: list[str] = []
    hook = iteration_hook()
    for it in range(max_iterations + 1):
        limits.checkpoint("hkm")  # the command's deadline, once per iteration
        if hook is not None:
            hook(it + 1)
        mu = _inner(S, sl, Z, zl) / m_total
        pobj = float(c @ x)
        dobj = -sum(float(np.sum(b.F0 * Zi)) for b, Zi in zip(blocks, Z))
        gap = mu * m_total / (1.0 + abs(pobj) + abs(dobj))
        rp, rpl = [Si - b.F0 - b.adjoint(x) for Si, b in zip(S, blocks)], sl - x[nn]
        res_p = max([float(np.linalg.norm(r)) for r in rp] + [float(np.linalg.norm(rpl))]) / (1 + norm_F)
        rd = c - sum((b.apply(Zi) for b, Zi in zip(blocks, Z)), np.zeros(n))
        rd[nn] -= zl
        res_d = float(np.linalg.norm(rd)) / (1 + float(np.linalg.norm(c)))
        res = max(res_p, res_d)
        log.append(f"{it:3d} {pobj: .8e} {dobj: .8e}  gap {gap:.1e}  pres {res_p:.1e}  dres {res_d:.1e}")
        if gap <= tol and res <= tol:
            status, best = "optimal", (0.0, x, gap, res, it)
            break
        if max(gap, res) < best[0]:
            best = (max(gap, res), x, gap, res, it)
        elif max(gap, res) > 1e3 * best[0] or it - best[4] >= 5 or it == max_iterations:
            break  # near the optimum H is ill-conditioned and the residuals drift: keep the best iterate
        try:
            newton = _Newton(blocks, nn, c, S, sl, Z, zl, rp, rpl, norm_F)
        except (np.linalg.LinAlgError, ValueError):
            break
        # Mehrotra: predictor, then the corrector aimed at sigma mu with SDPT3's exponent rule
        dx, dS, dsl, dZ, dzl = newton.direction(0.0)
        ap, ad = (min(1.0, a) for a in newton.steps(dS, dsl, dZ, dzl))
        mu_aff = _inner([Si + ap * d for Si, d in zip(S, dS)], sl + ap * dsl,
                        [Zi + ad * d for Zi, d in zip(Z, dZ)], zl + ad * dzl) / m_total
        expon = 1.0 if min(ap, ad) < 1 / np.sqrt(3) else max(1.0, 3 * min(ap, ad) ** 2)
        sigma = min(1.0, max(0.0, mu_aff / mu) ** expon)
        corr = [dZi @ dSi for dZi, dSi in zip(dZ, dS)]
        dx, dS, dsl, dZ, dzl = newton.direction(sigma * mu, corr, dzl * dsl)
        ap, ad = newton.steps(dS, dsl, dZ, dzl)
        gamma = 0.9 + 0.09 * min(1.0, ap, ad)
        ap, ad = min(1.0, gamma * ap), min(1.0, gamma * ad)
        log[-1] += f"  steps {ap:.3f} {ad:.3f}  sigma {sigma:.1e}"
        if verbose:
            print(log[-1])
        if max(ap, ad) < 1e-10:
            break
        x = x + ap * dx
        S, sl = [Si + ap * d for Si, d in zip(S, dS)], sl + ap * dsl
        Z, zl = [_sym(Zi + ad * d) for Zi, d in zip(Z, dZ)], zl + ad * dzl
    if verbose and status == "optimal":
        print(log[-1])
    _, x, gap, res, iterations = best
    if not np.all(np.isfinite(x)):
        raise SolveError("the HKM interior-point method diverged (non-finite iterate)")
    return Solution(status, float(x[sdp.rho.offset]), x, "hkm", time.perf_counter() - t0, iterations,
                    tuple(log), relative_gap=float(gap), residual=float(res))


def solve_sdp(sdp, *, tol: float, max_iterations: int, verbose: bool) -> Solution:
    """``--solver hkm``: the dissipative SDP (or any problem with ``lmis``, ``nonneg``, ``rho``) by
    ``solve_hkm``, minimising ``Sdp.solver_objective``. Its LMIs ``F0 + sum_k x_k F_k >= 0`` and ``x[nonneg]
    >= 0`` are the method's primal form as they are (no mapping): ``x`` is lipdsl's x. Status 'optimal' when
    the relative gap and residuals are within ``tol``, else 'unknown' with the best iterate (the pipeline
    accepts it if within ``10 tol`` or if the certificate's repair is small); ``certify`` checks either."""
    return solve_hkm(sdp, tol=tol, max_iterations=max_iterations, verbose=verbose)


def _lp_steps(s: np.ndarray, ds: np.ndarray) -> list[float]:
    neg = ds < 0
    return [float(np.min(-s[neg] / ds[neg]))] if neg.any() else []
