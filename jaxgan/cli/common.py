"""Shared launcher plumbing: Config flags from the dataclass, shipped flagfiles, the compile cache, one-line
errors."""
from __future__ import annotations

import dataclasses
import importlib
import math
import os
import pathlib
import re
import sys
import typing
from typing import Callable

from absl import flags

EXIT_IO_ERROR = 74  # the disk filled up, or the workdir became read-only/unwritable (sysexits EX_IOERR)


def define_config_flags(config_cls, flag_values: flags.FlagValues = flags.FLAGS) -> None:
    """One absl flag per field of the config dataclass, with its default and help text (the field's metadata,
    `jaxgan.config.option`). A program lists them under ``--help`` with ``flags.adopt_module_key_flags(common)``
    (`run_app` shows the program's key flags)."""
    types = typing.get_type_hints(config_cls)
    define = {bool: flags.DEFINE_bool, int: flags.DEFINE_integer, float: flags.DEFINE_float}
    for field in dataclasses.fields(config_cls):
        help_text = field.metadata["help"]
        choices = field_choices(field)
        if choices:
            help_text += f"; one of: {', '.join(choices)}"
        define.get(types[field.name], flags.DEFINE_string)(field.name, field.default, help_text,
                                                           flag_values=flag_values)


def field_choices(field: dataclasses.Field) -> tuple[str, ...] | None:
    """The accepted values of a config field declared with ``choices="module:attribute"`` (a registry's keys)."""
    where = field.metadata.get("choices")
    if where is None:
        return None
    module, attribute = where.split(":")
    return tuple(getattr(importlib.import_module(module), attribute))


def config_from_flags(config_cls, flag_values: flags.FlagValues = flags.FLAGS):
    return config_cls(**{f.name: flag_values[f.name].value for f in dataclasses.fields(config_cls)})


def enable_compile_cache(directory: str) -> None:
    """JAX's persistent compilation cache: a second run of the same program skips compilation."""
    if not directory:
        return
    import jax
    jax.config.update("jax_compilation_cache_dir", os.path.expanduser(directory))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)


CONFIG_DIR = pathlib.Path(__file__).resolve().parent.parent / "configs"  # package data: jaxgan/configs/**.cfg
_REPO_CONFIG_PREFIXES = ("launch/configs/", "jaxgan/configs/")  # the paths the docs write, in a checkout


def shipped_configs() -> list[str]:
    """Names of the shipped flagfiles relative to `CONFIG_DIR`, e.g. ``quickstart.cfg``, ``studies/x.cfg``."""
    return sorted(p.relative_to(CONFIG_DIR).as_posix() for p in CONFIG_DIR.rglob("*.cfg"))


def find_shipped_config(name: str) -> pathlib.Path | None:
    """The shipped flagfile ``name`` names (``.cfg`` optional; a ``launch/configs/`` prefix is dropped), or None."""
    for prefix in _REPO_CONFIG_PREFIXES:
        name = name.removeprefix(prefix)
    for candidate in (name, name + ".cfg"):
        if candidate in shipped_configs():
            return CONFIG_DIR / candidate
    return None


def resolve_flagfiles(argv: list[str]) -> list[str]:
    """``argv`` with each ``--flagfile`` value that is no file but names a shipped config replaced by its path.

    So an installed jaxgan runs ``jaxgan-train --flagfile=quickstart.cfg`` (or the repository path
    ``launch/configs/quickstart.cfg``) from any directory; a file of that name in the working directory wins.
    """
    def resolve(value: str) -> str:
        shipped = None if os.path.exists(os.path.expanduser(value)) else find_shipped_config(value)
        return str(shipped) if shipped else value

    out, value_next = list(argv[:1]), False
    for i, arg in enumerate(argv[1:], 1):
        if arg == "--":  # absl reads no flags after it
            return out + list(argv[i:])
        name, eq, value = arg.partition("=")
        if value_next:  # "--flagfile PATH": absl reads the next argument
            arg = resolve(arg)
        elif name in ("--flagfile", "-flagfile") and eq:
            arg = f"{name}={resolve(value)}"
        value_next = name in ("--flagfile", "-flagfile") and not eq and not value_next
        out.append(arg)
    return out


