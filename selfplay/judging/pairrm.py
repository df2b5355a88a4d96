"""PairRM judge: a pairwise logit L[i, j] (response i beats response j) for every ordered pair.

A checkpoint is a folder in llm-blender's layout: `config.json` (a RankerConfig with
ranker_type "pairranker", model_type "deberta", model_name, source_maxlength,
candidate_maxlength) and `model.safetensors` or `pytorch_model.bin` with keys
`pretrained_model.*` (DeBERTa-v2) and `head_layer.*`. The backbone's config and tokenizer come
from the folder named by `model_name`: a path, relative paths being taken from the checkpoint
folder, or a hub id already in the local Hugging Face cache (the real PairRM names
microsoft/deberta-v3-large). Nothing is downloaded.

Two backends compute the same L on the same folder:
- "native" (default): the network rebuilt on current transformers, fed exactly the token ids
  llm-blender builds, with all K*(K-1) ordered pairs of all prompts packed into batches by a
  token budget. llm-blender at batch_size=1 (SPPO's setting) is slower than training
  (SPPO issue 10); scripts/bench_judges.py measures the gap.
- "llm-blender": the library itself (bridged to transformers 5 by blender_compat), kept to
  prove the native backend equal to it (tests/annotate/test_pairrm.py).

What one forward input looks like (llm-blender's CrossCompareCollator and _forward):
    [CLS] <|source|> prompt [SEP] [CLS] <|candidate1|> response_i [SEP] [CLS] <|candidate2|> response_j [SEP]
L[i, j] = head(h_source, h_candidate1) - head(h_source, h_candidate2), where h_x is the last
hidden state at marker x and head is Dropout, Linear(2H, H), Tanh, Dropout, Linear(H, 1).
Both orders of every pair are scored (PairRM is not antisymmetric); the diagonal is 0.

Truncation, as llm-blender at batch_size=1: the prompt (with [CLS], marker, [SEP]) is cut to
source_maxlength tokens, keeping its start; each response to candidate_maxlength plus half of
the source budget the prompt left unused, keeping its start. Responses longer than that are
judged on their beginning only. (llm-blender at a larger batch size takes the unused budget
from the longest prompt in its batch, so its truncation then depends on batching; the
native backend's never does.) The literal text "[SEP]" in prompts and responses becomes a
space, as in llm-blender.

Tokenizer: DeBERTa-v3 ships `spm.model` and no `tokenizer.json`. transformers 5 builds its
tokenizer from the model's pieces but with a normalizer of its own (NFC), not the model's
(nmt_nfkc), so text such as "ﬁ", "①" or full-width letters got other ids than sentencepiece
gives, and than the PairRM was trained on. Both backends get the model's own normalizer back
(`match_sentencepiece`); the ids then equal sentencepiece's (tests/models/test_tiny_pairrm_tokenizer.py).
One known gap, in the tokenizers library: a repeated combining mark (e + two accents) loses
its second mark, where sentencepiece keeps it.
"""

import json
from itertools import permutations
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from selfplay.conversation import Prompt, as_text
from selfplay.judging.base import Judge, Judgment
from selfplay.judging.judge_inputs import WEIGHT_FILES, check_inputs, token_budget_batches, torch_dtype

# Added to the backbone tokenizer in this order by llm-blender, so their ids follow its vocabulary.
MARKER_TOKENS = ["<|source|>", "<|candidate1|>", "<|candidate2|>", "<|candidate|>"]
# llm-blender's layout holds the weights in one file, never a sharded checkpoint's index.
PAIRRM_WEIGHT_FILES = tuple(name for name in WEIGHT_FILES if not name.endswith(".index.json"))
REQUIRED_CONFIG_FIELDS = ("ranker_type", "model_type", "model_name", "source_maxlength", "candidate_maxlength")


