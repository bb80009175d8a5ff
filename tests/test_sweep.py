"""Sweeps end to end: failed jobs are recorded, launchers agree, an interrupted sweep resumes."""

from __future__ import annotations

import shutil
import signal
import subprocess
from pathlib import Path

import pandas as pd
import pytest
import torch
from omegaconf import OmegaConf
from conftest import LAB, ROOT, read_result, results, sweep, wait_for_file

from lstmlab import report
from lstmlab.report import summarise
from lstmlab.checkpoint import TrainState
from lstmlab.results import RunRecorder
from lstmlab.sweep import job_threads, objective, run_job

# columns that differ between two runs of the same jobs: timings, and where the job ran
VOLATILE = ["train_seconds", "threads"]


@pytest.fixture(scope="module")
def basic(tmp_path_factory) -> tuple[subprocess.CompletedProcess, Path]:
    """model.hidden_size=0,8 with Hydra's basic launcher: job 0 fails, job 1 finishes."""
    sweep_dir = tmp_path_factory.mktemp("basic")
    return sweep(sweep_dir, "model.hidden_size=0,8"), sweep_dir


def test_a_failed_job_is_recorded_and_the_others_run(basic):
    proc, sweep_dir = basic
    assert proc.returncode == 1
    table = results(sweep_dir)
    assert list(table["job"]) == [0, 1]
    assert list(table["status"]) == ["failed", "finished"]
    assert table.loc[0, "error"] == "model.hidden_size=0: expected a number >= 1"
    assert table.loc[0, "overrides"].startswith("model.hidden_size=0 ")
    assert table.loc[1, "model.hidden_size"] == 8 and table.loc[1, "epochs"] == 1
    assert not (sweep_dir / "0" / "model.pt").exists() and (sweep_dir / "1" / "model.pt").exists()
    assert (sweep_dir / "0" / "traceback.txt").read_text().startswith("Traceback")
    # the end of the output names the failed job and its error, without a traceback
    assert "job 0 [model.hidden_size=0]: model.hidden_size=0: expected a number >= 1" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert "1 finished, 1 failed" in proc.stdout


def test_a_job_that_diverges_in_a_parallel_sweep_makes_the_sweep_exit_1(tmp_path):
    """As a diverged run does alone, whichever launcher ran it (here in a worker process)."""
    proc = sweep(tmp_path, "trainer.optimizer.lr=1e30,0.03", "task.loss=mse", "hydra/launcher=joblib")
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert list(results(tmp_path)["status"]) == ["diverged", "finished"]
    assert "job 0 [trainer.optimizer.lr=1e+30]: training diverged in epoch 1" in proc.stderr


@pytest.mark.parametrize("launcher", ["joblib", "submitit_local"])
def test_parallel_launchers_give_the_same_table(basic, tmp_path, launcher):
    _, basic_dir = basic
    proc = sweep(tmp_path, "model.hidden_size=0,8", f"hydra/launcher={launcher}")
    assert proc.returncode == 1, proc.stderr[-2000:]
    expected, got = results(basic_dir), results(tmp_path)
    # submitit_local hides the GPUs from jobs that ask for none (CUDA_VISIBLE_DEVICES=""), so on a
    # machine with one, trainer.device=auto picks cuda under basic and cpu under submitit_local
    volatile = VOLATILE + (["device"] if launcher == "submitit_local" else [])
    pd.testing.assert_frame_equal(got.drop(columns=volatile), expected.drop(columns=volatile))


def test_an_interrupted_sweep_keeps_the_finished_jobs(interrupted):
    proc, sweep_dir = interrupted
    assert proc.returncode == 130
    table = results(sweep_dir)
    assert list(table["status"]) == ["finished", "incomplete"]
    assert list(table["seed"]) == [0, 1]
    assert not list(sweep_dir.glob("*.tmp"))


def test_rerunning_an_interrupted_sweep_runs_only_the_missing_jobs(interrupted, tmp_path):
    _, source = interrupted
    sweep_dir = tmp_path / "sweep"
    shutil.copytree(source, sweep_dir)
    first = (sweep_dir / "0" / "result.csv").read_text()
    proc = sweep(sweep_dir, "seed=0,1,2", "model.hidden_size=4")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.count("not run again") == 1
    assert f"not run again: {sweep_dir / '0'}" in proc.stdout
    assert (sweep_dir / "0" / "result.csv").read_text() == first
    table = results(sweep_dir)
    assert list(table["status"]) == ["finished"] * 3
    assert list(table["seed"]) == [0, 1, 2]


