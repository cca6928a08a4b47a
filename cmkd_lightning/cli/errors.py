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
_PACKAGES = ("cmkd_lightning", "datamodules")
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


def _raised_by_project(error: BaseException) -> bool:
    """Whether the innermost frame of ``error`` is in this repository's packages (its own, precise messages)."""
    tb = error.__traceback__
    if tb is None:
        return False
    while tb.tb_next is not None:
        tb = tb.tb_next
    path = tb.tb_frame.f_code.co_filename.replace(os.sep, "/")
    return any(f"/{package}/" in path for package in _PACKAGES) and "/site-packages/" not in path


def _built_class(chain: list[BaseException]) -> type | None:
    """The innermost class LightningCLI's instantiator was calling when the error was raised."""
    for error in reversed(chain):
        found = None
        tb = error.__traceback__
        while tb is not None:
            cls = tb.tb_frame.f_locals.get("class_type")
            if isinstance(cls, type) and tb.tb_frame.f_code.co_name == "__call__":
                found = cls
            tb = tb.tb_next
        if found is not None:
            return found
    return None


def _resolve(class_path: str) -> Any:
    module, _, name = class_path.rpartition(".")
    try:
        return getattr(importlib.import_module(module), name)
    except Exception:
        return None


def _config_key(config: Any, cls: type, prefix: str = "") -> str | None:
    """The dotted key (``model.init_args.losses[0]``) whose ``class_path`` names ``cls`` in a plain-dict config."""
    if isinstance(config, dict):
        class_path = config.get("class_path")
        if isinstance(class_path, str) and _resolve(class_path) is cls:
            return prefix or None
        for key, value in config.items():
            found = _config_key(value, cls, f"{prefix}.{key}" if prefix else str(key))
            if found:
                return found
    elif isinstance(config, list):
        for i, value in enumerate(config):
            found = _config_key(value, cls, f"{prefix}[{i}]")
            if found:
                return found
    return None


def describe_build_error(error: BaseException, config: Any, config_files: list[str]) -> BuildError:
    """A :class:`BuildError` naming the class, its config key and the config files, ending with the root message."""
    chain = _chain(error)
    root = next((e for e in reversed(chain) if isinstance(e, CMKDError) and not isinstance(e, BuildError)), None)
    root = root or next((e for e in reversed(chain) if _raised_by_project(e)), chain[-1])
    cls = _built_class(chain)
    where = "the model and data"
    if cls is not None:
        key = _config_key(config, cls)
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
