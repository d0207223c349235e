import pytest

from perturbmerge.metrics import summarise


def test_hand_computed_three_task_matrix():
    R = [[90.0, None, None],
         [80.0, 70.0, None],
         [60.0, 75.0, 50.0]]
    A = [90.0, 74.0, 61.0]
    m = summarise(R, A)
    assert m["final_acc"] == 61.0
    assert m["aaa"] == pytest.approx((90 + 74 + 61) / 3)
    # task 0: max(90, 80) − 60 = 30; task 1: max(70) − 75 = −5 (max over t < T only)
    assert m["forgetting"] == pytest.approx((30 - 5) / 2)
    assert m["bwt"] == pytest.approx(((60 - 90) + (75 - 70)) / 2)
    assert m["plasticity"] == pytest.approx((90 + 70 + 50) / 3)


def test_single_task_has_no_forgetting():
    m = summarise([[88.0]], [88.0])
    assert m["forgetting"] is None and m["bwt"] is None and m["final_acc"] == 88.0


def test_incomplete_matrix_is_rejected():
    with pytest.raises(ValueError):
        summarise([[1.0, None], [None, 2.0]], [1.0, 2.0])
