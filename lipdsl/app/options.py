"""Command-line plumbing the commands share: errors -> exit codes (`fail`), spec paths -> checked networks,
option types and options, the solver names, a command's work -> run within its deadline (`within`)."""

from __future__ import annotations

import sys

import click

from lipdsl.errors import LipdslError, OutsideError
from lipdsl.lang.source import Source
from lipdsl.solvers import registry  # the one solver registry (imports no solver)


def fail(err: LipdslError, source: Source | None) -> None:
    """Print a rendered LipdslError to stderr and exit with its code (the one place errors are shown).

    A weight file refused as outside the spec's directory names the option that allows it only if the
    running command has one (``lipdsl import`` has none)."""
    ctx = click.get_current_context(silent=True)
    if isinstance(err, OutsideError) and ctx is not None:
        err.allow(next((p.opts[0] for p in ctx.command.params if p.name == "allow_outside"), None))
    click.echo(err.render(source), err=True)
    sys.exit(err.exit_code)


def read_source(path: str) -> Source:
    """Read a spec, turning I/O problems into a clean usage-level error."""
    try:
        return Source.read(path)
    except OSError as exc:
        click.echo(f"{path}: error: cannot read spec: {exc.strerror or exc}", err=True)
        sys.exit(1)


class Seconds(click.ParamType):
    """A time budget in seconds: a finite number > 0 (>= 0 with ``allow_zero``); nan, inf and negative
    values are usage errors (exit 2), never "no limit"."""

    name = "seconds"

    def __init__(self, allow_zero: bool = False):
        self.allow_zero = allow_zero

    def convert(self, value, param, ctx):
        from lipdsl.limits import check_seconds

        if isinstance(value, float):
            text = value
        else:
            text = str(value).strip()
        try:
            return check_seconds(text, param.opts[0] if param is not None else "seconds",
                                 allow_zero=self.allow_zero)
        except LipdslError as err:
            self.fail(err.message, param, ctx)


def timeout_option(covers: str | None = None, help: str | None = None):
    """``--timeout SECONDS`` (``Seconds``): the command builds its ``limits.Deadline`` from it before reading
    the spec (``load_with_deadline``) and runs its work ``within`` it; ``covers`` says what that work is, for
    the help, or ``help`` is the whole help (``compare``: what happens when the time passes differs)."""
    if help is None:
        help = f"Bound the whole command ({covers}) to SECONDS (exit 3 when they pass)."
    return click.option("--timeout", type=Seconds(), default=None, help=help)


class KeywordOrNumber(click.ParamType):
    """A few keywords or a whole number from ``least`` on (``--frequencies``, ``--weight-rank``): the keyword
    (stripped, lower case), the int, or None. Its name, shown as the metavar, is ``keywords|letter``; a word
    that is neither is refused as "'x' is not 'a', 'b' or <number>", a number below ``least`` with
    ``too_small`` (formatted with ``n``)."""

    def __init__(self, keywords: tuple[str, ...], letter: str, least: int, number: str, too_small: str):
        self.keywords = keywords
        self.name = "|".join((*keywords, letter))
        self.least = least
        self.number = number
        self.too_small = too_small

    def convert(self, value, param, ctx):
        text = value if value is None or isinstance(value, int) else str(value).strip().lower()
        if text is None or text in self.keywords:
            return text
        try:
            n = int(text)
        except ValueError:
            words = ", ".join(repr(k) for k in self.keywords)
            self.fail(f"{value!r} is not {words} or {self.number}", param, ctx)
        if n < self.least:
            self.fail(self.too_small.format(n=n), param, ctx)
        return n


def Frequencies() -> KeywordOrNumber:  # (capitalised: used as the type was, type=Frequencies())
    """``--frequencies``: ``auto`` (the frequency form when the exact LMIs are large), ``none`` (the exact
    LMIs) or a number of frequencies >= 3."""
    return KeywordOrNumber(("auto", "none"), "K", 3, "a whole number of frequencies",
                           "{n} is too few frequencies (at least 3: 0, pi/2, pi)")


def WeightRank() -> KeywordOrNumber:
    """``--weight-rank``: ``auto`` (subspace weights when full ones would be large), ``full`` or a rank."""
    return KeywordOrNumber(("auto", "full"), "R", 1, "a whole number (the subspace's rank)",
                           "{n} is not a rank (at least 1; 'full' for full weights)")


def within(deadline, what: str, work, source: Source | None = None, hint: str | None = None):
    """``work()`` for a command: BLAS pinned to one thread (``limits.blas_threads``, restored after), the
    command's ``deadline`` active for every ``checkpoint``, and the whole of it bounded by that deadline
    (``limits.run_within``: exit 3 once it passes, even inside one long C call)."""
    from lipdsl import limits

    try:
        with limits.blas_threads(), deadline.active():
            return limits.run_within(work, deadline, what, grace=1.0, hint=hint)
    except LipdslError as err:
        fail(err, source)


