"""Load model weights from the checkpoint files users already have, strictly and safely.

Recognised layouts (the state_dict is found, then prefixes are removed):

- RepDistiller / mdistiller files ``{'epoch', 'model': state_dict, 'accuracy' | 'best_acc', 'optimizer'}``, e.g.
  the community's CIFAR-100 teachers ``<arch>_vanilla/ckpt_epoch_240.pth``;
- mdistiller's distiller checkpoints, whose keys carry ``module.student.`` / ``module.teacher.`` prefixes;
- ``nn.DataParallel`` / DDP state_dicts with a ``module.`` prefix, ``torch.compile``'d ones with ``_orig_mod.``;
- this library's Lightning checkpoints ``{'state_dict': {...}, ...}``, whose keys start with ``student.`` or
  ``teacher.`` (the ``DistillationModule`` attributes); ``part`` selects which;
- plain state_dicts (``torch.save(model.state_dict(), path)``), e.g. torchvision weight files.

Files are read with ``torch.load(..., map_location="cpu", weights_only=True)``, which refuses to run arbitrary
pickled code; pass ``weights_only=False`` only for files you trust.
"""

from __future__ import annotations

import os
import pickle
import re
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor, nn

from cmkd_lightning.errors import (
    ArgumentTypeError,
    CheckpointNotFoundError,
    CheckpointReadError,
    InvalidArgumentError,
    UnsafeCheckpointError,
)

__all__ = ["kind_of_file", "load_state_dict_file", "load_weights"]

Part = Literal["student", "teacher"]
_PARTS = ("student", "teacher")
_MAX_LISTED = 10
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")


def _listing(items: list[str]) -> str:
    """Format up to ``_MAX_LISTED`` items and a count of the rest."""
    shown = ", ".join(items[:_MAX_LISTED])
    rest = len(items) - _MAX_LISTED
    return f"[{shown}{f', ... and {rest} more' if rest > 0 else ''}]"


def _strip(state_dict: Mapping[str, Any], prefix: str) -> dict[str, Any]:
    return {k[len(prefix) :]: v for k, v in state_dict.items() if k.startswith(prefix)}


def _strip_wrappers(state_dict: dict[str, Any]) -> dict[str, Any]:
    """Remove ``module.`` (DataParallel / DDP) and ``_orig_mod.`` (``torch.compile``) prefixes shared by every key."""
    while state_dict:
        prefix = next((p for p in _WRAPPER_PREFIXES if all(k.startswith(p) for k in state_dict)), None)
        if prefix is None:
            break
        state_dict = _strip(state_dict, prefix)
    return state_dict


_CODE_MODULES = frozenset(
    {
        "os",
        "posix",
        "nt",
        "sys",
        "subprocess",
        "shutil",
        "builtins",
        "__builtin__",
        "importlib",
        "runpy",
        "code",
        "pty",
        "socket",
        "ctypes",
        "pickle",
        "marshal",
        "types",
        "functools",
        "operator",
        "webbrowser",
        "torch._C",
    }
)
_UNREADABLE = (EOFError, RuntimeError, KeyError, ValueError, UnicodeDecodeError, OSError, IndexError)


def kind_of_file(path: Path) -> str:
    """What the first bytes of an unreadable checkpoint say it is: the cause a person can act on.

    Returns:
        ``"empty"``, ``"truncated"`` (torch.save's zip format without its end), ``"plain pickle"`` (pickle.dump's
        output), ``"unreadable"`` (the file cannot be opened) or ``"other"``.

    Example:
        >>> import tempfile
        >>> path = Path(tempfile.mkdtemp()) / "a.ckpt"
        >>> torch.save({"w": torch.ones(3)}, path)
        >>> _ = path.write_bytes(path.read_bytes()[:100])
        >>> kind_of_file(path)
        'truncated'
    """
    try:
        with open(path, "rb") as handle:
            head = handle.read(4)
    except OSError:
        return "unreadable"
    if not head:
        return "empty"
    if head.startswith(b"PK\x03\x04") and not zipfile.is_zipfile(path):
        return "truncated"  # torch.save's zip format without its end: cut off while being written or copied
    if head[:1] == b"\x80" and not zipfile.is_zipfile(path):
        return "plain pickle"  # pickle.dump's output, not torch.save's
    return "other"


