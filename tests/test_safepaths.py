"""Names and paths from outside: every trick is refused with a message saying what and why."""

import os
import re

import pytest

from studio_core.errors import UnsafePath
from studio_core.store.safepaths import check_name, check_path, file_target, inside, replace_atomically


@pytest.mark.parametrize("name", ["runs.csv", "sampler shootout (v2).png", "émoji 😀", "x" * 255, "é" * 127])
def test_check_name_accepts_plain_file_names(name):
    assert check_name(name, "file name") == name


@pytest.mark.parametrize("name, why", [
    (None, "must be text, not NoneType"),
    (b"runs.csv", "must be text, not bytes"),
    ("", "it is empty"),
    ("a\x00b", "NUL byte"),
    ("a/b", "path separator"),
    ("..\\b", "path separator"),
    (".", "'.' and '..' name folders"),
    ("..", "'.' and '..' name folders"),
    (".bashrc", "starts with a dot"),
    ("a\x1bb", "control character U+001B"),
    ("a\nb", "control character U+000A"),
    ("a\x85b", "control character U+0085"),
    ("\udcff", "not valid UTF-8"),
    ("x" * 300, "a name of 300 bytes is longer than the 255"),
    ("é" * 128, "a name of 256 bytes"),  # 128 characters, but 256 bytes of UTF-8
])
def test_check_name_refuses(name, why):
    with pytest.raises(UnsafePath, match=f"^file name .* is refused: .*{re.escape(why)}") as err:
        check_name(name, "file name")
    assert isinstance(err.value, ValueError)


def test_check_path_takes_absolute_and_relative_paths_and_refuses_bad_ones(tmp_path):
    assert check_path(tmp_path / "a" / "b.csv", "CSV file") == tmp_path / "a" / "b.csv"
    assert str(check_path("a/b.csv", "CSV file")) == "a/b.csv"
    for bad, why in [("", "empty"), ("a/b\x00.csv", "NUL byte"), (f"a/{'x' * 300}/b", "300 bytes"),
                     (b"a.csv", "must be text, not bytes"), (3, "must be text, not int")]:
        with pytest.raises(UnsafePath, match=why):
            check_path(bad, "CSV file")


def test_inside_returns_a_resolved_path_under_root(tmp_path):
    (tmp_path / "root" / "images" / "ab").mkdir(parents=True)
    (tmp_path / "root" / "images" / "ab" / "x.png").write_bytes(b"png")
    root = tmp_path / "root"
    assert inside(root, "images/ab/x.png", "image") == root.resolve() / "images" / "ab" / "x.png"
    assert inside(root, "images/cd/new.png", "image") == root.resolve() / "images" / "cd" / "new.png"  # not yet there
    assert inside(root, "images/./ab/x.png", "image") == root.resolve() / "images" / "ab" / "x.png"
    (tmp_path / "link-to-root").symlink_to(root)  # the root itself is the caller's choice, and is resolved
    assert inside(tmp_path / "link-to-root", "images/ab/x.png", "image") == root.resolve() / "images/ab/x.png"


@pytest.mark.parametrize("relative, why", [
    ("../secret", "contains '..'"),
    ("images/../../secret", "contains '..'"),
    ("/etc/passwd", "absolute path"),
    ("images/a\x00b.png", "NUL byte"),
    ("images/" + "x" * 300, "300 bytes"),
    ("", "empty"),
    (".", "names the folder itself"),
    ("linked-file.png", "linked-file.png is a symbolic link"),
    ("linked-dir/x.png", "linked-dir is a symbolic link"),
    ("linked-inside/x.png", "linked-inside is a symbolic link"),  # even a link that stays inside
    ("dangling", "dangling is a symbolic link"),
])
def test_inside_refuses(tmp_path, relative, why):
    root = tmp_path / "root"
    (root / "real").mkdir(parents=True)
    (root / "real" / "x.png").write_bytes(b"png")
    (tmp_path / "secret").write_text("s")
    (tmp_path / "outside").mkdir()
    (root / "linked-file.png").symlink_to(tmp_path / "secret")
    (root / "linked-dir").symlink_to(tmp_path / "outside")
    (root / "linked-inside").symlink_to(root / "real")
    (root / "dangling").symlink_to(tmp_path / "nothing-here")
    with pytest.raises(UnsafePath, match=f"^image .* is refused: .*{re.escape(why)}"):
        inside(root, relative, "image")


def test_file_target_refuses_links_and_folders(tmp_path):
    (tmp_path / "old.csv").write_text("old")
    assert file_target(tmp_path / "old.csv", "CSV file") == tmp_path / "old.csv"
    assert file_target(tmp_path / "new.csv", "CSV file") == tmp_path / "new.csv"
    (tmp_path / "link.csv").symlink_to(tmp_path / "old.csv")
    (tmp_path / "dangling.csv").symlink_to(tmp_path / "nowhere.csv")
    (tmp_path / "dir.csv").mkdir()
    for name, why in [("link.csv", "is a symbolic link"), ("dangling.csv", "is a symbolic link"),
                      ("dir.csv", "is a folder"), ("a\x00.csv", "NUL byte"), ("x" * 256, "256 bytes")]:
        with pytest.raises(UnsafePath, match=why):
            file_target(tmp_path / name, "CSV file")


def test_replace_atomically_keeps_the_old_file_when_writing_fails(tmp_path):
    target = tmp_path / "a.csv"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with replace_atomically(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("disk full")
    assert target.read_text() == "old" and os.listdir(tmp_path) == ["a.csv"]
    with replace_atomically(target) as tmp:
        assert tmp.parent == tmp_path and tmp.name.startswith(".")
        tmp.write_text("new")
    assert target.read_text() == "new" and os.listdir(tmp_path) == ["a.csv"]
