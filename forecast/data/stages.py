"""Stage classification: which stages are open (ordered) and which are terminal."""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Literal

from forecast.errors import ParameterError, UnknownStageError

__all__ = ["DEFAULT_OPEN_STAGES", "StageKind", "StageMap"]

StageKind = Literal["open", "won", "lost", "no_decision"]


def _norm(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "", str(name).lower())


_WON = {"closedwon", "won", "closedwonbooked", "booked", "closedwonclosed"}
_LOST = {"closedlost", "lost", "closedlostdead", "dead", "closedlostcompetitor"}
_NO_DECISION = {"nodecision", "closednodecision", "closednd", "abandoned", "closedabandoned"}

#: Open stages recognised by default, in pipeline order (normalised lookup):
#: Salesforce's standard sales process and HubSpot's default pipeline IDs.
DEFAULT_OPEN_STAGES: tuple[str, ...] = (
    "Prospecting",
    "Lead",
    "Discovery",
    "Qualification",
    "Needs Analysis",
    "Value Proposition",
    "Id. Decision Makers",
    "Perception Analysis",
    "Demo",
    "Proposal",
    "Proposal/Price Quote",
    "Negotiation",
    "Negotiation/Review",
    "Contract",
    "Commit",
    # HubSpot default sales pipeline internal stage IDs
    "appointmentscheduled",
    "qualifiedtobuy",
    "presentationscheduled",
    "decisionmakerboughtin",
    "contractsent",
)
_DEFAULT_OPEN_RANK = {_norm(s): i for i, s in enumerate(DEFAULT_OPEN_STAGES)}


