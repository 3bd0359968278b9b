"""Which folders the local server takes for versions."""

from serving.server.manager import scan_versions


def test_only_ascii_digit_folders_are_versions(tmp_path):
    for name in ("1", "²", "١٢", "x3"):
        (tmp_path / name).mkdir()
    assert scan_versions(tmp_path) == {1: tmp_path / "1"}
