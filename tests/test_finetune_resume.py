"""Kill the finetune command with SIGKILL (inside a checkpoint write, and at a random moment of a
step), rerun the same command, and get exactly the weights and losses of an uninterrupted run."""
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from unimodal.finetune.testing import tiny_base_model, toy_records, write_folder

# One process imports everything once, then forks a child per run of the command (forking is
# safe: this parent never runs a torch op). A child's output goes to its log file; with
# pause_at=N it stops inside the write of checkpoint N, after the engine state is on disk and
# before the COMPLETE marker, and waits there to be killed.
FORK_SERVER = """
import json, os, pathlib, sys, time
import unimodal.commands.finetune as command
import unimodal.finetune
import unimodal.train.checkpoint as ck
for line in sys.stdin:
    req = json.loads(line)
    if "wait" in req:
        _, status = os.waitpid(req["wait"], 0)
        print(json.dumps({"status": status}), flush=True)
        continue
    pid = os.fork()
    if pid:
        print(json.dumps({"pid": pid}), flush=True)
        continue
    fd = os.open(req["log"], os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    if req.get("pause_at"):
        original, marker = ck.capture_rng_state, f".tmp_step_{req['pause_at']:08d}"
        def paused():
            run = pathlib.Path(req["run"])
            if (run / "checkpoints" / marker).is_dir():
                (run / "PAUSED").write_text("inside the checkpoint write")
                time.sleep(600)
            return original()
        ck.capture_rng_state = paused
    code = 1
    try:
        code = command.main(req["args"])
    except BaseException:
        import traceback
        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
"""


class ForkServer:
    def __init__(self):
        self.proc = subprocess.Popen([sys.executable, "-c", FORK_SERVER], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     cwd=Path(__file__).resolve().parents[1], text=True)

    def _ask(self, req):
        self.proc.stdin.write(json.dumps(req) + "\n")
        self.proc.stdin.flush()
        return json.loads(self.proc.stdout.readline())

    def start(self, args, run_dir, pause_at=None):
        return self._ask({"args": args, "run": str(run_dir), "log": str(run_dir) + ".log", "pause_at": pause_at})["pid"]

    def wait(self, pid):
        status = self._ask({"wait": pid})["status"]
        return os.waitstatus_to_exitcode(status)

    def close(self):
        self.proc.stdin.close()
        self.proc.wait(timeout=60)


def _alive(pid):
    with open(f"/proc/{pid}/stat") as fh:   # a finished child stays a zombie (state Z) until waited for
        return fh.read().rsplit(")", 1)[1].split()[0] != "Z"


def _wait_for(cond, pid, what, timeout=240):
    t0 = time.time()
    while not cond():
        if not _alive(pid):
            return False
        if time.time() - t0 > timeout:
            os.kill(pid, signal.SIGKILL)
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.05)
    return True


def _metric_rows(run_dir):
    drop = {"time", "peak_mem_gb", "imgs_per_s"}
    return [{k: v for k, v in json.loads(line).items() if k not in drop}
            for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _has_step(run_dir, step):
    path = run_dir / "metrics.jsonl"
    return path.is_file() and any(json.loads(line)["step"] >= step for line in path.read_text().splitlines() if line)


@pytest.mark.slow
def test_sigkill_anywhere_then_rerun_equals_uninterrupted(tmp_path):
    base = tiny_base_model(tmp_path / "base")
    data = write_folder(tmp_path / "data", toy_records(12))

    def args(out):
        return ["--data", str(data), "--model", str(base), "--out", str(out), "--config", "configs/finetune_tiny.yaml"]

    server = ForkServer()
    try:
        ref = tmp_path / "ref"
        assert server.wait(server.start(args(ref), ref)) == 0, (tmp_path / "ref.log").read_text()

        run = tmp_path / "run"
        # 1. Killed inside the write of checkpoint 4: the partial directory is ignored, step 2 is the latest.
        pid = server.start(args(run), run, pause_at=4)
        assert _wait_for(lambda: (run / "PAUSED").is_file(), pid, "the checkpoint pause"), (tmp_path / "run.log").read_text()
        os.kill(pid, signal.SIGKILL)
        assert server.wait(pid) == -signal.SIGKILL
        ckpts = sorted(q.name for q in (run / "checkpoints").iterdir())
        assert ckpts == [".tmp_step_00000004", "step_00000002"]
        assert (run / "checkpoints" / ".tmp_step_00000004" / "engines" / "model.pt").is_file()

        # 2. Rerun, killed at a random moment after step 5 started (mid-step, or while checkpointing 6).
        pid = server.start(args(run), run)
        if _wait_for(lambda: _has_step(run, 5), pid, "step 5"):
            time.sleep(random.Random(0).uniform(0.0, 0.6))
            os.kill(pid, signal.SIGKILL)
        server.wait(pid)

        # 3. Rerun to the end.
        assert server.wait(server.start(args(run), run)) == 0, (tmp_path / "run.log").read_text()
        assert "resumed from" in (tmp_path / "run.log").read_text()
    finally:
        server.close()

    a, b = load_file(str(ref / "export" / "model.safetensors")), load_file(str(run / "export" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    a, b = (load_file(str(d / "adapters" / "adapter_model.safetensors")) for d in (ref, run))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert _metric_rows(run) == _metric_rows(ref)     # train and val rows: the same losses at the same steps
    assert [r["step"] for r in _metric_rows(ref) if "loss" in r] == [1, 2, 3, 4, 5, 6]