class PairRMModel(nn.Module):
    """llm-blender's CrossCompareReranker at inference, with its parameter names."""

    def __init__(self, backbone: nn.Module, n_tasks: int = 1, dropout: float = 0.05):
        super().__init__()
        hidden = backbone.config.hidden_size
        self.pretrained_model = backbone
        self.head_layer = nn.Sequential(nn.Dropout(dropout), nn.Linear(2 * hidden, hidden), nn.Tanh(),
                                        nn.Dropout(dropout), nn.Linear(hidden, n_tasks))

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, markers: torch.Tensor) -> torch.Tensor:
        """markers: (B, 3) positions of <|source|>, <|candidate1|>, <|candidate2|>.

        Returns (B,) logits that candidate 1 beats candidate 2 (mean over tasks, as llm-blender).
        """
        hidden = self.pretrained_model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        rows = torch.arange(len(input_ids), device=input_ids.device)[:, None]
        source, first, second = hidden[rows, markers].unbind(1)
        left = self.head_layer(torch.cat([source, first], dim=-1))
        right = self.head_layer(torch.cat([source, second], dim=-1))
        return (left - right).mean(dim=-1)


def read_ranker_config(path: Path) -> dict:
    config_file = path / "config.json"
    if not config_file.is_file():
        raise ValueError(f"{config_file}: missing (a PairRM checkpoint folder needs llm-blender's config.json)")
    config = json.loads(config_file.read_text())
    for field in REQUIRED_CONFIG_FIELDS:
        if config.get(field) is None:
            raise ValueError(f"{config_file}: field {field!r} is missing")
    if config["ranker_type"] != "pairranker" or not config["model_type"].startswith("deberta"):
        raise ValueError(f"{config_file}: ranker_type/model_type must be 'pairranker'/'deberta', "
                         f"got {config['ranker_type']!r}/{config['model_type']!r}")
    return config


def backbone_folder(path: Path, model_name: str) -> Path:
    """The local folder config.json's model_name names: a path (relative ones from the checkpoint
    folder), or a hub id already in the local Hugging Face cache (never downloaded)."""
    for candidate in (path / model_name, Path(model_name).expanduser()):
        if (candidate / "config.json").is_file():
            return candidate.resolve()
    try:
        from huggingface_hub import snapshot_download
        return Path(snapshot_download(model_name, local_files_only=True))
    except Exception:  # not a hub id, or not cached: both mean "not available offline"
        raise ValueError(f"{path / 'config.json'}: model_name {model_name!r} is not a local backbone folder "
                         f"(absolute or relative to {path}) nor in the local Hugging Face cache") from None


def weights_file(path: Path) -> Path:
    for name in PAIRRM_WEIGHT_FILES:
        if (path / name).is_file():
            return path / name
    raise ValueError(f"{path}: missing weights file ({' or '.join(PAIRRM_WEIGHT_FILES)})")


def load_state_dict(file: Path) -> dict:
    if file.suffix == ".safetensors":
        from safetensors.torch import load_file
        return load_file(file)
    return torch.load(file, map_location="cpu", weights_only=True)


def sentencepiece_normalizer(spm_file: Path, lowercase: bool = False):
    """A tokenizers normalizer doing what the sentencepiece model in `spm_file` does to text:
    its precompiled character map (e.g. nmt_nfkc), then its whitespace rule (runs of spaces
    collapsed, ends stripped)."""
    from sentencepiece import sentencepiece_model_pb2
    from tokenizers import Regex, normalizers

    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString(spm_file.read_bytes())
    spec = proto.normalizer_spec
    steps = [normalizers.Lowercase()] if lowercase else []
    if spec.precompiled_charsmap:
        steps.append(normalizers.Precompiled(spec.precompiled_charsmap))
    if spec.remove_extra_whitespaces:
        steps += [normalizers.Replace(Regex(" {2,}"), " "), normalizers.Strip()]
    return normalizers.Sequence(steps)


def match_sentencepiece(tokenizer, backbone: Path):
    """Give a tokenizer that transformers built from `spm.model` (no tokenizer.json) the model's
    own normalizer (see the module docstring). A tokenizer.json is used as it is."""
    spm_file = backbone / "spm.model"
    if spm_file.is_file() and not (backbone / "tokenizer.json").is_file():
        tokenizer.backend_tokenizer.normalizer = sentencepiece_normalizer(
            spm_file, lowercase=getattr(tokenizer, "do_lower_case", False))
    return tokenizer


def load_pairrm_tokenizer(backbone: Path):
    from transformers import AutoTokenizer

    tokenizer = match_sentencepiece(AutoTokenizer.from_pretrained(backbone), backbone)
    tokenizer.add_tokens(MARKER_TOKENS)
    if tokenizer.sep_token is None or tokenizer("x").input_ids[-1] != tokenizer.sep_token_id:
        raise ValueError(f"{backbone}: the tokenizer must end sequences with a sep token ([SEP]) like DeBERTa's")
    return tokenizer


