"""An alias of picolm.interop.picolm_transformers: folders exported before picolm.interop existed import the
classes from here (their configuration_picolm.py and modeling_picolm.py say so)."""

from picolm.interop.picolm_transformers import PicolmConfig, PicolmForCausalLM

__all__ = ["PicolmConfig", "PicolmForCausalLM"]
