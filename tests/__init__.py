"""The test suite, by layer of the product (core, upstream, store, service, transports, hosted, cli, sandbox,
distribution); tests.support holds what the tests (and the benchmark) share."""

import pytest

pytest.register_assert_rewrite("tests.support")  # its assertions report their values as the tests' own do
