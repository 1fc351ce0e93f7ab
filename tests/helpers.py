"""Test helpers: tiny random backbones built in code, paths to the real data, a runner of the programs in
`tests/programs/` in a fresh process, and synthetic feature folders for the probes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
from datasets import Array2D, ClassLabel, Dataset, Features, List, Value
from tokenizers import Tokenizer, models, pre_tokenizers, processors, trainers
from transformers import (
    BertConfig,
    BertModel,
    LlamaConfig,
    LlamaModel,
    PreTrainedTokenizerFast,
    RobertaConfig,
    RobertaModel,
)

from configuration_llm_fusion import LLMFusionConfig
from llm_fusion_fec.data.datasets import data_digest
from llm_fusion_fec.features.checksums import content_digest, split_checksum
from llm_fusion_fec.features.metadata import METADATA_FILE, FeatureMetadata, load_features
from modeling_llm_fusion import LLMFusionForSequenceClassification

REPO = Path(__file__).resolve().parents[1]
PROGRAMS = Path(__file__).resolve().parent / "programs"  # what tests run in a fresh process: `run_program`
SHARED = REPO.parent / "shared"
DATA_DIR = SHARED / "data"

CORPUS = [
    "i finally got the job i wanted and i am so happy",
    "my dog died last week and i still miss him",
    "someone broke into my car, i was furious",
    "i am nervous about the exam tomorrow",
    "what a lovely surprise from my friends!",
] * 4


def _tokenizer(specials: list[str], template: str, **special_tokens) -> PreTrainedTokenizerFast:
    unk = special_tokens["unk_token"]
    tokenizer = Tokenizer(models.BPE(unk_token=unk))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.train_from_iterator(CORPUS, trainers.BpeTrainer(vocab_size=96, special_tokens=specials))
    tokens = template.split()
    tokenizer.post_processor = processors.TemplateProcessing(
        single=template, special_tokens=[(t, tokenizer.token_to_id(t)) for t in tokens if t != "$A"]
    )
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, model_max_length=128, **special_tokens)


def build_tiny_backbones(root: Path) -> list[dict]:
    """Save a tiny Llama (no pad token, like Llama-2), BERT and RoBERTa with their tokenizers under `root`."""
    torch.manual_seed(0)
    llama_tok = _tokenizer(["<unk>", "<s>", "</s>"], "<s> $A", unk_token="<unk>", bos_token="<s>", eos_token="</s>")
    bert_tok = _tokenizer(
        ["[PAD]", "[UNK]", "[CLS]", "[SEP]"],
        "[CLS] $A [SEP]",
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
    )
    roberta_tok = _tokenizer(
        ["<s>", "<pad>", "</s>", "<unk>"],
        "<s> $A </s>",
        unk_token="<unk>",
        pad_token="<pad>",
        bos_token="<s>",
        eos_token="</s>",
        cls_token="<s>",
        sep_token="</s>",
    )
    small = {"num_attention_heads": 4, "intermediate_size": 64, "max_position_embeddings": 128}
    built = {
        "llama": (
            LlamaModel(
                LlamaConfig(vocab_size=96, hidden_size=32, num_hidden_layers=6, num_key_value_heads=2, **small)
            ),
            llama_tok,
        ),
        "bert": (BertModel(BertConfig(vocab_size=96, hidden_size=32, num_hidden_layers=2, **small)), bert_tok),
        "roberta": (
            RobertaModel(
                RobertaConfig(
                    vocab_size=96,
                    hidden_size=24,
                    num_hidden_layers=2,
                    pad_token_id=1,
                    **{**small, "max_position_embeddings": 130},
                )
            ),
            roberta_tok,
        ),
    }
    for name, (model, tokenizer) in built.items():
        model.save_pretrained(root / name)
        tokenizer.save_pretrained(root / name)
    return [
        {
            "name": "llama",
            "model": str(root / "llama"),
            "pooling": "layer_mean",
            "num_layers": 3,
            "hidden_size": 32,
            "max_length": 64,
        },
        {"name": "bert", "model": str(root / "bert"), "pooling": "pooler", "hidden_size": 32, "max_length": 64},
        {"name": "roberta", "model": str(root / "roberta"), "pooling": "pooler", "hidden_size": 24, "max_length": 64},
    ]


def run_program(
    program: str, *args: str | os.PathLike, python: str | os.PathLike = sys.executable, repo: bool = False
) -> Any:
    """Run `tests/programs/<program>` with `args` in a fresh Python process and return the JSON its last line holds.

    Nothing of this process is imported there, and the repository's modules cannot be imported (a script's own
    folder is on its path, not the current one, which is `/`; `PYTHONPATH` is empty) unless `repo` puts the
    repository root on `PYTHONPATH`: model code comes from a saved folder through `trust_remote_code`, or from the
    checkout. `python` is the interpreter, e.g. that of another environment.
    """
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO) if repo else ""}
    command = [str(python), str(PROGRAMS / program), *map(str, args)]
    result = subprocess.run(command, capture_output=True, text=True, cwd="/", env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def write_csv_dataset(folder: Path, rows: list[tuple[str, int]], labels=("sad", "happy", "angry")) -> Path:
    """A data set folder of train/valid/test CSV files (each holding `rows`) and its label2idx.txt."""
    folder.mkdir(parents=True, exist_ok=True)
    lines = "text,label\n" + "".join(f'"{text}",{label}\n' for text, label in rows)
    for split in ("train", "valid", "test"):
        (folder / f"{split}.csv").write_text(lines)
    (folder / "label2idx.txt").write_text("".join(f"{name} {i}\n" for i, name in enumerate(labels)))
    return folder


def synthetic_features(
    folder,
    problem_type: str,
    informative: int,
    layers=(-1, -2, -3, -4),
    rows=240,
    strength=2.0,
    bert: tuple[str, float] | None = None,
    splits=("train", "validation"),
    **spec_options,
):
    """A features folder (by default without a test split), whose LLM features carry the labels in one hidden state
    only (`strength` times a label direction); `spec_options` go into the LLM's description (its pooling, ...). `bert`
    (its pooling, its strength) adds an encoder that carries them too."""
    rng = np.random.default_rng(0)
    width, num_labels = 8, 3
    multi = problem_type == "multi_label_classification"
    directions = rng.standard_normal((num_labels, width))
    for split in splits:
        if multi:
            labels = (rng.random((rows, num_labels)) < 0.4).astype(np.float32)
            signal = labels @ directions
        else:
            labels = rng.integers(0, num_labels, rows)
            signal = directions[labels]
        features = rng.standard_normal((rows, len(layers), width)).astype(np.float32)
        features[:, layers.index(informative)] += strength * signal
        label_type = List(Value("float32"), num_labels) if multi else ClassLabel(names=["a", "b", "c"])
        columns = {"label": label_type, "llama": Array2D(shape=(len(layers), width), dtype="float16")}
        rows_of = {"label": labels.tolist(), "llama": features.astype(np.float16)}
        if bert is not None:
            columns["bert"] = List(Value("float16"), width)
            encoded = rng.standard_normal((rows, width)) + bert[1] * signal
            rows_of["bert"] = encoded.astype(np.float16)
        Dataset.from_dict(rows_of, features=Features(columns)).save_to_disk(folder / split)
    spec = {"name": "llama", "model": "m", "pooling": "layer_mean", "layers": list(layers), "hidden_size": width}
    spec.update(spec_options)
    encoders = [] if bert is None else [{"name": "bert", "model": "e", "pooling": bert[0], "hidden_size": width}]
    metadata = {
        "dataset": "synthetic",
        "problem_type": problem_type,
        "label_names": ["a", "b", "c"],
        "backbones": [spec, *encoders],
    }
    (folder / METADATA_FILE).write_text(json.dumps(metadata))
    return folder


def tiny_head_config(
    backbones: list[dict], labels: list[str], problem_type: str = "single_label_classification"
) -> LLMFusionConfig:
    """The config of a tiny fusion head (fusion width 16, one hidden layer of 16) over `backbones`, for `labels`."""
    return LLMFusionConfig(
        backbones=backbones,
        fusion_dim=16,
        mlp_dims=[16],
        num_labels=len(labels),
        id2label=dict(enumerate(labels)),
        label2id={label: i for i, label in enumerate(labels)},
        problem_type=problem_type,
    )


def tiny_fusion_model(tiny_backbones: list[dict], labels: list[str], problem_type: str):
    """A tiny fusion model whose config names Hub ids (as a published one does), its backbones loaded from the
    tiny local folders."""
    torch.manual_seed(0)
    hub_backbones = [{**spec, "model": f"fec-tests/tiny-{spec['name']}", "revision": "v1"} for spec in tiny_backbones]
    model = LLMFusionForSequenceClassification(tiny_head_config(hub_backbones, labels, problem_type)).eval()
    model.load_backbones({spec["name"]: spec["model"] for spec in tiny_backbones}, device="cpu")
    return model


def rerecord_features(folder: Path, edit=None) -> Path:
    """Record a features folder afresh, as extraction would have written it, its metadata changed by `edit` (a
    function of the JSON record) first: for tests that change features on purpose to reach a check made after
    `load_features`'s."""
    data = load_features(folder, verify=False)[0]
    record = json.loads((folder / METADATA_FILE).read_text())
    record = edit(record) if edit else record
    record["rows"] = {split: len(rows) for split, rows in data.items()}
    record["split_checksums"] = {split: split_checksum(folder / split) for split in data}
    record["content_digests"] = {split: content_digest(rows) for split, rows in data.items()}
    if {"text", "label"} <= set(data["train"].column_names):
        record["data_digests"] = {split: data_digest(rows) for split, rows in data.items()}
    (folder / METADATA_FILE).write_text(json.dumps(FeatureMetadata.from_dict(record).sealed().to_dict()))
    return folder
