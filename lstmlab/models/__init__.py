"""Recurrent cells and layers, and the network that wraps them. Nothing here knows of tasks."""

from .hand_lstm import HandLSTM
from .hand_rnn import HandRNN
from .layernorm_lstm import LayerNormLSTM
from .network import SequenceModel

__all__ = ["HandLSTM", "HandRNN", "LayerNormLSTM", "SequenceModel"]
