import pytest

from vitsae_tui.engine.workspace import Workspace


@pytest.fixture
def workspace(tmp_path) -> Workspace:
    return Workspace(tmp_path / "ws")


@pytest.fixture(scope="session")
def planted(tmp_path_factory) -> tuple[Workspace, str]:
    """An indexed workspace whose SAE has a planted feature driving one class (tests/engine/test_workbench.py)."""
    from tests.engine.test_workbench import plant_a_class_feature
    from tests.helpers import make_indexed_workspace

    return make_indexed_workspace(tmp_path_factory.mktemp("planted") / "ws", plant=plant_a_class_feature)
