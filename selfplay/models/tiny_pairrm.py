"""A tiny PairRM checkpoint in llm-blender's real folder layout, built locally from a seed.

The real PairRM (llm-blender/PairRM) cannot be downloaded in tests, yet both judge backends
(native and llm-blender itself) must load the same folder, so this writes one they both read:

    out_dir/config.json         RankerConfig (ranker_type pairranker, model_type deberta, ...);
                                model_name is "backbone", relative to out_dir
    out_dir/model.safetensors   pretrained_model.* (embeddings resized for the 4 marker tokens)
                                and head_layer.*
    out_dir/backbone/           a tiny DeBERTa-v3-style model (relative attention only) laid out
                                as microsoft/deberta-v3-large is: config.json, weights, spm.model
                                (a sentencepiece unigram model trained here on Python standard-
                                library sources and a few lines of accented, CJK and emoji text)
                                and tokenizer_config.json, no tokenizer.json. [MASK] is not an spm
                                piece: the tokenizer adds it after the pieces, as DeBERTa-v3's does.

Weights are random. The initializer range is 0.5 instead of 0.02: at 0.02 a tiny ranker's
logits are about 1e-7, too small to tell a wrong input format from a right one in tests.
"""

import io
import json
import sysconfig
from pathlib import Path

from selfplay.models.tiny_policy import STDLIB_FILES

# Real PairRM: source_maxlength 1224, candidate_maxlength 412. Small here so tests truncate.
RANKER_CONFIG = {"ranker_type": "pairranker", "model_type": "deberta", "model_name": "backbone",
                 "source_maxlength": 96, "candidate_maxlength": 48,
                 "n_tasks": 1, "num_pos": 5, "num_neg": 5, "sub_sampling_mode": "all_pair",
                 "sub_sampling_ratio": 0.4, "loss_type": "instructgpt", "reduce_type": "linear",
                 "inference_mode": "bubble", "drop_out": 0.05, "fp16": True}


# So that accented, CJK and emoji text has pieces of its own, as in a real multilingual vocabulary.
UNICODE_LINES = ["Café crème brûlée, naïve façade, Ångström, Øresund, Straße, señor, jalapeño.",
                 "日本語のテキストです。中文文本。한국어 텍스트입니다.",
                 "Emoji: 🎉 party, 👍 thumbs up, ❤️ heart, 🙂 smile.",
                 "Ελληνικά, кириллица, עברית, العربية, हिन्दी."]
# microsoft/deberta-v3-large's tokenizer_config.json, whole.
TOKENIZER_CONFIG = {"do_lower_case": False, "vocab_type": "spm"}


def train_spm(vocab_size: int = 1000) -> bytes:
    """A sentencepiece unigram model with DeBERTa-v3's ids: [PAD]=0 [CLS]=1 [SEP]=2 [UNK]=3."""
    import sentencepiece as spm

    stdlib = Path(sysconfig.get_paths()["stdlib"])
    lines = [line for name in STDLIB_FILES if (stdlib / name).exists()
             for line in (stdlib / name).read_text(encoding="utf-8").splitlines() if line.strip()]
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines + UNICODE_LINES * 10), model_writer=model, vocab_size=vocab_size,
        model_type="unigram", pad_id=0, bos_id=1, eos_id=2, unk_id=3, pad_piece="[PAD]", bos_piece="[CLS]",
        eos_piece="[SEP]", unk_piece="[UNK]", character_coverage=1.0,
        num_threads=1, minloglevel=2)  # one thread: the same pieces every time
    return model.getvalue()


def write_deberta_tokenizer(folder: Path, vocab_size: int = 1000) -> None:
    """spm.model and tokenizer_config.json, DeBERTa-v3's tokenizer files (no tokenizer.json)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "spm.model").write_bytes(train_spm(vocab_size))
    (folder / "tokenizer_config.json").write_text(json.dumps(TOKENIZER_CONFIG))


def load_deberta_tokenizer(folder: Path):
    """The tokenizer of a backbone folder, as the PairRM judge loads it (the class named, because
    AutoTokenizer needs the backbone's config.json, which is written after)."""
    from transformers import DebertaV2Tokenizer

    from selfplay.judging.pairrm import match_sentencepiece

    return match_sentencepiece(DebertaV2Tokenizer.from_pretrained(folder), folder)


def build_deberta_tokenizer(vocab_size: int = 1000):
    """A DeBERTa-v3-style tokenizer object (for tests that need another vocabulary)."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        write_deberta_tokenizer(Path(tmp), vocab_size)
        return load_deberta_tokenizer(Path(tmp))


def build_tiny_pairrm(out_dir: str | Path, seed: int = 0, hidden_size: int = 64, num_layers: int = 2,
                      num_heads: int = 2, vocab_size: int = 1000, initializer_range: float = 0.5,
                      source_maxlength: int = 96, candidate_maxlength: int = 48, intermediate_size: int | None = None,
                      position_buckets: int = 32) -> Path:
    """The checkpoint folder. Benchmarks pass DeBERTa-v3-large's shape (hidden 1024, 24 layers,
    16 heads, intermediate 4096, 256 position buckets) and PairRM's max lengths (1224/412)."""
    import torch
    from safetensors.torch import save_file
    from transformers import DebertaV2Config, DebertaV2Model

    from selfplay.judging.pairrm import MARKER_TOKENS, PairRMModel

    out_dir = Path(out_dir)
    write_deberta_tokenizer(out_dir / "backbone", vocab_size)
    tokenizer = load_deberta_tokenizer(out_dir / "backbone")
    # DeBERTa-v3's embedding rows outnumber its tokenizer (128100 vs 128001); llm-blender's resize cuts them.
    config = DebertaV2Config(vocab_size=len(tokenizer) + 99, hidden_size=hidden_size, num_hidden_layers=num_layers,
                             num_attention_heads=num_heads, intermediate_size=intermediate_size or 2 * hidden_size,
                             max_position_embeddings=512, relative_attention=True, position_buckets=position_buckets,
                             norm_rel_ebd="layer_norm", share_att_key=True, pos_att_type=["p2c", "c2p"],
                             position_biased_input=False, type_vocab_size=0, layer_norm_eps=1e-7,
                             initializer_range=initializer_range, pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(seed)
    backbone = DebertaV2Model(config)
    backbone.save_pretrained(out_dir / "backbone")

    # What llm-blender does before loading a checkpoint: add the markers, resize the embeddings.
    tokenizer.add_tokens(MARKER_TOKENS)
    backbone.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    ranker = PairRMModel(backbone, RANKER_CONFIG["n_tasks"], RANKER_CONFIG["drop_out"])
    for layer in ranker.head_layer:
        if isinstance(layer, torch.nn.Linear):
            torch.nn.init.normal_(layer.weight, std=initializer_range)
            torch.nn.init.normal_(layer.bias, std=initializer_range)
    state = {name: tensor.contiguous() for name, tensor in ranker.state_dict().items()}
    save_file(state, out_dir / "model.safetensors")
    ranker_config = {**RANKER_CONFIG, "source_maxlength": source_maxlength, "candidate_maxlength": candidate_maxlength}
    (out_dir / "config.json").write_text(json.dumps(ranker_config, indent=2))
    (out_dir / "selfplay_tiny.json").write_text(json.dumps({"kind": "pairrm", "seed": seed}))
    return out_dir
