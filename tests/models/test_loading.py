"""Model resolution and saving: what a saved model holds must not depend on how the saving process was started."""
from __future__ import annotations

import shutil

from transformers import AutoTokenizer

from scoring.models.loading import folder_fingerprint, resolve, save_tokenizer


def test_saved_tokenizer_does_not_record_offline_mode(tiny_model, tmp_path):
    """transformers records ``local_files_only`` (True in hub-offline mode) in tokenizer_config.json; a reference
    trained in an offline process then had another fingerprint than the same training elsewhere."""
    folders = []
    for offline in (False, True):
        tokenizer = AutoTokenizer.from_pretrained(tiny_model, local_files_only=offline)
        assert tokenizer.init_kwargs.get("local_files_only") is offline  # what transformers would have saved
        folder = tmp_path / f"offline-{offline}"
        save_tokenizer(tokenizer, folder)
        folders.append(folder)
    a, b = ((f / "tokenizer_config.json").read_text() for f in folders)
    assert a == b and "local_files_only" not in a
    assert folder_fingerprint(folders[0]) == folder_fingerprint(folders[1])


def test_resolve_a_local_folder_is_content_keyed(tiny_model, tmp_path, cache):
    copy = tmp_path / "copy"
    shutil.copytree(tiny_model, copy)
    assert resolve(str(copy), cache).fingerprint == resolve(str(tiny_model), cache).fingerprint
    (copy / "config.json").write_text((copy / "config.json").read_text().replace('"rms_norm_eps"', '"rms_norm_eps" '))
    assert resolve(str(copy), cache).fingerprint != resolve(str(tiny_model), cache).fingerprint
