import pytest

from kgrow.schedules import GrowthSchedule, Stage


def test_stage_lookup_follows_epoch_boundaries():
    s = GrowthSchedule([Stage(0, width=0.5), Stage(3, width=0.75), Stage(6, width=1.0)],
                       total_epochs=9)
    assert [s.stage_index_at(e) for e in range(9)] == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert s.boundaries() == [3, 6]
    assert s.quantities == ("width",)


def test_linear_matches_autoprog_four_equal_stages():
    # AutoProg: linspace(0.5, 1, 4) over 4 equal stages; depth 18 -> 9, 12, 15, 18.
    s = GrowthSchedule.linear(total_epochs=100, num_stages=4, start=0.5, quantity="depth")
    assert [st.epoch for st in s.stages] == [0, 25, 50, 75]
    assert [round(18 * f) for f in s.sizes("depth")] == [9, 12, 15, 18]


def test_round_trips_through_json():
    s = GrowthSchedule([Stage(0, width={"a": 0.5, "b": 0.25}, depth=0.5),
                        Stage(2, width={"a": 1.0, "b": 1.0}, depth=1.0)], total_epochs=4)
    assert GrowthSchedule.from_json(s.to_json()) == s


@pytest.mark.parametrize("stages,kwargs,message", [
    ([], {}, "at least one stage"),
    ([Stage(1, width=0.5), Stage(2, width=1.0)], {}, "must start at epoch 0"),
    ([Stage(0, width=0.5), Stage(0, width=1.0)], {}, "strictly increase"),
    ([Stage(0, width=0.5), Stage(12, width=1.0)], {"total_epochs": 12}, "only 12 epochs"),
    ([Stage(0, width=1.0), Stage(2, width=0.5)], {"final_full": False}, "shrinks"),
    ([Stage(0, width=0.0), Stage(2, width=1.0)], {}, "must be in (0, 1]"),
    ([Stage(0, width=1.5)], {}, "must be in (0, 1]"),
    ([Stage(0, width=0.5), Stage(3, depth=1.0)], {}, "every stage must set the same"),
    ([Stage(0, width=0.5)], {}, "must reach the full model"),
    ([Stage(0, width={"a": 0.5}), Stage(2, width={"b": 1.0})], {}, "same groups"),
    ([Stage(0, width=0.5), Stage(2, width=0.5)], {"final_full": False}, "never grows"),
])
def test_invalid_schedules_fail_at_creation(stages, kwargs, message):
    with pytest.raises((ValueError, TypeError), match=message.replace("(", r"\(").replace(")", r"\)")):
        GrowthSchedule(stages, **kwargs)


def test_linear_rejects_more_stages_than_epochs():
    with pytest.raises(ValueError, match="at least 5 epochs"):
        GrowthSchedule.linear(total_epochs=3, num_stages=5)