# 30 short epochs of the adder: job 0 is still training when its first epoch is saved. One thread on
# the CPU, so that a job resumed from its last.pt agrees bit for bit with one never stopped.
RESUMABLE = ["task.train_size=2000", "task.test_size=100", "task.eval_size=100", "task.eval_bits=[16]",
             "trainer.max_epochs=30", "trainer.target_metric=null", "trainer.progress=false",
             "trainer.num_threads=1", "trainer.device=cpu"]
THREE_JOBS = "model.hidden_size=4,8,16"
FINAL_COLUMNS = ["train_loss", "test_loss", "test_acc", "exhaustive_acc", "acc_16bit", "epochs", "stop_reason"]


def resumable_sweep(sweep_dir: Path, *overrides: str) -> list[str]:
    return [str(LAB), "-m", *overrides, *RESUMABLE, f"hydra.sweep.dir={sweep_dir}"]


def run(command: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=600)


def ctrl_c_once_saved(command: list[str], file: Path) -> subprocess.CompletedProcess:
    """Runs ``command``, sends it a real SIGINT once ``file`` exists, and waits for its exit."""
    proc = subprocess.Popen(command, cwd=ROOT, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        wait_for_file(file, proc)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


@pytest.fixture(scope="module")
def stopped_in_job_0(tmp_path_factory) -> tuple[subprocess.CompletedProcess, Path]:
    """model.hidden_size=4,8,16 with a real SIGINT once job 0 has saved its first epoch's last.pt."""
    sweep_dir = tmp_path_factory.mktemp("stopped_in_job_0")
    return ctrl_c_once_saved(resumable_sweep(sweep_dir, THREE_JOBS), sweep_dir / "0" / "last.pt"), sweep_dir


def test_an_interrupted_job_is_counted_in_the_summary(stopped_in_job_0):
    proc, sweep_dir = stopped_in_job_0
    assert proc.returncode == 130, proc.stderr[-2000:]
    assert f"sweep interrupted: 1 job (1 interrupted); results in {sweep_dir / 'results.csv'}" in proc.stdout
    table = results(sweep_dir)
    assert list(table["status"]) == ["interrupted"]
    summary, _, _ = summarise(table)
    assert summary.loc[0, ["runs", "failed", "incomplete"]].tolist() == [0, 0, 1]


def test_rerunning_a_sweep_resumes_its_interrupted_job(stopped_in_job_0, tmp_path):
    _, source = stopped_in_job_0
    sweep_dir = tmp_path / "sweep"
    shutil.copytree(source, sweep_dir)
    stopped = read_result(sweep_dir / "0")
    assert stopped["status"] == "interrupted" and 1 <= stopped["epochs"] < 30
    kept = pd.read_csv(sweep_dir / "0" / "metrics.csv")

    rerun = run(resumable_sweep(sweep_dir, THREE_JOBS))
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert (f"interrupted after epoch {stopped['epochs']} in an earlier run of this sweep, "
            f"resumed from its last.pt: {sweep_dir / '0'}") in rerun.stdout
    table = results(sweep_dir)
    assert list(table["status"]) == ["finished"] * 3 and list(table["model.hidden_size"]) == [4, 8, 16]
    assert list(table["epochs"]) == [30] * 3

    reference = tmp_path / "reference"  # job 0 never stopped
    assert run(resumable_sweep(reference, "model.hidden_size=4")).returncode == 0
    ours, theirs = pd.read_csv(sweep_dir / "0" / "metrics.csv"), pd.read_csv(reference / "0" / "metrics.csv")
    assert ours["epoch"].tolist() == list(range(1, 31))
    pd.testing.assert_frame_equal(ours.head(len(kept)), kept)  # the epochs done before are kept, not trained again
    pd.testing.assert_frame_equal(ours.drop(columns="seconds"), theirs.drop(columns="seconds"), check_exact=True)
    assert table.loc[0, FINAL_COLUMNS].tolist() == results(reference).loc[0, FINAL_COLUMNS].tolist()

    again = run(resumable_sweep(sweep_dir, THREE_JOBS))  # the resumed job counts as finished too
    assert again.returncode == 0, again.stderr[-2000:]
    assert again.stdout.count("not run again") == 3


def test_optuna_sweeper_uses_the_returned_objective(tmp_path):
    proc = sweep(tmp_path, "hparams_search=adder_optuna", "hydra.sweeper.n_trials=2")
    assert proc.returncode == 0, proc.stderr[-2000:]
    table = results(tmp_path)
    assert list(table["status"]) == ["finished", "finished"]
    assert set(table["monitor"]) == {"test_loss"}
    best = (tmp_path / "optimization_results.yaml").read_text()
    assert f"best_value: {table['test_loss'].min()}" in best


def test_slurm_launcher_config_composes():
    proc = subprocess.run([str(LAB), "hydra/launcher=slurm", "hydra.launcher.partition=gpu",
                           "--cfg", "hydra", "-p", "hydra.launcher"],
                          capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "SlurmLauncher" in proc.stdout and "partition: gpu" in proc.stdout
    assert "gpus_per_node: 1" in proc.stdout and "timeout_min: 60" in proc.stdout


@pytest.mark.parametrize("launcher, cores, threads", [
    ({"_target_": "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher", "n_jobs": 2}, 2, 1),
    ({"_target_": "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher", "n_jobs": 2}, 16, 8),
    ({"_target_": "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher", "n_jobs": -1}, 16, 1),
    ({"_target_": "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher", "n_jobs": 4}, 2, 1),
    ({"_target_": "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher", "cpus_per_task": 4}, 64, 4),
    # submitit_local runs all the jobs at once: 1 thread each unless cpus_per_task says
    ({"_target_": "hydra_plugins.hydra_submitit_launcher.submitit_launcher.LocalLauncher", "cpus_per_task": None}, 2, 1),
    ({"_target_": "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher", "cpus_per_task": None}, 64, 0),
    ({"_target_": "hydra._internal.core_plugins.basic_launcher.BasicLauncher"}, 16, 0),
])
def test_parallel_jobs_share_the_cores(launcher, cores, threads):
    assert job_threads(launcher, cores) == threads


def test_a_sweep_into_an_earlier_sweeps_directory_reports_only_its_own_jobs(tmp_path):
    assert sweep(tmp_path, "seed=0,1,2").returncode == 0
    proc = sweep(tmp_path, "seed=7", "model.hidden_size=4")
    assert proc.returncode == 0, proc.stderr[-2000:]
    table = results(tmp_path)
    assert list(zip(table["job"], table["seed"], table["model.hidden_size"])) == [(0, 7, 4)]
    assert "also holds 2 job directories of an earlier sweep" in proc.stdout + proc.stderr
    assert "sweep done: 1 job (1 finished)" in proc.stdout
    assert len(report.load([tmp_path])) == 1  # lstmlab-report DIR, as the Makefile's targets call it


def test_an_optuna_search_whose_trials_all_fail_ends_in_one_line(tmp_path):
    proc = sweep(tmp_path, "hparams_search=adder_optuna", "hydra.sweeper.n_trials=2",
                 "trainer.optimizer.weight_decay=-1")
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    assert "lstmlab: every job of the sweep failed or diverged, so the sweeper stopped" in proc.stderr
    assert list(results(tmp_path)["status"]) == ["failed", "failed"]


def test_the_objective_of_a_run_that_did_not_finish_is_none():
    """Else a diverged trial would hand Optuna its last good metric, which may look the best."""
    finished = {"monitor": "test_loss", "test_loss": 0.25, "status": "finished"}
    assert objective(finished) == 0.25
    assert objective(finished | {"status": "diverged"}) is None


def test_a_job_with_torch_default_threads_does_not_inherit_an_earlier_jobs(tmp_path, monkeypatch):
    monkeypatch.setattr("lstmlab.sweep.DEFAULT_THREADS", 3)  # what torch chose when lstmlab started
    threads = []

    def train(cfg, run_dir):
        threads.append(torch.get_num_threads())
        return {"status": "finished"}

    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)  # as an earlier job of the sweep left it with trainer.num_threads=1
        run_job(OmegaConf.create({"seed": 0, "trainer": {"num_threads": 0, "resume": None}}), tmp_path, train)
    finally:
        torch.set_num_threads(before)
    assert threads == [3]


def _earlier_run_in(run_dir):
    """A finished run of another config, with everything a run leaves (a task figure too)."""
    recorder = RunRecorder(run_dir, config={"seed": 1})
    recorder.end_epoch(TrainState(epoch=1, step=1, seconds=0.1, best=0.5, improved=True, row={"epoch": 1},
                                  model={"w": torch.ones(1)}, optimizer={}, rng={}))
    for figure in ("curves.png", "prediction.png"):
        (run_dir / figure).write_bytes(b"earlier run's figure")
    recorder.write_result({"seed": 1}, {"figures": "curves.png prediction.png", "status": "finished"})


@pytest.mark.parametrize("saves_an_epoch", [False, True], ids=["fails-at-once", "fails-after-an-epoch"])
def test_a_failed_job_leaves_no_earlier_runs_file_beside_its_record(tmp_path, saves_an_epoch):
    _earlier_run_in(tmp_path)

    def train(cfg, run_dir):
        if saves_an_epoch:
            RunRecorder(run_dir, config={"seed": 0}).end_epoch(TrainState(
                epoch=1, step=1, seconds=0.1, best=0.7, improved=True, row={"epoch": 1},
                model={"w": torch.zeros(1)}, optimizer={}, rng={}))
        raise RuntimeError("boom")

    assert run_job(OmegaConf.create({"seed": 0, "trainer": {"num_threads": 1, "resume": None}}), tmp_path, train) is None
    left = sorted(p.name for p in tmp_path.iterdir())
    own = ["best.pt", "last.pt", "metrics.csv"] if saves_an_epoch else []
    assert left == sorted(["result.csv", "traceback.txt", *own])
    assert read_result(tmp_path)["status"] == "failed"
    if saves_an_epoch:  # this job's epoch, not the earlier run's
        saved = torch.load(tmp_path / "last.pt", weights_only=True)
        assert torch.equal(saved["model"]["w"], torch.zeros(1))


@pytest.mark.parametrize("how", ["resumed-by-the-sweep", "resume-in-its-config"])
def test_a_failed_job_keeps_the_checkpoints_it_went_on_from(tmp_path, how):
    config = {"seed": 0, "trainer": {"num_threads": 1, "resume": None}}
    recorder = RunRecorder(tmp_path, config=config)
    recorder.end_epoch(TrainState(epoch=1, step=1, seconds=0.1, best=0.5, improved=True, row={"epoch": 1},
                                  model={"w": torch.ones(1)}, optimizer={}, rng={}))
    recorder.write_result(config, {"epochs": 1, "status": "interrupted"})  # as a stopped job of this sweep
    if how == "resume-in-its-config":
        config["trainer"]["resume"] = str(tmp_path / "last.pt")

    def train(cfg, run_dir):
        assert cfg.trainer.resume  # goes on from last.pt here, then fails before writing anything
        raise RuntimeError("boom")

    assert run_job(OmegaConf.create(config), tmp_path, train) is None
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.pt", "last.pt", "metrics.csv", "result.csv",
                                                          "traceback.txt"]


