import pytest

from forecast import ParameterError, StageMap, UnknownStageError


def test_codes_follow_documented_convention():
    m = StageMap(open=("A", "B"), won=("Won",), lost=("Lost", "Dead"), no_decision=("ND",))
    assert m.codes() == {"A": 0, "B": 1, "Won": 2, "Lost": 3, "Dead": 3, "ND": 4}
    assert (m.WON, m.LOST, m.NO_DECISION, m.n_codes) == (2, 3, 4, 5)
    assert m.kind("Dead") == "lost"
    assert StageMap.from_dict(m.to_dict()) == m


def test_infer_recognises_common_names_and_orders_open_stages():
    m = StageMap.infer(
        ["Negotiation/Review", "Closed Won", "Prospecting", "closed lost", "Qualification"]
    )
    assert m.open == ("Prospecting", "Qualification", "Negotiation/Review")
    assert m.won == ("Closed Won",) and m.lost == ("closed lost",)


def test_infer_hubspot_ids():
    m = StageMap.infer(["closedwon", "appointmentscheduled", "contractsent", "closedlost"])
    assert m.open == ("appointmentscheduled", "contractsent")


def test_unknown_stage_lists_it_and_says_how_to_classify():
    with pytest.raises(UnknownStageError) as info:
        StageMap.infer(["Prospecting", "Closed Won", "Blue Sky"])
    assert "'Blue Sky'" in str(info.value) and "StageMap(open=" in str(info.value)
    assert info.value.found == ["Blue Sky"]
    m = StageMap(open=("A",))
    with pytest.raises(UnknownStageError, match="'Z'"):
        m.check_known(["A", "Z"])


def test_duplicate_stage_rejected():
    with pytest.raises(ParameterError, match="listed twice"):
        StageMap(open=("A", "Won"), won=("Won",))
