"""A pytest plugin capping every test's timeout: ``pytest -p tests.timeout_cap --timeout-cap SECONDS``.

pytest-timeout takes a test's own ``@pytest.mark.timeout(N)`` over ``--timeout``
(it reads the closest marker first and falls back to the command line and the
ini file only without one), so ``--timeout`` cannot shorten a test that carries
a marker. This plugin prepends a marker of ``min(own timeout, cap)`` to every
collected test, keeping the own marker's other settings (method, func_only):
no test of a GPU kit stage outlives the cap, whatever its marker says.
"""

from __future__ import annotations

import pytest


def pytest_addoption(parser):
    parser.addoption(
        "--timeout-cap",
        type=float,
        default=None,
        help="no test runs longer than this many seconds, whatever its own timeout marker says",
    )


def capped_timeout(own: float | None, cap: float) -> float:
    """The timeout a test gets: its own (marker, else --timeout/ini; 0 or None: none) capped at ``cap``."""
    return cap if not own or own <= 0 else min(own, cap)


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config, items):
    cap = config.getoption("--timeout-cap")
    if cap is None:
        return
    if cap <= 0:
        raise pytest.UsageError(f"--timeout-cap must be > 0 seconds, got {cap}")
    default = float(config.getoption("--timeout", None) or config.getini("timeout") or 0)
    for item in items:
        marker = item.get_closest_marker("timeout")
        kwargs = dict(marker.kwargs) if marker else {}
        own = kwargs.pop("timeout", None)
        if marker and marker.args:  # positional: (timeout, method)
            own = marker.args[0]
            if len(marker.args) > 1:
                kwargs["method"] = marker.args[1]
        own = default if own is None else float(own)
        item.add_marker(pytest.mark.timeout(capped_timeout(own, cap), **kwargs), append=False)
