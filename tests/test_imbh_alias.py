"""IMBH and IMIB are one quantity: every place that takes a metric name accepts both."""

import pytest

from rankscope.diagnostics.analyze import resolve_groups
from rankscope.diagnostics.registry import canonical_metric, display_name, group_of_metric
from rankscope.errors import UserError


@pytest.mark.parametrize("name", ["imbh", "IMBH", "imbh_rel", "imib"])
def test_imbh_resolves_to_the_imib_group(name):
    assert group_of_metric(name).name == "imib"
    assert canonical_metric(name).startswith("imib")


def test_analyze_selection_and_display():
    assert set(resolve_groups(["imbh"])) == {"imib"}
    assert resolve_groups(["imbh"]) == resolve_groups(["imib"])
    assert display_name("imib") == "imib (IMBH)" and display_name("imib_rel") == "imib_rel (IMBH_rel)"
    assert display_name("w_erank") == "w_erank" and canonical_metric("w_erank") == "w_erank"
    with pytest.raises(UserError, match="imbh"):  # the error lists the alias among the known names
        resolve_groups(["imbx"])
