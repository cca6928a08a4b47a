"""What ``cmkd`` prints for a person: its top-level help, the subcommand descriptions, and reST made plain.

Docstrings are written in reStructuredText for the API docs; :func:`plain_text` renders their first lines for a
terminal (``cmkd list``), and :data:`TOP_HELP` is ``cmkd --help`` (LightningCLI's own list cuts the Trainer's
docstrings off mid-sentence and cannot name ``cmkd list``, which is not a Trainer method).
"""

from __future__ import annotations

import re

__all__ = ["NO_MODEL_HINT", "SUBCOMMANDS", "TOP_HELP", "plain_text"]

# One line each, shown by `cmkd --help` and as the description of `cmkd <subcommand> --help`.
SUBCOMMANDS = {
    "fit": "train a model (a teacher, or a student distilled from a teacher), validating after every epoch",
    "validate": "evaluate a model (e.g. --ckpt_path FILE) once on the validation data",
    "test": "evaluate a model (e.g. --ckpt_path FILE) once on the test data",
    "predict": "run the model over the data module's predict data",
    "list": "print the model zoo names, the losses and the data modules a config can name",
}

EXAMPLES = "examples/configs/digits"

TOP_HELP = f"""\
usage: cmkd {{fit,validate,test,predict}} -c CONFIG [--key=value ...]
       cmkd list [models|losses|data]

Knowledge distillation with PyTorch Lightning: train a teacher, then distil it into a student (KD, DKD, DIST,
CMKD and the other losses of `cmkd list losses`), from a YAML config and command-line overrides.

subcommands:
{chr(10).join(f"  {name:<10}{text}" for name, text in SUBCOMMANDS.items())}

options:
  -h, --help     this help; `cmkd fit --help` lists every option of a run (trainer, model, data)
  -c, --config   a YAML config, after the subcommand (`cmkd fit -c FILE`); repeat it to merge several
  --verbose      full tracebacks on errors (or set CMKD_VERBOSE=1)

start here (offline, a CPU is enough):
  cmkd fit -c {EXAMPLES}/teacher.yaml   # the teacher, about a minute
  cmkd fit -c {EXAMPLES}/cmkd.yaml      # a CMKD student of it (kd.yaml, dkd.yaml, ...: other methods)
  cmkd fit -c {EXAMPLES}/cmkd.yaml --trainer.max_epochs=3 --print_config  # the resolved config
  cmkd-quickstart                                    # teacher + students + a comparison table in one command
"""

# Appended to a parse error that misses the model or the data: the run has no config to start from.
NO_MODEL_HINT = (
    f"A run needs a config: start from {EXAMPLES}/*.yaml, e.g. `cmkd fit -c {EXAMPLES}/teacher.yaml` then "
    f"`cmkd fit -c {EXAMPLES}/cmkd.yaml` (README, 'From the shell'; or `cmkd-quickstart` for the whole tour)."
)

_ROLE = re.compile(r":(?:[a-z]+:)?[a-z]+:`(~?)([^`<]*?)(?:\s*<[^`>]*>)?`")
_LITERAL = re.compile(r"``(.+?)``")
_LINK = re.compile(r"`([^`<]+?)\s*<[^`>]+>`_{1,2}")
_INTERPRETED = re.compile(r"(?<![\w`])`([^`]+)`(?![\w`])")
_LATEX = {r"\times": "x", r"\cdot": "*", r"\le": "<=", r"\ge": ">=", r"\tau": "tau", r"\beta": "beta"}


def _role(found: re.Match[str]) -> str:
    tilde, text = found.group(1), found.group(2).strip()
    if tilde:  # :class:`~a.b.X` shows as X in Sphinx
        return text.rsplit(".", 1)[-1]
    return text


def plain_text(text: str) -> str:
    r"""Render a line of reStructuredText as a terminal shows it: no roles, no backquotes, no escapes.

    ``:class:`X``` and ``:class:`~pkg.X``` become ``X``, ````code```` becomes ``code``, ``:math:`10^k``` becomes
    ``10^k`` (with ``\times`` etc. spelled out), ```text <url>`_`` becomes ``text``.

    Args:
        text: reST, usually a docstring's first line.

    Returns:
        The plain text.

    Example:
        >>> plain_text(r"Composed :math:`k` digits: :math:`10^k` classes, see :class:`~datamodules.Digits`.")
        'Composed k digits: 10^k classes, see Digits.'
        >>> plain_text("DIST: ``tau^2 * (beta * L_inter)``")
        'DIST: tau^2 * (beta * L_inter)'
    """
    out = _ROLE.sub(_role, text)
    out = _LITERAL.sub(r"\1", out)
    out = _LINK.sub(r"\1", out)
    out = _INTERPRETED.sub(r"\1", out)
    for latex, plain in _LATEX.items():
        out = re.sub(re.escape(latex) + r"(?![A-Za-z])", plain, out)
    return out.replace("\\", "")
