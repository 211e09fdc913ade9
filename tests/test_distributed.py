"""Data-parallel training (torchrun, Gloo on the CPU): the plan, the contrastive semantics, resume, failures.

The runs use the `tiny_recipe` fixture (conftest.py): a tiny random Crab (trainable WavLM and RoBERTa, dropout
on) on 39 spoken training clips; with a global batch of 6 in micro-batches of 3, the epoch's last step has one
micro-batch, so rank 1 runs a placeholder there.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from crab_rt.cli import main  # noqa: E402
from crab_rt.errors import ConfigError  # noqa: E402
from crab_rt.train.config import load_recipe  # noqa: E402
from crab_rt.train.distributed import World, epoch_plan, local_accumulation, micro_seed  # noqa: E402
from crab_rt.train.trainer import Trainer  # noqa: E402

TESTS = Path(__file__).resolve().parent
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]

@pytest.fixture
def recipe(tiny_recipe) -> Path:
    return tiny_recipe


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(TESTS.parent), env.get("PYTHONPATH", "")])
    return env


def _run(cmd: list[str], timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=_env(), cwd=TESTS.parent)


def _checkpoint(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=False)


def _assert_same_training(a: dict, b: dict) -> None:
    """Two last.pt files of the same recipe: equal weights, optimizer and scheduler state, and history."""
    assert a["model_state"].keys() == b["model_state"].keys()
    for k in a["model_state"]:
        # Adam divides by the root of its second moment, so float summation order shows in the weights at 1e-5
        torch.testing.assert_close(a["model_state"][k], b["model_state"][k], rtol=1e-3, atol=2e-4, msg=k)
    for ka, kb in zip(a["optimizer_state"]["state"].values(), b["optimizer_state"]["state"].values()):
        assert ka["step"] == kb["step"]
        torch.testing.assert_close(ka["exp_avg"], kb["exp_avg"], rtol=1e-3, atol=1e-5)
    assert a["scheduler_state"]["last_epoch"] == b["scheduler_state"]["last_epoch"]
    assert len(a["history"]) == len(b["history"])
    for ra, rb in zip(a["history"], b["history"]):
        for key in ("train_loss", "train_ce", "train_legs"):
            assert ra[key] == pytest.approx(rb[key], rel=1e-5), key
        for key in ("dev_war", "dev_uar", "dev_macro_f1", "lr_head", "lr_encoder"):
            assert ra[key] == rb[key], key


# ---- the plan: which rank sees which micro-batch --------------------------------------------------------------
def test_epoch_plan_shares_the_one_process_micro_batches():
    order = list(range(39))[::-1]
    one = epoch_plan(order, batch_size=6, micro_batch_size=3, world=World())
    assert [m.indices for m in one] == [tuple(order[i:i + 3]) for i in range(0, 39, 3)]
    assert [m.number for m in one] == list(range(13))
    assert [m.step for m in one if m.last_in_step] == list(range(7))  # 6 full steps and a 3-clip one
    assert all(m.weight == 1.0 for m in one)
    ranks = [epoch_plan(order, 6, 3, World(rank=r, world_size=2, launched=True)) for r in (0, 1)]
    assert [len(p) for p in ranks] == [7, 7]  # one pass per step each: every rank joins every reduction
    real = sorted((m.number, m.indices) for p in ranks for m in p if m.weight)
    assert real == [(m.number, m.indices) for m in one]
    placeholder = ranks[1][-1]  # the last step's single micro-batch is rank 0's; rank 1 reruns it at weight 0
    assert placeholder.weight == 0.0 and placeholder.indices == ranks[0][-1].indices and placeholder.last_in_step
    assert [m.last_in_step for m in ranks[0]] == [True] * 7


def test_local_accumulation_keeps_the_global_batch():
    assert local_accumulation(4, 1) == 4 and local_accumulation(4, 2) == 2 and local_accumulation(4, 4) == 1
    with pytest.raises(ConfigError, match=r"optim.grad_accum_steps=4 micro-batches per step cannot be shared by "
                                          r"3 processes .* use a world size in \[1, 2, 4\]"):
        local_accumulation(4, 3)


def test_world_from_environment():
    assert World.from_environment({}) == World()
    world = World.from_environment({"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1"})
    assert (world.rank, world.world_size, world.local_rank, world.distributed, world.is_main) == (3, 4, 1, True, False)
    assert not World.from_environment({"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0"}).distributed
    with pytest.raises(ConfigError, match="RANK='x' is not an integer"):
        World.from_environment({"RANK": "x", "WORLD_SIZE": "2"})
    with pytest.raises(ConfigError, match="out of range: RANK=2 WORLD_SIZE=2"):
        World.from_environment({"RANK": "2", "WORLD_SIZE": "2"})


def test_micro_seed_depends_on_the_micro_batch_not_the_world():
    seeds = {micro_seed(5, epoch, n) for epoch in range(3) for n in range(50)}
    assert len(seeds) == 150 and micro_seed(5, 1, 7) == micro_seed(5, 1, 7) != micro_seed(6, 1, 7)


def test_contrastive_batch_setting_validates():
    assert load_recipe("synthetic").loss.contrastive_batch == "micro"  # the official semantics by default
    assert load_recipe("synthetic", ["loss.contrastive_batch=global"]).loss.contrastive_batch == "global"
    with pytest.raises(ConfigError, match="loss.contrastive_batch must be one of micro, global, got 'all'"):
        load_recipe("synthetic", ["loss.contrastive_batch=all"])


# ---- runs -----------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_gathered_mpcl_equals_mpcl_on_the_whole_batch(tmp_path):
    """`contrastive_batch = "global"`: 2 ranks' rows (4 and 3) gathered give the loss and the gradients of MPCL on
    the 7-row batch; a rank with a placeholder (0 rows) leaves the other rank's loss and gradients alone."""
    from crab_rt.train.losses import mpcl_loss

    sys.path.insert(0, str(TESTS))
    try:
        from distributed_mpcl import SHARES, batch
    finally:
        sys.path.remove(str(TESTS))
    proc = _run([*TORCHRUN, str(TESTS / "distributed_mpcl.py"), str(tmp_path)], timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1)]
    rows, labels = batch()
    whole = rows.clone().requires_grad_(True)
    reference = mpcl_loss(whole, labels, 0.1)
    reference.backward()
    for r, (start, stop) in enumerate(SHARES):
        assert ranks[r]["shared"]["loss"] == pytest.approx(reference.item(), rel=1e-6)
        torch.testing.assert_close(ranks[r]["shared"]["grad"], whole.grad[start:stop], rtol=1e-5, atol=1e-7)
    first = rows[:4].clone().requires_grad_(True)
    alone = mpcl_loss(first, labels[:4], 0.1)
    alone.backward()
    assert [ranks[r]["placeholder"]["loss"] for r in (0, 1)] == pytest.approx([alone.item()] * 2, rel=1e-6)
    torch.testing.assert_close(ranks[0]["placeholder"]["grad"], first.grad, rtol=1e-5, atol=1e-7)
    assert torch.count_nonzero(ranks[1]["placeholder"]["grad"]) == 0


