import pytest

from tests.helpers import make_indexed_workspace


@pytest.fixture(scope="module")
def indexed_root(tmp_path_factory):
    """An indexed workspace per test module (modules change it: labels, new runs)."""
    root = tmp_path_factory.mktemp("indexed") / "ws"
    make_indexed_workspace(root)
    return root
