"""User-facing errors: one line that names the problem and the fix; the CLI exits with code 2."""
from __future__ import annotations

import difflib
from typing import Iterable


class UserError(Exception):
    """Bad input from the user (config, CLI, data). The message is one line and says how to fix it."""

    exit_code = 2


class TrainingDiverged(UserError):
    """The loss or the Fisher became non-finite."""


def did_you_mean(name: str, choices: Iterable[str]) -> str:
    """' (did you mean 'x'?)' for the closest choice, or '' when none is close."""
    close = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""
