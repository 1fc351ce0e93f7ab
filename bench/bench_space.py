"""The Space's answer time for one text: the app (`fec space`'s Gradio page, served on 127.0.0.1 by a process of its
own, as a Space runs it, and called over HTTP by `gradio_client`, as the page's button calls it) against the pipeline
it wraps, called directly in this process, on the same texts, one text a call, in the same run.

    python -m bench.bench_space outputs/llm-fusion-goe --backbone_path llama=... bert=... roberta=... \\
        --texts ../shared/data/go_emotion/test.csv --num_texts 40

The two alternate text by text (and which goes first alternates too), so that both see the same load. The app runs
in its own process because torch called from a second thread of one process (Gradio's worker) slows both callers
down: measured in one process, each row took 2-3x its time alone.
"""

from __future__ import annotations

import argparse
import csv
import os
import socket
import statistics
import subprocess
import sys
import time

import torch

from llm_fusion_fec.publishing.card import DEFAULT_EXAMPLES
from llm_fusion_fec.serving.space import Demo, card_examples, load_demo_pipeline

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def read_texts(path: str, num_texts: int) -> list[str]:
    with open(path, newline="", encoding="utf-8") as file:
        return [row["text"] for _, row in zip(range(num_texts), csv.DictReader(file))]


def summary(seconds: list[float]) -> str:
    ordered = sorted(seconds)
    p90 = ordered[min(len(ordered) - 1, round(0.9 * (len(ordered) - 1)))]
    return f"{1000 * statistics.median(ordered):.0f} | {1000 * p90:.0f} | {1000 * statistics.mean(ordered):.0f}"


def serve(model: str, paths: dict[str, str], port: int) -> None:
    """The app alone in this process, as a Space runs it, until the process is stopped."""
    pipe = load_demo_pipeline(model, paths or None, "cpu")
    Demo(pipe, card_examples(model, DEFAULT_EXAMPLES)).blocks().launch(
        server_name="127.0.0.1", server_port=port, quiet=True
    )


def wait_for(port: int, server: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"the app's process ended with exit status {server.returncode} before it served")
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.5)
    raise SystemExit(f"the app did not answer on port {port} within {timeout:.0f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", help="A model folder (or Hub id) that `fec space` would serve.")
    parser.add_argument("--backbone_path", nargs="*", default=[], metavar="NAME=PATH")
    parser.add_argument("--texts", default="../shared/data/ED/test.csv", help="A CSV with a text column.")
    parser.add_argument("--num_texts", type=int, default=40)
    parser.add_argument("--top_k", type=int, default=5)
    parser.add_argument("--serve", type=int, metavar="PORT", help=argparse.SUPPRESS)  # the app's own process
    args = parser.parse_args()
    paths = dict(item.split("=", 1) for item in args.backbone_path)
    if args.serve:
        return serve(args.model, paths, args.serve)
    from gradio_client import Client

    port = free_port()
    command = [sys.executable, "-m", "bench.bench_space", args.model, "--serve", str(port)]
    server = subprocess.Popen(command + ["--backbone_path", *args.backbone_path])
    try:
        pipe = load_demo_pipeline(args.model, paths or None, "cpu")
        wait_for(port, server)
        client = Client(f"http://127.0.0.1:{port}/", verbose=False)
        texts = read_texts(args.texts, args.num_texts)
        runs = {
            "pipeline, called directly": lambda text: pipe(text, top_k=args.top_k),
            "the Space's app over HTTP (gradio_client)": lambda text: client.predict(
                text, args.top_k, api_name="/classify"
            ),
        }
        for run in runs.values():  # warm-up: first calls allocate
            run(texts[0])
        seconds = {name: [] for name in runs}
        for number, text in enumerate(texts):
            for name in list(runs)[:: 1 if number % 2 == 0 else -1]:
                start = time.perf_counter()
                runs[name](text)
                seconds[name].append(time.perf_counter() - start)
    finally:
        server.terminate()
        server.wait()
    print(f"{args.model}: {len(texts)} texts of {args.texts}, one a call, top_k {args.top_k}")
    print(f"CPU, {torch.get_num_threads()} threads, float32; the app in a process of its own; the rows alternate.\n")
    print("| row | median ms | p90 ms | mean ms |\n| --- | --- | --- | --- |")
    for name, values in seconds.items():
        print(f"| {name} | {summary(values)} |")


if __name__ == "__main__":
    main()
