"""Supervised fine-tuning of a left-to-right model on prompt/response data: the next-token loss on the response
tokens only (the batch's targets are IGNORE_INDEX on the prompt and the padding). `objective.monitor` names a DPO
data directory whose held-out chosen and rejected responses are scored at every evaluation (mean log-probability
per token), to watch fine-tuning move a model toward one kind of response."""

from __future__ import annotations

from contextlib import nullcontext

from picolm.config import Config
from picolm.data.examples import load_examples
from picolm.data.records import BadRows
from picolm.data.tokens import load_meta
from picolm.errors import PicolmError
from picolm.methods.family import Family, Objective
from picolm.methods.next_token import EVALUATIONS, NextToken
from picolm.methods.sampling import LeftToRight
from picolm.methods.sequences import pair_log_probs

MONITOR_PAIRS = 64  # held-out pairs the SFT monitor scores at each evaluation


class MaskedResponse(NextToken):
    """The next-token loss on the response tokens. With a monitor (a DPO data directory), its held-out pairs are read
    when first probed."""

    def __init__(self, monitor: str = "", tokenizer=None, block_size: int = 0):
        self.monitor, self.tokenizer, self.block_size = monitor, tokenizer, block_size
        self._pairs = None

    def monitor_pairs(self):
        if self._pairs is None:
            if load_meta(self.monitor).get("task") != "dpo":
                raise PicolmError("the monitor reads preference pairs: name a DPO data directory",
                                  field="objective.monitor")
            self._pairs = load_examples(self.monitor, "val", "dpo", self.tokenizer, self.block_size,
                                        BadRows(skip=True))
            if not len(self._pairs):
                raise PicolmError(f"no held-out pair of {self.monitor} fits the model's context of {self.block_size} "
                                  "tokens", field="objective.monitor")
        return self._pairs


class SFTFamily(Family):
    kind = "sft"
    title = "next-token SFT"
    tasks = ("sft",)
    default = True
    settings = ("monitor",)
    evaluations = EVALUATIONS
    sampler = LeftToRight()

    def objective(self, config: Config, tokenizer, task: str) -> Objective:
        objective = MaskedResponse(config.objective.monitor, tokenizer, config.model.block_size)
        if objective.monitor:
            objective.monitor_pairs()  # a bad monitor stops the run before it trains
        return objective

    def probe(self, model, objective: MaskedResponse, device="cpu", autocast=nullcontext) -> dict[str, float]:
        """With a monitor, the mean per-token log-probabilities of its held-out chosen and rejected responses."""
        if not objective.monitor:
            return {}
        scores = pair_log_probs(model, objective.monitor_pairs(), 16, objective.tokenizer.eos_id, device, autocast,
                                length_normalize=True, limit=MONITOR_PAIRS)
        chosen, rejected = scores.mean(0).tolist()
        return {"monitor/logps/chosen": chosen, "monitor/logps/rejected": rejected}
