"""Structured schemas of the config groups, registered in Hydra's ConfigStore.

Each YAML option in ``conf/`` starts from one of these dataclasses (``defaults:
[/HandLSTMConf@_here_]``) and names its class itself (``_target_``), so a misspelt key or a
value of the wrong type fails when the config is composed, before anything trains; range
checks run in ``__post_init__`` when :func:`validate` turns the config into these objects.
A new layer with the keys of ``torch.nn.LSTM`` and no others needs no schema of its own: its
YAML starts from ``ModelConf``.

The choices of a key (``model.backward``, ``task.encoding``, ...) and the checks a constructor
makes itself are read from the module of that constructor, so the two cannot disagree.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

from .errors import LabError, no_such_key, schema_keys
from .models import hand_lstm, hand_rnn
from .tasks import adder, imdb, sin_cos, text


FLOAT32_MAX = 3.4028234663852886e38  # the largest float32: the parameters' updates are computed in it


def _check(key: str, ok: bool, expected: str, value) -> None:
    if not ok:
        raise LabError(f"{key}={value}: expected {expected}")


def _at_least(key: str, value, minimum) -> None:
    _check(key, value >= minimum, f"a number >= {minimum}", value)


def _one_of(key: str, value, choices) -> None:
    _check(key, value in choices, f"one of {', '.join(map(str, choices))}", value)


def _probability(key: str, value) -> None:
    _check(key, 0.0 <= value < 1.0, "a probability in [0, 1)", value)


def _check_known(prefix: str, keys, known) -> None:
    for key in keys:
        if key not in known and not key.startswith("_"):
            raise LabError(no_such_key(f"{prefix}{key}", known))


# ---------------------------------------------------------------- model
@dataclass
class ModelConf:
    """Keys shared by every recurrent layer (those of torch.nn.LSTM); the whole schema of
    ``torch_lstm`` and ``layernorm_lstm``."""

    _target_: str = MISSING
    hidden_size: int = 16
    num_layers: int = 1
    bias: bool = True
    batch_first: bool = True
    dropout: float = 0.0
    bidirectional: bool = False

    def __post_init__(self) -> None:
        _at_least("model.hidden_size", self.hidden_size, 1)
        _at_least("model.num_layers", self.num_layers, 1)
        _probability("model.dropout", self.dropout)


@dataclass
class HandLSTMConf(ModelConf):
    backward: str = "autograd"

    def __post_init__(self) -> None:
        super().__post_init__()
        _one_of("model.backward", self.backward, hand_lstm.BACKWARDS)


@dataclass
class HandRNNConf(ModelConf):
    nonlinearity: str = "tanh"

    def __post_init__(self) -> None:
        super().__post_init__()
        _one_of("model.nonlinearity", self.nonlinearity, tuple(hand_rnn.NONLINEARITIES))


# ---------------------------------------------------------------- task
@dataclass
class AdderConf:
    _target_: str = MISSING
    encoding: str = "serial"
    train_size: int = 80_000
    test_size: int = 20_000
    eval_bits: List[int] = field(default_factory=lambda: [16, 32])
    eval_size: int = 10_000
    loss: str = "bce"
    seed: int = 0

    def __post_init__(self) -> None:
        _one_of("task.encoding", self.encoding, adder.ENCODINGS)
        _at_least("task.train_size", self.train_size, 1)
        _at_least("task.test_size", self.test_size, 1)
        _at_least("task.eval_size", self.eval_size, 1)
        for bits in self.eval_bits:
            _at_least("task.eval_bits", bits, 2)
        _one_of("task.loss", self.loss, adder.LOSSES)


@dataclass
class SinCosConf:
    _target_: str = MISSING
    points: int = 200
    start_pi: float = 0.0
    end_pi: float = 12.0
    window: int = 20
    train_fraction: float = 0.5

    def __post_init__(self) -> None:
        try:
            sin_cos.check_time_axis(self.points, self.start_pi, self.end_pi)
            sin_cos.split_sizes(self.points, self.train_fraction, self.window)
        except ValueError as exc:
            raise LabError(str(exc)) from None


@dataclass
class ImdbConf:
    _target_: str = MISSING
    data_path: str = "data/aclImdb_v1.tar.gz"
    tokenizer: str = "basic"
    cache_dir: Optional[str] = None
    vocab_size: int = 10_000
    min_freq: int = 1
    max_length: Optional[int] = None
    truncate: str = "head"
    crop_batches: bool = False
    glove_path: Optional[str] = None
    embedding_dim: int = 100
    readout: str = "final_state"
    embedding_dropout: float = 0.5
    output_dropout: float = 0.5
    eval_batch_size: int = 256
    train_size: Optional[int] = None
    test_size: Optional[int] = None
    download: bool = True
    progress: bool = True
    seed: int = 0

    def __post_init__(self) -> None:
        _one_of("task.tokenizer", self.tokenizer, text.TOKENIZERS)
        _at_least("task.vocab_size", self.vocab_size, 1)
        _at_least("task.min_freq", self.min_freq, 1)
        if self.max_length is not None:
            _at_least("task.max_length", self.max_length, 1)
        _one_of("task.truncate", self.truncate, text.TRUNCATIONS)
        _at_least("task.embedding_dim", self.embedding_dim, 1)
        _one_of("task.readout", self.readout, imdb.READOUTS)
        _probability("task.embedding_dropout", self.embedding_dropout)
        _probability("task.output_dropout", self.output_dropout)
        _at_least("task.eval_batch_size", self.eval_batch_size, 1)
        for key in ("train_size", "test_size"):
            if getattr(self, key) is not None:
                _at_least(f"task.{key}", getattr(self, key), 2)


# ---------------------------------------------------------------- trainer
@dataclass
class OptimizerConf:
    _target_: str = MISSING
    _partial_: bool = True
    lr: float = 1e-3
    weight_decay: float = 0.0


@dataclass
class TrainerConf:
    _target_: str = MISSING
    device: str = "auto"
    max_epochs: int = 20
    batch_size: int = 64
    shuffle: bool = True
    optimizer: OptimizerConf = field(default_factory=OptimizerConf)
    grad_clip: float = 0.0
    monitor: Optional[str] = None
    mode: Optional[str] = None
    target_metric: Optional[float] = None
    target_loss: Optional[float] = None
    num_threads: int = 0
    log_every: int = 1
    eval_every: int = 1
    progress: bool = True
    resume: Optional[str] = None
    detect_anomaly: bool = False
    compile: bool = False

    def __post_init__(self) -> None:
        _at_least("trainer.max_epochs", self.max_epochs, 1)
        _at_least("trainer.batch_size", self.batch_size, 1)
        lr = self.optimizer.lr
        _check("trainer.optimizer.lr", 0 < lr <= FLOAT32_MAX, "a learning rate > 0 that float32 holds (<= 3.4e38)", lr)
        _at_least("trainer.optimizer.weight_decay", self.optimizer.weight_decay, 0)
        _at_least("trainer.grad_clip", self.grad_clip, 0)
        _at_least("trainer.num_threads", self.num_threads, 0)
        _at_least("trainer.log_every", self.log_every, 1)
        _at_least("trainer.eval_every", self.eval_every, 1)
        if self.mode is not None:
            _one_of("trainer.mode", self.mode, ("max", "min"))


SCHEMAS = (ModelConf, HandLSTMConf, HandRNNConf, AdderConf, SinCosConf, ImdbConf, TrainerConf)
GROUPS = ("model", "task", "trainer")  # the config groups these type


def register_configs() -> None:
    """Stores each schema as a plain config named after its class (kept out of --help's group
    list); the YAML options extend it, e.g. ``defaults: [/HandLSTMConf@_here_]``."""
    store = ConfigStore.instance()
    for schema in SCHEMAS:
        store.store(name=schema.__name__, node=schema)


TOP_LEVEL_KEYS = (*GROUPS, "seed")


def validate(cfg: DictConfig) -> None:
    """Range checks of every group, and no key the schemas lack, such as one added with ``+``
    (raises LabError naming the key and what was expected)."""
    _check_known("", cfg.keys(), TOP_LEVEL_KEYS)
    for group in GROUPS:
        _check_known(f"{group}.", cfg[group].keys(), schema_keys(OmegaConf.to_object(cfg[group])))
    seed = cfg.get("seed")
    _check("seed", isinstance(seed, int) and not isinstance(seed, bool), "an integer", seed)
