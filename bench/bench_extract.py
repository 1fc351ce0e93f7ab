"""Extraction speed: this project's extractor against a naive loop shaped like the original, same run and models.

The naive loop is the original LLM-FusionClassifier extraction: the LLM sees every text padded to 200 tokens, two
texts a batch, and averages all 200 positions; the encoders take batches of 50 padded to the longest. Ours sorts
texts by length into batches (`FrozenBackbone.extract`, the code `extract_features.py` runs for each shard), pads
dynamically and averages real tokens only.

    python -m bench.bench_extract                                   # CPU, small real trio, 512 ED test texts
    python -m bench.bench_extract --llama7b --device cuda --data ../shared/data/go_emotion --texts 0 \\
        --naive-texts 400 --max-tokens 65536 --batch-size 1024      # random Llama-2-7b-shaped decoder, bf16

`--texts 0` takes every text of the data set's splits. With `--naive-texts N`, the naive LLM loop runs on the first N
texts and its time is scaled to all texts (its cost per text is constant: every text is padded to 200 tokens).
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from transformers import AutoTokenizer, LlamaConfig, LlamaModel

from configuration_llm_fusion import BackboneSpec
from modeling_llm_fusion import FrozenBackbone

ROOT = Path(__file__).resolve().parents[1]


def read_texts(folder: Path, limit: int) -> list[str]:
    texts = []
    for split in ("train", "valid", "test") if limit == 0 else ("test",):
        with open(folder / f"{split}.csv", newline="") as handle:
            texts += [row["text"] for row in csv.DictReader(handle)]
    return texts if limit == 0 else texts[:limit]


def prepared_folders() -> dict[str, str]:
    """The real small models' local folders, by name, as ../shared/models/prepare.py prints them."""
    out = subprocess.run(
        [sys.executable, str(ROOT.parent / "shared/models/prepare.py")], capture_output=True, text=True, check=True
    ).stdout
    return dict(line.split("=", 1) for line in out.split())


SMALL_TRIO = {"llama": "smollm2-135m-instruct", "bert": "all-minilm-l6-v2", "roberta": "all-mpnet-base-v2"}
"""The small preset's backbones by name, and the folder of each in prepare.py's output."""


def small_trio_paths(folders: dict[str, str] | None = None) -> dict[str, str]:
    """The small preset's backbones' local folders, by backbone name (from `folders`, else `prepared_folders()`)."""
    folders = folders or prepared_folders()
    return {name: folders[folder] for name, folder in SMALL_TRIO.items()}


def small_trio() -> list[dict]:
    paths = small_trio_paths()
    specs = [
        {"name": "llama", "model": paths["llama"], "pooling": "layer_mean", "num_layers": 5, "hidden_size": 576},
        {"name": "bert", "model": paths["bert"], "pooling": "pooler", "hidden_size": 384},
        {"name": "roberta", "model": paths["roberta"], "pooling": "pooler", "hidden_size": 768},
    ]
    return specs


def random_llama7b(tokenizer_dir: str, device: str, dtype: torch.dtype, layers: int = 32) -> FrozenBackbone:
    """A decoder shaped like Llama-2-7b (random weights: speed does not depend on them)."""
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    config = LlamaConfig(
        hidden_size=4096,
        num_hidden_layers=layers,
        num_attention_heads=32,
        num_key_value_heads=32,
        intermediate_size=11008,
        vocab_size=len(tokenizer),
        max_position_embeddings=4096,
    )
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    with torch.device(device):
        model = LlamaModel(config)
    torch.set_default_dtype(previous)
    spec = {
        "name": "llama",
        "model": "random-llama-2-7b-shape",
        "pooling": "layer_mean",
        "num_layers": 5,
        "hidden_size": 4096,
    }
    return FrozenBackbone(spec, model, tokenizer)


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def ours(backbone: FrozenBackbone, texts: list[str], batch_size: int, max_tokens: int | None, device: str) -> float:
    """Seconds for the extractor `extract_features.py` runs: `FrozenBackbone.extract` (length-sorted batches)."""
    sync(device)
    start = time.perf_counter()
    backbone.extract(texts, batch_size, max_tokens, dtype=torch.float16)
    sync(device)
    return time.perf_counter() - start