@pytest.mark.slow
def test_two_processes_train_the_one_process_model_and_resume_across_world_sizes(recipe, tmp_path, capsys):
    """`contrastive_batch = "micro"`: epoch 1 on 2 Gloo processes (bare torchrun, `--stop-after-epoch 1`) ends where
    1 process does; its last.pt resumed by 1 process ends where an uninterrupted 1-process run does; best.pt
    evaluates to the metric the run printed. (The launcher, `--nproc-per-node`, is run by the failure tests.)"""
    base = [f"data.manifest='{load_recipe(str(recipe)).data.manifest}'"]

    def trainer(out: Path, resume: bool = False) -> Trainer:
        return Trainer(load_recipe(str(recipe), [*base, f"run.out_dir='{out}'"]), resume=resume, world=World())

    one = trainer(tmp_path / "one")
    one.fit(stop_after_epoch=1)
    shutil.copytree(tmp_path / "one", tmp_path / "one_epoch1")

    two = tmp_path / "two"
    launched = _run([*TORCHRUN, "-m", "crab_rt.cli", "train", "--recipe", str(recipe), "--out", str(two),
                     "--stop-after-epoch", "1"])
    assert launched.returncode == 0, launched.stderr[-2000:]
    printed = re.search(r"stopped after epoch 1 of 2: .* best dev UAR so far (\d\.\d{4})", launched.stdout)
    assert printed, launched.stdout
    epoch_lines = [line for line in launched.stderr.splitlines() if line.startswith("epoch 1/2")]
    assert len(epoch_lines) == 1, launched.stderr  # rank 0 alone reports
    assert _checkpoint(two / "last.pt")["world_size"] == 2
    assert sorted(p.name for p in two.iterdir()) == ["best.pt", "config.json", "last.pt", "metrics.jsonl"]
    _assert_same_training(_checkpoint(tmp_path / "one_epoch1" / "last.pt"), _checkpoint(two / "last.pt"))
    shutil.copy(two / "best.pt", tmp_path / "two_best.pt")  # the resumed run below may replace it

    resumed_alone = trainer(two, resume=True)  # written by 2 processes, continued by 1
    assert resumed_alone.epoch == 1
    resumed_alone.fit()
    trainer(tmp_path / "one", resume=True).fit()  # exact resume: an uninterrupted 1-process run (test_training.py)
    _assert_same_training(_checkpoint(tmp_path / "one" / "last.pt"), _checkpoint(two / "last.pt"))
    assert [json.loads(line)["epoch"] for line in (two / "metrics.jsonl").read_text().splitlines()] == [1, 2]

    code = main(["evaluate", "--checkpoint", str(tmp_path / "two_best.pt"), "--manifest",
                 str(load_recipe(str(recipe)).data.manifest), "--split", "dev", "--out", str(tmp_path / "eval")])
    assert code == 0
    report = json.loads((tmp_path / "eval" / "dev.json").read_text())
    assert f"{report['uar']:.4f}" == printed.group(1)
    capsys.readouterr()


