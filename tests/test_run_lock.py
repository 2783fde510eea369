"""open_r1.run_lock: one evaluation or data selection per output folder; the lock names its holder, a stale one is
taken over."""

import json
import logging
import socket
import subprocess
import sys

import pytest

from open_r1.run_lock import LOCK_NAME, FolderInUseError, folder_lock


def write_lock(folder, pid, host=None):
    folder.mkdir(parents=True, exist_ok=True)
    holder = {"job": "evaluation", "pid": pid, "host": host or socket.gethostname(), "started": "then",
              "command": "evaluate.py --model_base x"}  # fmt: skip
    (folder / LOCK_NAME).write_text(json.dumps(holder))


@pytest.fixture
def live_process():
    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    yield process.pid
    process.kill()
    process.wait()


def test_a_second_holder_is_refused_naming_the_first(tmp_path):
    with folder_lock(tmp_path / "out", "evaluation") as path:
        assert json.loads(path.read_text())["pid"] > 0
        with pytest.raises(FolderInUseError, match=r"in use by another evaluation: pid \d+ on .*give another"):
            with folder_lock(tmp_path / "out", "evaluation"):
                pass
    assert not (tmp_path / "out" / LOCK_NAME).exists()  # released
    with folder_lock(tmp_path / "out", "evaluation"):  # and free again
        pass


def test_a_live_process_elsewhere_holds_it(tmp_path, live_process):
    write_lock(tmp_path, live_process)
    with pytest.raises(FolderInUseError, match=f"pid {live_process} on"):
        with folder_lock(tmp_path, "data selection"):
            pass
    write_lock(tmp_path, 1, host="another-host")
    with pytest.raises(FolderInUseError, match="another host: if it has ended, delete the file"):
        with folder_lock(tmp_path, "data selection"):
            pass


def test_a_stale_lock_is_taken_over(tmp_path, caplog):
    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    write_lock(tmp_path, int(finished.stdout))  # a process that is gone (killed, or the machine rebooted)
    with caplog.at_level(logging.WARNING), folder_lock(tmp_path, "evaluation") as path:
        assert json.loads(path.read_text())["pid"] != int(finished.stdout)
    assert "taking over a stale lock" in caplog.text