def load_or_fail(path: str, allow_outside: bool = False):
    """``lipdsl.lang.load.load_network`` for commands: (Source, typed.Network), or print the error and
    exit 1."""
    from lipdsl.lang.load import load_network

    try:
        return load_network(path, allow_outside=allow_outside)
    except LipdslError as err:
        fail(err, err.source)


def load_with_deadline(path: str, allow_outside: bool, timeout: float | None):
    """(deadline, Source, typed.Network) for a command with ``timeout_option``: the whole command's
    ``limits.Deadline`` from ``--timeout``, its clock started before the spec is read (reading it counts),
    then ``load_or_fail`` (which exits on an error)."""
    from lipdsl.limits import Deadline

    deadline = Deadline(timeout)
    return (deadline, *load_or_fail(path, allow_outside))


def search_deadlines(seconds: float | None):
    """(budget, deadline) for a search command (``lower --time-budget``, ``compare --timeout``), one clock
    started now: the search stops its own work at the ``budget`` of ``seconds``; the command's hard
    ``deadline`` (``within``) is ``limits.SEARCH_GRACE`` later. With None neither ends."""
    from lipdsl.limits import SEARCH_GRACE, Deadline

    budget = Deadline(seconds)
    return budget, Deadline(None if seconds is None else seconds + SEARCH_GRACE, started=budget.started)


# Options that solve and export share: both build the same SDP.
MIN_LENGTH = click.option(
    "--length",
    "min_length",
    type=click.IntRange(min=1),
    default=None,
    help="For 'input c x *' nets with global average pooling: the shortest input length to cover.",
)
LIFT = click.option(
    "--lift",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Realize conv layers on blocks of L samples: tighter (towards LipSDP-Neuron), larger LMIs.",
)
ALLOW_OUTSIDE = click.option(
    "--allow-outside",
    is_flag=True,
    help="Allow weight files outside the spec's directory (absolute paths, '..').",
)


def check_length(net, source, length: int | None) -> None:
    """``--length`` against the spec (``check.require_length``): for a spec of fixed length, another length
    is an error at its input line (exit 1) in every command that takes one; the spec's own length is fine."""
    from lipdsl.lang.check import require_length

    try:
        require_length(net, length, "--length")
    except LipdslError as err:
        fail(err, source)


def lower_or_fail(net, source, min_length, lift):
    """``show --lowering``: the lowered network and the problem's size, within the memory model (else
    the error and its exit code)."""
    from lipdsl import limits
    from lipdsl.model.lower import lower
    from lipdsl.pipeline import problem_size

    try:
        size = problem_size(net, lift)
        limits.require_memory(
            limits.BASE_BYTES + limits.lowering_bytes(size.systems),
            f"lowering (state spaces with up to {max((s[0] for s in size.systems), default=0)} states)",
            hint="the realization of a conv layer has dilation*(kernel-1)*c_in states (times --lift): "
            "a smaller --lift, or smaller kernels",
            span=net.span,
        )
        low = lower(net, min_length=min_length, lift=lift)
    except LipdslError as err:
        fail(err, source)
    return low, size


def check_state_space_size(net, source) -> None:
    """Exit 3 (``LimitError``) before printing a realization of more than ``limits.DISPLAY_MAX_BLOCKS``
    state blocks (any conv, those of residual blocks too): sympy would build and print a matrix of blocks^2
    entries."""
    from lipdsl.errors import LimitError
    from lipdsl.lang.typed import flat_layers
    from lipdsl.limits import DISPLAY_MAX_BLOCKS

    for layer in flat_layers(net.layers):
        if layer.kind == "conv1d" and layer.dilation * (layer.kernel - 1) > DISPLAY_MAX_BLOCKS:
            fail(LimitError(
                f"conv1d {layer.name!r} has {layer.dilation * (layer.kernel - 1)} state blocks "
                f"(dilation {layer.dilation} x (kernel {layer.kernel} - 1)); show --state-space prints at "
                f"most {DISPLAY_MAX_BLOCKS}",
                span=layer.span,
                hint="its realization is a shift register: A shifts the past inputs by one block, "
                "B = [0; ...; I], C = [W_{k-1} ... W_1] (with zero blocks between dilated taps), D = W_0; "
                "`lipdsl show --lowering` gives the sizes",
            ), source)


#: Solver names ``--solver`` accepts: the solver registry's (anything else is a usage error, exit 2; a PICOS
#: back-end that is not installed exits 3).
SOLVERS = registry.names()


def solver_name(ctx, param, value: str) -> str:
    if value not in SOLVERS:
        message, hint = registry.unknown_message(value)
        raise click.BadParameter(f"{message}; {hint.removesuffix(' (or picos-NAME)')}")
    return value


def solver_help(lead: str) -> str:
    """``--solver``'s help from the registry: every name and its one-line summary."""
    return lead + " " + "; ".join(f"{b.name}: {b.summary}" for b in registry.SOLVERS.values()) + "."
