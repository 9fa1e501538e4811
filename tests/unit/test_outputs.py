"""An output folder is replaced only when it is one: somebody's data at the configured path is refused, named, and
left exactly as it was."""

import pytest

from mlscale.data.storage import refuse_foreign
from mlscale.errors import ConfigError
from mlscale.scoring import MANIFEST_FILE


def test_only_absent_empty_or_own_outputs_are_replaced_and_anything_else_is_left_alone(tmp_path):
    refuse_foreign(tmp_path / "new", MANIFEST_FILE, "score.output")
    (tmp_path / "empty").mkdir()
    refuse_foreign(tmp_path / "empty", MANIFEST_FILE, "score.output")
    own = tmp_path / "scores"
    own.mkdir()
    (own / MANIFEST_FILE).write_text("{}")
    refuse_foreign(own, MANIFEST_FILE, "score.output")
    home = tmp_path / "home"
    home.mkdir()
    (home / "thesis.tex").write_text("years of work")
    (tmp_path / "notes.txt").write_text("a file")
    (tmp_path / "link").symlink_to(own)
    for target, what in ((home, f"a folder without {MANIFEST_FILE}"), (tmp_path / "notes.txt", "a file"),
                         (tmp_path / "link", "a link")):
        with pytest.raises(ConfigError, match=f"score.output .*{target.name}.* is {what}"):
            refuse_foreign(target, MANIFEST_FILE, "score.output")
    assert (home / "thesis.tex").read_text() == "years of work"
