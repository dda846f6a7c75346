"""The networks picolm builds from a ModelConfig, by `model.arch`."""

from __future__ import annotations

from torch import nn

from picolm.config import ModelConfig
from picolm.models.gpt import GPT
from picolm.models.sdd import SDD

NETWORKS = {"gpt": GPT, "sdd": SDD}


def build_model(config: ModelConfig) -> nn.Module:
    return NETWORKS[config.arch](config)
