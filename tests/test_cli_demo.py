"""``minnets demo``: where its data comes from is decided by the sweep's own data check."""

from __future__ import annotations

from minnets.cli import main


def test_cifar_without_a_data_folder_is_one_line_error(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("MINNETS_DATA", raising=False)
    code = main(["demo", "--dataset", "cifar10", "--out", str(tmp_path / "demo")])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "pass --data DIR or set MINNETS_DATA (or add --download)" in err
    assert not (tmp_path / "demo").exists() or not any((tmp_path / "demo").iterdir())

