"""Fixtures shared by the test files."""
import contextlib
import os

import pytest

# The fast engine's speed choices (tinycnn.engines.fast.tuning) take their safe defaults in
# the tests, here and in the Python processes they start: no measuring, no back-off from a
# busy core (other programs on the machine must not change which path a test takes), and
# no cache file read or written. tests/test_tuning.py turns tuning on with a cache of its own.
os.environ["TINYCNN_TUNING"] = "off"


@contextlib.contextmanager
def _local_cluster_client():
    """A Dask client of a LocalCluster of 2 worker processes (1 thread each) on 127.0.0.1;
    the test is skipped where Dask is not installed."""
    distributed = pytest.importorskip(
        "distributed",
        reason='Dask is not installed: pip install -e ".[dev,distributed]" to run the Dask tests')
    cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                       host="127.0.0.1", dashboard_address="127.0.0.1:0")
    with cluster, distributed.Client(cluster) as client:
        yield client


@pytest.fixture(scope="session")
def dask_client():
    """The LocalCluster's client, shared by every Dask test."""
    with _local_cluster_client() as client:
        yield client


@pytest.fixture
def fresh_dask_client():
    """A cluster of this test's own: for a test that kills a worker, so that no other test
    meets a worker the nanny is still restarting."""
    with _local_cluster_client() as client:
        yield client
