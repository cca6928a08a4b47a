"""Turn what goes wrong while ``cmkd`` parses its arguments and builds the model and data into a few readable lines.

jsonargparse reports a failed class as "Does not validate against any of the Union subtypes" with the library's
message buried between the subtypes tried (ending in ``Expected a <class 'NoneType'>``); the full chain is kept
for ``--verbose`` / ``CMKD_VERBOSE=1``.
"""

from __future__ import annotations

import importlib
import os
import re
from typing import Any

from cmkd_lightning.errors import CMKDError

__all__ = ["BuildError", "explain_argument_error", "verbose_requested"]

VERBOSE_ENV = "CMKD_VERBOSE"
HINT = f"full traceback: add --verbose or set {VERBOSE_ENV}=1"
_NOISE = (
    "Does not validate against any of the Union subtypes",
    "Expected a <class 'NoneType'>",
    "Given value type:",
    "Given value:",
    "Subtypes:",
    "Errors:",
    "Not a valid subclass of",
    "Subclass types expect one of",
)
_SUBCLASS_HELP = ("a class path (str)", "a dict with", "a dict without")


class BuildError(CMKDError, RuntimeError):
    """A class of the config could not be built; ``root`` is the library's own exception."""

    def __init__(self, message: str, root: BaseException) -> None:
        super().__init__(message)
        self.root = root


def verbose_requested(argv: list[str]) -> bool:
    """True with ``--verbose`` among the arguments or ``CMKD_VERBOSE`` set to anything but ``""`` / ``0``."""
    return "--verbose" in argv or os.environ.get(VERBOSE_ENV, "") not in ("", "0")


def _chain(error: BaseException) -> list[BaseException]:
    chain, seen = [error], {id(error)}
    while True:
        nxt = chain[-1].__cause__ or chain[-1].__context__
        if nxt is None or id(nxt) in seen:
            return chain
        chain.append(nxt)
        seen.add(id(nxt))


def _classes_in(config: Any, prefix: str = "") -> list[tuple[str, type]]:
    """``(dotted key, class)`` for every ``class_path`` of a plain-dict config, outermost first."""
    found: list[tuple[str, type]] = []
    if isinstance(config, dict):
        cls = _resolve(config["class_path"]) if isinstance(config.get("class_path"), str) else None
        if isinstance(cls, type):
            found.append((prefix, cls))
        for key, value in config.items():
            found += _classes_in(value, f"{prefix}.{key}" if prefix else str(key))
    elif isinstance(config, list):
        for i, value in enumerate(config):
            found += _classes_in(value, f"{prefix}[{i}]")
    return found


def _built_class(chain: list[BaseException], config: Any) -> tuple[str, type, BaseException] | None:
    """The config's class whose ``__init__`` raised, and the error raised there.

    The innermost traceback frame running the ``__init__`` of a class the config names (by ``class_path``) decides:
    only the traceback's code objects are compared with those classes, nothing of jsonargparse's.
    """
    inits: dict[Any, tuple[str, type]] = {}
    for key, cls in _classes_in(config):
        code = getattr(getattr(cls, "__init__", None), "__code__", None)
        if code is not None:
            inits.setdefault(code, (key, cls))
    for error in reversed(chain):  # the innermost error first
        found = None
        tb = error.__traceback__
        while tb is not None:
            found = inits.get(tb.tb_frame.f_code, found)
            tb = tb.tb_next
        if found is not None:
            return (*found, error)
    return None


def _resolve(class_path: str) -> Any:
    module, _, name = class_path.rpartition(".")
    try:
        return getattr(importlib.import_module(module), name)
    except Exception:
        return None


def describe_build_error(error: BaseException, config: Any, config_files: list[str]) -> BuildError:
    """A :class:`BuildError` naming the class, its config key and the config files, ending with the root message."""
    chain = _chain(error)
    built = _built_class(chain, config)
    own = next((e for e in reversed(chain) if isinstance(e, CMKDError) and not isinstance(e, BuildError)), None)
    # the library's own error by its type; else the error raised in the failing class's __init__; else the innermost
    root = own or (built[2] if built is not None else chain[-1])
    where = "the model and data"
    if built is not None:
        key, cls, _ = built
        where = f"`{key}` ({cls.__module__}.{cls.__qualname__})" if key else f"{cls.__module__}.{cls.__qualname__}"
    files = f" from {', '.join(config_files)}" if config_files else ""
    message = " ".join(str(root).split()) or "(no message)"
    return BuildError(f"cmkd: error while building {where}{files}; {HINT}.\n{type(root).__name__}: {message}", root)


def explain_argument_error(message: str) -> str:
    r"""The informative lines of a jsonargparse parse error (unknown key, unknown class_path, bad value).

    Example:
        >>> print(explain_argument_error('Parser key "model":\n  Option \'tempreature\' is not accepted'))
        cmkd: error in the arguments or config; full traceback: add --verbose or set CMKD_VERBOSE=1.
        `model`: Option 'tempreature' is not accepted
    """
    keys: list[str] = []
    kept: list[str] = []
    for raw in str(message).splitlines():
        line = raw.strip().lstrip("-").strip()
        found = re.fullmatch(r'Parser key "([^"]+)":?', line)
        if found:
            keys.append(found.group(1))
            continue
        if not line or any(n in line for n in _NOISE) or line.startswith(_SUBCLASS_HELP):
            continue
        if line not in kept:
            kept.append(line)
    problems = [i for i, line in enumerate(kept) if line.startswith("Problem with given class_path")]
    kept = [line for i, line in enumerate(kept) if i not in problems[:-1]]  # the innermost class only
    key = f"`{'.init_args.'.join(keys)}`: " if keys else ""
    body = key + " ".join(kept[-3:]) if kept else str(message).strip()
    return f"cmkd: error in the arguments or config; {HINT}.\n{body}"
