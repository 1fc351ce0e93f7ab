"""The arguments of extraction, training, labelling and publishing: plain dataclasses, the one description of each
run's options, which the library takes and `HfArgumentParser` turns into the `fec` command lines
(`llm_fusion_fec.commands.parsing`).

Nothing here imports torch or transformers, so `fec --help` answers at once.
"""

from __future__ import annotations

from dataclasses import dataclass, field

LOG_LEVELS = ("debug", "info", "warning", "error")
DEFAULT_DATASET = "ED"


def repeatable(help: str, metavar: str | None = None):
    """A list flag that may be given several times, each time with one or more values (`action="extend"`)."""
    metadata = {"help": help, "action": "extend", **({"metavar": metavar} if metavar else {})}
    return field(default_factory=list, metadata=metadata)


@dataclass
class ExtractArguments:
    dataset: str = field(
        default=DEFAULT_DATASET,
        metadata={
            "help": "ED, go_emotion, go_emotions_multilabel, a folder of train/valid/test csv|tsv|json files, "
            "'train=a.csv,validation=b.csv,test=c.csv', or a Hub data set id."
        },
    )
    data_dir: str | None = field(
        default=None, metadata={"help": "Read a built-in data set's files from this folder instead of GitHub."}
    )
    text_column: str = field(default="text", metadata={"help": "Column holding the texts."})
    label_column: str = field(default="label", metadata={"help": "Column holding the labels."})
    preset: str = field(
        default="paper",
        metadata={
            "help": "Backbones and head options: a preset of configuration_llm_fusion.PRESETS, e.g. paper (the "
            "paper's backbones) or small (laptop-size stand-ins)."
        },
    )
    backbone: list[str] = repeatable(
        "NAME=HUB_ID_OR_FOLDER: use another model for a backbone and the other views of its model (repeatable)."
    )
    backbone_path: list[str] = repeatable(
        "NAME=FOLDER: load a backbone from a local copy of the model it names, and every other view of that model "
        "with it; NAME is the backbone's name or its model id (repeatable).",
        "NAME=FOLDER",
    )
    backbone_spec: list[str] = repeatable(
        "FILE: a JSON backbone description (e.g. from bench/sweep_layers.py) that replaces the "
        "preset's backbone of the same name (repeatable)."
    )
    add_backbone_spec: list[str] = repeatable(
        "FILE: a JSON backbone description with a name of its own, added after the preset's "
        "backbones, e.g. a second view of the LLM (other layers, pooling or prompt; its shards are cut "
        "from the LLM's cached --all-layers column where the cache holds it) (repeatable)."
    )
    layers: list[str] = repeatable(
        "NAME=I,J,K: the hidden states a layer-pooled backbone reads, in feature order "
        "(hidden_states[i]: 0 = embeddings, negative = from the top; default: the last num_layers, last "
        "first) (repeatable)."
    )
    pooling: list[str] = repeatable(
        "NAME=POOLING: layer_mean, layer_last_token, layer_text_mean, pooler, cls or mean (repeatable)."
    )
    template: list[str] = repeatable(
        "NAME=TEMPLATE: a prompt with one {text} slot that each text fills, e.g. "
        '\'llama=This sentence : "{text}" means in one word:"\'; NAME=none: no prompt (repeatable).'
    )
    tokens: list[str] = repeatable(
        "NAME: also store backbone NAME's per-token states, from the same forward pass, as the token view "
        "NAME_tokens: one float16 row per token of the text's own (a prompt's and special tokens left out), the "
        "mean over NAME's layers for an LLM view, the last hidden state for an encoder; 'all': every backbone "
        "(repeatable). Training pools them by learned attention (train_fusion.py --token_pooling, on by default for "
        "such features). Disk and memory: docs/features.md.",
        "NAME",
    )
    all_layers: bool = field(
        default=False,
        metadata={
            "help": "Read every hidden state (the embeddings and each layer) of each layer-pooled backbone, in "
            "one pass: the features bench/sweep_layers.py chooses layers from."
        },
    )
    choose: bool = field(
        default=False,
        metadata={
            "help": "Choose the LLM's views on the validation split: every layer of each candidate prompt (its last "
            "token and its text's mean) and of the plain mean is probed, and the best token and the best window "
            "are extracted with the preset's encoders. The test split plays no part in the choice."
        },
    )
    choose_train_rows: int | None = field(
        default=None,
        metadata={
            "help": "Fit --choose's probes on a random sample of this many train rows (seed 0; default 3000; at "
            "least 2; 0, or the train split's size or more: every train row): the chosen views are then extracted "
            "on every row."
        },
    )
    choose_template: list[str] = repeatable(
        "TEMPLATE: a candidate prompt for --choose, with one {text} slot (repeatable; default: PromptEOL's and the "
        "feeling prompt).",
        "TEMPLATE",
    )
    output_dir: str | None = field(
        default=None, metadata={"help": "Defaults to features/<data set name> (see `dataset_name`)."}
    )
    cache_dir: str | None = field(
        default=None,
        metadata={
            "help": "Where the feature shards are cached (default OUTPUT_DIR/cache). Folders that share it "
            "share the columns they have in common; chosen layers are cut from a cached --all-layers column."
        },
    )
    limit: int | None = field(default=None, metadata={"help": "Only the first N rows of each split (N >= 1)."})
    batch_size: int = field(default=16, metadata={"help": "Texts per forward pass (at most; 16 is fastest on CPU)."})
    max_tokens: int | None = field(
        default=None, metadata={"help": "Token budget per forward pass (padded length x texts), e.g. 16384 on a GPU."}
    )
    max_length: int | None = field(default=None, metadata={"help": "Truncate texts to this many tokens."})
    device: str | None = field(default=None, metadata={"help": "cpu, cuda, cuda:1, ... (default: cuda if present)."})
    device_map: str | None = field(default=None, metadata={"help": "'auto' spreads a model over several GPUs."})
    dtype: str | None = field(
        default=None,
        metadata={
            "help": "Compute dtype: float32, bfloat16, float16 or auto (the default): bfloat16 on a GPU, and on a CPU "
            "bfloat16 where it has AMX (amx_bf16), float32 elsewhere. The resolved one is recorded."
        },
    )
    backend: str | None = field(
        default=None,
        metadata={
            "help": "How the backbones run: torch (the default), onnx (ONNX Runtime, float32: the same features) or "
            "onnx-int8 (ONNX Runtime with int8 weights: faster on a CPU, features close to float32's). CPU only; "
            'needs pip install "llm-fusion-fec[onnx]". Recorded with the features, so the trained model is served '
            "the same way."
        },
    )
    quantization: str | None = field(
        default=None,
        metadata={
            "help": "8bit or 4bit: load the LLM (layer_mean backbones) quantized by bitsandbytes; needs a CUDA "
            "GPU. Recorded with the features, so the trained model is served the same way."
        },
    )
    feature_dtype: str = field(default="float16", metadata={"help": "Stored feature dtype: float16 or float32."})
    shard_size: int = field(default=1024, metadata={"help": "Rows per resumable unit of work."})
    log_level: str = field(
        default="warning",
        metadata={"help": "How much to log (info: what is computed and why).", "choices": LOG_LEVELS},
    )


