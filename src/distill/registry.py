"""The student registry: versioned `save_pretrained` folders and an atomic `current` pointer.

    models/<student>/
        v0001/            config.json, model.safetensors, tokenizer files, README.md (model card),
                          distill.json (manifest: base model, dataset hash, curation run, intents,
                          document versions, prompt template, training config, metrics)
        v0002/
        current           the promoted version's name, replaced atomically (write, fsync, rename)
        promotions.jsonl  every promotion and rollback, appended

A killed promotion leaves the old `current` in place (the new one is renamed over it or not at all);
`rollback` promotes the version promoted before the current one.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from datetime import datetime, timezone
from pathlib import Path

from distill.errors import DistillError

MANIFEST = "distill.json"
_VERSION = re.compile(r"^v(\d{4,})$")


def student_dir(models_dir: Path, student: str) -> Path:
    return models_dir / student


def versions(models_dir: Path, student: str) -> list[str]:
    """Complete versions (they have a manifest), oldest first."""
    root = student_dir(models_dir, student)
    if not root.is_dir():
        return []
    found = [p.name for p in root.iterdir() if _VERSION.match(p.name) and (p / MANIFEST).exists()]
    return sorted(found, key=lambda name: int(name[1:]))


def next_version(models_dir: Path, student: str) -> str:
    root = student_dir(models_dir, student)
    taken = [int(m.group(1)) for p in (root.iterdir() if root.is_dir() else []) if (m := _VERSION.match(p.name))]
    return f"v{max(taken, default=0) + 1:04d}"


def staging(models_dir: Path, name: str) -> tuple[str, Path]:
    """The next version of `name` and the folder to build it in, `.<version>.tmp` beside the
    versions (what a killed run left there is removed): it becomes the version when moved into
    place, and a complete one when `complete` has written its manifest."""
    version = next_version(models_dir, name)
    folder = student_dir(models_dir, name) / f".{version}.tmp"
    shutil.rmtree(folder, ignore_errors=True)
    return version, folder


def complete(folder: Path, manifest: dict, card: str) -> None:
    """Write a version's model card, then its manifest: a folder with a manifest is a complete
    version (`versions`), so a run killed before this line leaves none."""
    (folder / "README.md").write_text(card)
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=2))


def manifest(models_dir: Path, student: str, version: str) -> dict:
    folder = student_dir(models_dir, student) / version
    if not (folder / MANIFEST).exists():
        known = ", ".join(versions(models_dir, student)) or "none"
        raise DistillError(f"no version '{version}' of student '{student}' (versions: {known})")
    return read_manifest(folder)


def read_manifest(folder: Path) -> dict:
    """A version folder's manifest, in today's names (a version trained before #25 listed its
    intents as `clusters`, each with a `cluster_id`)."""
    path = Path(folder) / MANIFEST
    if not path.exists():
        raise DistillError(f"{folder} is not a student version (no {MANIFEST}); pass a models/<student>/<version> folder")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError:
        raise DistillError(f"the manifest {path} is corrupted; retrain or promote another version") from None
    if "clusters" in data and "intents" not in data:
        data["intents"] = [{("intent_id" if k == "cluster_id" else k): v for k, v in c.items()}
                           for c in data.pop("clusters")]
    return data


def record_eval(models_dir: Path, student: str, version: str, scores: dict) -> None:
    """Store evaluation figures in a version's manifest (`eval`), replacing the file atomically."""
    data = manifest(models_dir, student, version)
    data["eval"] = scores
    path = student_dir(models_dir, student) / version / MANIFEST
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2))
    os.replace(tmp, path)


def current(models_dir: Path, student: str) -> str | None:
    pointer = student_dir(models_dir, student) / "current"
    if not pointer.exists():
        return None
    name = pointer.read_text().strip()
    return name if name in versions(models_dir, student) else None


def promote(models_dir: Path, student: str, version: str, reason: str = "manual") -> None:
    """Make `version` current, atomically, and log it."""
    manifest(models_dir, student, version)  # exists and readable
    root = student_dir(models_dir, student)
    tmp = root / "current.tmp"
    with open(tmp, "w") as f:
        f.write(version + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, root / "current")
    with open(root / "promotions.jsonl", "a") as log:
        log.write(json.dumps({"at": datetime.now(timezone.utc).isoformat(), "version": version,
                              "reason": reason}) + "\n")


def rollback(models_dir: Path, student: str) -> str:
    """Promote the version that was current before the current one; returns it."""
    log = student_dir(models_dir, student) / "promotions.jsonl"
    history = [json.loads(line)["version"] for line in log.read_text().splitlines()] if log.exists() else []
    now = current(models_dir, student)
    previous = [v for v in history if v != now and v in versions(models_dir, student)]
    if now is None or not previous:
        raise DistillError(f"student '{student}' has no earlier promoted version to roll back to")
    promote(models_dir, student, previous[-1], reason=f"rollback from {now}")
    return previous[-1]