def test_a_world_size_that_does_not_divide_the_accumulation_is_one_line(recipe, capsys):
    code = main(["train", "--recipe", str(recipe), "--nproc-per-node", "3"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.count("\n") == 0, err
    assert err.startswith("crab-rt: error: optim.grad_accum_steps=2 micro-batches per step cannot be shared by 3")


@pytest.mark.slow
def test_an_error_in_every_rank_is_one_line(recipe, tmp_path):
    proc = _run([sys.executable, "-m", "crab_rt.cli", "train", "--recipe", str(recipe), "--out", str(tmp_path),
                 "--nproc-per-node", "2", "--set", "data.dev_splits=['nope']"])
    errors = [line for line in proc.stderr.splitlines() if "error" in line.lower()]
    assert proc.returncode == 2 and len(errors) == 1, proc.stderr
    assert re.fullmatch(r"crab-rt: error: rank [01] of 2 failed \(data.dev_splits=\['nope'\] selects no labelled rows "
                        r"\(splits present: \['dev', 'test', 'train'\]\)\); the other processes were stopped",
                        errors[0]), errors[0]


@pytest.mark.slow
def test_a_killed_rank_ends_the_job_with_one_line(recipe, tmp_path):
    """SIGKILL to rank 1 of a `contrastive_batch = "global"` run: the job ends at once, with one line naming
    rank 1 and the signal, and no process is left behind."""
    out = tmp_path / "run"
    proc = subprocess.Popen(
        [sys.executable, "-m", "crab_rt.cli", "train", "--recipe", str(recipe), "--out", str(out), "--epochs", "500",
         "--set", "loss.contrastive_batch=global", "--nproc-per-node", "2"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(), cwd=TESTS.parent,
    )
    try:
        deadline = time.monotonic() + 120
        while not (out / "metrics.jsonl").is_file():
            assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read() if proc.poll() else "slow"
            time.sleep(0.2)
        workers = _children(proc.pid)
        victim = _rank_process(proc.pid, rank=1)
        os.kill(victim, signal.SIGKILL)
        started = time.monotonic()
        _, err = proc.communicate(timeout=60)
        ended_after = time.monotonic() - started
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 1 and ended_after < 30, (proc.returncode, ended_after)
    errors = [line for line in err.splitlines() if line.startswith("crab-rt: error:")]
    assert errors == [f"crab-rt: error: rank 1 of 2 failed (Signal 9 (SIGKILL) received by PID {victim}); "
                      "the other processes were stopped"], err
    assert "Traceback" not in err
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert all(r["train_legs"] > 0 and r["train_loss"] == r["train_loss"] for r in records)  # global MPCL ran
    assert len(workers) == 2 and not [pid for pid in workers if Path(f"/proc/{pid}").exists()]


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                found.append(int(entry.name))
    return found


def _rank_process(launcher: int, rank: int) -> int:
    """The worker process of `rank` under the launcher (its environment says RANK=rank)."""
    for child in _children(launcher):
        environ = Path(f"/proc/{child}/environ").read_bytes().split(b"\0")
        if f"RANK={rank}".encode() in environ:
            return child
    raise AssertionError(f"no process with RANK={rank} under {launcher}")