@dataclass
class FusionArguments:
    dataset: str | None = field(
        default=None,
        metadata={
            "help": "The data set the features must come from (ED, go_emotion, ...; default: the --features_dir "
            f"folder's, {DEFAULT_DATASET} without one)."
        },
    )
    features_dir: str | None = field(
        default=None, metadata={"help": "Folder written by extract_features.py; defaults to features/<dataset>."}
    )
    backbones: list[str] | None = field(
        default=None, metadata={"help": "Train on these backbones' features only (default: all in the folder)."}
    )
    seeds: int = field(
        default=1,
        metadata={
            "help": "Seeds to train (--seed, --seed + 1, ...); 5 is the paper's protocol. The seed with the "
            "best validation score is saved (or, with --ensemble, the seeds' ensemble)."
        },
    )
    batch_seeds: bool | None = field(
        default=None,
        metadata={
            "help": "Train the --seeds seeds together as one batched model (one step advances every seed; each "
            "keeps its own initialisation, data order, dropout, early stopping and checkpoint), or (false) one "
            "after another. Default: together on a GPU or other accelerator, one after another on a CPU, where "
            "the batched step costs about what the seeds' steps cost one by one "
            "(docs/training.md#seeds-and-ensembles)."
        },
    )
    early_stopping_patience: int = field(
        default=10, metadata={"help": "Stop a seed after this many evaluations without improvement."}
    )
    early_stopping_metrics: list[str] = field(
        default_factory=lambda: ["auto"],
        metadata={
            "help": "Validation metrics whose improvement resets the patience (any of them: the original's "
            "rule); auto: loss and weighted_f1 (single-label) or loss and macro_f1 (multi-label)."
        },
    )
    checkpoint_selection: str = field(
        default="best",
        metadata={
            "help": "best: keep the checkpoint with the best validation --metric_for_best_model; "
            "last_improvement: the last one at which any early-stopping metric improved (what the original "
            "code reported)."
        },
    )
    standardize_features: bool | None = field(
        default=None,
        metadata={
            "help": "Standardise each feature dimension with training-set statistics kept in the model (not in "
            "the paper). Default: what the features' preset recorded (small: true, paper: false)."
        },
    )
    encoders_in_tail: bool | None = field(
        default=None,
        metadata={
            "help": "Also feed the encoder vectors to the MLP directly (not in the paper). Default: what the "
            "features' preset recorded (small: true, paper: false)."
        },
    )
    protocol: str = field(
        default="auto",
        metadata={
            "help": "Training recipe: paper (the original protocol exactly: Adam, lr 1e-4, batch 10, constant, up to "
            "200 epochs), fast (batch 512, or less for 32 steps an epoch; lr 1e-3 with warm-up and cosine decay, "
            "weight decay 0.01, up to 8 epochs, 16 multi-label: 5 seeds in minutes on a CPU), auto: the features' "
            "preset's (paper: paper, small: fast). A flag given (e.g. --learning_rate) wins over the recipe.",
            "choices": ["auto", "paper", "fast"],
        },
    )
    sigma: float = field(default=1.0, metadata={"help": "Power normalisation 2*sigmoid(sigma*x)-1 (paper: 1)."})
    token_pooling: str | None = field(
        default=None,
        metadata={
            "help": "attention: pool each token view (features extracted with --tokens) by learned attention over "
            "the text's tokens, the pooled vectors fused like an LLM view's layers; none: leave the token views out "
            "(the head as before). Default: what the features recorded (attention for features with token views).",
            "choices": ["attention", "none"],
        },
    )
    attention_queries: int | None = field(
        default=None,
        metadata={
            "help": "Learned queries per token view with --token_pooling attention (default: what the features "
            "recorded, 4 as chosen on ED's validation split; 1 for features that record none)."
        },
    )
    ensemble: bool = field(
        default=False,
        metadata={
            "help": "Save the seed ensemble instead of the best seed: one model whose probabilities are the "
            "mean of the --seeds seeds' (scored once on test like a seed; the seeds' own rows stay in "
            "results.json)."
        },
    )
    baseline: bool = field(
        default=True,
        metadata={
            "help": "Also fit a bag-of-words baseline on the texts (TF-IDF + logistic regression, fitted on train, "
            "its C chosen on validation, test scored once; seconds on a CPU) and report it beside the head; "
            "false: none."
        },
    )
    overwrite_output_dir: bool = field(
        default=False,
        metadata={
            "help": "Write into an output folder that holds files this package did not write (they stay, and "
            "are not uploaded)."
        },
    )
    license: str | None = field(
        default=None, metadata={"help": "Model card license; defaults to the training data's license."}
    )


