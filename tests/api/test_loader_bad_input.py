"""Bad input to the trainer API is a typed mx8 error naming the argument, never a builtin
(``ValueError``, ``KeyError``, ``AttributeError``) from deep inside."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import mx8
from mx8.loader import Loader


@pytest.fixture
def folder(tmp_path: Path, store_root: str) -> str:
    data = tmp_path / "data"
    data.mkdir()
    for i in range(200):
        (data / f"{i:04d}.bin").write_bytes(b"x" * (1 + i % 7))
    return str(data)


@pytest.mark.parametrize("block_size", [0, -1, 1 << 40])
def test_loader_block_size_out_of_range_is_a_config_error_naming_it(
    folder: str, block_size: int
) -> None:
    with pytest.raises(mx8.ConfigError, match="block_size is"):
        Loader(folder, block_size=block_size)


@pytest.mark.parametrize("link", ["/data/a\0b", "s3://bucket/pre\nfix/", "/data\x7f"])
def test_load_link_with_a_control_character_is_a_link_error(link: str) -> None:
    with pytest.raises(mx8.LinkError, match="control character") as caught:
        mx8.load(link)
    assert caught.value.link == link


@pytest.mark.parametrize(
    ("env", "name"),
    [
        ({"MX8_FETCH_MAX_ATTEMPTS": "0"}, "MX8_FETCH_MAX_ATTEMPTS"),
        ({"MX8_FETCH_LOCAL_THREADS": "abc"}, "MX8_FETCH_LOCAL_THREADS"),
    ],
)
def test_embedded_load_refuses_bad_fetch_settings_naming_the_variable(
    folder: str, env: dict[str, str], name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(mx8.ConfigError, match=name):
        mx8.load(folder)


def _edit(state: dict[str, Any], **changes: Any) -> dict[str, Any]:
    return {**state, **changes}


@pytest.mark.parametrize(
    ("change", "key"),
    [
        ({"position": -64}, "position"),
        ({"position": 10_000}, "position"),
        ({"epoch": "zz"}, "epoch"),
        ({"manifest_hash": None}, "manifest_hash"),
        ({"shuffle": 1}, "shuffle"),
        ({"batch_size": True}, "batch_size"),
    ],
    ids=["negative", "past_end", "epoch_str", "no_hash", "shuffle_int", "batch_bool"],
)
def test_loader_load_state_dict_garbage_is_a_resume_error_naming_the_entry(
    folder: str, change: dict[str, Any], key: str
) -> None:
    loader = mx8.load(folder, batch_size=4)
    before = loader.state_dict()
    with pytest.raises(mx8.ResumeError) as caught:
        loader.load_state_dict(_edit(before, **change))
    assert caught.value.key == key and key in str(caught.value)
    assert loader.state_dict() == before  # nothing half-applied


@pytest.mark.parametrize("state", [{}, "x", None, {"version": 1}])
def test_loader_load_state_dict_of_the_wrong_shape_is_a_resume_error(
    folder: str, state: Any
) -> None:
    loader = mx8.load(folder, batch_size=4)
    with pytest.raises(mx8.ResumeError):
        loader.load_state_dict(state)


def test_loader_load_state_dict_of_its_own_state_resumes(folder: str) -> None:
    loader = mx8.load(folder, batch_size=4)
    it = iter(loader)
    next(it)
    state = loader.state_dict()
    it.close()
    again = mx8.load(folder, batch_size=4)
    again.load_state_dict(state)
    assert again.state_dict() == state
