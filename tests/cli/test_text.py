"""What a person reads from `cmkd` before any run: the top-level help, `cmkd list`, a run started without a config."""

from __future__ import annotations

import pytest

from cmkd_lightning.cli import main
from cmkd_lightning.cli.text import NO_MODEL_HINT, SUBCOMMANDS, TOP_HELP, plain_text


def test_top_level_help_names_every_subcommand_in_full_and_where_to_start(capsys):
    main(["--help"])
    out = capsys.readouterr().out
    assert out == TOP_HELP
    for name, text in SUBCOMMANDS.items():
        assert f"  {name:<10}{text}\n" in out  # whole sentences, not a docstring cut after two lines
    assert "cmkd list [models|losses|data]" in out
    assert "cmkd fit -c examples/configs/digits/teacher.yaml" in out and "cmkd-quickstart" in out
    assert "It's separated from fit to make sure you never run on your\n" not in out
    main(["-h"])
    assert capsys.readouterr().out == TOP_HELP


def test_no_arguments_prints_the_help_and_fails(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == TOP_HELP


def test_subcommand_help_starts_with_its_own_description(capsys):
    with pytest.raises(SystemExit):
        main(["test", "--help"])
    out = capsys.readouterr().out
    assert "cmkd test: evaluate a model (e.g. --ckpt_path FILE) once on the test data." in out


@pytest.mark.parametrize("subcommand", ["fit", "validate", "test"])
def test_a_run_without_a_config_points_at_the_example_configs(subcommand, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([subcommand])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err == (
        "cmkd: error in the arguments or config; full traceback: add --verbose or set CMKD_VERBOSE=1.\n"
        f"the following arguments are required: {subcommand}.data, {subcommand}.model\n"
        f"{NO_MODEL_HINT}\n"
    )
    assert NO_MODEL_HINT == (
        "A run needs a config: start from examples/configs/digits/*.yaml, e.g. "
        "`cmkd fit -c examples/configs/digits/teacher.yaml` then `cmkd fit -c examples/configs/digits/cmkd.yaml` "
        "(README, 'From the shell'; or `cmkd-quickstart` for the whole tour)."
    )


def test_other_argument_errors_get_no_config_hint(capsys):
    with pytest.raises(SystemExit):
        main(["fit", "--trainer.max_epochz=3"])
    assert "A run needs a config" not in capsys.readouterr().err


@pytest.mark.parametrize(
    ("rst", "plain"),
    [
        (":class:`X` and :class:`~pkg.mod.Y`", "X and Y"),
        (":py:func:`pkg.f`", "pkg.f"),
        ("``tau^2 * (beta * L_inter)``", "tau^2 * (beta * L_inter)"),
        (r":math:`10^k` classes, :math:`a \times b`", "10^k classes, a x b"),
        ("see `the paper <https://arxiv.org>`_", "see the paper"),
        ("plain `word` stays readable", "plain word stays readable"),
        ("no markup at all", "no markup at all"),
    ],
)
def test_plain_text_renders_rest(rst, plain):
    assert plain_text(rst) == plain


@pytest.mark.parametrize("kind", ["models", "losses", "data"])
def test_cmkd_list_prints_no_rest_markup(kind, capsys):
    main(["list", kind])
    out = capsys.readouterr().out
    assert "``" not in out and ":math:" not in out and ":class:" not in out and "`" not in out
    if kind == "data":
        assert "datamodules.ComposedDigitsDataModule: UCI handwritten digits composed k side by side: 10^k classes" in out
    if kind == "losses":
        assert "cmkd_lightning.losses.KDLoss: Hinton et al. 2015 KD: T^2 * KL(softmax(z_t/T) || softmax(z_s/T))" in out