@dataclass
class ProtocolArguments:
    """The paper's protocol as the defaults of `TrainingArguments` fields (`train_fusion.FusionTrainingArguments`
    takes them over).

    The original used `torch.optim.Adam` with a constant learning rate and no gradient clipping. Adam is AdamW with
    weight decay 0 (the default `--weight_decay`), so the default optimizer is the paper's.
    """

    output_dir: str | None = field(
        default=None, metadata={"help": "Defaults to outputs/llm-fusion-<data set name> (as the features folder)."}
    )
    learning_rate: float = field(default=1e-4, metadata={"help": "Adam learning rate (paper: 1e-4)."})
    lr_scheduler_type: str = field(default="constant", metadata={"help": "Learning rate schedule (paper: constant)."})
    max_grad_norm: float = field(default=0.0, metadata={"help": "Gradient clipping norm; 0: none (paper)."})
    per_device_train_batch_size: int = field(default=10, metadata={"help": "Batch size (paper: 10)."})
    per_device_eval_batch_size: int = field(default=64, metadata={"help": "Evaluation batch size."})
    num_train_epochs: float = field(default=200, metadata={"help": "Maximum number of epochs (paper: 200)."})
    eval_strategy: str = field(default="epoch", metadata={"help": "Evaluate on validation."})
    save_strategy: str = field(default="epoch", metadata={"help": "Save a checkpoint (to resume)."})
    logging_strategy: str = field(default="epoch", metadata={"help": "Log the training loss."})
    save_total_limit: int | None = field(
        default=1, metadata={"help": "Checkpoints kept besides the best one (for resuming)."}
    )
    metric_for_best_model: str | None = field(
        default="auto",
        metadata={
            "help": "Validation metric that selects the checkpoint and the saved seed: loss, accuracy, "
            "weighted_f1, macro_f1, micro_f1; auto: weighted_f1 (single-label) or macro_f1 (multi-label)."
        },
    )


def check_at_least_one(flag: str, value: int | None, hint: str = "") -> None:
    """Refuse a size that cannot be meant (0 or less), naming the flag; None means the flag was left out."""
    if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
        raise ValueError(f"{flag} must be an integer of at least 1{hint}, got {value!r}.")


