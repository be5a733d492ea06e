"""Model diagnostics: what a fit could not do cleanly, recorded instead of warned.

A numerical difficulty inside a fit (an optimiser that stopped short, a parameter
on the edge of its search range, a family that could not be fitted) is neither an
error (the model is still usable) nor something to print: it becomes one
:class:`Diagnostic` in :attr:`forecast.PipelineModel.diagnostics`, saved in the
model's JSON and shown by :meth:`forecast.PipelineModel.summary`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from forecast.fit.competing_risks import ExitCurves

__all__ = ["TAIL_DIAGNOSTIC_CODES", "Diagnostic", "tail_diagnostics"]

#: Tail-fit outcomes (:attr:`forecast.fit.tails.TailCandidate.code`) that become
#: diagnostics. ``"no_exits"`` and ``"too_few_exits"`` do not: they follow from the
#: exit counts that :meth:`~forecast.PipelineModel.summary` already shows.
TAIL_DIAGNOSTIC_CODES: tuple[str, ...] = ("at_bound", "not_converged", "fit_failed", "fallback")


@dataclass(frozen=True)
class Diagnostic:
    """One recorded difficulty of a fit.

    Attributes
    ----------
    component : str
        The part of the model it concerns (``"tail"``: a sojourn-time tail of
        :mod:`forecast.fit.tails`).
    segment : str or None
        Segment label, or ``None`` for the pooled fit or a model-wide entry.
    stage : str or None
        Open stage name, or ``None`` when not stage-specific.
    code : str
        A short fixed word to filter on (e.g. ``"not_converged"``, ``"at_bound"``).
    message : str
        What happened, for a reader.
    """

    component: str
    segment: str | None
    stage: str | None
    code: str
    message: str

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict."""
        return {
            "component": self.component,
            "segment": self.segment,
            "stage": self.stage,
            "code": self.code,
            "message": self.message,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Diagnostic:
        """Inverse of :meth:`to_dict`."""
        return cls(
            component=str(d["component"]),
            segment=None if d["segment"] is None else str(d["segment"]),
            stage=None if d["stage"] is None else str(d["stage"]),
            code=str(d["code"]),
            message=str(d["message"]),
        )

    def __str__(self) -> str:
        if self.segment is None and self.stage is None:
            where = "model"
        else:
            seg = "pooled" if self.segment is None else f"segment {self.segment}"
            where = seg if self.stage is None else f"{seg}, {self.stage}"
        return f"{self.component} [{where}] {self.code}: {self.message}"


def tail_diagnostics(
    curves: Iterable[tuple[str | None, int, ExitCurves]], stage_names: Sequence[str]
) -> tuple[Diagnostic, ...]:
    """Diagnostics of the tail fits behind some exit curves, one per troubled family fit.

    Parameters
    ----------
    curves : iterable of (segment label or None, open stage code, ExitCurves)
        ``None`` marks the pooled fit.
    stage_names : sequence of str
        Open stage names by code.

    Returns
    -------
    tuple of Diagnostic
        In the order given, candidates in family order; entries repeated by several
        tail pieces of one curve appear once.
    """
    out: list[Diagnostic] = []
    for segment, stage, c in curves:
        for piece in c.tail_pieces:
            for cand in piece.fit.candidates:
                if cand.code not in TAIL_DIAGNOSTIC_CODES:
                    continue
                chosen = " (the chosen tail)" if cand.family == piece.fit.family else ""
                d = Diagnostic(
                    "tail",
                    segment,
                    stage_names[stage],
                    cand.code,
                    f"{cand.family} fit: {cand.message}{chosen}",
                )
                if d not in out:
                    out.append(d)
    return tuple(out)