def _unreadable(path: Path, err: BaseException, detail: str | None = None) -> CheckpointReadError:
    """The error for a file that is not a readable checkpoint (empty, truncated or not a checkpoint at all)."""
    size = path.stat().st_size if path.exists() else 0
    if detail is None:
        detail = " ".join(str(err).split()).split(". This is an internal miniz error")[0]
    reason = f"{type(err).__name__}: {detail}" if detail else type(err).__name__
    kind = kind_of_file(path)
    if kind == "plain pickle":
        return CheckpointReadError(
            f"Could not read the checkpoint '{path}': it is a plain pickle file (written by pickle.dump, {size} "
            "bytes), not a torch.save checkpoint. Load it in Python and save it again with torch.save(obj, path)."
        )
    what = {
        "empty": "is empty (0 bytes)",
        "truncated": f"is truncated ({size} bytes of a zip archive whose end is missing)",
    }.get(kind, f"is damaged or not a PyTorch checkpoint ({size} bytes)")
    cause = (
        "It was cut off while being written or copied: write or download it again."
        if kind in ("empty", "truncated")
        else "It is another kind of file or was damaged: write or download it again."
    )
    return CheckpointReadError(
        f"Could not read the checkpoint '{path}': the file {what}; torch.load said {reason}. {cause}"
    )


def _read(path: Path, weights_only: bool) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=weights_only)
    except pickle.UnpicklingError as err:
        message = " ".join(str(err).split())
        found = re.search(r"GLOBAL ([\w.]+)", message)
        if not weights_only or found is None:  # an opcode or structure no checkpoint holds: a damaged file
            detail = message.split("WeightsUnpickler error:", 1)[1] if "WeightsUnpickler error:" in message else ""
            detail = detail.split(" Check the documentation")[0].strip().rstrip(".")
            raise _unreadable(path, err, detail or "not a pickle the safe loader can read") from err
        name = found.group(1)
        module = name.rsplit(".", 1)[0]
        if module in _CODE_MODULES or module.split(".")[0] in _CODE_MODULES:
            raise UnsafeCheckpointError(
                f"Refused to load '{path}': it refers to `{name}`, which can run code when the file is loaded. "
                "A checkpoint of weights never needs it; do not load this file."
            ) from err
        raise UnsafeCheckpointError(
            f"Could not load '{path}' with the safe loader (weights_only=True): it stores a `{name}` object, which "
            "is not a tensor or plain container. If the file is a checkpoint from a source you trust, pass "
            "`weights_only=False` (that can run arbitrary code stored in the file)."
        ) from err
    except _UNREADABLE as err:
        raise _unreadable(path, err) from err


def _find_state_dict(obj: Any, path: Path) -> dict[str, Any]:
    if isinstance(obj, Mapping):
        for key in ("state_dict", "model"):
            inner = obj.get(key)
            if isinstance(inner, Mapping):
                return dict(inner)
        if obj and all(isinstance(v, Tensor) for v in obj.values()):
            return dict(obj)
        keys = [str(k) for k in obj]
        raise InvalidArgumentError(
            f"Expected '{path}' to hold a state_dict, or a dict with a 'state_dict' or 'model' state_dict, but got "
            f"a dict with keys {_listing(keys)}."
        )
    raise ArgumentTypeError(
        f"Expected '{path}' to hold a dict (a state_dict or a checkpoint), but got {type(obj).__name__}."
    )


def load_state_dict_file(
    path: str | os.PathLike[str],
    *,
    part: Part | None = None,
    weights_only: bool = True,
) -> dict[str, Tensor]:
    """Read a checkpoint file and return the bare state_dict of one model.

    The state_dict is taken from ``ckpt['state_dict']`` (Lightning), ``ckpt['model']`` (RepDistiller /
    mdistiller) or the file itself (a plain state_dict). A ``module.`` (DataParallel) or ``_orig_mod.``
    (``torch.compile``) prefix on every key is removed. If keys start
    with ``student.`` / ``teacher.`` (after that), only the keys of ``part`` are kept, with the prefix removed;
    when a file holds both and ``part`` is None, the call fails rather than guess. Files with neither prefix are
    returned whole whatever ``part`` is (e.g. a RepDistiller teacher file used to initialise a student).

    Args:
        path: checkpoint file.
        part: ``"student"`` or ``"teacher"``: which model of a distillation checkpoint to return.
        weights_only: use PyTorch's safe unpickler (default). Set to False only for files you trust: it can
            execute arbitrary code stored in the file.

    Returns:
        A dict from parameter / buffer name to tensor, ready for ``model.load_state_dict``.

    Raises:
        FileNotFoundError: if ``path`` does not exist.
        ValueError: if the file is empty, truncated or not a PyTorch checkpoint.
        pickle.UnpicklingError: if the safe loader refuses an object stored in the file (the message suggests
            ``weights_only=False`` only for plain data objects, never for a reference to code such as ``os.system``).
        ValueError: if ``part`` is invalid, the file is ambiguous, or the requested part is absent.
        TypeError: if the file does not hold a dict of tensors.

    Example:
        >>> import tempfile, torch
        >>> from pathlib import Path
        >>> path = Path(tempfile.mkdtemp()) / "ckpt_epoch_240.pth"
        >>> torch.save({"epoch": 240, "model": {"module.fc.weight": torch.ones(2, 3)}, "accuracy": 79.4}, path)
        >>> list(load_state_dict_file(path))
        ['fc.weight']
    """
    if part is not None and part not in _PARTS:
        raise InvalidArgumentError(f"Expected `part` to be one of {_PARTS} or None, but got {part!r}.")
    if not isinstance(weights_only, bool):
        raise ArgumentTypeError(f"Expected `weights_only` to be a bool, but got {type(weights_only).__name__}.")
    file = Path(path).expanduser()
    if not file.is_file():
        raise CheckpointNotFoundError(
            f"Expected `path` to be an existing checkpoint file, but got '{file}' (not found)."
        )

    state_dict = _strip_wrappers(_find_state_dict(_read(file, weights_only), file))
    present = [p for p in _PARTS if any(k.startswith(f"{p}.") for k in state_dict)]
    if present:
        if part is None and len(present) == 2:
            raise InvalidArgumentError(
                f"Expected '{file}' to hold one model, but it holds both 'student.' and 'teacher.' keys: pass "
                "`part='student'` or `part='teacher'`."
            )
        chosen = part if part is not None else present[0]
        if chosen not in present:
            raise InvalidArgumentError(
                f"Expected '{file}' to hold keys starting with '{chosen}.', but it holds only '{present[0]}.' keys."
            )
        state_dict = _strip_wrappers(_strip(state_dict, f"{chosen}."))

    bad = [k for k, v in state_dict.items() if not isinstance(v, Tensor)]
    if bad:
        raise ArgumentTypeError(
            f"Expected every value of the state_dict in '{file}' to be a tensor, but got {_listing(bad)}."
        )
    return state_dict