def parse_flags_one_line(argv: list[str]) -> list[str]:
    """absl ``flags_parser`` for ``app.run``: a bad flag is one ``error:`` line on stderr and exit code 2.

    ``--flagfile`` also takes the name of a shipped config (`resolve_flagfiles`)."""
    try:
        return flags.FLAGS(resolve_flagfiles(argv))
    except flags.Error as e:
        message = " ".join(str(e).split()).removeprefix("ERROR:: ")
        missing = re.fullmatch(r"flag --(\w+)=None: Flag --\1 must have a value other than None\.", message)
        if missing:  # a required flag (absl's validator message names it twice)
            name = missing.group(1)
            message = f"--{name} is required: {flags.FLAGS[name].help}"
        if isinstance(e, flags.CantOpenFlagFileError):
            message = f"--flagfile: {message}; shipped configs (by name): {', '.join(shipped_configs())}"
        print(f"error: {message} (--help lists the flags)", file=sys.stderr)
        sys.exit(2)


def run_app(main: Callable[[list[str]], int | None], doc: str | None) -> None:
    """``absl.app.run(main)`` with one-line flag errors; ``--help`` prints ``doc`` (the program's docstring) and
    the key flags of ``main``'s module (its own flags and those it adopts, e.g. every Config flag).

    absl prints the ``__main__`` module's docstring and key flags, which are a launcher wrapper's or a console
    script's (``sys.argv[0]``), so the program module's key flags are registered for it."""
    from absl import app
    sys.modules["__main__"].__doc__ = doc
    if main.__module__ != "__main__":  # else (python -m jaxgan.cli.train) absl already files them under argv[0]
        for flag in flags.FLAGS.get_key_flags_for_module(main.__module__):
            flags.FLAGS.register_key_flag_for_module(sys.argv[0], flag)
    app.run(main, flags_parser=parse_flags_one_line)


def run_with_clean_errors(main: Callable[[], int | None], user_errors: tuple[type[BaseException], ...],
                          exit_codes: dict[type[BaseException], int] | None = None, *,
                          exit_on_io_error: bool = True) -> int:
    """Runs ``main``; a user error becomes one line on stderr and an exit code, not a traceback.

    A full disk, a read-only file system or a permission error (``OSError``, or an orbax/TensorStore error
    carrying one) also becomes one line, exit code `EXIT_IO_ERROR` (`jaxgan.workdir.describe_io_error`); with
    ``exit_on_io_error`` the process ends there (`jaxgan.interrupts.exit_now`), else the code is returned."""
    from jaxgan import workdir as workdir_lib
    workdir_lib.quiet_io_errors()
    exit_codes = exit_codes or {}
    try:
        return main() or 0
    except user_errors as e:
        message = " ".join(str(e).split())
        print(f"error: {message}", file=sys.stderr)
        for cls, code in exit_codes.items():
            if isinstance(e, cls):
                return code
        return 2
    except Exception as e:
        if workdir_lib.describe_io_error(e) is None:
            raise
        workdir_lib.report_io_error(e)
        if exit_on_io_error:
            # Out now, without the interpreter's shutdown: it would flush and close what the run left open (a log
            # file's buffer, a library's event file) onto the full or read-only disk and print each failure as
            # "Exception ignored in ...". Checkpoints are complete or not listed; there is nothing left to write.
            from jaxgan import interrupts
            interrupts.exit_now(EXIT_IO_ERROR)
        return EXIT_IO_ERROR


def given_flags() -> set[str]:
    """Names of the flags given on the command line or in a flagfile (absl's ``present``)."""
    return {name for name in flags.FLAGS if flags.FLAGS[name].present}


def check_explicit_flags(config, given: set[str]) -> None:
    """Refuses a Config flag in ``given`` (`given_flags`) that ``config`` would ignore, whatever its value.

    `jaxgan.experiment.validate` refuses such fields when they differ from their defaults; this also catches
    ``--optimizer=sgd --b1=0.5`` (the default value, given explicitly), and ``--b1``/``--b2`` in general, which
    validate leaves to the launchers (sweep groups may switch optimizer and inherit the base's Adam betas).
    """
    from jaxgan.experiment import ConfigError, inapplicable_flags
    for name, target in inapplicable_flags(config).items():
        if name in given:
            raise ConfigError(f"--{name}={getattr(config, name)} has no effect: it applies to {target}")


