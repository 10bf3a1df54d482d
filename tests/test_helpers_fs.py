"""The folder snapshot used by refused-command tests notices every kind of change."""

from __future__ import annotations

import pytest
from helpers_fs import assert_unchanged, snapshot


def test_snapshot_sees_added_removed_changed_and_empty_dirs(tmp_path, folder_snapshot):
    (tmp_path / "a.txt").write_text("x")
    (tmp_path / "sub").mkdir()
    before = folder_snapshot(tmp_path)
    assert before == snapshot(tmp_path) and "sub/" in before
    assert_unchanged(before, tmp_path)
    (tmp_path / "a.txt").write_text("y")                # same size, different bytes
    with pytest.raises(AssertionError, match="changed=\\['a.txt'\\]"):
        assert_unchanged(before, tmp_path)
    (tmp_path / "a.txt").write_text("x")
    (tmp_path / "sub" / "tb").mkdir()                   # an empty directory counts
    with pytest.raises(AssertionError, match="added=\\['sub/tb/'\\]"):
        assert_unchanged(before, tmp_path)
    (tmp_path / "sub" / "tb").rmdir()
    (tmp_path / "a.txt").unlink()
    with pytest.raises(AssertionError, match="removed=\\['a.txt'\\]"):
        assert_unchanged(before, tmp_path)
    assert snapshot(tmp_path / "missing") == {}
