"""The push of a saved model folder to the Hub: exactly the files the last save wrote, and only a model whose
backbones anyone can load."""

from __future__ import annotations

import os
from pathlib import Path

from huggingface_hub import HfApi
from transformers.utils import logging

from configuration_llm_fusion import LLMFusionConfig
from llm_fusion_fec.publishing.paths import check_shareable, looks_like_a_path
from llm_fusion_fec.publishing.saving import RUNS_DIR

logger = logging.get_logger(__name__)


def push_to_hub(
    folder: str | os.PathLike,
    files: list[str],
    repo_id: str,
    token: str | None = None,
    private: bool | None = None,
) -> str:
    """Create `repo_id` (if needed) and upload `files` of `folder`, the files `save_model_folder` wrote, and nothing
    else: not the local `runs/`, not what an earlier run or anyone else left in the folder.

    Refuses (`ValueError`) a model whose backbones are local folders, and a file list that names a file missing from
    the folder, outside it, or under `runs/`. Returns the commit URL.
    """
    folder = Path(folder)
    check_shareable(LLMFusionConfig.from_pretrained(folder))
    bad = [
        name
        for name in files
        if looks_like_a_path(name)
        or ".." in Path(name).parts
        or Path(name).parts[:1] == (RUNS_DIR,)
        or not (folder / name).is_file()
    ]
    if bad or not files:
        raise ValueError(
            f"Cannot upload {bad or 'no files'} from {folder}: name the files save_model_folder wrote (relative "
            f"paths of files in the folder, none under {RUNS_DIR}/)."
        )
    api = HfApi(token=token)
    api.create_repo(repo_id, private=private, exist_ok=True)
    commit = api.upload_folder(
        repo_id=repo_id,
        folder_path=folder,
        # The exact files, escaped so that a name is never read as a pattern.
        allow_patterns=[_escape_pattern(name) for name in files],
        ignore_patterns=[f"{RUNS_DIR}/*"],
        commit_message="Upload the LLM fusion head trained by train_fusion.py",
    )
    logger.info(f"Pushed {len(files)} files of {folder} to {repo_id}.")
    return commit.commit_url


def _escape_pattern(name: str) -> str:
    """`name` as an `fnmatch` pattern that matches `name` only."""
    return "".join(f"[{char}]" if char in "*?[" else char for char in name)


__all__ = ["push_to_hub"]
