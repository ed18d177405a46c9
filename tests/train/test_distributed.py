"""Training under torchrun on the CPU (gloo), 2 processes: DDP and FSDP2 give the losses of one
process with the same global batch, and each resumes from the other's checkpoints.

One chain of runs keeps this fast: DDP trains steps 1-3, FSDP2 resumes it for steps 4-6, DDP
resumes that for steps 7-9; every step is compared with one process running 1-9 straight. The
schedule is constant after warmup, so extending max_steps does not change earlier steps.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from gptoss.cli import main
from gptoss.train.checkpointing import checkpoint_dirs, read_trainer_state
from test_trainer import (  # noqa: F401 (fixtures)
    REPO_ROOT, corpus, data_dir, metrics, tiny_config, wait_for_metrics_row, write_toml,
)


def torchrun(*args: str) -> str:
    """`gptoss train ARGS` in 2 processes; returns the output (fails the test on a non-zero exit)."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               "-m", "gptoss", "train", *args]  # fmt: skip
    done = subprocess.run(command, cwd=REPO_ROOT, env=os.environ | {"OMP_NUM_THREADS": "1"},
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout + done.stderr


def losses(run_dir, column: str, steps: range) -> list[float]:
    rows = {int(r["step"]): r for r in metrics(run_dir)}
    return [float(rows[step][column]) for step in steps]


def test_ddp_and_fsdp_match_one_process_and_resume(corpus, data_dir, tmp_path):  # noqa: F811
    config = tiny_config(corpus, data_dir, tmp_path / "single", schedule="constant", max_steps=9)
    assert main(["train", "--config", str(write_toml(tmp_path / "single.toml", config))]) == 0

    # 2 processes x 2 accumulation steps x micro-batches of 2 = the same global batch of 8
    ddp = config.replace(run_dir=str(tmp_path / "ddp"), micro_batch_size=2, max_steps=3)
    output = torchrun("--config", str(write_toml(tmp_path / "ddp.toml", ddp)))
    assert "2 processes (DDP)" in output

    fsdp_changes = ["--set", f"run_dir={tmp_path / 'fsdp'}", "--set", "parallel=fsdp", "--set", "max_steps=6"]
    output = torchrun("--resume", str(tmp_path / "ddp"), *fsdp_changes)
    assert "2 processes (FSDP2)" in output and "step-0000003 at step 3" in output

    ddp_changes = ["--set", f"run_dir={tmp_path / 'ddp_again'}", "--set", "parallel=ddp", "--set", "max_steps=9"]
    output = torchrun("--resume", str(tmp_path / "fsdp"), *ddp_changes)
    assert "2 processes (DDP)" in output and "step-0000006 at step 6" in output

    for run_dir, steps in (("ddp", range(1, 4)), ("fsdp", range(4, 7)), ("ddp_again", range(7, 10))):
        for column in ("train_loss", "grad_norm"):
            expected = losses(tmp_path / "single", column, steps)
            assert losses(tmp_path / run_dir, column, steps) == pytest.approx(expected, abs=1e-5), (run_dir, column)
        expected = losses(tmp_path / "single", "val_loss", range(steps[-1], steps[-1] + 1))
        assert losses(tmp_path / run_dir, "val_loss", range(steps[-1], steps[-1] + 1)) == pytest.approx(expected, abs=1e-5)


def test_a_signal_to_one_process_stops_them_all_at_one_step(corpus, data_dir, tmp_path):  # noqa: F811
    """SIGTERM reaching only rank 1 (as when signals land at slightly different moments): every
    process stops after the same update, rank 0 saves one checkpoint, the job exits cleanly."""
    config = tiny_config(corpus, data_dir, tmp_path / "run", max_steps=10_000, checkpoint_every=0, eval_every=0)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               "-m", "gptoss", "train", "--config", str(write_toml(tmp_path / "run.toml", config))]  # fmt: skip
    job = subprocess.Popen(command, cwd=REPO_ROOT, env=os.environ | {"OMP_NUM_THREADS": "1"},
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # fmt: skip
    try:
        wait_for_metrics_row(job, tmp_path / "run", past_step=2)
        workers = []  # torchrun's worker processes, in rank order (their RANK environment variable)
        for child in open(f"/proc/{job.pid}/task/{job.pid}/children").read().split():
            environment = dict(v.split("=", 1) for v in open(f"/proc/{child}/environ").read().split("\0") if "=" in v)
            if "RANK" in environment:
                workers.append((int(environment["RANK"]), int(child)))
        assert sorted(rank for rank, _ in workers) == [0, 1]
        os.kill(dict(workers)[1], signal.SIGTERM)
        output, _ = job.communicate(timeout=120)
    finally:
        job.kill()
    assert job.returncode == 0, output
    assert "a stop signal (in another process): saved" in output
    (checkpoint,) = checkpoint_dirs(tmp_path / "run")
    assert read_trainer_state(checkpoint)["step"] > 2
