"""Which model a history supports: the stage model or the deal-level model.

- ``"stages"``: the semi-Markov model over the open stages (``docs/model.md``,
  sections 2–6): competing-risk exits per stage on the time-in-stage clock. It
  needs a stage history — an event log, or dated exports side by side.
- ``"deal_level"``: one open state on the age-since-creation clock
  (``docs/model.md``, "Deal-level model"): competing risks won / lost / no
  decision of the deal's lifetime, open deals conditioned on their age. What a
  one-row-per-deal table identifies; the stages it shows are not used for the
  exits (:mod:`forecast.data.deal_level`).

``fit(..., model_kind="auto")`` takes the deal-level model for a one-row-per-deal
table (``log.source.shape == "deals"``) and the stage model otherwise; the
fitted model says which it is and why (``PipelineModel.model_kind``,
``model_description``, the ``model_kind`` column of ``summary()``).
"""

from __future__ import annotations

from forecast.data.deal_log import DealLog
from forecast.errors import ParameterError

__all__ = ["MODEL_KINDS", "choose_model_kind"]

#: Values of ``fit(..., model_kind=...)``.
MODEL_KINDS: tuple[str, ...] = ("auto", "stages", "deal_level")

_DEAL_LEVEL = (
    "competing risks of the deal's lifetime (won / lost / no decision) on its age since "
    "creation, one open state, open deals conditioned on their age"
)
_STAGES = (
    "semi-Markov model over the open stages: competing-risk exits per stage on the "
    "time-in-stage clock, open deals conditioned on their days in stage"
)


def choose_model_kind(log: DealLog, requested: object, caller: str = "fit") -> tuple[str, str]:
    """The model to fit on ``log`` and a sentence saying which and why.

    Parameters
    ----------
    log : DealLog
    requested : {"auto", "stages", "deal_level"}
        ``"auto"``: deal-level for a one-row-per-deal table, stages otherwise.
    caller : str
        Function name for error messages.

    Returns
    -------
    kind : {"stages", "deal_level"}
    description : str
    """
    if not isinstance(requested, str) or requested not in MODEL_KINDS:
        raise ParameterError(
            f"The `model_kind` parameter of `{caller}` must be one of {list(MODEL_KINDS)}. "
            f"Got {requested!r}."
        )
    shape = log.source.shape if log.source is not None else "events"
    one_row_per_deal = shape == "deals"
    if requested == "deal_level" or (requested == "auto" and one_row_per_deal):
        if one_row_per_deal:
            why = (
                "the history is one row per deal, without stage history, so the time spent "
                "in each stage is not identifiable from it"
            )
            if requested == "deal_level":
                why += " (model_kind='deal_level')"
        else:
            why = f"asked for with model_kind='deal_level' (the {shape} history's stages are not used)"
        return "deal_level", f"Deal-level model: {_DEAL_LEVEL}; {why}."
    if one_row_per_deal:  # requested == "stages"
        why = (
            "asked for with model_kind='stages' on a one-row-per-deal table: its stage "
            "sojourns are made up by the reader (closed deals in the entry stage from "
            "creation to close, open deals in their stage since creation), so read the "
            "stage curves with care; model_kind='deal_level' fits what the table shows"
        )
    else:
        origin = "rebuilt from dated exports" if shape == "snapshots" else "an event log"
        why = f"the history records stage changes ({origin})"
    return "stages", f"Stage model: {_STAGES}; {why}."
