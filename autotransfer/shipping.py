"""Local model folders on a cluster: found on every node, or shipped through the object store.

A backbone given as a local folder (a Hugging Face folder, or timm ``local-dir:``) is a
path on the driver's machine.  Before any trial starts, :func:`plan_folders` asks every
alive node whether it sees the same folder at the same path (same files, same sizes: a
shared filesystem, or a copy made by the user).  If every node does, trials load it in
place.  If some node does not, the folder's files are put into Ray's object store once and
:func:`use_local_folders` writes them to a cache folder on that node the first time a trial
there needs them.  Folders too large to ship are refused up front with a one-line error
asking for shared storage.  Hub ids need none of this: every node resolves them itself.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from autotransfer.errors import UserError
from autotransfer.storage import folder_bytes

#: folders larger than this are not shipped: put them on storage every node mounts
SHIP_LIMIT_BYTES = 4 * 1024**3
_LOCAL_DIR = "local-dir:"


@dataclass
class ShippedFolder:
    """A backbone folder some node lacks: its files travel through the object store."""

    source: str
    fingerprint: str
    files: Any  # ray.ObjectRef of {relative path: bytes}
    nbytes: int


def local_folder(source: str) -> Optional[Path]:
    """The folder behind a backbone source (``/abs/dir`` or ``local-dir:/abs/dir``), if it is one."""
    path = source[len(_LOCAL_DIR):] if source.startswith(_LOCAL_DIR) else source
    p = Path(path)
    return p if p.is_absolute() and p.is_dir() else None


def with_folder(source: str, folder: Path) -> str:
    """``source`` pointing at ``folder`` instead (keeps timm's ``local-dir:`` prefix)."""
    return (_LOCAL_DIR if source.startswith(_LOCAL_DIR) else "") + str(folder)


def folder_fingerprint(path: str | Path) -> Optional[str]:
    """Relative file names and sizes of a folder (None if it is not there); equal on a shared mount."""
    root = Path(path)
    if not root.is_dir():
        return None
    h = hashlib.sha1()
    for f in sorted(p for p in root.rglob("*") if p.is_file()):
        h.update(f"{f.relative_to(root).as_posix()}:{f.stat().st_size}\n".encode())
    return h.hexdigest()


def probe_nodes(path: str) -> dict[str, Optional[str]]:
    """Each alive node's fingerprint of ``path`` (a zero-CPU task pinned to each node)."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    remote = ray.remote(num_cpus=0)(folder_fingerprint)
    nodes = [n["NodeID"] for n in ray.nodes() if n.get("Alive")]
    refs = [remote.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n, soft=False)).remote(path)
            for n in nodes]
    return dict(zip(nodes, ray.get(refs, timeout=120)))


def plan_folders(backbones: Sequence[Any], probe: Callable[[str], dict[str, Optional[str]]] = probe_nodes,
                 ship: Optional[Callable[[dict[str, bytes]], Any]] = None,
                 ) -> tuple[dict[str, ShippedFolder], list[str]]:
    """Decide, per local backbone folder, whether trials use it in place or get it shipped.

    Returns ``({backbone name: ShippedFolder}, [one line per folder saying which case applies])``.
    """
    if ship is None:
        import ray

        ship = ray.put
    shipped: dict[str, ShippedFolder] = {}
    lines: list[str] = []
    for bb in backbones:
        folder = local_folder(bb.source)
        if folder is None:
            lines.append(f"backbone {bb.name}: hub model, each node loads it from the hub or its own cache")
            continue
        expected = folder_fingerprint(folder)
        seen = probe(str(folder))
        lacking = [n for n, fp in seen.items() if fp != expected]
        if not lacking:
            lines.append(f"backbone {bb.name}: folder {folder} found on all {len(seen)} node(s), used in place")
            continue
        size = folder_bytes(str(folder)) or 0
        if size > SHIP_LIMIT_BYTES:
            raise UserError(f"backbone {bb.name}: folder {folder} is missing or different on {len(lacking)} of "
                            f"{len(seen)} node(s) and too large to ship ({size / 1e9:.1f} GB); put it on storage "
                            "every node mounts at the same path")
        files = {f.relative_to(folder).as_posix(): f.read_bytes() for f in folder.rglob("*") if f.is_file()}
        shipped[bb.name] = ShippedFolder(source=bb.source, fingerprint=expected or "", files=ship(files), nbytes=size)
        lines.append(f"backbone {bb.name}: folder {folder} is missing or different on {len(lacking)} of "
                     f"{len(seen)} node(s); shipped through the object store ({size / 1e6:.0f} MB)")
    return shipped, lines


def cache_root() -> Path:
    return Path(os.environ.get("AUTOTRANSFER_CACHE", Path(tempfile.gettempdir()) / "autotransfer-shipped"))


def materialize(folder: ShippedFolder, get: Optional[Callable[[Any], dict[str, bytes]]] = None) -> Path:
    """Write a shipped folder into this node's cache once (atomic rename); returns the local copy."""
    target = cache_root() / folder.fingerprint
    if (target / ".complete").exists():
        return target
    if get is None and isinstance(folder.files, dict):
        files = folder.files
    else:
        if get is None:
            import ray

            get = ray.get
        files = get(folder.files)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.fingerprint}-", dir=target.parent))
    for rel, data in files.items():
        dst = tmp / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        dst.write_bytes(data)
    (tmp / ".complete").write_text("")
    try:
        tmp.rename(target)
    except OSError:  # another trial on this node won the race: use its copy
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
    return target


def use_local_folders(ctx: Any, backbone_name: str) -> Any:
    """The trial's context with ``backbone_name`` pointing at a folder that exists on this node."""
    shipped = getattr(ctx, "shipped", None) or {}
    folder = shipped.get(backbone_name)
    if folder is None:
        return ctx
    here = local_folder(folder.source)
    if here is not None and folder_fingerprint(here) == folder.fingerprint:
        return ctx
    copy = materialize(folder)
    backbones = dict(ctx.backbones)
    backbones[backbone_name] = dataclasses.replace(backbones[backbone_name], source=with_folder(folder.source, copy))
    return dataclasses.replace(ctx, backbones=backbones)
