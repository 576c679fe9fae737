"""Job folders: made by two submissions of one user at once, and files added to one later."""

import os
import threading

import pytest

from hpcportal.auth import User
from hpcportal.jobs.folder import JobFolders

pytestmark = pytest.mark.unit

ALICE = User(name="alice", uid=2001, gid=2001, home="/home/alice")


@pytest.mark.skipif(os.geteuid() != 0, reason="handing folders to users needs root")
def test_a_folder_another_submission_has_not_handed_over_yet_is_handed_over(tmp_path):
    # The first submission made alice/jobs (root's until it chowns it) when the second one
    # found it: the second must not put its job where alice's sbatch cannot reach it.
    root = tmp_path / "uploads"
    (root / "alice" / "jobs").mkdir(parents=True)
    folders = JobFolders(str(root))
    path = folders.create(ALICE, "a" * 32, {"job.sbatch": (b"#!/bin/bash\n", 0o640)})
    for folder in (root / "alice", root / "alice" / "jobs", path):
        info = os.stat(folder)
        assert (info.st_uid, info.st_gid, info.st_mode & 0o777) == (2001, 2001, 0o750), folder


@pytest.mark.skipif(os.geteuid() != 0, reason="handing folders to users needs root")
def test_first_submissions_at_once_all_land_in_folders_of_the_user(tmp_path):
    folders = JobFolders(str(tmp_path / "uploads"))
    start = threading.Barrier(8)
    paths = []

    def submit(index):
        start.wait()
        paths.append(folders.create(ALICE, f"{index:032x}", {"job.sbatch": (b"#!/bin/bash\n", 0o640)}))

    threads = [threading.Thread(target=submit, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(paths) == 8
    assert os.stat(tmp_path / "uploads" / "alice" / "jobs").st_uid == 2001


def test_files_added_later_go_into_the_folder_made_even_if_its_path_was_swapped(tmp_path):
    """The batch script and record are added while Slurm works on the job: through the
    descriptor of the folder made, so a user who renames it and puts a link in its place
    gets nothing written through the link; a name taken already is refused, not followed."""
    folders = JobFolders(str(tmp_path / "uploads"))
    user = User(name="alice", uid=os.geteuid(), gid=os.getegid(), home="/home/alice")
    with folders.make(user, "b" * 32, {"script.sh": (b"#!/bin/bash\ntrue\n", 0o750)}) as folder:
        moved = tmp_path / "moved"
        os.rename(folder.path, moved)
        os.symlink(tmp_path / "elsewhere", folder.path)
        (moved / "job.sbatch").symlink_to(tmp_path / "planted")
        with pytest.raises(FileExistsError):
            folder.add({"job.sbatch": (b"#!/bin/bash\n", 0o640)})
        folder.add({"submission.json": (b"{}", 0o640)})
    assert sorted(os.listdir(moved)) == ["job.sbatch", "script.sh", "submission.json"]
    assert not (tmp_path / "planted").exists() and not (tmp_path / "elsewhere").exists()


def test_a_file_that_cannot_be_written_whole_is_not_left_behind(tmp_path):
    folders = JobFolders(str(tmp_path / "uploads"))
    user = User(name="alice", uid=os.geteuid(), gid=os.getegid(), home="/home/alice")
    with folders.make(user, "c" * 32, {}) as folder:
        with pytest.raises(TypeError):  # fails once the file exists, as a full disk would
            folder.add({"job.sbatch": (b"#!/bin/bash\n", 0o640), "submission.json": (object(), 0o640)})
        assert os.listdir(folder.path) == ["job.sbatch"]
