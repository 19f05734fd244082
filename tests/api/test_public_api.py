"""The public surface of ``mx8``: pinned names, errors from the one tree, no torch on import."""

from __future__ import annotations

import subprocess
import sys

import mx8
import mx8_common.errors as errors

PUBLIC = [
    "AgentError",
    "Batch",
    "ConfigError",
    "CoordinatorError",
    "DataLoader",
    "DecodeError",
    "IntegrityError",
    "LabelError",
    "LinkError",
    "Loader",
    "ManifestError",
    "Mx8Error",
    "Mx8Loader",
    "ObjectChangedError",
    "ObjectNotFoundError",
    "ResumeError",
    "SnapshotError",
    "StorageError",
    "StoreError",
    "__version__",
    "load",
    "resolve_manifest_hash",
    "vision",
]


def test_public_api_all_is_pinned_and_sorted() -> None:
    assert mx8.__all__ == PUBLIC
    assert sorted(mx8.__all__) == mx8.__all__


def test_public_api_every_name_resolves() -> None:
    for name in mx8.__all__:
        assert getattr(mx8, name) is not None, name
    assert set(mx8.__all__) <= set(dir(mx8))


def test_public_api_errors_are_the_common_tree() -> None:
    for name in mx8.__all__:
        if name.endswith("Error"):
            cls = getattr(mx8, name)
            assert cls is getattr(errors, name)
            assert issubclass(cls, mx8.Mx8Error)
    assert issubclass(mx8.DecodeError, mx8.Mx8Error)
    assert "DecodeError" in errors.__all__
    assert "DecodeError" in (errors.__doc__ or "")


def test_public_api_unknown_attribute_is_attribute_error() -> None:
    try:
        mx8.NoSuchThing  # noqa: B018
    except AttributeError as exc:
        assert "NoSuchThing" in str(exc)
    else:
        raise AssertionError("mx8.NoSuchThing resolved")


def test_public_api_import_does_not_import_torch() -> None:
    code = (
        "import sys, mx8\n"
        "assert 'torch' not in sys.modules, 'import mx8 imported torch'\n"
        "mx8.load; mx8.Batch; mx8.Loader; mx8.DecodeError\n"
        "assert 'torch' not in sys.modules, 'eager names imported torch'\n"
        "mx8.DataLoader\n"
        "assert 'torch' in sys.modules\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )
    assert out.returncode == 0, out.stderr


def test_public_api_version_is_a_string() -> None:
    assert isinstance(mx8.__version__, str) and mx8.__version__.count(".") == 2
