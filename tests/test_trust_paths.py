"""Nothing is written outside the run folder (issue 19 §1, §2): a lock planted as a symlink
is refused and the file it points to left untouched; recipe and run names are one safe path
component, checked in the schema."""

import os

import pytest

from landscape.analyzers.cache import Cache
from landscape.config import validate_recipe
from landscape.errors import LandscapeError, UnsafePathError
from landscape.locking import exclusive_lock
from landscape.safe_paths import inside, safe_name


@pytest.fixture
def precious(tmp_path):
    p = tmp_path / "notes.txt"
    p.write_text("precious\n")
    return p


def test_a_lock_planted_as_a_symlink_is_refused_and_its_target_untouched(tmp_path, precious):
    run = tmp_path / "run"
    run.mkdir()
    os.symlink(precious, run / ".lock")
    with pytest.raises(UnsafePathError, match=r"run/.lock is a symbolic link.*delete it"):
        with exclusive_lock(run / ".lock", "run folder"):
            pass
    assert precious.read_text() == "precious\n"


def test_a_lock_planted_as_a_hard_link_is_refused_and_its_other_name_untouched(tmp_path, precious):
    run = tmp_path / "run"
    run.mkdir()
    os.link(precious, run / ".lock")
    with pytest.raises(UnsafePathError, match=r"run/.lock is a hard link.*delete it"):
        with exclusive_lock(run / ".lock", "run folder"):
            pass
    assert precious.read_text() == "precious\n"


def test_a_dangling_lock_symlink_creates_nothing(tmp_path):
    target = tmp_path / "created-through-link"
    os.symlink(target, tmp_path / "x.lock")
    with pytest.raises(UnsafePathError):
        with exclusive_lock(tmp_path / "x.lock", "teacher cache"):
            pass
    assert not target.exists()


def test_a_lock_that_is_a_fifo_or_folder_is_refused(tmp_path):
    os.mkfifo(tmp_path / "f.lock")
    (tmp_path / "d.lock").mkdir()
    for name in ("f.lock", "d.lock"):
        with pytest.raises(UnsafePathError, match=name):
            with exclusive_lock(tmp_path / name, "x"):
                pass


def test_a_cache_lock_planted_as_a_symlink_is_refused(tmp_path, precious):
    cache = Cache(tmp_path / ".cache")
    (tmp_path / ".cache" / "locks").mkdir(parents=True)
    os.symlink(precious, tmp_path / ".cache" / "locks" / "trace-e1.lock")
    with pytest.raises(UnsafePathError):
        with cache.lock("trace-e1"):
            pass
    assert precious.read_text() == "precious\n"
    with cache.lock("trace-e2"):  # a plain one still works
        pass


def test_a_normal_lock_still_records_the_pid(tmp_path):
    with exclusive_lock(tmp_path / ".lock", "run folder"):
        assert (tmp_path / ".lock").read_text() == f"{os.getpid()}\n"


def _recipe(name=None, runs=("kd",)):
    raw = {"runs": {r: {"source": "real"} for r in runs}}
    if name is not None:
        raw["name"] = name
    return raw


@pytest.mark.parametrize("bad", ["../../x", "/abs/path", "a/b", "", ".", "..", ".hidden", "a\\b",
                                 "a b", "x" * 101, "a\nb"])
def test_recipe_and_run_names_must_be_one_safe_component(bad):
    with pytest.raises(UnsafePathError, match=r"r.toml.*cannot be a folder name") as e:
        validate_recipe(_recipe(runs=(bad,)), "r.toml")
    assert isinstance(e.value, LandscapeError) and "\n" not in str(e.value).replace(repr(bad), "")
    if bad:  # an empty name means "the file's stem"
        with pytest.raises(UnsafePathError, match=r"r.toml: name = .*cannot be a folder name"):
            validate_recipe(_recipe(name=bad), "r.toml")


def test_good_names_pass_and_the_stem_is_checked_too():
    r = validate_recipe(_recipe(name="my-recipe_2.1", runs=("kd", "ait_v2", "w3a3.b")), "r.toml")
    assert r["name"] == "my-recipe_2.1" and list(r["runs"]) == ["kd", "ait_v2", "w3a3.b"]
    assert validate_recipe(_recipe(), "analyses/default.toml")["name"] == "default"
    with pytest.raises(UnsafePathError, match="cannot be a folder name"):
        validate_recipe(_recipe(), "analyses/my recipe.toml")


def test_inside_refuses_a_path_that_resolves_outside(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    assert inside(out, out / "a" / "b") == (out / "a" / "b").resolve()
    with pytest.raises(UnsafePathError, match="outside the output folder"):
        inside(out, out / ".." / "x")
    os.symlink(tmp_path, out / "link")
    with pytest.raises(UnsafePathError):
        inside(out, out / "link" / "kd-seed0")
    assert safe_name("kd", "w") == "kd"


def test_train_refuses_a_run_folder_linked_outside_out(tmp_path, precious):
    """A planted link ``<out>/<recipe>`` -> elsewhere: nothing is deleted or written there."""
    from landscape.config import load_recipe
    from landscape.zsq.runs import run_dir_for, train_recipe
    from tiny_runs import TINY

    elsewhere = tmp_path / "elsewhere"
    (elsewhere / "kd-seed0").mkdir(parents=True)
    (elsewhere / "kd-seed0" / "metrics.csv").write_text("mine\n")
    out = tmp_path / "out"
    out.mkdir()
    os.symlink(elsewhere, out / "digits_tiny")
    with pytest.raises(UnsafePathError, match="outside the output folder"):
        train_recipe(load_recipe(TINY), runs=["kd"], out=out, device="cpu", progress=False)
    assert (elsewhere / "kd-seed0" / "metrics.csv").read_text() == "mine\n"
    with pytest.raises(UnsafePathError, match="run name"):
        run_dir_for(out, "digits_tiny", "../x", 0)
