"""The option checks shared by schedules, weighting strategies and losses (samft.checks)."""

import math

import pytest

from samft.checks import at_least, count, finite, positive


def test_checks_return_the_option_as_its_type():
    assert finite("x", 2) == 2.0 and isinstance(finite("x", 2), float)
    assert at_least("x", 0, 0) == 0.0 and positive("x", 1e-9) == 1e-9
    assert count("x", 3) == 3 and count("x", 4.0) == 4 and isinstance(count("x", 4.0), int)
    assert count("x", 1, minimum=1) == 1


@pytest.mark.parametrize(
    "check, value, message",
    [
        (finite, float("nan"), "Option x must be a finite number, got nan"),
        (finite, math.inf, "must be a finite number"),
        (finite, True, "must be a finite number, got True"),
        (finite, "1", "must be a finite number, got '1'"),
        (positive, 0.0, "Option x must be > 0, got 0.0"),
        (positive, float("nan"), "must be a finite number"),
        (lambda n, v: at_least(n, v, 1), 0.5, "Option x must be >= 1, got 0.5"),
        (count, -1, "Option x must be a non-negative whole number, got -1"),
        (count, 1.5, "whole number"),
        (count, math.inf, "whole number"),
        (count, float("nan"), "whole number"),
        (count, False, "whole number"),
        (lambda n, v: count(n, v, minimum=1), 0, "Option x must be a whole number >= 1, got 0"),
    ],
)
def test_bad_values_raise_a_value_error_naming_the_option(check, value, message):
    with pytest.raises(ValueError, match=message):
        check("x", value)