def _shape_mismatches(model_state: Mapping[str, Tensor], state_dict: Mapping[str, Tensor]) -> list[str]:
    return [
        f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(model_state[k].shape)}"
        for k, v in state_dict.items()
        if k in model_state and v.shape != model_state[k].shape
    ]


def load_weights(
    model: nn.Module,
    path: str | os.PathLike[str],
    *,
    part: Part | None = None,
    strict: bool = True,
    weights_only: bool = True,
) -> nn.Module:
    """Load the weights stored in ``path`` into ``model`` (in place) and return it.

    The file is read with :func:`load_state_dict_file`. With ``strict=True`` (default) the checkpoint must hold
    exactly the model's keys with the model's shapes; otherwise nothing is loaded and a ``ValueError`` names the
    missing keys, the unexpected keys and the shape mismatches (long lists are cut with a count). With
    ``strict=False`` missing and unexpected keys are ignored, but shape mismatches still fail. As in PyTorch,
    a missing ``num_batches_tracked`` buffer is not an error (batch norm fills it in).

    Args:
        model: the network to fill, e.g. ``create_model("resnet32x4")``.
        path: checkpoint file (see :func:`load_state_dict_file` for the recognised layouts).
        part: ``"student"`` or ``"teacher"`` for distillation checkpoints holding both.
        strict: require the keys to match exactly.
        weights_only: use PyTorch's safe unpickler; set to False only for trusted files.

    Returns:
        ``model``, with the loaded weights.

    Raises:
        TypeError: if ``model`` is not an ``nn.Module``.
        FileNotFoundError: if ``path`` does not exist.
        ValueError: on missing / unexpected keys (strict) or shape mismatches.

    Example:
        >>> import tempfile, torch
        >>> from pathlib import Path
        >>> from cmkd_lightning.models import create_model
        >>> teacher = create_model("resnet8x4")
        >>> path = Path(tempfile.mkdtemp()) / "ckpt_epoch_240.pth"
        >>> torch.save({"epoch": 240, "model": teacher.state_dict(), "accuracy": 73.1}, path)
        >>> model = load_weights(create_model("resnet8x4"), path)
        >>> torch.equal(model.fc.weight, teacher.fc.weight)
        True
    """
    if not isinstance(model, nn.Module):
        raise ArgumentTypeError(f"Expected `model` to be a torch.nn.Module, but got {type(model).__name__}.")
    state_dict = load_state_dict_file(path, part=part, weights_only=weights_only)
    model_state = model.state_dict()
    missing = [k for k in model_state if k not in state_dict and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state_dict if k not in model_state]
    mismatched = _shape_mismatches(model_state, state_dict)
    problems = []
    if strict and missing:
        problems.append(f"{len(missing)} missing keys {_listing(missing)}")
    if strict and unexpected:
        problems.append(f"{len(unexpected)} unexpected keys {_listing(unexpected)}")
    if mismatched:
        problems.append(f"{len(mismatched)} shape mismatches {_listing(mismatched)}")
    if problems:
        where = f" (part={part!r})" if part is not None else ""
        raise InvalidArgumentError(
            f"Expected the state_dict in '{path}'{where} to match `model` ({type(model).__name__}), but got "
            + "; ".join(problems)
            + "."
        )
    model.load_state_dict(state_dict, strict=False)
    return model