def name_value_pairs(items: list[str] | dict[str, str], flag: str) -> dict[str, str]:
    """`NAME=VALUE` items of a command-line flag as a dict, or `ValueError` naming the bad one."""
    if isinstance(items, dict):
        return dict(items)
    pairs = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name or not value:
            raise ValueError(f"{flag} expects NAME=VALUE, got {item!r}.")
        if name in pairs:
            raise ValueError(f"{flag} gives {name} twice ({name}={pairs[name]} and {item}); give each name once.")
        pairs[name] = value
    return pairs


@dataclass
class PredictArguments:
    model: str = field(metadata={"help": "A model folder (e.g. outputs/llm-fusion-ed) or a Hub id."})
    input: str = field(
        metadata={
            "help": "The texts: a .csv, .jsonl, .txt (one text per line) or .parquet file, a folder a `datasets` "
            "data set was saved to (save_to_disk; see --split), or the id of a dataset on the Hub (ORG/NAME, streamed "
            "at its newest commit; see --split and --config)."
        }
    )
    output: str | None = field(
        default=None,
        metadata={
            "help": "A .csv, .jsonl or .parquet file (default: beside the input, INPUT.predictions.csv, or .jsonl or "
            ".parquet for such an input). An existing file is refused unless --overwrite is given, or its progress "
            "record (OUTPUT.progress.json) says it is an unfinished run of the same command, which then goes on."
        },
    )
    overwrite: bool = field(
        default=False,
        metadata={"help": "Replace the --output file if it exists (an unfinished one: start again)."},
    )
    text_column: str = field(default="text", metadata={"help": "Column (CSV, Parquet) or field (JSONL) of the texts."})
    split: str | None = field(
        default=None,
        metadata={"help": "The split of a saved `datasets` DatasetDict or a Hub dataset (needed if it has several)."},
    )
    config: str | None = field(
        default=None,
        metadata={"help": "The configuration (subset) of a Hub dataset --input (needed if it has several)."},
    )
    top_k: str | None = field(
        default=None, metadata={"help": "Give the K best labels of each text with their scores ('all': every label)."}
    )
    threshold: float | None = field(
        default=None,
        metadata={"help": "Multi-label models only: the score above which a label is given (default: the model's)."},
    )
    batch_size: int = field(default=8, metadata={"help": "Texts run through the backbones together."})
    max_tokens: int | None = field(
        default=None, metadata={"help": "At most this many padded tokens a forward pass (texts x padded length)."}
    )
    chunk_size: int = field(
        default=1000,
        metadata={
            "help": "Rows read, labelled and appended to the output at a time: memory holds one chunk, and a rerun "
            "after an interruption goes on after the last chunk written."
        },
    )
    backbone_path: list[str] = repeatable(
        "NAME=FOLDER: load backbone NAME (or every backbone of model id NAME) from a local folder instead of the Hub "
        "(repeatable).",
        "NAME=FOLDER",
    )
    device: str | None = field(
        default=None,
        metadata={
            "help": "cpu, cuda, cuda:1, ... (default: the first GPU if there is one; under torchrun, each process's "
            "own GPU)."
        },
    )
    dtype: str | None = field(
        default=None,
        metadata={"help": "Compute dtype of every backbone and the head (default: each backbone's recorded one)."},
    )
    backend: str | None = field(
        default=None,
        metadata={
            "help": "torch, onnx or onnx-int8: the backend the model's backbones must have been extracted with (a "
            "model is served with its recorded backend; another one is refused)."
        },
    )


@dataclass
class SpaceArguments:
    model: str = field(
        metadata={"help": "The model's Hub id (what the Space loads), or a model folder for a demo here."}
    )
    output_dir: str = field(
        metadata={"help": "Folder for the Space's files: app.py, its code, space.json, requirements.txt, README.md."}
    )
    push: str | None = field(
        default=None, metadata={"help": "SPACE_ID (ORG/NAME): create or update this Gradio Space with the files."}
    )
    private: bool = field(default=False, metadata={"help": "Make a new Space private."})
    title: str | None = field(default=None, metadata={"help": "The Space's title (default: from the model's name)."})
    backbone_path: list[str] = repeatable(
        "NAME=FOLDER: the demo loads backbone NAME (or every backbone of model id NAME) from a local folder (a demo "
        "on this machine only).",
        "NAME=FOLDER",
    )


@dataclass
class PushFeaturesArguments:
    features_dir: str = field(metadata={"help": "A features folder written by `fec extract`."})
    repo_id: str = field(metadata={"help": "The Hub dataset to create or update (ORG/NAME)."})
    private: bool = field(default=False, metadata={"help": "Make a new dataset repository private."})
    max_shard_size: str = field(default="500MB", metadata={"help": "Largest parquet shard, e.g. 500MB or 2GB."})
