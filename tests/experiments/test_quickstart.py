"""``cmkd-quickstart``: its help, its methods (the shared table), the files it writes and the process it leaves.

The full command (training, figures) runs in tests/test_examples.py; here Lightning's loop is stubbed out.
"""

from __future__ import annotations

import json
import re

import pytest

from cmkd_lightning.experiments.methods import BUILTIN_METHODS
from cmkd_lightning.experiments.quickstart import DEFAULT_METHODS, build_parser, main
from tests.experiments._help import assert_every_default_shown

TINY = ["--seeds", "0", "1", "--train-size", "64", "--eval-size", "32", "--no-progress", "--no-figures"]


def test_help_lists_the_methods_and_every_default():
    parser = build_parser()
    assert_every_default_shown(parser)
    text = parser.format_help()
    for name, method in BUILTIN_METHODS.items():
        assert re.search(rf"^  {name} +{re.escape(method.description)}$", text, re.M), name
    assert "kd_ce1             CE 1 + KD 1, T = 4" in text


def test_writes_the_files_its_help_describes_with_the_tables_meanings(tmp_path, no_training, capsys):
    main(["--out", str(tmp_path), *TINY])
    described = build_parser().description
    promised = set(re.findall(r"\bresults\.(?:json|csv|md|png)\b", described))
    assert {p.name for p in tmp_path.iterdir()} == promised == {f"results.{e}" for e in ("json", "csv", "md", "png")}
    result = json.loads((tmp_path / "results.json").read_text())
    assert list(result["summary"]) == list(DEFAULT_METHODS)
    assert result["config"]["methods"] == {n: BUILTIN_METHODS[n].description for n in DEFAULT_METHODS}
    assert result["reference"] == "cmkd" and set(result["paired"]) == {"ce", "kd", "kd_ce1"}
    assert len((tmp_path / "results.csv").read_text().splitlines()) == 1 + 2 * len(DEFAULT_METHODS)
    # the modules trained: the teacher, then per seed each method with the table's weights
    fitted = [c["module"] for c in no_training]
    assert len(fitted) == 1 + 2 * len(DEFAULT_METHODS)
    for module, name in zip(fitted[1:], list(DEFAULT_METHODS) * 2):
        method = BUILTIN_METHODS[name]
        assert module.ce_weight == method.ce_weight, name
        assert list(module.loss_weights) == method.loss_weights, name
    assert "  kd_ce1: CE 1 + KD 1, T = 4\n" in capsys.readouterr().out  # the legend under the table


def test_any_builtin_method_is_accepted_and_others_are_refused(tmp_path, no_training, capsys):
    main(["--out", str(tmp_path), *TINY, "--methods", "kd", "dist"])
    assert list(json.loads((tmp_path / "results.json").read_text())["summary"]) == ["kd", "dist"]
    with pytest.raises(SystemExit):
        main(["--out", str(tmp_path), "--methods", "kd_ce09"])
    assert "invalid choice: 'kd_ce09'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--out", str(tmp_path), "--threads", "-1"])
    assert "Expected `--threads` to be an integer >= 0" in capsys.readouterr().err
