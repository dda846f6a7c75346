"""The method families, by `objective.kind`. Adding a family is one module in this folder and one `register` line
here (or in your own code, before training).

Which family a run uses: `objective.kind` when it names one; with `auto`, the family that claims the starting model
(a model carrying a family's own token ids, such as masked diffusion's mask token), else the default family of the
data's task (text -> next_token, sft -> sft, dpo -> dpo). Families are asked in the order registered.
"""

from __future__ import annotations

import dataclasses

from picolm.config import Config, ModelConfig, ObjectiveConfig
from picolm.errors import PicolmError
from picolm.methods.family import Family
from picolm.methods.mdlm import MDLMFamily
from picolm.methods.next_token import NextTokenFamily
from picolm.methods.preference import PreferenceFamily
from picolm.methods.sdd import SDDFamily
from picolm.methods.sft import SFTFamily

FAMILIES: dict[str, Family] = {}


def register(family: Family) -> Family:
    FAMILIES[family.kind] = family
    return family


register(SDDFamily())  # the families that claim models of their own first: a claimed model goes to its family
register(MDLMFamily())
register(NextTokenFamily())
register(SFTFamily())
register(PreferenceFamily())


def family_named(kind: str) -> Family:
    if kind not in FAMILIES:
        raise PicolmError(f"must be one of auto, {', '.join(FAMILIES)}", field="objective.kind")
    return FAMILIES[kind]


def claimant(model: ModelConfig) -> Family | None:
    """The family whose own model this is, if any."""
    return next((family for family in FAMILIES.values() if family.claims(model)), None)


def family_of(model: ModelConfig) -> Family:
    """The family that samples and scores a trained model: its claimant, else the default family for text."""
    return claimant(model) or next(f for f in FAMILIES.values() if f.default and "text" in f.tasks)


def _chosen(kind: str, model: ModelConfig, model_field: str) -> Family | None:
    """The family `objective.kind` names, or with auto the one that claims the model (None: the data decides)."""
    owner = claimant(model)
    if kind == "auto":
        return owner
    family = family_named(kind)
    if owner is not None and owner is not family:
        raise PicolmError(f"this {owner.title} model trains on only with objective.kind {owner.kind} (or auto)",
                          field=model_field)
    return family


def family_for(kind: str, task: str, model: ModelConfig, data: str = "the data",
               model_field: str = "objective.kind") -> Family:
    """The family that trains (or evaluates) `model` on data of this task, for `objective.kind` (or auto);
    `model_field` is where the model came from, for the message when another family owns it."""
    family = _chosen(kind, model, model_field) or next((f for f in FAMILIES.values() if f.default and task in f.tasks),
                                                        None)
    if family is None:
        raise PicolmError(f"no family trains on {task} data", field="objective.kind")
    if task not in family.tasks:
        raise PicolmError(f"{family.kind} training needs {' or '.join(family.tasks)} data, but {data} holds {task} "
                          "data", field="objective.kind")
    return family


def check_fresh_model(model: ModelConfig) -> None:
    """The token ids a family adds are set by its training, never by hand."""
    defaults = ModelConfig()
    for family in FAMILIES.values():
        for name in family.sets:
            if getattr(model, name) != getattr(defaults, name):
                raise PicolmError(f"belongs to {family.title} (objective.kind {family.kind}), whose training sets it",
                                  field=f"model.{name}")


def check_settings(objective: ObjectiveConfig, family: Family) -> None:
    """An objective setting the family does not read must keep its default: applied or refused, never dropped."""
    defaults = ObjectiveConfig()
    for f in dataclasses.fields(ObjectiveConfig):
        changed = getattr(objective, f.name) != getattr(defaults, f.name)
        if changed and f.name != "kind" and f.name not in family.settings:
            readers = [other.kind for other in FAMILIES.values() if f.name in other.settings]
            raise PicolmError(f"applies to {' and '.join(readers) or 'no family'} (this run trains {family.kind})",
                              field=f"objective.{f.name}")


def check_config(config: Config) -> list[str]:
    """What can be checked before the data is read (compare recipes, `picolm train` as it starts): a fresh model,
    and the family's checks when the config alone says which family it is."""
    check_fresh_model(config.model)
    family = _chosen(config.objective.kind, config.model, "objective.kind")
    if family is None:
        return []
    notes = family.check(config, fresh=True)
    check_settings(config.objective, family)
    return notes
