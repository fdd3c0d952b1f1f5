import errno
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.core.errors import ConfigError
from pipeline.runtime.output_files import (
    Protected,
    atomic_outputs,
    check_targets,
    same_file,
    sqlite_path,
    store_paths,
)


@pytest.fixture
def here(tmp_path, monkeypatch) -> Path:
    monkeypatch.chdir(tmp_path)
    return tmp_path


def listing(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


# ---- same_file and check_targets ----


def test_same_file_sees_through_spelling_symlinks_and_hard_links(here):
    Path("a.csv").write_text("x")
    Path("link.csv").symlink_to("a.csv")
    os.link("a.csv", "hard.csv")
    Path("sub").mkdir()
    for other in ("a.csv", "./a.csv", "sub/../a.csv", str(here / "a.csv"), "link.csv", "hard.csv"):
        assert same_file(Path("a.csv"), Path(other)), other
    assert not same_file(Path("a.csv"), Path("b.csv"))
    assert same_file(Path("new.csv"), Path("./sub/../new.csv"))  # neither exists yet: resolved paths
    Path("dangling.csv").symlink_to("new.csv")
    assert same_file(Path("dangling.csv"), Path("new.csv"))


def test_a_target_that_is_a_protected_file_is_refused_naming_both(here):
    Path("in.csv").write_text("x")
    os.link("in.csv", "hard.csv")
    with pytest.raises(ConfigError, match=r"output hard\.csv: it is the input in\.csv"):
        check_targets({"output": Path("hard.csv")}, [Protected("the input", Path("in.csv"))])


def test_a_target_inside_a_protected_folder_is_refused(here):
    Path("store").mkdir()
    Path("alias").symlink_to("store")
    guard = Protected("the artifact store", Path("store"), tree=True)
    for target in ("store/new/p.csv", "alias/p.csv", "./store/p.csv"):
        with pytest.raises(ConfigError, match=r"inside the artifact store store"):
            check_targets({"output": Path(target)}, [guard])
    check_targets({"output": Path("storefront.csv")}, [guard])  # a name that merely starts the same


def test_two_targets_that_are_one_file_are_refused(here):
    Path("p.rejects.csv").write_text("x")
    Path("p.csv").symlink_to("p.rejects.csv")
    with pytest.raises(ConfigError, match=r"output p\.csv: it is the rejects file p\.rejects\.csv"):
        check_targets({"output": Path("p.csv"), "rejects file": Path("p.rejects.csv")}, [])


def test_a_folder_or_a_path_through_a_file_is_refused(here):
    Path("out").mkdir()
    Path("f").write_text("x")
    with pytest.raises(ConfigError, match="output out is a folder"):
        check_targets({"output": Path("out")}, [])
    with pytest.raises(ConfigError, match="f is not a folder"):
        check_targets({"output": Path("f/sub/p.csv")}, [])


def test_protected_may_be_a_generator():
    guards = (Protected("the input", Path(p)) for p in ["a.csv"])
    with pytest.raises(ConfigError, match="rejects file"):
        check_targets({"output": Path("b.csv"), "rejects file": Path("a.csv")}, guards)


# ---- the tracking store's paths ----


@pytest.mark.parametrize(
    ("uri", "path"),
    [
        ("sqlite:///mlflow.db", "mlflow.db"),
        ("sqlite:///sub/dir/m.db", "sub/dir/m.db"),
        ("sqlite:////abs/m.db", "/abs/m.db"),
        ("sqlite:////abs/m%20x.db?timeout=5", "/abs/m x.db"),
        ("sqlite://", None),
        ("sqlite:///:memory:", None),
    ],
)
def test_sqlite_path(uri, path):
    assert sqlite_path(uri) == (Path(path) if path else None)


def test_store_paths_of_a_local_sqlite_store_protect_the_database_its_journal_and_artifacts():
    found = store_paths("sqlite:////w/mlflow.db", ["mlartifacts", "file:///w/mlartifacts/1", "s3://bucket/x"])
    files = {str(p.path) for p in found if not p.tree}
    trees = {str(p.path) for p in found if p.tree}
    assert files == {"/w/mlflow.db", "/w/mlflow.db-journal", "/w/mlflow.db-wal", "/w/mlflow.db-shm"}
    assert trees == {"mlartifacts", "/w/mlartifacts/1"}


def test_store_paths_of_a_file_store_protect_its_folder_and_a_server_protects_nothing():
    assert [(str(p.path), p.tree) for p in store_paths("file:///w/mlruns")] == [("/w/mlruns", True)]
    assert [(str(p.path), p.tree) for p in store_paths("./mlruns")] == [("mlruns", True)]
    assert store_paths("http://mlflow:5000", ["mlartifacts"]) == []
    assert store_paths("postgresql://u@h/db") == []


# ---- atomic_outputs ----


def test_outputs_appear_only_on_commit_and_no_temp_file_is_left(here):
    Path("p.csv").write_text("earlier run")
    with atomic_outputs(Path("p.csv"), Path("out/new/r.csv")) as staged:
        staged[Path("p.csv")].write_text("new")
        staged[Path("out/new/r.csv")].write_text("rejects")
        assert Path("p.csv").read_text() == "earlier run"  # untouched until the block ends
        assert not Path("out/new/r.csv").exists()
        assert staged[Path("p.csv")].parent == here
    assert Path("p.csv").read_text() == "new" and Path("out/new/r.csv").read_text() == "rejects"
    assert listing(here) == {"p.csv", "out", "out/new", "out/new/r.csv"}


def test_an_exception_leaves_everything_as_it_was(here):
    Path("p.csv").write_text("earlier run")
    for error in (ValueError("bad row"), OSError(errno.ENOSPC, "No space left on device"), KeyboardInterrupt()):
        with pytest.raises(type(error)), atomic_outputs(Path("p.csv"), Path("out/new/r.csv")) as staged:
            with staged[Path("p.csv")].open("w") as f:
                f.write("half")
            raise error
        assert listing(here) == {"p.csv"}, error  # no temp file, no folder created for it
        assert Path("p.csv").read_text() == "earlier run"


# The write fails in a child: RLIMIT_FSIZE binds every file a process writes, pytest's
# own output too when it goes to a file already past the limit (as it does in CI).
FULL_DISK_CHILD = """
import contextlib, errno, resource, signal, sys
from pathlib import Path
from pipeline.runtime.output_files import atomic_outputs
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (4096, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
try:
    with atomic_outputs(Path("p.csv"), Path("r.csv")) as staged:
        f = staged[Path("p.csv")].open("w")
        for _ in range(100):
            f.write("x" * 1000 + "\\n")
            f.flush()
except OSError as error:
    with contextlib.suppress(OSError):
        f.close()  # its unflushed tail fails again
    sys.exit(0 if error.errno == errno.EFBIG else 1)
sys.exit(2)
"""


def test_a_real_write_error_part_way_leaves_nothing_and_the_earlier_file_intact(here):
    """Writes past 4 KiB fail with EFBIG, as a full disk would fail them (root ignores permissions, not this)."""
    Path("p.csv").write_text("earlier run")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    child = subprocess.run([sys.executable, "-c", FULL_DISK_CHILD], env=env, capture_output=True, text=True)
    assert child.returncode == 0, child.stderr  # 0: the write failed with EFBIG
    assert listing(here) == {"p.csv"} and Path("p.csv").read_text() == "earlier run"


def test_an_omitted_target_is_not_written_and_an_earlier_file_there_goes(here):
    Path("r.csv").write_text("earlier rejects")
    with atomic_outputs(Path("p.csv"), Path("r.csv")) as staged:
        staged[Path("p.csv")].write_text("new")
        staged.omit(Path("r.csv"))
    assert listing(here) == {"p.csv"}


def test_a_symlinked_target_is_written_through_and_keeps_the_file_mode(here):
    Path("real").mkdir()
    Path("real/p.csv").write_text("old")
    Path("real/p.csv").chmod(0o640)
    Path("p.csv").symlink_to("real/p.csv")
    with atomic_outputs(Path("p.csv")) as staged:
        assert staged[Path("p.csv")].parent == here / "real"  # the rename stays in one folder
        staged[Path("p.csv")].write_text("new")
    assert Path("p.csv").is_symlink() and Path("real/p.csv").read_text() == "new"
    assert stat.S_IMODE(Path("real/p.csv").stat().st_mode) == 0o640


def test_a_new_target_gets_the_umask_mode_not_a_private_one(here):
    old = os.umask(0o022)
    try:
        with atomic_outputs(Path("p.csv")) as staged:
            staged[Path("p.csv")].write_text("new")
    finally:
        os.umask(old)
    assert stat.S_IMODE(Path("p.csv").stat().st_mode) == 0o644


# ---- temp files a killed writer left ----

WRITER = """
import sys, time
from pathlib import Path
from pipeline.runtime.output_files import atomic_outputs
with atomic_outputs(Path("out.csv")) as staged:
    staged[Path("out.csv")].write_text("half written")
    print("writing", flush=True)
    time.sleep(120)
"""


def start_writer() -> subprocess.Popen:
    writer = subprocess.Popen([sys.executable, "-c", WRITER], stdout=subprocess.PIPE, text=True)
    assert writer.stdout.readline() == "writing\n"
    return writer


def test_the_temp_file_of_a_killed_writer_is_removed_by_the_next_run_and_a_live_writers_is_kept(here):
    killed, alive = start_writer(), start_writer()
    killed.kill()  # SIGKILL: no finally, no cleanup
    killed.wait()
    try:
        temps = {p.name for p in here.glob(".out.csv.*.tmp")}
        assert {name.split(".")[3] for name in temps} == {str(killed.pid), str(alive.pid)}
        Path(".out.csv.0123abcd.tmp").write_text("an older writer's, untouched for an hour")  # named without a pid
        os.utime(".out.csv.0123abcd.tmp", (1, 1))
        Path(".out.csv.89abcdef.tmp").write_text("an older writer's, written a moment ago")

        with atomic_outputs(Path("out.csv")) as staged:  # the next run
            staged[Path("out.csv")].write_text("whole")

        left = {p.name for p in here.glob(".out.csv.*.tmp")}
        assert left == {n for n in temps if f".{alive.pid}." in n} | {".out.csv.89abcdef.tmp"}
        assert Path("out.csv").read_text() == "whole"
    finally:
        alive.kill()
        alive.wait()
    with atomic_outputs(Path("out.csv")):
        pass
    assert listing(here) == {"out.csv", ".out.csv.89abcdef.tmp"}  # the live writer's went once it was killed


def test_a_sweep_leaves_other_files_and_other_targets_temp_files_alone(here):
    keep = [".out.csv.tmp", ".out.csv.1.zz.tmp", ".other.csv.99999999.0123abcd.tmp", "out.csv.1.0123abcd.tmp"]
    for name in keep:
        Path(name).write_text("not a stale temp file of out.csv")
    with atomic_outputs(Path("out.csv")) as staged:
        staged[Path("out.csv")].write_text("whole")
    assert listing(here) == {"out.csv", *keep}
