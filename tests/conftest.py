"""Fixtures shared across test modules."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.run_fixtures import make_trained_run

# Modules using `trained_run_dir` carry this xdist group, so that under `-n 2 --dist loadgroup`
# they run on one worker and the model is trained once per session, not once per module.
# Modules whose module-scoped fixtures cost seconds (a run folder, exports, a dataset) carry a
# group of their own for the same reason: split over two workers, each would build them.
TRAINED_RUN_GROUP = pytest.mark.xdist_group("trained_run")


@pytest.fixture(scope="session")
def trained_run_dir(tmp_path_factory) -> Path:
    """A run folder whose detector really learned its data (see ``make_trained_run``)."""
    return make_trained_run(tmp_path_factory.mktemp("trained_run"))