def check_sweep_flags_apply(base, groups, given: set[str]) -> None:
    """No flag silently dropped by a sweep: a Config flag in ``given`` must apply to some group, and a value a
    group sets itself (``--losses=...+b1=0.9``, ``--sweep=b2:...``) must apply to that group."""
    from jaxgan.experiment import ConfigError, inapplicable_flags
    ignored = [inapplicable_flags(g.config) for g in groups]
    for name in sorted(given & set(ignored[0])):
        if all(name in i for i in ignored):
            raise ConfigError(f"--{name}={getattr(base, name)} has no effect: it applies to {ignored[0][name]}")
    for g, ignore in zip(groups, ignored):
        for name, target in ignore.items():
            if getattr(g.config, name) != getattr(base, name):
                raise ConfigError(f"group {g.name}: {name}={getattr(g.config, name)} has no effect: it applies to "
                                  f"{target}")


def check_int(name: str, value: int, low: int, high: int, note: str = "") -> None:
    """Raises ConfigError unless ``low <= value <= high`` for the flag ``--name``."""
    from jaxgan.experiment import ConfigError
    if not low <= value <= high:
        raise ConfigError(f"--{name}={value} is out of range; accepted: {low} to {high}{note}")


def check_positive_float(name: str, value: float | None) -> None:
    from jaxgan.experiment import ConfigError
    if value is not None and not (math.isfinite(value) and value > 0):
        raise ConfigError(f"--{name} must be a finite number > 0, got {value}")


def check_writable(name: str, path, *, directory: bool = False) -> None:
    """Raises ConfigError if ``--name=path`` cannot be written (as a file, or a directory made on demand).

    Checks without creating anything: the path is not the wrong kind of entry and its nearest existing ancestor
    is a writable directory.
    """
    from jaxgan.experiment import ConfigError
    text = os.fspath(path)
    if not text.strip():
        raise ConfigError(f"--{name} must not be empty")
    path = os.path.abspath(os.path.expanduser(text))
    if os.path.exists(path):
        if directory and not os.path.isdir(path):
            raise ConfigError(f"--{name}={text} exists and is not a directory")
        if not directory and os.path.isdir(path):
            raise ConfigError(f"--{name}={text} is a directory; expected a file path")
        if not os.access(path if directory else os.path.dirname(path), os.W_OK | os.X_OK) or \
                (not directory and not os.access(path, os.W_OK)):
            raise ConfigError(f"--{name}={text} is not writable")
        return
    parent = os.path.dirname(path)
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        raise ConfigError(f"--{name}={text} cannot be created: {parent} is not a directory")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ConfigError(f"--{name}={text} cannot be created: {parent} is not writable")


def read_flagfile(path, config_cls) -> dict:
    """The config fields set by an absl flagfile (``--name=value``, ``--flag``, ``--noflag``, # comments)."""
    fields = typing.get_type_hints(config_cls)  # {name: bool, int, float or str}
    values = {}
    with open(path) as f:
        for line in f:
            line = line.split("#", 1)[0].strip()
            if not line:
                continue
            name, _, value = line.lstrip("-").partition("=")
            if name.startswith("no") and name[2:] in fields and not value:
                name, value = name[2:], "false"
            if name not in fields:
                raise ValueError(f"{path}: unknown flag --{name}")
            kind = fields[name]
            if kind is bool:
                values[name] = value.lower() not in ("false", "0") if value else True
            else:
                values[name] = kind(value)
    return values


def begin(argv: list[str]) -> bool:
    """A program's first step after parsing its flags: False (with one ``error:`` line) for positional arguments,
    which absl would otherwise ignore; else library logs are quieted (`quiet_library_logs`) and True."""
    if len(argv) > 1:
        print(f"error: unexpected arguments {argv[1:]}; flags are written --name=value", file=sys.stderr)
        return False
    quiet_library_logs()
    return True


def quiet_library_logs() -> None:
    """INFO lines only from jaxgan; libraries (orbax, tfds, jax) show warnings and errors only."""
    import logging as std_logging

    from absl import logging as absl_logging

    own = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep  # the jaxgan package

    class _OwnInfo(std_logging.Filter):
        def filter(self, record):
            return record.levelno >= std_logging.WARNING or record.pathname.startswith(own)

    absl_logging.set_verbosity(absl_logging.INFO)
    handler = absl_logging.get_absl_handler()
    handler.python_handler.addFilter(_OwnInfo())  # ABSLHandler.handle() delegates to it, bypassing its own filters
