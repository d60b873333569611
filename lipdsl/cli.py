"""Command line: argv -> exit code (0 certified/ok, 1 input error, 2 usage, 3 solver failed or not certified)."""
from __future__ import annotations

import sys

import click

from .errors import LipdslError
from .source import Source


def fail(err: LipdslError, source: Source | None) -> None:
    """Print a rendered LipdslError to stderr and exit with its code (the one place errors are shown)."""
    click.echo(err.render(source), err=True)
    sys.exit(err.exit_code)


def read_source(path: str) -> Source:
    """Read a spec, turning I/O problems into a clean usage-level error."""
    try:
        return Source.read(path)
    except OSError as exc:
        click.echo(f"{path}: error: cannot read spec: {exc.strerror or exc}", err=True)
        sys.exit(1)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="lipdsl")
def cli() -> None:
    """lipdsl: certified Lipschitz bounds for 1D convolutional neural networks."""


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``lipdsl`` console script."""
    try:
        cli.main(args=argv, prog_name="lipdsl", standalone_mode=True)
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