def load_native_model(path: Path, backbone: Path, config: dict) -> PairRMModel:
    from transformers import AutoConfig, AutoModel

    state = load_state_dict(weights_file(path))
    embedding_key = "pretrained_model.embeddings.word_embeddings.weight"
    if embedding_key not in state:
        raise ValueError(f"{weights_file(path)}: no {embedding_key!r}; "
                         f"not a PairRM checkpoint (pretrained_model.*, head_layer.*)")
    backbone_config = AutoConfig.from_pretrained(backbone)
    # llm-blender resizes the embeddings to the tokenizer plus its marker tokens before loading.
    backbone_config.vocab_size = state[embedding_key].shape[0]
    model = PairRMModel(AutoModel.from_config(backbone_config), config.get("n_tasks", 1), config.get("drop_out", 0.05))
    missing, unexpected = model.load_state_dict(state, strict=False)
    # Checkpoints saved by transformers 4 carry the embeddings' position_ids buffer, now non-persistent.
    unexpected = [key for key in unexpected if not key.endswith("position_ids")]
    if missing or unexpected:
        raise ValueError(f"{weights_file(path)}: weights do not fit the backbone in {backbone} "
                         f"(missing {missing[:3]}, unexpected {unexpected[:3]})")
    return model.eval()


class PairRMJudge(Judge):
    """See the module docstring. batch_tokens bounds rows x padded length per native forward.

    dtype "auto" is llm-blender's rule: float16 on CUDA when config.json says fp16, else
    float32. The llm-blender backend always follows that rule and batches one prompt's
    K*(K-1) pairs at a time.
    """

    def __init__(self, path: str, backend: str = "native", batch_tokens: int = 8192, device: str = "cpu",
                 dtype: str = "auto"):
        if backend not in ("native", "llm-blender"):
            raise ValueError(f"annotate.backend must be 'native' or 'llm-blender', got {backend!r}")
        self.path = Path(path).expanduser().resolve()
        self.backend = backend
        self.batch_tokens = batch_tokens
        self.device = device
        self.config = read_ranker_config(self.path)
        self.backbone = backbone_folder(self.path, self.config["model_name"])
        if backend == "native":
            self._load_native(dtype)
        else:
            self._load_blender()

    def _load_native(self, dtype: str):
        if dtype == "auto":
            dtype = "float16" if self.device.startswith("cuda") and self.config.get("fp16", True) else "float32"
        weights_dtype = torch_dtype(dtype, "PairRM")
        self.tokenizer = load_pairrm_tokenizer(self.backbone)
        self.marker_ids = self.tokenizer.convert_tokens_to_ids(MARKER_TOKENS)
        self.model = load_native_model(self.path, self.backbone, self.config).to(self.device, weights_dtype)

    def _load_blender(self):
        from selfplay.judging.blender_compat import import_llm_blender

        # llm-blender picks a different tokenizer setup when model_name contains these words.
        for word in ("llama", "alpaca", "phi", "starling-rm"):
            if word in str(self.backbone):
                raise ValueError(f"{self.backbone}: llm-blender would treat a backbone path containing {word!r} "
                                 f"as that model family; move the folder or use backend 'native'")
        llm_blender = import_llm_blender()
        weights_file(self.path)  # llm-blender would only log a missing file and judge with random weights
        self.blender = llm_blender.Blender(llm_blender.BlenderConfig(device=self.device, use_tqdm=False))
        self.blender.loadranker(str(self.path), device=self.device, model_name=str(self.backbone))
        match_sentencepiece(self.blender.ranker_tokenizer, self.backbone)  # its collator holds this object

    def judge(self, prompts: list[Prompt], responses: list[list[str]]) -> list[Judgment]:
        check_inputs(prompts, responses)
        prompts = [as_text(prompt) for prompt in prompts]  # a conversation: its turns as text, the last user turn last
        if self.backend == "native":
            logits = self._pairwise_native(prompts, responses)
        else:
            logits = self._pairwise_blender(prompts, responses)
        return [Judgment(pairwise_logits=matrix) for matrix in logits]

    def _encode(self, prompts: list[str], responses: list[list[str]]):
        """Token ids of each prompt and response, with [CLS], marker and [SEP], truncated."""
        sep = self.tokenizer.sep_token
        source_max, candidate_max = self.config["source_maxlength"], self.config["candidate_maxlength"]
        # Tokenize whole texts in two batched calls, then cut: HF truncation keeps [CLS] and the
        # first tokens and re-appends [SEP], which is what ids[:n - 1] + [SEP] does.
        source_ids = self.tokenizer([MARKER_TOKENS[0] + p.replace(sep, " ") for p in prompts]).input_ids
        flat = [MARKER_TOKENS[3] + r.replace(sep, " ") for candidates in responses for r in candidates]
        flat_ids = iter(self.tokenizer(flat).input_ids)
        sources, candidates = [], []
        for ids, group in zip(source_ids, responses):
            source = _truncate(ids, source_max, self.tokenizer.sep_token_id)
            budget = candidate_max + (source_max - len(source)) // 2
            sources.append(source)
            candidates.append([_truncate(next(flat_ids), budget, self.tokenizer.sep_token_id) for _ in group])
        return sources, candidates

    def _pair_input(self, source: list[int], first: list[int], second: list[int]):
        """Ids of one (first, second) input, and the positions of its three markers."""
        source_marker, first_marker, second_marker, candidate_marker = self.marker_ids
        first_at, second_at = first.index(candidate_marker), second.index(candidate_marker)
        first, second = list(first), list(second)
        first[first_at], second[second_at] = first_marker, second_marker
        markers = (source.index(source_marker), len(source) + first_at, len(source) + len(first) + second_at)
        return source + first + second, markers

    def _pairwise_native(self, prompts, responses) -> list[np.ndarray]:
        sources, candidates = self._encode(prompts, responses)
        rows = [(p, i, j) for p, group in enumerate(candidates) for i, j in permutations(range(len(group)), 2)]
        lengths = [len(sources[p]) + len(candidates[p][i]) + len(candidates[p][j]) for p, i, j in rows]
        logits = [np.zeros((len(group), len(group))) for group in candidates]
        progress = tqdm(total=len(rows), desc="PairRM", unit="pair", leave=False)
        with torch.inference_mode():
            for batch in token_budget_batches(lengths, self.batch_tokens):
                width = max(lengths[r] for r in batch)
                input_ids = np.full((len(batch), width), self.tokenizer.pad_token_id, dtype=np.int64)
                attention_mask = np.zeros((len(batch), width), dtype=np.int64)
                markers = np.zeros((len(batch), 3), dtype=np.int64)
                for b, (p, i, j) in enumerate(rows[r] for r in batch):
                    ids, markers[b] = self._pair_input(sources[p], candidates[p][i], candidates[p][j])
                    input_ids[b, :len(ids)] = ids
                    attention_mask[b, :len(ids)] = 1
                out = self.model(torch.from_numpy(input_ids).to(self.device),
                                 torch.from_numpy(attention_mask).to(self.device),
                                 torch.from_numpy(markers).to(self.device)).float().cpu().numpy()
                for r, value in zip(batch, out):
                    p, i, j = rows[r]
                    logits[p][i, j] = value
                progress.update(len(batch))
        progress.close()
        return logits

    def _pairwise_blender(self, prompts, responses) -> list[np.ndarray]:
        logits = []
        groups = list(zip(prompts, responses))
        for prompt, group in tqdm(groups, desc="PairRM (llm-blender)", unit="prompt", leave=False):
            pairs = list(permutations(range(len(group)), 2))
            # One prompt per call: its pairs share the source, so the truncation equals batch_size=1.
            values = self.blender.compare([prompt] * len(pairs), [group[i] for i, _ in pairs],
                                          [group[j] for _, j in pairs], batch_size=len(pairs),
                                          return_logits=True, mode="[A,B]", disable_tqdm=True)
            matrix = np.zeros((len(group), len(group)))
            for (i, j), value in zip(pairs, values):
                matrix[i, j] = value
            logits.append(matrix)
        return logits


def _truncate(ids: list[int], max_length: int, sep_id: int) -> list[int]:
    return ids if len(ids) <= max_length else ids[:max_length - 1] + [sep_id]
