"""`--choose`: the LLM's views chosen on the data set's own validation split, then extracted, in one command.

    fec extract --dataset ED --preset small --choose            # -> features/ED, for train_fusion.py as it is

For the preset's LLM (its layer-pooled backbone), each candidate prompt is run once over the train and validation
splits with every hidden state kept and pooled two ways from that one pass: the last token of the prompt
(`layer_last_token`) and the mean over the text's own tokens inside it (`layer_text_mean`); the plain mean of the
unprompted text (`layer_mean`) is a candidate too. The layer sweep (`llm_fusion_fec.features.sweep`) scores each
single layer of each last-token candidate and each window of `WINDOW` consecutive layers of each mean candidate:
a logistic-regression probe fitted on train at each L2 strength of `STRENGTHS`, scored on validation by the metric
training selects models by. The features folder then holds the best of each kind as two views of the LLM (`llama`:
a token, `llama_window`: a window; the window of the token's own pass unless another scores more than
`SECOND_PASS_MARGIN` higher, so both come from one LLM pass a text) and the preset's other
backbones, extracted on every split: train and validation are cut from the cached candidates, the test split is
computed for the chosen views alone, after the choice. The test split plays no part in the choice.
The probes are fitted on a random sample of `TRAIN_ROWS` train rows (`--choose-train-rows N`: N of them; 0, or at
least the train split's rows: all of them, read once): the candidates' passes read those train texts only, and the
chosen views are then computed on the whole train split.

`fec_features.json` records the choice under `choice` (the candidates, their best scores, the strengths, the views
chosen); training copies it into the model's config (`feature_choice`) and the model card reports it. A rerun reuses
the cached candidates, the sweep's scores and the output.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
import typing

from configuration_llm_fusion import FEELING_PROMPT, PROMPT_EOL, TEXT_SLOT
from llm_fusion_fec.arguments import ExtractArguments, name_value_pairs
from llm_fusion_fec.features.backbones import read_every_layer
from llm_fusion_fec.features.cache import write_json
from llm_fusion_fec.features.extraction import (
    TRAIN_SAMPLE_SEED,
    ExtractionResult,
    arguments_of,
    backbones_of,
    extract_fixed,
    output_folders,
    train_sample,
)
from llm_fusion_fec.features.progress import progress_bar
from llm_fusion_fec.features.sweep import SWEEP_SPLITS, SWEEP_TOLERANCE, LayerScore, chosen_spec, folder_scores

if typing.TYPE_CHECKING:
    from configuration_llm_fusion import BackboneSpec

logger = logging.getLogger(__name__)

PROMPTS = {"eol": PROMPT_EOL, "feeling": FEELING_PROMPT}
"""The default candidate prompts, by short name: PromptEOL's and the feeling prompt, the two measured best
(docs/features.md#choosing-the-llms-layers-its-pooling-and-a-prompt)."""
WINDOW = 5
"""Layers in a mean view's window (the width measured best)."""
STRENGTHS = (1e-3, 1e-2, 1e-1)
"""The probe's inverse L2 strengths (sklearn's C): the middle three of the sweep's `PROBE_STRENGTHS`. On ED every
candidate's best layers scored best at 0.001 or 0.01 of all five, and the outer two take the longest to fit
(docs/features.md, `--choose`)."""
TOKEN_POOLINGS = ("layer_last_token",)
"""The candidates of the token view, scored layer by layer."""
MEAN_POOLINGS = ("layer_mean", "layer_text_mean")
"""The candidates of the window view, scored window by window."""
TRAIN_ROWS = 3000
"""The train rows (a random sample, seed `TRAIN_SAMPLE_SEED`) the probes are fitted on unless `--choose-train-rows`
says otherwise (0: every row). With 3,000 rows the choice scored at least the fixed preset on ED, GoEmotions and
multi-label GoEmotions, in 1.4-1.5x its extraction time; on ED's every row it took 3.0x (docs/results.md)."""
SECOND_PASS_MARGIN = 0.005
"""How much more (in the selection metric, 0.005 = half a point) a window from another LLM pass must score than the
best window of the chosen token's own pass to be chosen: a second pass doubles the LLM's cost in extraction and in
serving. On ED's 3,000-row sample PromptEOL's text mean beat the feeling prompt's, whose token was chosen, by 0.01
of a point: the two prompts begin alike and their text means differ by padding's rounding."""
SWEEP_FILE = "sweep.json"


def candidate_views(llm: dict, templates: dict[str, str]) -> list[dict]:
    """The candidate views of the LLM `llm`, every hidden state each: the plain mean, then each prompt's last token
    and its text's mean (the two share one pass), named `<llm>_mean`, `<llm>_<prompt>_token`, `<llm>_<prompt>_text`."""
    base = {key: value for key, value in llm.items() if key not in ("layers", "num_layers", "template")}
    name = llm["name"]
    views = [{**base, "name": f"{name}_mean", "pooling": "layer_mean"}]
    for prompt, template in templates.items():
        views.append({**base, "name": f"{name}_{prompt}_token", "pooling": "layer_last_token", "template": template})
        views.append({**base, "name": f"{name}_{prompt}_text", "pooling": "layer_text_mean", "template": template})
    return views


def candidate_templates(given: list[str]) -> dict[str, str]:
    """The candidate prompts by short name: `PROMPTS`, or those given (`prompt1`, `prompt2`, ...), each checked."""
    if not given:
        return dict(PROMPTS)
    for template in given:
        if template.count(TEXT_SLOT) != 1:
            raise ValueError(f"--choose_template {template!r} must hold {{text}} exactly once.")
    return {f"prompt{i}": template for i, template in enumerate(given, 1)}


def choose(
    args: ExtractArguments | str = "ED",
    *,
    backbones: list[dict] | None = None,
    backbone_paths: dict[str, str] | None = None,
    **options,
) -> ExtractionResult:
    """`fec extract --choose`: extract the candidates of train and validation, sweep them, extract the choice.

    Args:
        args (`ExtractArguments` or `str`): The command line's arguments, or just the data set.
        backbones (`list[dict]`, *optional*): The backbones to choose for, instead of those `args` name.
        backbone_paths (`dict[str, str]`, *optional*): Local folders of the backbones by name or model id, instead
            of `args.backbone_path`.
        options: `ExtractArguments` fields that replace those of `args`.

    Returns the final folder's `ExtractionResult`; its metadata's `choice` says what was chosen. Raises `ValueError`
    in one line for arguments `--choose` cannot serve (`--all-layers`, `--layers` of the LLM, no layer-pooled
    backbone) and for whatever `extract` refuses.
    """
    from configuration_llm_fusion import LAYER_POOLINGS, BackboneSpec
    from modeling_llm_fusion import backbone_folders

    args, sample = _choice_arguments(arguments_of(args, options))
    paths = name_value_pairs(args.backbone_path, "--backbone-path") if backbone_paths is None else backbone_paths
    preset = [BackboneSpec.from_dict(spec) for spec in backbones or backbones_of(args, paths)]
    llm = next((spec for spec in preset if spec.pooling in LAYER_POOLINGS), None)
    if llm is None:
        raise ValueError(f"--choose needs a layer-pooled backbone (an LLM); the backbones are {preset}.")
    if name_value_pairs(args.layers, "--layers").get(llm.name):
        raise ValueError(f"--choose chooses {llm.name}'s layers itself: leave out --layers {llm.name}=...")
    _, cache = output_folders(args)
    llm_path = backbone_folders(preset, paths).get(llm.name)
    view_paths = {llm.model: llm_path} if llm_path else {}
    views = [BackboneSpec.from_dict(view) for view in candidate_views(llm, candidate_templates(args.choose_template))]
    views = read_every_layer(views, {}, view_paths)
    check_window(llm, views[0].num_layers)
    sample = probe_rows(args, sample)

    started = time.perf_counter()
    candidates = extract_fixed(
        args,
        backbones=views,
        backbone_paths=view_paths,
        splits=SWEEP_SPLITS,
        train_rows=sample,
        output_dir=str(cache / "choice-candidates"),
        cache_dir=str(cache),
        tokens=[],  # the token views (--tokens) are of the chosen views, extracted with them
    )
    extracted = time.perf_counter() - started
    scores = swept_scores(candidates, views, args.device)
    swept = time.perf_counter() - started - extracted
    token, window = pick(scores, views)
    result = _extract_choice(args, preset, llm, views, scores, (token, window), candidates, sample, paths)
    logger.info(
        f"--choose: candidates extracted in {extracted:.0f} s, swept in {swept:.0f} s, the choice extracted in "
        f"{time.perf_counter() - started - extracted - swept:.0f} s"
    )
    return result


def _extract_choice(
    args: ExtractArguments,
    preset: list[BackboneSpec],
    llm: BackboneSpec,
    views: list[BackboneSpec],
    scores: list[LayerScore],
    picked: tuple[LayerScore, LayerScore],
    candidates: ExtractionResult,
    sample: int | None,
    paths: dict[str, str],
) -> ExtractionResult:
    """Extract the chosen token and window views of `llm` (`picked`) in place of every layer-pooled view of its
    model in `preset`, with the other backbones, the choice recorded in the metadata."""
    from configuration_llm_fusion import LAYER_POOLINGS

    token, window = picked
    specs = {view.name: view for view in views}
    chosen = [
        chosen_spec(specs[token.features], token.layers, llm.name),
        chosen_spec(specs[window.features], window.layers, f"{llm.name}_window"),
    ]
    rows = candidates.metadata.rows
    seed = None if sample is None else TRAIN_SAMPLE_SEED  # `probe_rows`: None where every train row was read
    record = choice_record(
        candidates.metadata.problem_type, views, scores, {chosen[0].name: token, chosen[1].name: window}, rows, seed
    )
    others = [spec for spec in preset if spec.model != llm.model or spec.pooling not in LAYER_POOLINGS]
    return extract_fixed(args, backbones=[*chosen, *others], backbone_paths=paths, choice=record)


def _choice_arguments(args: ExtractArguments) -> tuple[ExtractArguments, int | None]:
    """The arguments the extractions of a choice run with (`--choose` done), and the train rows its probes read
    (`None`: every row); `ValueError` for a bad `--choose-train-rows` or `--all-layers`."""
    sample = TRAIN_ROWS if args.choose_train_rows is None else args.choose_train_rows
    if not isinstance(sample, int) or isinstance(sample, bool) or sample < 0 or sample == 1:
        raise ValueError(
            "--choose-train-rows must be 0 (every train row) or at least 2 (a probe needs two classes), got "
            f"{sample!r}."
        )
    if args.all_layers:
        raise ValueError("--choose and --all-layers contradict each other: --choose reads every layer itself.")
    return dataclasses.replace(args, choose=False, choose_train_rows=None), sample or None


def check_window(llm: BackboneSpec, hidden_states: int) -> None:
    """Refuse an LLM with fewer hidden states (`hidden_states`: its embeddings and each layer) than the `WINDOW` a
    window view averages, naming the backbone: nothing could be chosen for its window."""
    if hidden_states < WINDOW:
        raise ValueError(
            f"--choose: backbone {llm.name!r} ({llm.model}) has {hidden_states - 1} hidden layers ({hidden_states} "
            f"hidden states with the embeddings), fewer than the window of {WINDOW} consecutive hidden states its "
            f"window view averages: choose for an LLM of at least {WINDOW - 1} layers."
        )


def probe_rows(args: ExtractArguments, sample: int | None) -> int | None:
    """The train rows the probes are fitted on: `sample` of them (`train_sample`), or `None` for every row where
    `sample` is None or no fewer than the train split has. `ValueError` where those rows hold one class (single-label
    data): a probe cannot be fitted on them. Reads the data set (refusing it as extraction would)."""
    from llm_fusion_fec.data.datasets import load_data, one_class
    from llm_fusion_fec.features.cache import library_progress_bars_off

    with library_progress_bars_off():
        data, label_names, problem_type = load_data(
            args.dataset, args.data_dir, args.text_column, args.label_column, args.limit
        )
    if sample is not None and sample >= len(data["train"]):
        sample = None  # every row: read once, for the probes and the chosen views alike
    if problem_type == "single_label_classification":
        name = one_class(train_sample(data["train"], sample)["label"], label_names)
        if name is not None and sample is None:
            raise ValueError(
                f"--choose: the train split of {args.dataset} has one class ({name}): a probe (and a classifier) "
                "needs at least two."
            )
        if name is not None:
            raise ValueError(
                f"--choose-train-rows {sample}: the {sample} train rows sampled for the probes hold one class "
                f"({name}); a probe needs at least two: give a larger number, or 0 for every train row."
            )
    return sample


def swept_scores(candidates: ExtractionResult, views: list[dict], device: str | None) -> list[LayerScore]:
    """The sweep's scores of every candidate: single layers of the last-token views, windows of the mean views. Each
    view's scores are saved in the candidates folder's `SWEEP_FILE` as soon as it is swept, and read back from there
    when they scored these very columns with these settings: an interrupted choice resumes with the next view."""
    import torch

    settings = {
        "columns": candidates.metadata.column_keys,
        "window": WINDOW,
        "strengths": list(STRENGTHS),
        "tolerance": SWEEP_TOLERANCE,
    }
    settings = json.loads(json.dumps(settings))
    saved = candidates.output_dir / SWEEP_FILE
    record = json.loads(saved.read_text()) if saved.exists() else {}
    done = record.get("views", {}) if record.get("settings") == settings else {}
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    todo = [view for view in views if view["name"] not in done]
    with progress_bar(len(todo), "--choose: probing the candidates", unit="candidate") as progress:
        for view in todo:
            widths = (1,) if view["pooling"] in TOKEN_POOLINGS else (WINDOW,)
            found = folder_scores(
                candidates.output_dir, candidates.metadata, view, WINDOW, "mean", STRENGTHS, device, widths
            )
            done[view["name"]] = [dataclasses.asdict(row) | {"features": view["name"]} for row in found]
            write_json(saved, {"settings": settings, "views": done})
            logger.info(f"--choose: {view['name']} swept, best {max(row.score for row in found):.4f}")
            progress.set_postfix_str(f"{view['name']} swept")
            progress.update(1)
    return [LayerScore(**row) for view in views for row in done[view["name"]]]


def best(scores: list[LayerScore], views: list[dict], poolings: tuple[str, ...]) -> LayerScore:
    """The best-scoring candidate of the views pooled by one of `poolings` (the first of equals, in view order)."""
    names = [view["name"] for view in views if view["pooling"] in poolings]
    return max((row for row in scores if row.features in names), key=score)


def pick(scores: list[LayerScore], views: list[dict]) -> tuple[LayerScore, LayerScore]:
    """The chosen token and window: the best token, and the best window unless the token's own pass (its prompt's
    text mean) has a window within `SECOND_PASS_MARGIN` of it, which is then chosen, for one LLM pass a text."""
    token, window = best(scores, views, TOKEN_POOLINGS), best(scores, views, MEAN_POOLINGS)
    template = next(view for view in views if view["name"] == token.features)["template"]
    own = [view for view in views if view["pooling"] == "layer_text_mean" and view["template"] == template]
    if own:  # where the best window is the token's own, it is also `same_pass`
        same_pass = best(scores, own, MEAN_POOLINGS)
        if window.score - same_pass.score <= SECOND_PASS_MARGIN:
            return token, same_pass
    return token, window


def choice_record(
    problem_type: str,
    views: list[dict],
    scores: list[LayerScore],
    picks: dict[str, LayerScore],
    rows: dict[str, int],
    train_sample_seed: int | None = None,
) -> dict:
    """What `fec_features.json` records under `choice`: how the views were chosen, each candidate's best, and the
    views chosen (`picks`, by the name of the view they became: their pooling, prompt, layers and validation score).
    `train_sample_seed`: the seed of the train rows sampled for the probes (`--choose_train_rows`), if any."""
    from llm_fusion_fec.evaluation.metrics import SELECTION_METRICS

    def described(row: LayerScore) -> dict:
        view = next(view for view in views if view["name"] == row.features)
        return {
            "candidate": view["name"],
            "pooling": view["pooling"],
            "template": view["template"],
            "layers": row.layers,
            "score": round(row.score, 6),
            "c": row.c,
        }

    candidates = {}
    for view in views:
        candidates[view["name"]] = described(max((row for row in scores if row.features == view["name"]), key=score))
    return {
        "splits": list(SWEEP_SPLITS),
        "rows": {split: rows[split] for split in SWEEP_SPLITS},
        "metric": SELECTION_METRICS[problem_type],
        "probe": f"logistic regression on standardised features, fitted on {fitted_on(train_sample_seed)} at each "
        "strength",
        "train_sample_seed": train_sample_seed,
        "strengths": list(STRENGTHS),
        "window": WINDOW,
        "second_pass_margin": SECOND_PASS_MARGIN,
        "candidates": candidates,
        "chosen": {name: described(row) for name, row in picks.items()},
    }


def score(row: LayerScore) -> float:
    return row.score


def fitted_on(train_sample_seed: int | None) -> str:
    """The rows the probes were fitted on, in words: train, or a random sample of it."""
    return "train" if train_sample_seed is None else f"a random sample of train (seed {train_sample_seed})"


def choice_table(choice: dict) -> str:
    """What `--choose` found, in words: each candidate's best on validation, then the views chosen."""
    rows = choice["rows"]
    lines = [
        f"Chosen on the validation split ({rows['validation']} rows) by {choice['metric']} of a probe fitted on "
        f"{fitted_on(choice.get('train_sample_seed'))} ({rows['train']} rows); each candidate's best "
        "(hidden states; C):"
    ]
    for name, row in choice["candidates"].items():
        layers = ", ".join(map(str, row["layers"]))
        lines.append(f"  {name:24s} {100 * row['score']:6.2f}  ({layers}; C {row['c']:g})")
    for name, row in choice["chosen"].items():
        lines.append(f"  -> {name} = {row['candidate']} at {', '.join(map(str, row['layers']))}")
    return "\n".join(lines)
