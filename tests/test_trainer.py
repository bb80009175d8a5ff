"""The training loop: early stopping, devices, learning on a tiny task."""

import functools
import math

import pytest
import torch

from lstmlab.errors import LabError
from lstmlab.models import HandLSTM, SequenceModel
from lstmlab.tasks.adder import AdderTask
from lstmlab.trainer import Diverged, Trainer, resolve_device

ADAM = functools.partial(torch.optim.Adam, lr=0.03)


def tiny_adder_net(task):
    torch.manual_seed(0)
    return SequenceModel(HandLSTM(task.input_size, 8, batch_first=True), **task.network_options())


def adder_to_target() -> tuple[AdderTask, Trainer]:
    """A small serial adder, and a trainer that stops once every 8-bit sum comes out right."""
    task = AdderTask(train_size=4000, test_size=500, eval_bits=[16], eval_size=500)
    return task, Trainer(ADAM, device="cpu", max_epochs=15, batch_size=32, target_metric=1.0, progress=False)


def test_trains_the_serial_adder_to_full_accuracy_and_stops_on_target():
    task, trainer = adder_to_target()
    rows = []
    fit = trainer.fit(tiny_adder_net(task), task, on_epoch=rows.append)
    assert fit.stop_reason == "target_metric"
    assert fit.metrics["exhaustive_acc"] == 1.0 and fit.best == 1.0
    assert fit.epochs == len(rows) < 15
    assert [r["epoch"] for r in rows] == list(range(1, fit.epochs + 1))
    assert rows[-1]["step"] == fit.epochs * task.num_train_batches(32)


def test_target_loss_stops_when_training_loss_falls_below_it_and_evaluates_that_epoch():
    task = AdderTask(train_size=500, test_size=100, eval_bits=[])
    trainer = Trainer(ADAM, device="cpu", max_epochs=5, eval_every=3, target_loss=10.0, progress=False)
    fit = trainer.fit(tiny_adder_net(task), task)
    assert (fit.epochs, fit.stop_reason) == (1, "target_loss")
    assert "exhaustive_acc" in fit.metrics  # the last epoch, though not a third one


def test_a_monitored_metric_takes_its_mode_from_the_task_unless_trainer_mode_says():
    task = AdderTask(train_size=200, test_size=100, eval_bits=[16], eval_size=100)
    modes = {m: Trainer(ADAM, device="cpu", monitor=m).monitor_of(task)
             for m in ("test_acc", "acc_16bit", "test_loss", "train_loss", None)}
    assert modes == {"test_acc": ("test_acc", "max"), "acc_16bit": ("acc_16bit", "max"),
                     "test_loss": ("test_loss", "min"), "train_loss": ("train_loss", "min"),
                     None: ("exhaustive_acc", "max")}
    assert Trainer(ADAM, device="cpu", monitor="test_acc", mode="min").monitor_of(task) == ("test_acc", "min")


def test_resuming_from_the_epoch_that_met_the_target_trains_no_further():
    """As when Ctrl-C comes while that epoch is being saved: the run is then over."""
    task, trainer = adder_to_target()
    states = []
    fit = trainer.fit(tiny_adder_net(task), task, on_checkpoint=states.append)
    assert fit.stop_reason == "target_metric"
    net, rows = tiny_adder_net(task), []
    resumed = trainer.fit(net, task, on_epoch=rows.append, start=states[-1])
    assert rows == [] and (resumed.epochs, resumed.stop_reason) == (fit.epochs, "target_metric")
    assert resumed.metrics == fit.metrics and resumed.best == 1.0
    assert all(torch.equal(a, b) for a, b in zip(net.state_dict().values(), states[-1].model.values(), strict=True))
    untargeted = Trainer(ADAM, device="cpu", max_epochs=fit.epochs + 1, batch_size=32, progress=False)
    assert untargeted.fit(tiny_adder_net(task), task, start=states[-1]).epochs == fit.epochs + 1


