"""Custom Great Expectations used by the suites (imports GX: load lazily).

Each class registers itself with GX on import under the snake_case of its name, which
is the name failure messages and Data Docs show.
"""

from __future__ import annotations

import great_expectations as gx
from great_expectations.execution_engine import PandasExecutionEngine
from great_expectations.expectations.expectation import MulticolumnMapExpectation
from great_expectations.expectations.metrics.map_metric_provider import MulticolumnMapMetricProvider
from great_expectations.expectations.metrics.map_metric_provider.multicolumn_condition_partial import (
    multicolumn_condition_partial,
)

from lmwright.data_quality import patterns


class MulticolumnFirstEqualsSumOfRest(MulticolumnMapMetricProvider):
    """Row-wise: the first column equals the sum of the other columns."""

    condition_metric_name = "multicolumn_values.first_equals_sum_of_rest"
    condition_domain_keys = ("batch_id", "table", "column_list", "row_condition", "condition_parser", "ignore_row_if")

    @multicolumn_condition_partial(engine=PandasExecutionEngine)
    def _pandas(cls, column_list, **kwargs):
        return column_list.iloc[:, 0] == column_list.iloc[:, 1:].sum(axis=1, skipna=False)


class ExpectFirstColumnToEqualSumOfOthers(MulticolumnMapExpectation):
    """Expect, in every row, column_list[0] == sum(column_list[1:]).

    The accounting invariant of a stage: ``in == kept + rejected`` per shard, and
    ``rejected == sum(rejected by reason)``.
    """

    map_metric = "multicolumn_values.first_equals_sum_of_rest"
    success_keys = ("mostly",)
    args_keys = ("column_list",)
    ignore_row_if: str = "never"  # a missing count is itself an accounting error


class ExpectColumnValuesToNotContainEmailAddress(gx.expectations.ExpectColumnValuesToNotMatchRegex):
    """Expect no e-mail address (data_quality.patterns.EMAIL) in the column."""

    regex: str = patterns.EMAIL


class ExpectColumnValuesToNotContainIpv4Address(gx.expectations.ExpectColumnValuesToNotMatchRegex):
    """Expect no IPv4 address (data_quality.patterns.IPV4) in the column."""

    regex: str = patterns.IPV4


class ExpectColumnValuesToNotContainPhoneNumber(gx.expectations.ExpectColumnValuesToNotMatchRegex):
    """Expect no international phone number (data_quality.patterns.PHONE) in the column."""

    regex: str = patterns.PHONE


class ExpectColumnValuesToNotContainControlCharacters(gx.expectations.ExpectColumnValuesToNotMatchRegex):
    """Expect no C0/C1 control character other than \\n and \\t (data_quality.patterns.CONTROL)."""

    regex: str = patterns.CONTROL
