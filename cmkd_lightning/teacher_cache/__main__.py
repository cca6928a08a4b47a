"""``python -m cmkd_lightning.teacher_cache build ...``: the same as the ``cmkd-teacher-cache`` command."""

from cmkd_lightning.teacher_cache.build import main

if __name__ == "__main__":
    main()
