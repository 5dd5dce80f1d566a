"""What a command prints, one rule for every command: with ``--json`` stdout holds exactly one
JSON document, the command's result, and every status, progress and warning line goes to
stderr (a pipe into ``jq`` sees nothing else); without it, status lines go to stdout as they
always did. Progress bars are on stderr either way (synfiqa.progress)."""
from __future__ import annotations

import json
import math
from pathlib import Path

import click


def json_option(function):
    """The ``--json`` flag, passed to the command as ``as_json``."""
    return click.option("--json", "as_json", is_flag=True,
                        help="The result as one JSON document on stdout; status lines go to stderr.")(function)


class Output:
    def __init__(self, as_json: bool):
        self.as_json = as_json

    def echo(self, message: str = "", **kwargs) -> None:
        """A status line: stdout, or stderr under --json. Takes click.echo's arguments, so a stage
        driver's ``echo=`` can be this."""
        kwargs["err"] = kwargs.get("err", False) or self.as_json
        click.echo(message, **kwargs)

    def result(self, payload) -> None:
        """The command's result on stdout, under --json only (a command prints its own table otherwise)."""
        if self.as_json:
            click.echo(json.dumps(_plain(payload), indent=2, allow_nan=False))


def _plain(value):
    """JSON-safe: paths as strings, tuples and sets as lists, non-finite floats as null (strict
    JSON has no NaN), numpy and torch scalars as Python numbers."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [_plain(v) for v in (sorted(value) if isinstance(value, (set, frozenset)) else value)]
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "item") and callable(value.item) and getattr(value, "ndim", 0) == 0:
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return str(value)
