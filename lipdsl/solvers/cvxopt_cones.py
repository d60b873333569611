"""CVXOPT's cone operations on 'l' and 's' cones with the LMI blocks shared among threads: the same results as
``cvxopt.misc``'s, in place.

On a large SDP (52 frequency LMIs of 128 rows at 32 channels) CVXOPT's ``conelp`` spends about half of each
iteration in three functions of ``cvxopt.misc`` that loop over the blocks in C while holding the GIL:
applying the Nesterov-Todd scaling (``scale``), the step to the cone boundary (``max_step``: eigenvalues of
every block) and the scaling update (``update_scaling``: an SVD per block). ``ConeOps`` computes the same
quantities block by block from their definitions (L. Vandenberghe, *The CVXOPT linear and quadratic cone
program solvers*, 2010, §4; CVXOPT's ``misc.py`` documents each) with calls that release the GIL -- numpy's
LAPACK (scipy's f2py wrappers do not release it) and CVXOPT's own BLAS -- so the blocks are shared among
threads; ``installed`` puts them into ``cvxopt.misc`` for the duration of a solve.

Hermitian blocks. A frequency-domain LMI is the real embedding ``E(M)`` (order ``2h``, rows and columns
interleaved: ``E[2i, 2j] = E[2i+1, 2j+1] = Re M_ij``, ``E[2i+1, 2j] = -E[2i, 2j+1] = Im M_ij``) of a Hermitian
``M`` of order ``h``. ``E`` is an algebra map (``E(AB) = E(A) E(B)``, ``E(A^H) = E(A)'``, ``E`` of a unitary
is orthogonal), so interior-point iterates that start as embeddings stay embeddings when the scaling ``r``,
the eigenvectors and singular vectors are taken as embeddings of complex ones, with each eigenvalue or
singular value twice (at ``2j`` and ``2j + 1``). For the blocks that ``hermitian_blocks`` marks (by the
LMIs' data, ``sdp.problem.Lmi.hermitian``) the operations below work on ``M``: a complex product, SVD or
eigendecomposition of order ``h`` costs a third to a half of the real one of order ``2h`` (measured with
numpy on one thread at h = 128: two products 0.77 against 2.08 ms, ``eigh`` 2.65 against 6.72 ms, ``svd``
5.0 against 15.2 ms). ``compute_scaling`` (the first iterate) is replaced too, so that ``r`` is an
embedding from the start (CVXOPT's real SVD may mix the two copies of a singular value).

Storage (CVXOPT's): a vector holds the 'l' part, then each 's' block ``k`` of order ``m`` as ``m * m``
entries in column-major order; the scaling ``W`` holds ``d``, ``di`` (the 'l' part: ``W x = d .* x``) and per
's' block ``r``, ``rti = r^-T``. Anything else (second-order cones, the nonlinear solvers' ``dnl``, several
columns) goes to CVXOPT's own functions.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable
from typing import NamedTuple

import numpy as np
from cvxopt import blas, lapack, matrix

#: The functions of ``cvxopt.misc`` that ``installed`` replaces.
REPLACED = ("scale", "max_step", "update_scaling", "compute_scaling")

#: Hermitian blocks of at least this order (the embedding's, ``2h``) are scaled in complex arithmetic; below
#: it the real congruence (``_congruence``: a triangular product and a rank-2k update) is as fast as the
#: complex one with its conversions (one thread, per block: 0.20 against 0.26 ms at 2h = 128, 1.38 against
#: 1.35 ms at 256, 4.2 against 3.3 ms at 384). Eigenvalues and SVDs are cheaper in complex arithmetic at
#: every order (2-3x).
HERMITIAN_SCALE_MIN_ORDER = 256

#: Which 's' blocks of the solve running on this thread are Hermitian embeddings (``hermitian_blocks``).
_solve_state = threading.local()


@contextlib.contextmanager
def hermitian_blocks(flags):
    """Mark the 's' blocks (``flags[k]``: block ``k`` is a Hermitian embedding) for the cone operations
    called on this thread inside the block (a conelp call runs on one thread; nested solves restore the
    outer one's marks)."""
    outer = getattr(_solve_state, "hermitian", ())
    _solve_state.hermitian = tuple(bool(f) for f in flags)
    try:
        yield
    finally:
        _solve_state.hermitian = outer


def _marked(k: int) -> bool:
    flags = getattr(_solve_state, "hermitian", ())
    return k < len(flags) and flags[k]


def to_complex(E: np.ndarray) -> np.ndarray:
    """``M`` from its embedding ``E(M)`` (module docstring), read from the even columns of ``E``."""
    M = np.empty((E.shape[0] // 2, E.shape[1] // 2), dtype=complex)
    M.real = E[0::2, 0::2]
    M.imag = E[1::2, 0::2]
    return M


def hermitian_from_lower(E: np.ndarray) -> np.ndarray:
    """The Hermitian ``M`` whose embedding has the lower triangle of ``E`` (CVXOPT's storage of a symmetric
    block: the strict upper triangle may hold anything). Entries ``(2i, 2j)`` and ``(2i+1, 2j)`` with
    ``i >= j`` lie on or below the diagonal, so ``M``'s lower triangle is read directly."""
    M = np.tril(to_complex(E))
    M += np.tril(M, -1).conj().T
    M.imag[np.diag_indices_from(M)] = 0.0
    return M


def project(E: np.ndarray) -> None:
    """``E := E(M)`` for the ``M`` whose embedding is nearest to ``E`` (Frobenius: each part the mean of its
    two copies), in place. A KKT solution of a Hermitian block is an embedding in exact arithmetic; rounding
    leaves a part outside that subspace which the complex operations above would silently drop, and CVXOPT's
    iterates then drift from ours (measured: the part grew tenfold per iteration, to 5e-2 of the block)."""
    M = np.empty((E.shape[0] // 2, E.shape[1] // 2), dtype=complex)
    M.real = (E[0::2, 0::2] + E[1::2, 1::2]) / 2
    M.imag = (E[1::2, 0::2] - E[0::2, 1::2]) / 2
    embed(M, E)


def embedding(M: np.ndarray) -> np.ndarray:
    """``E(M)``, a new ``2h x 2h`` array."""
    out = np.empty((2 * M.shape[0], 2 * M.shape[1]))
    embed(M, out)
    return out


def embed(M: np.ndarray, out: np.ndarray) -> None:
    """``out[...] = E(M)`` (``out``: a ``2h x 2h`` view, e.g. a block of CVXOPT's vector)."""
    re, im = M.real, M.imag
    out[0::2, 0::2] = re
    out[1::2, 1::2] = re
    out[1::2, 0::2] = im
    out[0::2, 1::2] = -im


def _assign(M: np.ndarray, out: np.ndarray) -> None:
    out[...] = M


class _Algebra(NamedTuple):
    """How a block's matrices are worked on: ``read`` a block into the working matrix, ``write`` one back,
    its ``adjoint``, and how many times each eigen- or singular value occurs in the block."""

    read: Callable
    write: Callable
    adjoint: Callable
    copies: int


_REAL = _Algebra(lambda A: A, _assign, lambda A: A.T, 1)
#: A Hermitian block: its complex ``M`` (module docstring), each value twice in ``E(M)``.
_COMPLEX = _Algebra(to_complex, embed, lambda A: A.conj().T, 2)


def _column(x) -> np.ndarray:
    """The entries of a one-column ``cvxopt.matrix`` as a writable numpy view."""
    return np.asarray(x)[:, 0]


def _block(v: np.ndarray, start: int, m: int) -> np.ndarray:
    """The ``m x m`` view of ``v[start : start + m*m]`` (column-major, as CVXOPT stores 's' blocks)."""
    return v[start : start + m * m].reshape(m, m, order="F")


def _congruence(x, at: int, R, work, left: bool) -> None:
    """The lower triangle of ``x``'s ``m x m`` block at ``at`` := ``R' X R`` (``left``) or ``R X R'``, with
    ``X`` the symmetric matrix of that block's lower triangle (``work``: an ``m x m`` scratch matrix). With
    ``L`` that triangle, diagonal halved, ``X = L + L'`` and ``R' X R = R'(L R) + (L R)'R``: a triangular
    product and a rank-2k update, 3 m^3 flops in CVXOPT's BLAS, which releases the GIL."""
    m = R.size[0]
    blas.scal(0.5, x, offset=at, inc=m + 1, n=m)
    blas.copy(R, work)
    blas.trmm(x, work, side="L" if left else "R", m=m, n=m, ldA=m, ldB=m, offsetA=at)  # L R or R L
    blas.syr2k(R, work, x, trans="T" if left else "N", n=m, k=m, ldB=m, ldC=m, offsetC=at)


def _scratch(stores: dict, shape: tuple[int, int]):
    """A ``cvxopt.matrix`` of ``shape`` for the calling thread, kept in ``stores`` (zeros when first made)."""
    store = stores.setdefault(threading.get_ident(), {})
    if shape not in store:
        store[shape] = matrix(0.0, shape)
    return store[shape]


def _unsupported(W: dict) -> bool:
    """Whether the scaling has parts ``ConeOps`` leaves to CVXOPT: second-order cones, a nonlinear block
    (``conelp`` itself keeps an empty ``dnl``)."""
    return bool(W["v"]) or len(W.get("dnl", ())) > 0


class ConeOps:
    """``scale``, ``max_step`` and ``update_scaling`` of ``cvxopt.misc``, with the 's' blocks processed by
    ``run(fn, shares)`` (e.g. on threads); ``shares`` splits a list of block orders into groups of indices.
    The results do not depend on how the blocks are shared."""

    def __init__(self, originals: dict[str, Callable], run: Callable, shares: Callable):
        self.originals = originals
        self.run = run
        self.shares = shares

    def _each_block(self, sizes: list[int], start: int, start_eig: int, fn: Callable) -> list:
        """``fn(k, m, offset, eig_offset)`` for every 's' block ``k`` (``offset`` into a vector,
        ``eig_offset`` into a vector of eigenvalues), grouped by ``shares``; the results in block order."""
        offsets = start + np.concatenate([[0], np.cumsum(np.square(sizes))]).astype(int)
        eig_offsets = start_eig + np.concatenate([[0], np.cumsum(sizes)]).astype(int)

        def share(indices):
            return [fn(k, sizes[k], offsets[k], eig_offsets[k]) for k in indices]

        return [out for part in self.run(share, self.shares(sizes)) for out in part]

    def scale(self, x, W, trans: str = "N", inverse: str = "N") -> None:
        """``x := W x``, ``W' x``, ``W^-1 x`` or ``W^-T x`` (``trans``, ``inverse`` as in CVXOPT): ``d .* x``
        or ``di .* x`` on 'l'; on 's' blocks, with ``X = L + L'`` the symmetric matrix of the block's lower
        triangle (``L``: that triangle, diagonal halved),

            W x = r' X r,   W' x = r X r',   W^-1 x = rti X rti',   W^-T x = rti' X rti,

        e.g. ``r' X r = r'(L r) + (L r)'r``: a triangular product and a rank-2k update that writes the lower
        triangle only. Here in CVXOPT's own BLAS, which releases the GIL (numpy has no triangular product,
        and its two general ones cost a third more)."""
        if _unsupported(W) or x.size[1] != 1:
            return self.originals["scale"](x, W, trans=trans, inverse=inverse)
        ml = len(W["d"])
        v = _column(x)
        v[:ml] *= _column(W["d"] if inverse == "N" else W["di"])
        Rs = W["r"] if inverse == "N" else W["rti"]
        left = (inverse == "N") == (trans == "N")  # R' X R; else R X R'
        work: dict = {}
        hermitian = [_marked(k) and r.size[0] >= HERMITIAN_SCALE_MIN_ORDER for k, r in enumerate(Rs)]

        def one(k, m, at, _):
            if hermitian[k]:  # E(R)' E(X) E(R) = E(R^H X R)
                B = _block(v, int(at), m)
                X, R = hermitian_from_lower(B), to_complex(np.asarray(Rs[k]))
                embed(R.conj().T @ (X @ R) if left else R @ (X @ R.conj().T), B)
                return
            _congruence(x, int(at), Rs[k], _scratch(work, (m, m)), left)

        self._each_block([r.size[0] for r in Rs], ml, 0, one)

    def max_step(self, x, dims: dict, mnl: int = 0, sigma=None) -> float:
        """``min {t : x + t e >= 0}`` (``e``: ones on 'l', the identity on 's' blocks), i.e. the largest of
        ``-min(x_l)`` and ``-lambda_min(X_k)``; 0 with no cones. With ``sigma``, each block's eigenvalues
        (ascending) go to ``sigma`` and its eigenvectors overwrite the block. (CVXOPT's LAPACK, which
        releases the GIL: ``syevr`` for the smallest eigenvalue alone is 3x faster than numpy's ``eigvalsh``.)
        """
        if mnl or dims["q"] or x.size[1] != 1:
            step = self.originals["max_step"]  # (its C version crashes on an explicit sigma=None)
            return step(x, dims, mnl) if sigma is None else step(x, dims, mnl, sigma=sigma)
        ml = dims["l"]
        worst = [-float(np.min(_column(x)[:ml]))] if ml else []
        work: dict = {}

        v, sig = _column(x), None if sigma is None else _column(sigma)
        hermitian = [_marked(k) for k in range(len(dims["s"]))]

        def one(k, m, at, at_eig):
            if not m:
                return None
            at, at_eig = int(at), int(at_eig)
            if hermitian[k]:  # E(M)'s eigenvalues are M's, each twice; its eigenvectors E(Q)
                B = _block(v, at, m)
                X = hermitian_from_lower(B)
                if sigma is None:  # the smallest eigenvalue alone (LAPACK heevr, which releases the GIL)
                    w = _scratch(work, (m // 2, 1))
                    lapack.heevr(matrix(X), w, range="I", il=1, iu=1)
                    return -w[0]
                w, Q = np.linalg.eigh(X)
                sig[at_eig : at_eig + m] = np.repeat(w, 2)
                embed(Q, B)
                return -float(w[0])
            if sigma is not None:  # all eigenvalues into sigma, the eigenvectors into the block (syevd)
                lapack.syevd(x, sigma, jobz="V", n=m, ldA=m, offsetA=at, offsetW=at_eig)
                return -sigma[at_eig]
            Q, w = _scratch(work, (m, m)), _scratch(work, (m, 1))  # a copy of the block, its eigenvalue
            blas.copy(x, Q, offsetx=at, n=m * m)
            lapack.syevr(Q, w, range="I", il=1, iu=1, n=m, ldA=m)  # the smallest eigenvalue only
            return -w[0]

        worst += [t for t in self._each_block(list(dims["s"]), ml, 0, one) if t is not None]
        return max(worst) if worst else 0.0

    def update_scaling(self, W, lmbda, s, z) -> None:
        """The Nesterov-Todd scaling at the new iterates, so that ``W z~ = W^-T s~ = lambda`` on exit.

        On entry the 'l' parts of ``s``, ``z`` hold the new iterates in the current scaling, and each 's'
        block factors ``Ls``, ``Lz`` of them (``W^-T s~ = Ls Ls'``, ``W z~ = Lz Lz'``). 'l':
        ``d := d .* sqrt(s ./ z)``, ``lambda := sqrt(s .* z)``. 's' blocks, with the SVD
        ``Lz' Ls = U diag(lambda_k) V'``::

            r := r Ls V diag(lambda_k)^-1/2,    rti := rti Lz U diag(lambda_k)^-1/2,

        and ``U``, ``V'`` are left in the blocks of ``s`` and ``z``.
        """
        if _unsupported(W):
            return self.originals["update_scaling"](W, lmbda, s, z)
        sv, zv, lv = _column(s), _column(z), _column(lmbda)
        ml = len(W["d"])
        sv[:ml] = np.sqrt(sv[:ml])
        zv[:ml] = np.sqrt(zv[:ml])
        d = _column(W["d"])
        d *= sv[:ml]
        d /= zv[:ml]
        _column(W["di"])[:] = 1.0 / d
        lv[:ml] = sv[:ml] * zv[:ml]

        algebras = [_COMPLEX if _marked(k) else _REAL for k in range(len(W["r"]))]

        def one(k, m, at, at_eig):
            Ls, Lz = _block(sv, at, m), _block(zv, at, m)
            r, rti = np.asarray(W["r"][k]), np.asarray(W["rti"][k])
            read, write, adjoint, copies = algebras[k]  # (a Hermitian block: Ls, Lz, r, rti are embeddings)
            Ls_, Lz_ = read(Ls), read(Lz)
            U, lam, Vh = np.linalg.svd(adjoint(Lz_) @ Ls_)
            scaling = 1.0 / np.sqrt(lam)
            write(((read(r) @ Ls_) @ adjoint(Vh)) * scaling, r)
            write(((read(rti) @ Lz_) @ U) * scaling, rti)
            lv[at_eig : at_eig + m] = np.repeat(lam, copies)
            write(U, Ls)
            write(Vh, Lz)

        self._each_block([r.size[0] for r in W["r"]], ml, ml, one)


    def compute_scaling(self, s, z, lmbda, dims: dict, mnl=None) -> dict:
        """The Nesterov-Todd scaling at the first iterate (CVXOPT's, which also does the 'l' part), with the
        Hermitian blocks' ``r``, ``rti`` and ``lambda`` recomputed as embeddings: with ``S = Ls Ls^H``,
        ``Z = Lz Lz^H`` (Cholesky) and the SVD ``Lz^H Ls = U diag(lambda) V^H``,

            r = Lz^-H U diag(lambda)^1/2,     rti = Lz U diag(lambda)^-1/2,

        so that ``r' Z r = diag(lambda) = rti' S rti`` (CVXOPT's own formulas, ``misc.compute_scaling``)."""
        W = self.originals["compute_scaling"](s, z, lmbda, dims, mnl=mnl)
        if not any(_marked(k) for k in range(len(dims["s"]))) or mnl or dims["q"]:
            return W
        sv, zv, lv = _column(s), _column(z), _column(lmbda)
        at, at_eig = dims["l"], dims["l"]
        for k, m in enumerate(dims["s"]):
            if _marked(k):
                Ls = np.linalg.cholesky(hermitian_from_lower(_block(sv, at, m)))
                Lz = np.linalg.cholesky(hermitian_from_lower(_block(zv, at, m)))
                U, lam, _ = np.linalg.svd(Lz.conj().T @ Ls)
                embed(np.linalg.solve(Lz.conj().T, U) * np.sqrt(lam), np.asarray(W["r"][k]))
                embed((Lz @ U) / np.sqrt(lam), np.asarray(W["rti"][k]))
                lv[at_eig : at_eig + m] = np.repeat(lam, 2)
            at, at_eig = at + m * m, at_eig + m
        return W


_install_lock = threading.Lock()
_installs = 0
_saved: dict[str, Callable] = {}


@contextlib.contextmanager
def installed(run: Callable, shares: Callable):
    """``cvxopt.misc``'s ``scale``, ``max_step`` and ``update_scaling`` replaced by ``ConeOps`` inside the
    block (reference-counted: nested or concurrent solves share the first one's threads, and CVXOPT's own
    functions come back when the last one ends)."""
    from cvxopt import misc

    global _installs
    with _install_lock:
        if _installs == 0:
            _saved.update({name: getattr(misc, name) for name in REPLACED})
        ops = ConeOps(dict(_saved), run, shares)
        if _installs == 0:
            for name in REPLACED:
                setattr(misc, name, getattr(ops, name))
        _installs += 1
    try:
        yield ops
    finally:
        with _install_lock:
            _installs -= 1
            if _installs == 0:
                for name in REPLACED:
                    setattr(misc, name, _saved[name])