def test_a_sweep_of_no_jobs_says_so(tmp_path):
    proc = sweep(tmp_path, "seed=range(0,0)")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "sweep done: no job ran" in proc.stdout


@pytest.mark.skipif(shutil.which("srun") is not None, reason="this machine has SLURM")
def test_the_slurm_launcher_without_slurm_fails_in_one_line(tmp_path):
    proc = sweep(tmp_path, "hydra/launcher=slurm", "seed=0,1")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == (
        'lstmlab: error: hydra/launcher could not start the jobs: Could not detect "srun", '
        "are you indeed on a slurm cluster?")
    assert "Traceback" not in proc.stderr


def test_a_rerun_of_the_same_sweep_interrupted_early_still_lists_all_its_jobs(tmp_path):
    """Jobs it had not reached again when stopped are still this sweep's, not an earlier one's."""
    assert run(resumable_sweep(tmp_path, THREE_JOBS)).returncode == 0
    for name in ("result.csv", "last.pt"):  # job 0 runs again, from the start
        (tmp_path / "0" / name).unlink()
    proc = ctrl_c_once_saved(resumable_sweep(tmp_path, THREE_JOBS), tmp_path / "0" / "last.pt")
    assert proc.returncode == 130, proc.stderr[-2000:]
    assert list(results(tmp_path)["status"]) == ["interrupted", "finished", "finished"]
    assert "earlier sweep" not in proc.stdout + proc.stderr
