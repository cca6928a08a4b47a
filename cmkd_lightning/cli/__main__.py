"""``python -m cmkd_lightning.cli``: the ``cmkd`` command (as used by ``torchrun`` and the tests)."""

from cmkd_lightning.cli.app import main

if __name__ == "__main__":
    main()
