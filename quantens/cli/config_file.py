"""`--config FILE`: a JSON file of flag values (e.g. tuning/best.json) as the defaults.

Flags given on the command line win; each value is checked as argparse
would type it, and a bad one is one line naming the key and its flag.
"""

from __future__ import annotations

import argparse
import json
import math

from quantens import defaults
from quantens.cli.flags import bits_list, bits_value
from quantens.defaults import DERIVED_KEYS

__all__ = ["config_defaults"]


def config_defaults(parser: argparse.ArgumentParser, argv: list[str] | None) -> None:
    """Makes the values of `--config FILE` the defaults, so explicit flags win."""
    known, _ = parser.parse_known_args(argv)
    if known.config is None:
        return
    try:
        with open(known.config, encoding="utf-8") as f:
            values = json.load(f)
    except (OSError, ValueError) as error:
        parser.error(f"--config {known.config}: cannot read it as JSON ({error})")
    if not isinstance(values, dict):
        parser.error(f"--config {known.config}: expected a JSON object of flag values")
    actions = {action.dest: action for action in parser._actions}
    values = {k: v for k, v in values.items() if k not in DERIVED_KEYS}
    if values.get("float_teacher") is False and not defaults.is_model_file(
            values.get("model", known.model)):
        # config.json records the resolved value; for a model without a float teacher it is
        # the default, not a --no-float-teacher to refuse
        values["float_teacher"] = None
    unknown = sorted(set(values) - set(actions))
    if unknown:
        parser.error(f"--config {known.config}: unknown flags {', '.join(unknown)}")
    for key, value in values.items():
        problem = _config_value_problem(actions[key], value)
        if problem:
            flag = max(actions[key].option_strings, key=len)
            parser.error(f"--config {known.config}: {key} ({flag}) {problem}, got {value!r}")
    parser.set_defaults(**{k: v for k, v in values.items() if k != "config"})


def _config_value_problem(action: argparse.Action, value) -> str | None:
    """Why a --config value cannot stand for the flag (None when it can), as argparse types it."""
    def number(v, kind):
        if kind is bits_value:  # config.json stores [bits, value] pairs; "B:V" works too
            pair = isinstance(v, list) and len(v) == 2 and number(v[0], int) is None \
                and number(v[1], float) is None
            return None if pair or isinstance(v, str) else "a [bits, value] pair"
        if kind is int or kind is bits_list:
            return None if isinstance(v, int) and not isinstance(v, bool) else "an integer"
        if kind is float:
            ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
            return None if ok else "a finite number"
        return None if isinstance(v, str) else "a string"

    if value is None:
        return None if action.default is None else "must not be null"
    if isinstance(action, (argparse._StoreTrueAction, argparse.BooleanOptionalAction)):
        return None if isinstance(value, bool) else "must be true or false"
    if action.dest == "lr_steps" and isinstance(value, list):  # config.json stores a list
        return None if all(number(v, float) is None for v in value) else "must list numbers"
    if action.nargs in ("+", "*"):
        if not isinstance(value, list) or not value:
            return "must be a non-empty list"
        wanted = {number(v, action.type) for v in value} - {None}
        return f"must list only {wanted.pop().split(' ', 1)[1]}s" if wanted else None
    wanted = number(value, action.type)
    if wanted:
        return f"must be {wanted}"
    if action.choices is not None and value not in action.choices:
        return f"must be one of {', '.join(map(str, action.choices))}"
    return None