@torch.inference_mode()
def naive(backbone: FrozenBackbone, texts: list[str], device: str) -> float:
    """Seconds for the original loop: LLM padded to 200, batches of 2, mean over all positions; encoders
    batches of 50 padded to the longest, pooled output."""
    tokenizer, model, spec = backbone.tokenizer, backbone.model, backbone.spec
    llm = spec["pooling"] == "layer_mean"
    step = 2 if llm else 50
    sync(device)
    start = time.perf_counter()
    for i in range(0, len(texts), step):
        batch = tokenizer(
            texts[i : i + step],
            padding="max_length" if llm else "longest",
            truncation=True,
            max_length=200,
            return_tensors="pt",
        ).to(device)
        inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
        if llm:
            hidden = model(**inputs, output_hidden_states=True).hidden_states
            torch.stack([hidden[layer].mean(dim=1) for layer in range(-1, -6, -1)], dim=1).cpu()
        else:
            model(**inputs).pooler_output.cpu()
    sync(device)
    return time.perf_counter() - start


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(ROOT.parent / "shared/data/ED"), help="folder with train/valid/test.csv")
    parser.add_argument("--texts", type=int, default=512, help="first N test texts; 0 = all texts of all splits")
    parser.add_argument("--naive-texts", type=int, default=None, help="run the naive LLM loop on N texts, scaled")
    parser.add_argument("--llama7b", action="store_true", help="random Llama-2-7b-shaped decoder instead of the trio")
    parser.add_argument("--layers", type=int, default=32, help="layers of the --llama7b decoder (32 = Llama-2-7b)")
    parser.add_argument("--tokenizer", default=None, help="tokenizer folder for --llama7b (default: SmolLM2's)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default=None, help="default float32 on CPU, bfloat16 on GPU")
    parser.add_argument("--naive-dtype", default=None, help="dtype of the naive loop (default: --dtype)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-tokens", type=int, default=None)
    parser.add_argument("--json", default=None, help="also write the figures to this file")
    return parser.parse_args()


def backbone_loaders(args: argparse.Namespace, dtype: torch.dtype) -> list[Callable[[], FrozenBackbone]]:
    """What to load, one backbone at a time: the random Llama-2-7b-shaped decoder, or the small real trio."""
    if args.llama7b:
        tokenizer = args.tokenizer or prepared_folders()["smollm2-135m-instruct"]
        return [lambda: random_llama7b(tokenizer, args.device, dtype, args.layers)]
    return [
        lambda spec=spec: FrozenBackbone.load(BackboneSpec.from_dict(spec), device=args.device, dtype=dtype)
        for spec in small_trio()
    ]


def compare(
    backbone: FrozenBackbone,
    texts: list[str],
    naive_texts: list[str],
    args: argparse.Namespace,
    dtype: torch.dtype,
    naive_dtype: torch.dtype,
) -> dict:
    """One backbone's row: our extractor's time on `texts` (after a warm-up) against the naive loop's."""
    ours(backbone, texts[:64], args.batch_size, args.max_tokens, args.device)  # warm-up
    ours_s = ours(backbone, texts, args.batch_size, args.max_tokens, args.device)
    # Only the LLM loop runs on a slice: its cost per text is constant (every text is padded to 200 tokens).
    sliced = naive_texts if backbone.spec["pooling"] == "layer_mean" else texts
    if naive_dtype != dtype:
        backbone.model.to(naive_dtype)
    naive_s = naive(backbone, sliced, args.device) * len(texts) / len(sliced)
    tokens = sum(backbone.count_tokens(texts))
    return {
        "backbone": backbone.spec["name"],
        "model": Path(backbone.spec["model"]).name,
        "ours_s": ours_s,
        "naive_s": naive_s,
        "texts_per_s": len(texts) / ours_s,
        "tokens_per_s": tokens / ours_s,
        "naive_texts_per_s": len(texts) / naive_s,
        "speedup": naive_s / ours_s,
    }


def print_table(rows: list[dict], scaled: bool) -> None:
    print(
        f"{'backbone':10s} {'model':26s} {'ours s':>9s} {'texts/s':>9s} {'tokens/s':>10s} {'naive s':>9s} "
        f"{'naive t/s':>9s} {'speedup':>8s}"
    )
    for r in rows:
        print(
            f"{r['backbone']:10s} {r['model']:26s} {r['ours_s']:9.1f} {r['texts_per_s']:9.1f} "
            f"{r['tokens_per_s']:10.0f} {r['naive_s']:9.1f} {r['naive_texts_per_s']:9.1f} "
            f"{r['speedup']:7.1f}x"
        )
    total_ours, total_naive = sum(r["ours_s"] for r in rows), sum(r["naive_s"] for r in rows)
    note = " (naive LLM time scaled from its slice)" if scaled else ""
    print(
        f"all backbones: ours {total_ours:.1f} s, naive {total_naive:.1f} s{note}: "
        f"{total_naive / total_ours:.1f}x faster"
    )


def main() -> None:
    args = parse_args()
    dtype = getattr(torch, args.dtype or ("bfloat16" if args.device.startswith("cuda") else "float32"))
    naive_dtype = getattr(torch, args.naive_dtype) if args.naive_dtype else dtype
    texts = read_texts(Path(args.data), args.texts)
    naive_texts = texts[: args.naive_texts] if args.naive_texts else texts
    loaders = backbone_loaders(args, dtype)

    device_name = torch.cuda.get_device_name() if args.device.startswith("cuda") else "CPU"
    print(
        f"{len(texts)} texts from {args.data}; naive loop on {len(naive_texts)} in {naive_dtype}; {device_name}, "
        f"{dtype}, torch threads {torch.get_num_threads()}"
    )
    rows = []
    for load in loaders:
        rows.append(compare(load(), texts, naive_texts, args, dtype, naive_dtype))
        if args.device.startswith("cuda"):
            torch.cuda.empty_cache()
    print_table(rows, scaled=len(naive_texts) < len(texts))
    if args.json:
        Path(args.json).write_text(json.dumps({"device": device_name, "texts": len(texts), "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