@dataclass(frozen=True)
class StageMap:
    """Which stage names are open (in pipeline order) and which are terminal.

    Array code convention used throughout the package: open stages are coded
    ``0 .. n_open - 1`` in the given order, then ``WON = n_open``,
    ``LOST = n_open + 1`` and ``NO_DECISION = n_open + 2``.

    Parameters
    ----------
    open : sequence of str
        Open stages, earliest first.
    won, lost, no_decision : sequence of str
        Terminal stage names of each outcome (several names may share one).
    """

    open: tuple[str, ...]
    won: tuple[str, ...] = ("Closed Won",)
    lost: tuple[str, ...] = ("Closed Lost",)
    no_decision: tuple[str, ...] = ()
    _kind: dict[str, StageKind] = field(init=False, repr=False, compare=False)
    _code: dict[str, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        for attr in ("open", "won", "lost", "no_decision"):
            value = getattr(self, attr)
            if isinstance(value, str):
                value = (value,)
            object.__setattr__(self, attr, tuple(str(v) for v in value))
        if not self.open:
            raise ParameterError("A `StageMap` needs at least one open stage. Got none.")
        if not self.won:
            raise ParameterError("A `StageMap` needs at least one won stage. Got none.")
        kind: dict[str, StageKind] = {}
        code: dict[str, int] = {}
        n = len(self.open)
        groups: list[tuple[StageKind, tuple[str, ...], int | None]] = [
            ("open", self.open, None),
            ("won", self.won, n),
            ("lost", self.lost, n + 1),
            ("no_decision", self.no_decision, n + 2),
        ]
        for k, names, c in groups:
            for i, s in enumerate(names):
                if s in kind:
                    raise ParameterError(
                        f"Stage {s!r} is listed twice in the `StageMap` (as {kind[s]!r} and {k!r})."
                    )
                kind[s] = k
                code[s] = i if c is None else c
        object.__setattr__(self, "_kind", kind)
        object.__setattr__(self, "_code", code)

    # -- codes -----------------------------------------------------------------
    @property
    def n_open(self) -> int:
        """Number of open stages."""
        return len(self.open)

    @property
    def WON(self) -> int:
        """Array code of the won outcome."""
        return self.n_open

    @property
    def LOST(self) -> int:
        """Array code of the lost outcome."""
        return self.n_open + 1

    @property
    def NO_DECISION(self) -> int:
        """Array code of the no-decision outcome."""
        return self.n_open + 2

    @property
    def n_codes(self) -> int:
        """Number of codes (open stages plus three outcomes)."""
        return self.n_open + 3

    @property
    def code_names(self) -> tuple[str, ...]:
        """Display name of each code: open stages then ``won``, ``lost``, ``no_decision``."""
        return (*self.open, "won", "lost", "no_decision")

    def names(self) -> tuple[str, ...]:
        """Every stage name known to the map."""
        return tuple(self._kind)

    def kind(self, stage: str) -> StageKind:
        """``"open"``, ``"won"``, ``"lost"`` or ``"no_decision"``."""
        try:
            return self._kind[stage]
        except KeyError:
            raise self._unknown([stage]) from None

    def code(self, stage: str) -> int:
        """Array code of ``stage`` (see class docstring)."""
        try:
            return self._code[stage]
        except KeyError:
            raise self._unknown([stage]) from None

    def codes(self) -> dict[str, int]:
        """Mapping stage name -> array code."""
        return dict(self._code)

    def is_terminal(self, stage: str) -> bool:
        """Whether ``stage`` is a won, lost or no-decision stage."""
        return self.kind(stage) != "open"

    def _unknown(self, stages: Sequence[str]) -> UnknownStageError:
        listed = ", ".join(repr(s) for s in stages)
        return UnknownStageError(
            f"Column `stage`: cannot classify stage(s) {listed}. Known open stages: "
            f"{list(self.open)}; won: {list(self.won)}; lost: {list(self.lost)}; "
            f"no decision: {list(self.no_decision)}. Pass "
            "`stages=StageMap(open=[...in order...], won=[...], lost=[...], no_decision=[...])` "
            "to `read_deal_log` to classify them.",
            column="stage",
            expected="a stage listed in the StageMap",
            found=list(stages),
        )

    def check_known(self, stages: Iterable[str]) -> None:
        """Raise :class:`UnknownStageError` listing every name not in the map."""
        unknown = sorted({s for s in stages if s not in self._kind})
        if unknown:
            raise self._unknown(unknown)

    # -- construction ------------------------------------------------------------
    @classmethod
    def infer(
        cls,
        stages: Iterable[str],
        open_stages: Sequence[str] | None = None,
        *,
        won: Sequence[str] | None = None,
        lost: Sequence[str] | None = None,
        no_decision: Sequence[str] | None = None,
    ) -> StageMap:
        """Classify stage names by common CRM naming, after what the caller gives.

        ``won``, ``lost`` and ``no_decision``, when given, classify those names
        (listed in the map even if no deal has reached them). Other names are
        recognised by name: won/lost/no-decision ("Closed Won", "Won",
        "closedwon", "Closed Lost", "No Decision", ...), and open stages ordered by
        Salesforce's standard sales process and HubSpot's default pipeline (ids or
        labels), unless ``open_stages`` gives them (in order). Without
        ``open_stages``, any other name raises :class:`UnknownStageError` listing
        it; with them, other names are left out of the map (the reader's stage
        check then reports each with its deal and row).
        """
        given_open = None if open_stages is None else tuple(str(s) for s in open_stages)
        given = {
            "won": tuple(str(s) for s in won or ()),
            "lost": tuple(str(s) for s in lost or ()),
            "no_decision": tuple(str(s) for s in no_decision or ()),
        }
        taken = set(given_open or ()) | {s for names in given.values() for s in names}
        won_, lost_, nd, open_, unknown = [], [], [], [], []
        for s in sorted({str(s) for s in stages} - taken):
            n = _norm(s)
            if n in _WON:
                won_.append(s)
            elif n in _LOST:
                lost_.append(s)
            elif n in _NO_DECISION:
                nd.append(s)
            elif given_open is None and n in _DEFAULT_OPEN_RANK:
                open_.append(s)
            else:
                unknown.append(s)
        if given_open is not None:
            open_ = list(given_open)
        if unknown and given_open is None:
            raise UnknownStageError(
                f"Column `stage`: cannot classify stage(s) {', '.join(map(repr, unknown))} "
                "from their names. Pass `stages=StageMap(open=[...in order...], won=[...], "
                "lost=[...], no_decision=[...])` (or `open_stages=[...]` with the default "
                "terminal names) to `read_deal_log`.",
                column="stage",
                expected="a recognised stage name or an explicit StageMap",
                found=unknown,
            )
        if not open_:
            raise UnknownStageError(
                "Column `stage`: found no open stage among the stage names; pass `stages=StageMap(...)`.",
                column="stage",
                expected="at least one open stage",
                found=sorted({str(s) for s in stages}),
            )
        if given_open is None:
            open_.sort(key=lambda s: _DEFAULT_OPEN_RANK[_norm(s)])
        won_all = (*given["won"], *won_)
        return cls(
            open=tuple(open_),
            won=won_all or ("Closed Won",),
            lost=(*given["lost"], *lost_),
            no_decision=(*given["no_decision"], *nd),
        )

    def to_dict(self) -> dict[str, list[str]]:
        """JSON-safe description."""
        return {
            "open": list(self.open),
            "won": list(self.won),
            "lost": list(self.lost),
            "no_decision": list(self.no_decision),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Sequence[str]]) -> StageMap:
        """Inverse of :meth:`to_dict`."""
        return cls(
            open=tuple(d["open"]),
            won=tuple(d["won"]),
            lost=tuple(d["lost"]),
            no_decision=tuple(d["no_decision"]),
        )