def test_an_epochs_state_stays_as_it_was_while_training_goes_on():
    """States kept in memory (as the tests here keep them) are that epoch's, not the live weights."""
    task = AdderTask(train_size=500, test_size=100, eval_bits=[])
    trainer = Trainer(ADAM, device="cpu", max_epochs=3, batch_size=32, progress=False)
    states = []
    fit = trainer.fit(tiny_adder_net(task), task, on_checkpoint=states.append)
    first, last = states[0], states[-1]
    assert not torch.equal(first.model["rnn.weight_hh_l0"], last.model["rnn.weight_hh_l0"])
    assert not torch.equal(first.optimizer["state"][0]["exp_avg"], last.optimizer["state"][0]["exp_avg"])
    resumed = trainer.fit(tiny_adder_net(task), task, start=first).metrics
    without_time = lambda metrics: {k: v for k, v in metrics.items() if k != "seconds"}  # noqa: E731
    assert without_time(resumed) == without_time(fit.metrics)


def test_a_target_on_another_accuracy_waits_until_that_accuracy_reaches_it():
    task = AdderTask(train_size=200, test_size=100, eval_bits=[])
    trainer = Trainer(ADAM, device="cpu", max_epochs=2, monitor="test_acc", target_metric=1.0, progress=False)
    fit = trainer.fit(tiny_adder_net(task), task)
    assert fit.metrics["test_acc"] < 1.0
    assert (fit.epochs, fit.stop_reason) == (2, "max_epochs")


def test_a_monitor_the_task_does_not_report_is_refused_with_the_names_it_does():
    task = AdderTask(train_size=200, test_size=100, eval_bits=[])
    trainer = Trainer(ADAM, device="cpu", monitor="test_accuracy", progress=False)
    with pytest.raises(LabError, match=r"^trainer.monitor=test_accuracy: expected one of train_loss, test_loss, "
                                       r"test_acc, unseen_acc, exhaustive_acc \(the metrics of AdderTask\)$"):
        trainer.fit(tiny_adder_net(task), task)


def test_a_nan_value_of_the_monitored_metric_is_never_the_best():
    task = AdderTask(train_size=200, test_size=100, eval_bits=[])
    values, evaluate = iter([math.nan, 0.25, 0.5, 0.375]), task.evaluate
    task.evaluate = lambda predict: evaluate(predict) | {"test_acc": next(values)}
    trainer = Trainer(ADAM, device="cpu", max_epochs=4, monitor="test_acc", progress=False)
    improved = []
    fit = trainer.fit(tiny_adder_net(task), task, on_checkpoint=lambda state: improved.append(state.improved))
    assert fit.best == 0.5 and improved == [False, True, True, False]


def test_same_seed_gives_identical_training():
    task = AdderTask(train_size=500, test_size=100, eval_bits=[])
    results = []
    for _ in range(2):
        trainer = Trainer(ADAM, device="cpu", max_epochs=2, progress=False, seed=3)
        results.append(trainer.fit(tiny_adder_net(task), task).metrics)
    assert results[0] | {"seconds": 0} == results[1] | {"seconds": 0}


def test_devices_resolve_or_fail_with_one_line():
    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type in ("cpu", "cuda", "mps")
    with pytest.raises(LabError, match="trainer.device=tpu"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(LabError, match=r"trainer.device=cuda: no CUDA GPU"):
            resolve_device("cuda")


def test_eval_every_evaluates_every_nth_and_always_the_last_epoch():
    task = AdderTask(train_size=200, test_size=100, eval_bits=[])
    trainer = Trainer(ADAM, device="cpu", max_epochs=3, eval_every=2, progress=False)
    rows = []
    fit = trainer.fit(tiny_adder_net(task), task, on_epoch=rows.append)
    assert ["test_acc" in row for row in rows] == [False, True, True]
    assert "exhaustive_acc" in fit.metrics


def test_an_update_too_large_for_float32_is_a_divergence_not_a_crash():
    """Adam's first step size, lr / (1 - β1), is 10·lr: an lr float32 holds can still overflow it."""
    task = AdderTask(train_size=200, test_size=100, eval_bits=[])
    trainer = Trainer(functools.partial(torch.optim.Adam, lr=1e38), device="cpu", max_epochs=2, progress=False)
    with pytest.raises(Diverged, match="the optimizer's update overflowed"):
        trainer.fit(tiny_adder_net(task), task)
