"""Recurrent cells and layers, and the network that wraps them. Nothing here knows of tasks."""

from .hand_lstm import HandLSTM
from .network import SequenceModel

__all__ = ["HandLSTM", "SequenceModel"]
