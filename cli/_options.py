"""Options whose defaults belong to a config dataclass: one owner per default.

`add_config_option` registers a flag with argparse default None, so that an
absent flag is distinguishable from a given one, and shows the config field's
default in the help. It records the flag in the parser's defaults (`args.config_options`:
dest -> `ConfigOption`), and `config_from_args` applies only the flags that were
given, with `dataclasses.replace`. A bool field becomes a switch that flips its default.
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Callable
from typing import Any

__all__ = ["ConfigOption", "OPTIONS_KEY", "field_default", "add_config_option", "config_from_args"]

OPTIONS_KEY = "config_options"


@dataclasses.dataclass(frozen=True)
class ConfigOption:
    """A flag that sets `cls.field`; `convert` maps the parsed value (e.g. 'auto' -> None)."""

    cls: type
    field: str
    action: argparse.Action
    convert: Callable[[Any], Any] | None = None
    default_text: str | None = None


def field_default(cls: type, name: str) -> Any:
    """The default of dataclass field `cls.name` (default_factory called)."""
    field = next(f for f in dataclasses.fields(cls) if f.name == name)
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    if field.default is dataclasses.MISSING:
        raise TypeError(f"{cls.__name__}.{name} has no default")
    return field.default


def _show(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def add_config_option(
    parser: argparse._ActionsContainer,
    flag: str,
    cls: type,
    field: str,
    help: str = "",
    *,
    convert: Callable[[Any], Any] | None = None,
    default_text: str | None = None,
    **kwargs: Any,
) -> argparse.Action:
    """Add `flag` (to a parser or argument group) setting `cls.field`; returns the action.

    `type` is the field default's type unless given (give it when the default is None);
    `default_text` replaces the shown default where it depends on the input.
    """
    default = field_default(cls, field)
    shown = default_text
    if isinstance(default, bool):
        kwargs.setdefault("action", "store_const")  # a switch that flips the default, unless told otherwise
        if kwargs["action"] == "store_const":
            kwargs["const"] = not default
    elif default is not None:
        kwargs.setdefault("type", type(default))
        shown = _show(default) if shown is None else shown
    elif "type" not in kwargs and "choices" not in kwargs:
        raise TypeError(f"{flag}: give type= for {cls.__name__}.{field} (its default is None)")
    if shown is not None:
        help = f"{help} (default: {shown})".lstrip()
    action = parser.add_argument(flag, default=None, help=help, **kwargs)
    options = parser.get_default(OPTIONS_KEY)
    if options is None:
        options = {}
        parser.set_defaults(**{OPTIONS_KEY: options})
    options[action.dest] = ConfigOption(cls, field, action, convert, default_text)
    return action


def config_from_args(config: Any, args: argparse.Namespace) -> Any:
    """`config` (a config class or instance) with the fields of the given flags replaced."""
    if isinstance(config, type):
        config = config()
    changes = {}
    for dest, option in (getattr(args, OPTIONS_KEY, None) or {}).items():
        value = getattr(args, dest, None)
        if isinstance(config, option.cls) and value is not None:
            changes[option.field] = option.convert(value) if option.convert else value
    return dataclasses.replace(config, **changes)
